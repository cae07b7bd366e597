//! The primary's side of the link: per-lane handshake, what the secondary has told us
//! (its applied point and journal window, which bound what may be sent), acknowledgements,
//! and resending what was lost. Records go to whichever ready lane asks for bytes next, so
//! one data set spreads over all lanes and many data sets are in flight at once.

use std::collections::VecDeque;

use super::config::{PrimaryConfig, Replication};
use super::retention::{RecordKind, Retention, SentOn};
use super::stats::PrimaryStats;
use super::tx::FrameSink;
use crate::protocol::{
    check_hello, decide, DataSetId, Decision, Frame, GenerationId, Hello, HistoryFlags, PeerError,
    PrimaryHistory, ResumeState, Role, Seq, SyncFrame, VolumeInfo, WriteFrame, ZeroFrame,
    RECORD_FRAME_OVERHEAD_BYTES,
};

#[derive(Clone, Copy, Debug, Default)]
struct Lane {
    up: bool,
    /// When our Hello was last sent on it (resent until the secondary answers).
    hello_sent_ms: Option<u64>,
    /// The secondary's Hello arrived on this lane: data may flow.
    ready: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Peer {
    applied_data_set: DataSetId,
    applied_seq: Seq,
    applied_stream_end: u64,
    window_bytes: u64,
    journal_id: u64,
}

impl Peer {
    /// Where it stages the stream up to: its applied point plus its journal window.
    fn credit_end(&self) -> u64 {
        // Both come from the peer: a lie must not overflow.
        self.applied_stream_end.saturating_add(self.window_bytes)
    }
}

#[derive(Debug)]
pub struct Link {
    hello: Hello,
    lanes: Vec<Lane>,
    peer: Option<Peer>,
    /// Data sets can need this much journal window on the secondary.
    max_data_set_stream_bytes: u64,
    retransmit_ms: u64,
    /// Send a data set only once the one before it was applied.
    group_ordered: bool,
    /// Next seq never sent yet.
    next_unsent: Seq,
    resend: VecDeque<Seq>,
    next_timeout_scan_ms: u64,
    stalled: Option<PeerError>,
    /// See `take_unservable`.
    unservable: bool,
    /// Records below this seq were dropped from the window with no secondary following.
    dropped_below: Seq,
}

impl Link {
    pub fn new(config: &PrimaryConfig, volumes: Vec<VolumeInfo>) -> Link {
        let max_records =
            (config.window_bytes / crate::protocol::RECORD_OVERHEAD_BYTES + 1) as usize;
        Link {
            hello: Hello {
                role: Role::Primary,
                group: config.group,
                max_write_bytes: config.max_write_bytes,
                volumes,
                generation: GenerationId::NONE,
                ancestors: Vec::new(),
                flags: HistoryFlags::default(),
                resume: ResumeState::default(),
            },
            lanes: vec![Lane::default(); config.lanes],
            peer: None,
            max_data_set_stream_bytes: config.policy.max_stream_bytes(config.max_write_bytes),
            retransmit_ms: config.retransmit_ms,
            group_ordered: config.replication == Replication::GroupOrdered,
            next_unsent: Seq(1),
            resend: VecDeque::with_capacity(max_records),
            next_timeout_scan_ms: 0,
            stalled: None,
            unservable: false,
            dropped_below: Seq::NONE,
        }
    }

    /// The volumes this primary announces in its Hello.
    pub fn volumes(&self) -> &[VolumeInfo] {
        &self.hello.volumes
    }

    /// Our Hello says `history` from now on (where the stream starts goes in the fields a
    /// secondary's Hello uses for what it applied).
    pub fn set_history(&mut self, history: PrimaryHistory) {
        self.hello.generation = history.generation;
        self.hello.ancestors = history.ancestors;
        self.hello.flags = history.flags;
        self.hello.resume = ResumeState {
            applied_data_set: history.start.data_set,
            applied_seq: history.start.seq,
            applied_stream_end: history.start.stream_offset,
            ..ResumeState::default()
        };
    }

    /// Every record below `seq` was dropped, staged by no one: a secondary that joins this
    /// stream must hold them already.
    pub fn dropped_below(&mut self, seq: Seq) {
        self.dropped_below = self.dropped_below.max(seq);
    }

    /// A secondary holds this history from where our Hello says the stream starts, but
    /// records we freed since then are missing from it: the stream must start anew.
    pub fn take_unservable(&mut self) -> bool {
        std::mem::take(&mut self.unservable)
    }

    pub fn history_flags(&self) -> HistoryFlags {
        self.hello.flags
    }

    /// The stream (empty) goes on from `next` (a resumed history, or a new generation).
    pub fn resume_at(&mut self, next: Seq) {
        self.next_unsent = next;
        self.resend.clear();
        self.dropped_below = Seq::NONE;
    }

    /// The stream starts anew (the window was dropped): what the secondary said it holds
    /// is stale, and every lane greets it again with the new start (which makes it re-base
    /// if it holds less).
    pub fn greet_again(&mut self) {
        self.peer = None;
        self.resend.clear();
        for lane in &mut self.lanes {
            lane.ready = false;
            lane.hello_sent_ms = None;
        }
    }

    pub fn peer_applied(&self) -> DataSetId {
        self.peer.map_or(DataSetId::NONE, |p| p.applied_data_set)
    }

    /// The seq of the sync of the data set the secondary applied last, if one answered.
    pub fn peer_applied_seq(&self) -> Option<Seq> {
        self.peer.map(|p| p.applied_seq)
    }

    /// Where the secondary stages the stream up to (its applied point plus its journal
    /// window), if one answered.
    pub fn credit_end(&self) -> Option<u64> {
        self.peer.map(|p| p.credit_end())
    }

    pub fn stalled(&self) -> Option<&PeerError> {
        self.stalled.as_ref()
    }

    /// The secondary answered our Hello on `lane`: records may flow on it.
    pub fn lane_ready(&self, lane: usize) -> bool {
        self.lanes[lane].ready
    }

    pub fn lane_up(&mut self, lane: usize) {
        self.lanes[lane] = Lane {
            up: true,
            ..Lane::default()
        };
    }

    pub fn lane_down(&mut self, lane: usize, retention: &mut Retention) {
        self.lanes[lane] = Lane::default();
        for record in retention.iter_mut() {
            let sent_here = record.sent.is_some_and(|s| s.lane == lane);
            if sent_here && !record.acked && !record.resend_queued {
                record.resend_queued = true;
                self.resend.push_back(record.seq);
            }
        }
    }

    /// Queues for resending every record sent at least `retransmit_ms` ago and still not
    /// acknowledged. Scans a few times per interval, not on every tick.
    pub fn schedule_timeouts(&mut self, now_ms: u64, retention: &mut Retention) {
        if now_ms < self.next_timeout_scan_ms {
            return;
        }
        self.next_timeout_scan_ms = now_ms + (self.retransmit_ms / 4).max(1);
        for record in retention.iter_mut() {
            let due = record
                .sent
                .is_some_and(|s| s.at_ms + self.retransmit_ms <= now_ms);
            if due && !record.acked && !record.resend_queued {
                record.resend_queued = true;
                self.resend.push_back(record.seq);
            }
        }
    }

    pub fn handle_frame(
        &mut self,
        lane: usize,
        frame: &Frame<'_>,
        retention: &mut Retention,
    ) -> Result<(), PeerError> {
        match frame {
            Frame::Hello(hello) => self.handle_hello(lane, hello, retention),
            // Until the lane's handshake, an Ack or Applied may be of another generation.
            Frame::Ack(_) | Frame::Applied(_) | Frame::Digests(_) if !self.lanes[lane].ready => {
                Ok(())
            }
            // The resync takes them (`Primary::handle_frame`).
            Frame::Digests(_) => Ok(()),
            Frame::Ack(ack) => {
                for range in &ack.ranges {
                    retention.ack_range(range.first, range.last);
                }
                Ok(())
            }
            Frame::Applied(applied) => {
                let Some(peer) = &mut self.peer else {
                    // Overtook the Hello; the watermark is announced again shortly.
                    return Ok(());
                };
                if applied.data_set > peer.applied_data_set {
                    peer.applied_data_set = applied.data_set;
                    peer.applied_seq = applied.applied_seq;
                    peer.applied_stream_end = applied.stream_end;
                    retention.ack_range(Seq(0), applied.applied_seq);
                }
                Ok(())
            }
            Frame::Write(_) | Frame::Zero(_) | Frame::Sync(_) | Frame::DigestRequest(_) => Err(
                PeerError::Unexpected("a Write, Zero, Sync or DigestRequest frame"),
            ),
        }
    }

    fn handle_hello(
        &mut self,
        lane: usize,
        hello: &Hello,
        retention: &mut Retention,
    ) -> Result<(), PeerError> {
        let result = self.check_hello(hello);
        if let Err(error) = &result {
            self.stalled = Some(error.clone());
            return result;
        }
        let holds = holds_through(&hello.resume);
        match decide(&self.hello.history(), hello.generation, hello.flags, holds) {
            Decision::Resume => {}
            Decision::Refuse(error) => {
                self.stalled = Some(error.clone());
                return Err(error);
            }
            Decision::Adopt | Decision::Rebase { .. } => {
                // It re-bases onto our history and greets us again on new lanes.
                tracing::info!(
                    secondary = %hello.generation,
                    primary = %self.hello.generation,
                    "the secondary holds an earlier history, none, or less than where our stream starts: it re-bases onto our stream and is resynchronised"
                );
                self.stalled = None;
                return Ok(());
            }
        }
        self.stalled = None;
        let resume = &hello.resume;
        // Lanes reorder: a Hello built before an Applied frame we already have is stale,
        // and the secondary's watermark is durable, so the newer state stands.
        let same_journal = self.peer.is_some_and(|p| p.journal_id == resume.journal_id);
        // What we freed, the journal we streamed to staged. Another journal (or one we
        // do not know, after our restart) can go on only if it holds, staged or applied,
        // every record we no longer hold.
        let stream_from = retention
            .front_seq()
            .unwrap_or(self.next_unsent)
            .max(self.dropped_below);
        if !same_journal && holds.next() < stream_from {
            // It needs records no longer held (freed once another journal staged them):
            // the stream starts anew, and it re-bases onto the new start.
            tracing::info!(
                journal = resume.journal_id,
                holds = %holds,
                "a secondary follows this history from a point no longer held here"
            );
            self.unservable = true;
            return Ok(());
        }
        if !same_journal {
            self.peer = None;
        }
        let stale = self
            .peer
            .is_some_and(|p| p.applied_data_set > resume.applied_data_set);
        if !stale {
            self.peer = Some(Peer {
                applied_data_set: resume.applied_data_set,
                applied_seq: resume.applied_seq,
                applied_stream_end: resume.applied_stream_end,
                window_bytes: resume.window_bytes,
                journal_id: resume.journal_id,
            });
        }
        retention.ack_range(Seq(0), resume.applied_seq);
        for range in &resume.staged {
            retention.ack_range(range.first, range.last);
        }
        self.lanes[lane].ready = true;
        Ok(())
    }

    fn check_hello(&self, hello: &Hello) -> Result<(), PeerError> {
        check_hello(&self.hello, hello, Role::Secondary)?;
        if hello.max_write_bytes < self.hello.max_write_bytes {
            return Err(PeerError::Mismatch {
                field: "largest write",
                ours: format!("{} bytes", self.hello.max_write_bytes),
                theirs: format!("{} bytes (journal)", hello.max_write_bytes),
            });
        }
        if hello.resume.window_bytes < self.max_data_set_stream_bytes {
            return Err(PeerError::WindowTooSmall {
                window: hello.resume.window_bytes,
                needed: self.max_data_set_stream_bytes,
            });
        }
        Ok(())
    }

    pub fn poll_transmit<S: FrameSink + ?Sized>(
        &mut self,
        now_ms: u64,
        lane: usize,
        out: &mut S,
        max_bytes: usize,
        retention: &mut Retention,
        stats: &mut PrimaryStats,
    ) -> usize {
        let start = out.len();
        let state = &mut self.lanes[lane];
        if !state.up {
            return 0;
        }
        let hello_due = match state.hello_sent_ms {
            None => true,
            Some(at) => !state.ready && now_ms >= at + self.retransmit_ms,
        };
        if hello_due {
            out.push(&Frame::Hello(self.hello.clone()));
            state.hello_sent_ms = Some(now_ms);
        }
        if !state.ready {
            return out.len() - start;
        }
        let Some(peer) = self.peer else {
            return out.len() - start;
        };
        let credit_end = peer.credit_end();
        // A frame goes in if it fits in `max_bytes`, or if `out` is empty (so a frame
        // larger than the budget still goes, alone): a lane's buffer holding unsent bytes
        // never grows past its capacity.
        let fits = |out: &S, payload: u32| {
            out.is_empty()
                || out.len() - start + RECORD_FRAME_OVERHEAD_BYTES + payload as usize <= max_bytes
        };
        while out.len() - start < max_bytes {
            if let Some(&seq) = self.resend.front() {
                let payload = retention.get(seq).map_or(0, |r| r.payload_len());
                if !fits(out, payload) {
                    break;
                }
                self.resend.pop_front();
                let Some(record) = retention.get_mut(seq) else {
                    continue;
                };
                record.resend_queued = false;
                if record.acked {
                    continue;
                }
                send(now_ms, lane, seq, out, retention, stats);
                stats.retransmits += 1;
                continue;
            }
            if let Some(front) = retention.front_seq() {
                self.next_unsent = self.next_unsent.max(front);
            }
            let Some(record) = retention.get(self.next_unsent) else {
                break;
            };
            if record.acked {
                self.next_unsent = self.next_unsent.next();
                continue;
            }
            if self.group_ordered && record.data_set > peer.applied_data_set.next() {
                break;
            }
            if record.stream_end() > credit_end {
                stats.credit_stalls += 1;
                break;
            }
            if !fits(out, record.payload_len()) {
                break;
            }
            if matches!(record.kind, RecordKind::Sync { .. }) {
                stats.last_sent = stats.last_sent.max(record.data_set);
            }
            send(now_ms, lane, self.next_unsent, out, retention, stats);
            self.next_unsent = self.next_unsent.next();
        }
        out.len() - start
    }
}

fn send<S: FrameSink + ?Sized>(
    now_ms: u64,
    lane: usize,
    seq: Seq,
    out: &mut S,
    retention: &mut Retention,
    stats: &mut PrimaryStats,
) {
    let record = *retention.get(seq).expect("caller found it");
    let before = out.len();
    match record.kind {
        RecordKind::Write { volume, offset, .. } => {
            let frame = WriteFrame {
                volume,
                seq,
                data_set: record.data_set,
                offset,
                stream_offset: record.stream_offset,
                payload: retention.payload(&record),
            };
            out.push_write(seq, &frame);
        }
        RecordKind::Zero {
            volume,
            offset,
            len,
            unmap,
        } => {
            let frame = ZeroFrame {
                volume,
                seq,
                data_set: record.data_set,
                offset,
                len,
                unmap,
                stream_offset: record.stream_offset,
            };
            out.push(&Frame::Zero(frame));
        }
        RecordKind::Sync {
            first_seq,
            write_count,
            ends_resync,
        } => {
            let frame = SyncFrame {
                seq,
                data_set: record.data_set,
                first_seq,
                write_count,
                stream_offset: record.stream_offset,
                ends_resync,
            };
            out.push(&Frame::Sync(frame));
        }
    }
    stats.frames_sent += 1;
    stats.bytes_sent += (out.len() - before) as u64;
    let record = retention.get_mut(seq).expect("still there");
    record.sent = Some(SentOn {
        lane,
        at_ms: now_ms,
    });
}

/// The last seq up to which a secondary that says `resume` holds every record (applied,
/// or in the staged ranges it lists).
fn holds_through(resume: &ResumeState) -> Seq {
    let mut through = resume.applied_seq;
    for range in &resume.staged {
        if range.first > through.next() {
            break;
        }
        through = through.max(range.last);
    }
    through
}

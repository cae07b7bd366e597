//! The secondary: stages every received record in its journal and acknowledges it once
//! durable (group commit), tracks which data sets are complete, and applies complete data
//! sets to the replica strictly in order, each as a unit, persisting the applied watermark
//! only after the replica is durable. Restarted on its journal and replica, it re-applies
//! complete data sets past the watermark and keeps collecting the rest.

mod applier;
pub mod config;
pub mod journal;
mod open;
pub mod staging;

use std::collections::VecDeque;

use thiserror::Error;

use applier::Applier;
pub use config::{InjectedBug, SecondaryConfig};
use journal::{Journal, JournalError, RecordHeader};
use open::drain_all;
use staging::{Admission, Slot, SlotState, Staging};

use crate::primary::ConfigError;
use crate::protocol::{
    check_hello, encode, push_seq, AckFrame, AppliedFrame, DataSetId, Frame, Hello, PeerError,
    RecordKind, ResumeState, Role, Seq, SeqRange, VolumeId, MAX_ACK_RANGES,
};
use crate::storage::{describe, drain, read_blocking, Completion, Storage, StorageError};

/// Journal device tags: a record is tagged with its seq; these have the top bits set.
const TAG_SUPERBLOCK: u64 = 1 << 62;
const TAG_FLUSH_RECORDS: u64 = 1 << 63;
const TAG_FLUSH_SUPERBLOCK: u64 = (1 << 63) | 1;

#[derive(Debug, Error)]
pub enum SecondaryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("replica volume {name}: {error}")]
    Replica { name: String, error: StorageError },
    #[error("journal and replicas do not match: {0}")]
    JournalMismatch(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondaryStats {
    pub records_staged: u64,
    pub duplicates: u64,
    pub out_of_window: u64,
    /// Records dropped because they arrived on a lane before its handshake.
    pub before_hello: u64,
    /// Records dropped because the journal device queue was full.
    pub journal_busy: u64,
    pub journal_flushes: u64,
    pub acks_sent: u64,
    pub data_sets_applied: u64,
    /// Records found in the journal at the last start.
    pub recovered_records: u64,
    /// The newest data set whose closing sync is durable in the journal.
    pub last_staged: DataSetId,
}

#[derive(Clone, Copy, Debug, Default)]
struct Lane {
    up: bool,
    hello_pending: bool,
    ready: bool,
}

#[derive(Debug)]
pub struct Secondary<S: Storage> {
    config: SecondaryConfig,
    hello: Hello,
    journal: Journal<S>,
    replicas: Vec<S>,
    staging: Staging,
    applier: Applier,
    lanes: Vec<Lane>,
    /// Journal records not yet covered by a flush, in log order, with whether their write
    /// completed. Only a prefix of completed records may be committed: recovery scans the
    /// log in order and stops at the first hole, so a record behind an unfinished one is
    /// not durable even if its own write is.
    /// Records appended to the journal and not yet committed, in log order. The flag is
    /// "write completed" for a record whose slot an injected bug removed early; otherwise
    /// the slot's state says it.
    appended: VecDeque<(Seq, bool)>,
    /// Journal writes covered by the flush in flight.
    flushing: Vec<Seq>,
    flush_in_flight: bool,
    /// The new superblock is written and its flush still has to be submitted.
    superblock_flush_due: bool,
    pending_acks: Vec<Seq>,
    ack_ranges: Vec<SeqRange>,
    applied_dirty: bool,
    next_applied_ms: u64,
    completions: Vec<Completion>,
    failed: Option<String>,
    stats: SecondaryStats,
}

impl<S: Storage> Secondary<S> {
    pub fn applied(&self) -> DataSetId {
        self.staging.applied()
    }

    /// True when no data set is being applied (and recovery has re-applied what a crash
    /// cut short): the replica is exactly the image of `applied()`.
    pub fn is_between_data_sets(&self) -> bool {
        self.applier.is_between_data_sets()
    }

    pub fn replicas(&self) -> &[S] {
        &self.replicas
    }

    pub fn stats(&self) -> SecondaryStats {
        self.stats
    }

    /// A storage failure or protocol violation that stopped applying, if any.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref().or(self.applier.stalled())
    }

    /// Log bytes of the journal in use, and its size.
    pub fn journal_use(&self) -> (u64, u64) {
        (self.journal.used_bytes(), self.journal.log_bytes())
    }

    /// The journal and replica storage.
    pub fn storages(&self) -> (&S, &[S]) {
        (self.journal.storage(), &self.replicas)
    }

    /// Gives back the journal and replica storage (to restart on them), once nothing is
    /// in flight on them. What was not yet durable stays as the device left it.
    pub fn into_storages(self) -> (S, Vec<S>) {
        let (mut journal, mut replicas) = (self.journal.into_storage(), self.replicas);
        drain_all(&mut journal, &mut replicas);
        (journal, replicas)
    }

    /// Advances time: re-announces the applied watermark every `applied_interval_ms`.
    pub fn tick(&mut self, now_ms: u64) {
        if now_ms >= self.next_applied_ms {
            self.applied_dirty = true;
            self.next_applied_ms = now_ms + self.config.applied_interval_ms;
        }
    }

    pub fn lane_up(&mut self, lane: usize) {
        self.lanes[lane] = Lane {
            up: true,
            ..Lane::default()
        };
    }

    /// The primary's Hello arrived on `lane`.
    pub fn lane_ready(&self, lane: usize) -> bool {
        self.lanes[lane].ready
    }

    pub fn lane_down(&mut self, lane: usize) {
        self.lanes[lane] = Lane::default();
    }

    /// Handles a frame from the primary on `lane`. An error means the peer is wrong or
    /// broke the protocol: drop the lane (nothing it sent was staged).
    pub fn handle_frame(&mut self, lane: usize, frame: &Frame<'_>) -> Result<(), PeerError> {
        match frame {
            Frame::Hello(hello) => {
                check_hello(&self.hello, hello, Role::Primary)?;
                if hello.max_write_bytes > self.hello.max_write_bytes {
                    return Err(PeerError::Mismatch {
                        field: "largest write",
                        ours: format!("{} bytes (journal)", self.hello.max_write_bytes),
                        theirs: format!("{} bytes", hello.max_write_bytes),
                    });
                }
                let state = &mut self.lanes[lane];
                state.ready = true;
                state.hello_pending = true;
                Ok(())
            }
            Frame::Write(write) => {
                let volume = self
                    .replicas
                    .get(usize::from(write.volume.0))
                    .ok_or(PeerError::BadWrite(format!("no volume {}", write.volume.0)))?;
                volume
                    .geometry()
                    .check_io(write.offset, write.payload.len())
                    .map_err(|e| PeerError::BadWrite(e.to_string()))?;
                if write.payload.len() > self.journal.superblock().max_write_bytes as usize {
                    return Err(PeerError::BadWrite(format!(
                        "{} bytes is over the journal's largest write",
                        write.payload.len()
                    )));
                }
                let slot = Slot {
                    seq: write.seq,
                    data_set: write.data_set,
                    stream_offset: write.stream_offset,
                    kind: RecordKind::Write {
                        volume: write.volume,
                        offset: write.offset,
                        len: write.payload.len() as u32,
                    },
                    state: SlotState::Journaling,
                };
                self.receive(lane, slot, write.payload)
            }
            Frame::Sync(sync) => {
                let slot = Slot {
                    seq: sync.seq,
                    data_set: sync.data_set,
                    stream_offset: sync.stream_offset,
                    kind: RecordKind::Sync {
                        first_seq: sync.first_seq,
                        write_count: sync.write_count,
                    },
                    state: SlotState::Journaling,
                };
                self.receive(lane, slot, &[])
            }
            Frame::Ack(_) | Frame::Applied(_) => {
                Err(PeerError::Unexpected("an Ack or Applied frame"))
            }
        }
    }

    fn receive(&mut self, lane: usize, slot: Slot, payload: &[u8]) -> Result<(), PeerError> {
        if !self.lanes[lane].ready {
            self.stats.before_hello += 1;
            return Ok(());
        }
        if self.failed.is_some() {
            return Ok(());
        }
        match self.staging.admit(
            slot.seq,
            slot.data_set,
            slot.stream_offset,
            payload.len() as u32,
        ) {
            Admission::Accept => {}
            Admission::Duplicate { durable } => {
                self.stats.duplicates += 1;
                if durable {
                    self.pending_acks.push(slot.seq);
                }
                return Ok(());
            }
            Admission::AlreadyApplied => {
                self.stats.duplicates += 1;
                self.applied_dirty = true;
                return Ok(());
            }
            Admission::OutOfWindow => {
                self.stats.out_of_window += 1;
                return Ok(());
            }
            Admission::Conflict(why) => return Err(PeerError::Violation(why)),
        }
        let storage = self.journal.storage();
        if storage.in_flight() + 2 >= storage.geometry().max_in_flight {
            // Keep room for a flush and a superblock; the primary resends after a timeout.
            self.stats.journal_busy += 1;
            return Ok(());
        }
        self.staging
            .insert(slot, payload, SlotState::Journaling)
            .map_err(PeerError::Violation)?;
        let header = RecordHeader {
            lsn: 0,
            incarnation: 0,
            seq: slot.seq,
            data_set: slot.data_set,
            stream_offset: slot.stream_offset,
            kind: slot.kind,
        };
        match self.journal.append(slot.seq.0, header, payload) {
            Ok(_) => self.appended.push_back((slot.seq, false)),
            Err(error) => self.fail(format!("journal write: {error}")),
        }
        self.stats.records_staged += 1;
        Ok(())
    }

    fn fail(&mut self, why: String) {
        self.failed.get_or_insert(why);
    }

    /// Polls journal and replicas, commits staged records (one flush for all written since
    /// the last), and drives the applier. Returns how many completions it handled.
    pub fn poll_storage(&mut self) -> usize {
        let mut handled = 0;
        let mut batch = std::mem::take(&mut self.completions);
        batch.clear();
        let max = batch.capacity();
        self.journal.storage_mut().poll(&mut batch, max);
        for completion in batch.drain(..) {
            handled += 1;
            self.journal_completion(completion);
        }
        for index in 0..self.replicas.len() {
            self.replicas[index].poll(&mut batch, max);
            for completion in batch.drain(..) {
                handled += 1;
                if let Err(error) = &completion.result {
                    let name = &self.config.volume_names[index];
                    self.fail(format!("replica {name}: {error}"));
                }
                self.applier.replica_completion(completion.tag);
            }
        }
        self.completions = batch;
        if self.superblock_flush_due {
            match self
                .journal
                .storage_mut()
                .submit_flush(TAG_FLUSH_SUPERBLOCK)
            {
                Ok(()) => self.superblock_flush_due = false,
                Err(StorageError::QueueFull(_)) => {}
                Err(error) => self.fail(format!("journal flush: {error}")),
            }
        }
        let staging = &self.staging;
        let committable = self
            .appended
            .iter()
            .take_while(|(seq, done)| *done || is_written(staging, *seq))
            .count();
        if !self.flush_in_flight && committable > 0 && self.failed.is_none() {
            match self.journal.storage_mut().submit_flush(TAG_FLUSH_RECORDS) {
                Ok(()) => {
                    assert!(self.flushing.is_empty());
                    let committed = self.appended.drain(..committable).map(|(seq, _)| seq);
                    self.flushing.extend(committed);
                    self.flush_in_flight = true;
                    self.stats.journal_flushes += 1;
                }
                Err(StorageError::QueueFull(_)) => {}
                Err(error) => self.fail(format!("journal flush: {error}")),
            }
        }
        if self.failed.is_none() {
            let applied = self.applier.drive(
                &mut self.staging,
                &mut self.journal,
                &mut self.replicas,
                TAG_SUPERBLOCK,
            );
            if applied {
                self.stats.data_sets_applied += 1;
                self.applied_dirty = true;
            }
        }
        handled
    }

    fn journal_completion(&mut self, completion: Completion) {
        if let Err(error) = completion.result {
            self.fail(format!("journal: {error}"));
            return;
        }
        match completion.tag {
            TAG_FLUSH_RECORDS => {
                assert!(self.flush_in_flight);
                self.flush_in_flight = false;
                for seq in self.flushing.drain(..) {
                    if self.staging.slot(seq).is_none() {
                        // Only an applier that does not wait for durability gets here.
                        assert!(
                            self.config.bug.is_some(),
                            "{seq} left staging before it was durable"
                        );
                        continue;
                    }
                    self.staging.set_state(seq, SlotState::Durable);
                    let slot = self.staging.slot(seq).expect("just set");
                    if matches!(slot.kind, RecordKind::Sync { .. }) {
                        self.stats.last_staged = self.stats.last_staged.max(slot.data_set);
                    }
                    self.pending_acks.push(seq);
                }
            }
            // The flush is submitted from `poll_storage`, which retries a full queue.
            TAG_SUPERBLOCK => self.superblock_flush_due = true,
            TAG_FLUSH_SUPERBLOCK => self.applier.superblock_durable(),
            seq => {
                // Its slot says it is written: the group commit reads that, in log order.
                if self.staging.slot(Seq(seq)).is_some() {
                    assert_eq!(
                        self.staging.slot(Seq(seq)).map(|s| s.state),
                        Some(SlotState::Journaling)
                    );
                    self.staging.set_state(Seq(seq), SlotState::Written);
                } else {
                    assert!(
                        self.config.bug.is_some(),
                        "seq {seq} left staging before it was durable"
                    );
                }
                if self.config.bug.is_some() {
                    // Slots may vanish under the bug: remember completion by searching, as
                    // a correct secondary never needs to.
                    let entry = self.appended.iter_mut().find(|(s, _)| s.0 == seq);
                    entry.expect("a completed record was appended").1 = true;
                }
            }
        }
    }

    /// Appends frames for `lane` (its handshake reply, acknowledgements, the applied
    /// watermark) to `out`, about `max_bytes` at most; returns the bytes appended.
    pub fn poll_transmit(&mut self, lane: usize, out: &mut Vec<u8>, max_bytes: usize) -> usize {
        let start = out.len();
        let state = self.lanes[lane];
        if !state.up || !state.ready {
            return 0;
        }
        if state.hello_pending {
            self.encode_hello(out);
            self.lanes[lane].hello_pending = false;
        }
        if self.applied_dirty {
            let applied = AppliedFrame {
                data_set: self.staging.applied(),
                applied_seq: self.staging.applied_seq(),
                stream_end: self.staging.applied_stream_end(),
            };
            encode(&Frame::Applied(applied), out);
            self.applied_dirty = false;
        }
        while !self.pending_acks.is_empty() && out.len() - start < max_bytes {
            self.encode_ack(out);
        }
        out.len() - start
    }

    /// Appends our Hello (the handshake reply, with the resume state) to `out`. Also sent,
    /// before the lane is dropped, to a primary whose Hello did not match, so that it can
    /// name the mismatch too.
    pub fn encode_hello(&mut self, out: &mut Vec<u8>) {
        self.staging
            .durable_ranges(MAX_ACK_RANGES, &mut self.ack_ranges);
        let sb = self.journal.superblock();
        self.hello.resume = ResumeState {
            applied_data_set: self.staging.applied(),
            applied_seq: self.staging.applied_seq(),
            applied_stream_end: self.staging.applied_stream_end(),
            window_bytes: sb.window_bytes,
            journal_id: sb.journal_id,
            staged: self.ack_ranges.clone(),
        };
        encode(&Frame::Hello(self.hello.clone()), out);
    }

    /// Reads a replica volume, for `verify`: only between data sets with nothing in flight
    /// on that replica (`Ok(false)` otherwise: try again after polling), so what it returns
    /// is the image of exactly `applied()`.
    pub fn read_replica(
        &mut self,
        volume: VolumeId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<bool, StorageError> {
        let quiet = self.is_between_data_sets();
        let Some(replica) = self.replicas.get_mut(usize::from(volume.0)) else {
            return Err(StorageError::BadGeometry("no such replica volume"));
        };
        if !quiet || replica.in_flight() > 0 {
            return Ok(false);
        }
        let mut others = std::mem::take(&mut self.completions);
        others.clear();
        let result = read_blocking(replica, offset, buf, &mut others);
        assert!(
            others.is_empty(),
            "nothing else was in flight on the replica"
        );
        self.completions = others;
        result.map(|()| true)
    }

    /// Encodes one Ack frame of up to `MAX_ACK_RANGES` ranges from the pending acks.
    fn encode_ack(&mut self, out: &mut Vec<u8>) {
        self.pending_acks.sort_unstable();
        self.pending_acks.dedup();
        let mut ranges = std::mem::take(&mut self.ack_ranges);
        ranges.clear();
        let mut used = 0;
        for &seq in &self.pending_acks {
            if !push_seq(&mut ranges, seq, MAX_ACK_RANGES) {
                break;
            }
            used += 1;
        }
        self.pending_acks.drain(..used);
        let frame = Frame::Ack(AckFrame { ranges });
        encode(&frame, out);
        self.stats.acks_sent += 1;
        let Frame::Ack(AckFrame { ranges }) = frame else {
            unreachable!()
        };
        self.ack_ranges = ranges;
    }
}

/// Whether the journal write of `seq` (appended, not yet committed) has completed, as its
/// slot says (a slot gone early, under an injected bug, answers through the flag instead).
fn is_written(staging: &Staging, seq: Seq) -> bool {
    staging
        .slot(seq)
        .is_some_and(|slot| slot.state == SlotState::Written)
}

//! The secondary. Receivers (any number of threads, see `inbox`) check each record from
//! the primary, copy it into the staging arena and put it in the lock-free reorder buffer
//! under its seq. The journal writer (`Secondary`, one poller) takes records out strictly
//! in seq order, checks that they follow each other, journals them and acknowledges them
//! once durable (group commit); the applier applies complete data sets to the replica
//! strictly in order, each as a unit, persisting the applied watermark only after the
//! replica is durable. Restarted on its journal and replica, it re-applies complete data
//! sets past the watermark and keeps collecting the rest.
//!
//! Taking records in seq order before journaling them keeps the journal a log in seq
//! order: a data set is complete exactly when its sync is durable, and recovery restages
//! a contiguous run. The cost: a record behind a gap (a record still on another lane, or
//! lost with a lane) waits in the reorder buffer, unacknowledged, until the gap fills.

mod applier;
pub mod config;
mod history;
mod inbox;
pub mod journal;
mod open;
pub mod staging;

use std::collections::VecDeque;
use std::sync::Arc;

use ordo_lockfree::Consumer;

use thiserror::Error;

use applier::{Applier, Gate};
pub use config::{InjectedBug, SecondaryConfig};
use history::{Edit, Rebase};
pub use inbox::{Delivered, Inbox, InboxStats, Received, Staged, STAGING_GRANULE_BYTES};
use journal::{Journal, JournalError, RecordHeader};
pub use journal::{ReplicaState, ResyncBasis};
use open::drain_all;
use staging::{Slot, SlotState, Staging};

use crate::primary::ConfigError;
use crate::protocol::{
    encode, push_seq, stream_cost, AckFrame, AppliedFrame, DataSetId, DigestRequestFrame,
    DigestsFrame, Frame, GenerationId, Hello, PeerError, RecordKind, ResumeState, Seq, SeqRange,
    VolumeId, MAX_ACK_RANGES,
};
use crate::storage::{describe, drain, read_blocking, Completion, Storage, StorageError};

/// Most digest answers waiting for a lane; requests wait in the inbox meanwhile.
const MAX_DIGEST_REPLIES: usize = 16;
/// Journal device tags: a record is tagged with its seq; these have the top bits set.
const TAG_SUPERBLOCK: u64 = 1 << 62;
const TAG_FLUSH_RECORDS: u64 = 1 << 63;
const TAG_FLUSH_SUPERBLOCK: u64 = (1 << 63) | 1;
/// A re-base's superblock and its flush, and an operator's edit's (`history`).
const TAG_REBASE: u64 = (1 << 62) | 2;
const TAG_FLUSH_REBASE: u64 = (1 << 63) | 2;
const TAG_EDIT: u64 = (1 << 62) | 3;
const TAG_FLUSH_EDIT: u64 = (1 << 63) | 3;

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
    /// Records received into the reorder buffer.
    pub records_received: u64,
    /// Records taken in seq order and journaled.
    pub records_staged: u64,
    pub duplicates: u64,
    pub out_of_window: u64,
    /// Resends not acknowledged again because the queue for that was full.
    pub reacks_dropped: u64,
    /// Records dropped because they arrived on a lane before its handshake.
    pub before_hello: u64,
    pub journal_flushes: u64,
    pub acks_sent: u64,
    pub data_sets_applied: u64,
    /// Records found in the journal at the last start.
    pub recovered_records: u64,
    /// The newest data set whose closing sync is durable in the journal.
    pub last_staged: DataSetId,
    /// Digest requests of a resync answered.
    pub digests_answered: u64,
    /// Times this secondary re-based onto a primary's history.
    pub rebases: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Lane {
    up: bool,
    hello_pending: bool,
    ready: bool,
}

/// Where the records taken in seq order have got to: what the next one must be.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    next_seq: Seq,
    stream_end: u64,
    /// The data set the next write belongs to, and its first seq.
    open_data_set: DataSetId,
    open_first_seq: Seq,
}

impl Cursor {
    fn at_watermark(applied: DataSetId, applied_seq: Seq, applied_stream_end: u64) -> Cursor {
        Cursor {
            next_seq: applied_seq.next(),
            stream_end: applied_stream_end,
            open_data_set: applied.next(),
            open_first_seq: applied_seq.next(),
        }
    }

    /// Takes `seq` if it follows what was taken before; says why not otherwise.
    fn take(&mut self, seq: Seq, staged: &Staged) -> Result<(), &'static str> {
        if seq != self.next_seq {
            return Err("records are not taken in seq order");
        }
        if staged.stream_offset != self.stream_end {
            return Err("a record does not start where the one before it ends");
        }
        if staged.data_set != self.open_data_set {
            return Err("a record names another data set than the open one");
        }
        if let RecordKind::Sync {
            first_seq,
            write_count,
            ends_resync,
        } = staged.kind
        {
            if first_seq != self.open_first_seq || first_seq.0 + write_count != seq.0 {
                return Err("a sync names other writes than those of its data set");
            }
            if write_count == 0 && !ends_resync {
                // A primary closes an empty data set only to end a resync (once per
                // generation); the data-set ring relies on it.
                return Err("a sync closes an empty data set");
            }
            self.open_data_set = self.open_data_set.next();
            self.open_first_seq = seq.next();
        }
        self.next_seq = seq.next();
        self.stream_end = staged.stream_offset + stream_cost(staged.kind.payload_len());
        Ok(())
    }
}

#[derive(Debug)]
pub struct Secondary<S: Storage> {
    config: SecondaryConfig,
    hello: Hello,
    journal: Journal<S>,
    replicas: Vec<S>,
    /// The receiving side, shared with receiver threads.
    inbox: Arc<Inbox>,
    /// The reorder buffer's one consumer: records in seq order.
    records: Consumer<Staged>,
    cursor: Cursor,
    staging: Staging,
    applier: Applier,
    lanes: Vec<Lane>,
    /// Records appended to the journal and not yet committed, in log order (which is seq
    /// order). Only a prefix of written records may be committed: recovery scans the log
    /// in order and stops at the first hole, so a record behind an unfinished one is not
    /// durable even if its own write is.
    appended: VecDeque<Seq>,
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
    /// A re-base onto a primary's generation under way: lanes stay down until it is done.
    rebase: Option<Rebase>,
    /// An operator's change to the superblock, waiting for the applier to be idle or
    /// being written.
    edit: Option<Edit>,
    /// The data set whose sync ends the resync of this history, once that sync is durable.
    epoch_end: Option<DataSetId>,
    /// Answers to digest requests, waiting for a lane.
    digest_replies: VecDeque<DigestsFrame>,
    /// Digest lists of answers sent, for the next answers (one per answer that can wait).
    digest_spares: Vec<Vec<u64>>,
    /// A digest request waiting for room in its replica's queue.
    digest_waiting: Option<DigestRequestFrame>,
    /// One digest request's range, read from a replica.
    digest_buf: Vec<u8>,
    /// Raised each time the receiving side is rebuilt (a re-base): receiver threads must be
    /// handed the new `inbox()`.
    inbox_version: u64,
    /// A held resync filled the journal window before its end point (kept until the
    /// replica leaves the held state): it cannot finish without the operator.
    held_full: bool,
    /// Where the cursor stood at the last tick, and since when (ms), for `held_full`.
    held_watch: (u64, u64),
}

impl<S: Storage> Secondary<S> {
    pub fn applied(&self) -> DataSetId {
        self.staging.applied()
    }

    /// True when no data set is being applied (and recovery has re-applied what a crash
    /// cut short): the replica is exactly the image `replica_point()` names, if any.
    pub fn is_between_data_sets(&self) -> bool {
        self.applier.is_between_data_sets()
    }

    /// Where taking records in order stands: the next seq the cursor takes, and the
    /// reorder buffer's (a report of a stuck secondary).
    pub fn cursor_state(&self) -> (Seq, u64, u32, usize) {
        (
            self.cursor.next_seq,
            self.records.next(),
            self.journal.storage().in_flight(),
            self.appended.len(),
        )
    }

    /// The history whose stream this secondary follows (`NONE`: none yet).
    pub fn history(&self) -> GenerationId {
        self.journal.superblock().history
    }

    /// What the replica holds (consistent, held resync, inconsistent).
    pub fn replica_state(&self) -> ReplicaState {
        self.journal.superblock().replica
    }

    /// The history and data set the replica is the image of (when between data sets), or
    /// `None` while it is inconsistent. `(NONE, 0)` is the all-zero image.
    pub fn replica_point(&self) -> Option<(GenerationId, DataSetId)> {
        self.journal.superblock().replica_point()
    }

    pub fn replicas(&self) -> &[S] {
        &self.replicas
    }

    pub fn stats(&self) -> SecondaryStats {
        let inbox = self.inbox.stats();
        SecondaryStats {
            records_received: inbox.staged,
            duplicates: inbox.duplicates,
            out_of_window: inbox.out_of_window,
            reacks_dropped: inbox.reacks_dropped,
            before_hello: inbox.before_hello,
            ..self.stats
        }
    }

    /// The receiving side, for receiver threads: records they hand it are taken in seq
    /// order by `poll_storage`. A re-base replaces it (`inbox_version` changes): lanes
    /// started after that must use the new one.
    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    pub fn inbox_version(&self) -> u64 {
        self.inbox_version
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

    /// Advances time: re-announces the applied watermark every `applied_interval_ms`, and
    /// notices a held resync that cannot finish (`held_resync_full`).
    pub fn tick(&mut self, now_ms: u64) {
        if now_ms >= self.next_applied_ms {
            self.applied_dirty = true;
            self.next_applied_ms = now_ms + self.config.applied_interval_ms;
        }
        self.watch_held(now_ms);
    }

    /// Whether a held resync filled the journal window before its end point arrived:
    /// nothing of it is applied before the end, so no room is freed, and the primary can
    /// send nothing more of it. It stays so until the operator lets it go on inconsistent
    /// (`allow_inconsistent`); the replica meanwhile remains the image it was.
    pub fn held_resync_full(&self) -> bool {
        self.held_full
    }

    /// Raises `held_full` once the cursor stood still for `HELD_FULL_AFTER_MS` with less
    /// room left in the journal window than the largest record takes, a held resync's
    /// end not yet staged; lowers it when the replica leaves the held state.
    fn watch_held(&mut self, now_ms: u64) {
        /// Long enough that a slow (rate-limited) resync still moves within it.
        const HELD_FULL_AFTER_MS: u64 = 2000;
        if self.journal.superblock().replica != ReplicaState::Held {
            self.held_full = false;
            self.held_watch = (self.cursor.stream_end, now_ms);
            return;
        }
        if self.held_watch.0 != self.cursor.stream_end {
            self.held_watch = (self.cursor.stream_end, now_ms);
            return;
        }
        let limit = self.staging.applied_stream_end() + self.journal.superblock().window_bytes;
        let exhausted = self.cursor.stream_end + stream_cost(self.config.max_write_bytes) > limit;
        if exhausted
            && self.epoch_end.is_none()
            && self.rebase.is_none()
            && now_ms.saturating_sub(self.held_watch.1) >= HELD_FULL_AFTER_MS
        {
            self.held_full = true;
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
        if let Delivered::Hello(history) = self.inbox.deliver(frame, self.lanes[lane].ready)? {
            self.lane_hello(lane, &history)?;
        }
        Ok(())
    }

    /// Acknowledges again the resends the receivers queued: with the watermark if applied,
    /// with an ack if durable (a record still being journaled is acked once durable).
    fn take_reacks(&mut self) {
        while let Some(seq) = self.inbox.next_reack() {
            if seq <= self.staging.applied_seq() {
                self.applied_dirty = true;
            } else if self
                .staging
                .slot(seq)
                .is_some_and(|slot| slot.state == SlotState::Durable)
            {
                self.pending_acks.push(seq);
            }
        }
    }

    /// Takes the records that arrived in seq order, as far as the journal device has room,
    /// and journals them. A record that does not follow the one before it stops staging:
    /// the primary broke the protocol.
    fn take_in_order(&mut self) {
        let storage = self.journal.storage();
        // Keep room for a flush and a superblock.
        let room = storage
            .geometry()
            .max_in_flight
            .saturating_sub(storage.in_flight() + 2) as usize;
        if room == 0 || self.failed.is_some() || self.rebase.is_some() {
            // A re-base drops what was not taken yet.
            return;
        }
        let Secondary {
            records,
            cursor,
            staging,
            journal,
            appended,
            failed,
            stats,
            ..
        } = self;
        records.drain(room, |seq, staged| {
            let seq = Seq(seq);
            if failed.is_some() {
                return;
            }
            if let Err(why) = cursor.take(seq, &staged) {
                failed.get_or_insert(format!("refusing to stage {seq}: {why}"));
                return;
            }
            let slot = Slot {
                seq,
                data_set: staged.data_set,
                stream_offset: staged.stream_offset,
                kind: staged.kind,
                state: SlotState::Journaling,
            };
            if let Err(why) = staging.insert(slot) {
                failed.get_or_insert(format!("refusing to stage {seq}: {why}"));
                return;
            }
            let header = RecordHeader {
                lsn: 0,
                incarnation: 0,
                seq,
                data_set: staged.data_set,
                stream_offset: staged.stream_offset,
                kind: staged.kind,
            };
            match journal.append(seq.0, header, staging.payload(seq)) {
                Ok(_) => appended.push_back(seq),
                Err(error) => {
                    failed.get_or_insert(format!("journal write: {error}"));
                }
            }
            stats.records_staged += 1;
        });
    }

    fn fail(&mut self, why: String) {
        self.failed.get_or_insert(why);
    }

    /// Polls journal and replicas, commits staged records (one flush for all written since
    /// the last), and drives the applier. Returns how many completions it handled.
    pub fn poll_storage(&mut self) -> usize {
        self.take_reacks();
        self.take_in_order();
        let mut handled = self.answer_digest_requests();
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
                self.replica_completion(index, completion);
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
            .take_while(|seq| is_written(staging, **seq))
            .count();
        if !self.flush_in_flight && committable > 0 && self.failed.is_none() {
            match self.journal.storage_mut().submit_flush(TAG_FLUSH_RECORDS) {
                Ok(()) => {
                    assert!(self.flushing.is_empty());
                    self.flushing.extend(self.appended.drain(..committable));
                    self.flush_in_flight = true;
                    self.stats.journal_flushes += 1;
                }
                Err(StorageError::QueueFull(_)) => {}
                Err(error) => self.fail(format!("journal flush: {error}")),
            }
        }
        if self.failed.is_none() {
            let gate = self.gate();
            let before = self.staging.applied();
            let applied = self.applier.drive(
                &mut self.staging,
                &mut self.journal,
                &mut self.replicas,
                TAG_SUPERBLOCK,
                gate,
            );
            if applied {
                // A pass (or a held unit) applies several at once.
                self.stats.data_sets_applied += self.staging.applied().0 - before.0;
                self.applied_dirty = true;
                self.inbox
                    .publish_applied(self.staging.applied_stream_end());
                if self.journal.superblock().replica == ReplicaState::Consistent {
                    self.epoch_end = None;
                }
            }
            self.progress_rebase();
            self.progress_edit();
        }
        handled
    }

    /// What the applier may apply now.
    fn gate(&self) -> Gate {
        if self.rebase.as_ref().is_some_and(Rebase::writing) || self.edit_writing() {
            return Gate::Closed;
        }
        match self.journal.superblock().replica {
            ReplicaState::Held if self.config.bug == Some(InjectedBug::EagerResync) => Gate::Open,
            ReplicaState::Held => Gate::Held {
                end: self.epoch_end,
            },
            ReplicaState::Consistent | ReplicaState::Inconsistent => Gate::Open,
        }
    }

    fn replica_completion(&mut self, index: usize, completion: Completion) {
        if let Err(error) = &completion.result {
            let name = &self.config.volume_names[index];
            self.fail(format!("replica {name}: {error}"));
        }
        self.applier.replica_completion(completion.tag);
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
                    self.staging.set_state(seq, SlotState::Durable);
                    let slot = self.staging.slot(seq).expect("just set");
                    if let RecordKind::Sync { ends_resync, .. } = slot.kind {
                        self.stats.last_staged = self.stats.last_staged.max(slot.data_set);
                        if ends_resync {
                            self.epoch_end.get_or_insert(slot.data_set);
                        }
                    }
                    self.pending_acks.push(seq);
                }
            }
            TAG_REBASE | TAG_FLUSH_REBASE | TAG_EDIT | TAG_FLUSH_EDIT => {
                self.history_completion(completion.tag);
            }
            // The flush is submitted from `poll_storage`, which retries a full queue.
            TAG_SUPERBLOCK => self.superblock_flush_due = true,
            TAG_FLUSH_SUPERBLOCK => self.applier.superblock_durable(),
            seq => {
                // Its slot says it is written: the group commit reads that, in log order.
                let state = self.staging.slot(Seq(seq)).map(|s| s.state);
                assert_eq!(state, Some(SlotState::Journaling), "journal write of {seq}");
                self.staging.set_state(Seq(seq), SlotState::Written);
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
        while out.len() - start < max_bytes {
            let Some(digests) = self.digest_replies.pop_front() else {
                break;
            };
            let frame = Frame::Digests(digests);
            encode(&frame, out);
            if let Frame::Digests(sent) = frame {
                self.digest_spares.push(sent.digests);
            }
        }
        out.len() - start
    }

    /// Appends our Hello (the handshake reply, with the resume state) to `out`. Also sent,
    /// before the lane is dropped, to a primary whose Hello did not match, so that it can
    /// name the mismatch too.
    pub fn encode_hello(&mut self, out: &mut Vec<u8>) {
        self.staging
            .durable_ranges(MAX_ACK_RANGES, &mut self.ack_ranges);
        self.hello.flags = self.history_flags();
        self.hello.generation = self.followed_history();
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

/// Whether the journal write of `seq` (appended, not yet committed) has completed.
fn is_written(staging: &Staging, seq: Seq) -> bool {
    staging
        .slot(seq)
        .is_some_and(|slot| slot.state == SlotState::Written)
}

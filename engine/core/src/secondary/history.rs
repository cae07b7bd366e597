//! The secondary's side of histories: what it does with a primary's `Hello` (follow the
//! stream, re-base onto the primary's generation, or refuse), the re-base itself, the
//! operator's decisions (let a held resync go on without a consistent image; let any
//! history overwrite the replica), and the digests a resync compares.
//!
//! Adopting (a zeroed secondary meets a primary that began as zeros and still holds its
//! whole stream) needs no re-base: the lane is ready at once, and the history is written
//! to the superblock before anything is applied.
//!
//! A re-base (onto a newer generation, or onto the same one when the primary's stream now
//! starts past what this secondary holds): no lane is ready meanwhile; what applies to the
//! old stream is applied (every complete data set; of a held resync, the whole unit if its
//! end point is durable, else nothing); then one superblock moves the watermark to where
//! the primary's stream starts, with an empty log (its head at the tail, so nothing staged
//! before is ever replayed), and says what the replica holds; once it is durable the
//! receiving side starts afresh after the stream's start.

use super::journal::Superblock;
use super::open::receiving_side;
use super::*;
use crate::protocol::digest::{digests_of, MAX_DIGEST_SPAN_BYTES};
use crate::protocol::{decide, Decision, HistoryFlags, PrimaryHistory, StreamStart};

/// Most digest requests answered in one poll (each reads up to 1 MiB of a replica): one,
/// so each answer leaves in the round that read it while the primary compares the one
/// before, and the round stays short for staging and applying.
const DIGEST_REQUESTS_PER_POLL: usize = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RebaseKind {
    /// Keep the replica's image until the resync's end point (held).
    Held,
    /// The replica is marked inconsistent until the resync's end point.
    Inconsistent,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Rebase {
    to: GenerationId,
    /// Where the primary's stream starts: the new watermark.
    start: StreamStart,
    kind: RebaseKind,
    /// The superblock being written (and then flushed), once the old history is drained.
    writing: Option<Superblock>,
}

impl Rebase {
    pub(super) fn writing(&self) -> bool {
        self.writing.is_some()
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Edit {
    /// Asked for; waits for the applier to be idle.
    Pending(EditKind),
    Writing(Superblock),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EditKind {
    AllowInconsistent,
    Discard,
    /// Take the primary's generation at data set 0 (see `Decision::Adopt`).
    Adopt(GenerationId),
}

impl<S: Storage> Secondary<S> {
    /// The primary's Hello on `lane` passed the group and volume checks (on a receiver
    /// thread): decide from both histories. Resume: the lane is ready and our Hello goes out
    /// as the reply. Adopt or re-base: every lane must go down (`rebasing`) until the
    /// re-base is durable; the primary reconnects. An unrelated history is refused: send our
    /// Hello (so the primary names it too) and drop the lane.
    pub fn lane_hello(&mut self, lane: usize, primary: &PrimaryHistory) -> Result<(), PeerError> {
        if self.rebase.is_some() {
            // Lanes are not taken before the re-base under way is durable.
            return Ok(());
        }
        let history = self.followed_history();
        let holds = self.holds_through();
        let kind = match decide(primary, history, self.history_flags(), holds) {
            Decision::Resume => {
                let state = &mut self.lanes[lane];
                state.ready = true;
                state.hello_pending = true;
                return Ok(());
            }
            Decision::Refuse(error) => return Err(error),
            Decision::Adopt if self.edit.is_none() => {
                tracing::info!(history = %primary.generation, "following the primary's stream from its start");
                self.edit = Some(Edit::Pending(EditKind::Adopt(primary.generation)));
                let state = &mut self.lanes[lane];
                state.ready = true;
                state.hello_pending = true;
                return Ok(());
            }
            // Another edit first; the primary asks again.
            Decision::Adopt => return Ok(()),
            Decision::Rebase { consistent: true } => RebaseKind::Held,
            Decision::Rebase { consistent: false } => RebaseKind::Inconsistent,
        };
        tracing::info!(
            from = %history,
            to = %primary.generation,
            ?kind,
            "re-basing onto the primary's history"
        );
        self.rebase = Some(Rebase {
            to: primary.generation,
            start: primary.start,
            kind,
            writing: None,
        });
        // Connections may stay; no lane is ready until the primary greets it again once
        // the re-base is durable.
        for lane in &mut self.lanes {
            lane.ready = false;
            lane.hello_pending = false;
        }
        Ok(())
    }

    /// The last seq up to which this secondary holds every record of its history:
    /// applied, or staged durably.
    pub(super) fn holds_through(&self) -> Seq {
        let mut through = self.staging.applied_seq();
        while self
            .staging
            .slot(through.next())
            .is_some_and(|slot| slot.state == SlotState::Durable)
        {
            through = through.next();
        }
        through
    }

    /// A re-base is under way: keep every lane down until it is done.
    pub fn rebasing(&self) -> bool {
        self.rebase.is_some()
    }

    /// The history we follow: the superblock's, or the one being adopted.
    pub(super) fn followed_history(&self) -> GenerationId {
        match self.edit {
            Some(Edit::Pending(EditKind::Adopt(history))) => history,
            Some(Edit::Writing(next)) => next.history,
            _ => self.journal.superblock().history,
        }
    }

    /// What our Hello says of the history we follow and the replica.
    pub(super) fn history_flags(&self) -> HistoryFlags {
        let sb = self.journal.superblock();
        let fresh = self.followed_history() == GenerationId::NONE;
        let resyncing = !fresh && sb.replica != ReplicaState::Consistent;
        HistoryFlags {
            replica_zeroed: fresh && sb.replica_zeroed,
            discard: sb.discard,
            inconsistent: sb.replica == ReplicaState::Inconsistent,
            held: sb.replica == ReplicaState::Held,
            resync_all: resyncing && sb.basis == ResyncBasis::All,
            resync_from_zero: resyncing && sb.basis == ResyncBasis::Zero,
            ..HistoryFlags::default()
        }
    }

    /// Drives the re-base: once nothing applicable to the old history is left and the
    /// journal is quiet, writes the superblock of the new one.
    pub(super) fn progress_rebase(&mut self) {
        let Some(rebase) = self.rebase else {
            return;
        };
        if rebase.writing.is_some() || self.edit.is_some() || !self.drained() {
            return;
        }
        let next = self.rebased_superblock(rebase);
        match self.journal.submit_superblock(TAG_REBASE, next) {
            Ok(()) => {
                self.rebase = Some(Rebase {
                    writing: Some(next),
                    ..rebase
                });
            }
            Err(StorageError::QueueFull(_)) => {}
            Err(error) => self.fail(format!("journal superblock: {error}")),
        }
    }

    /// Nothing is left to apply or commit of what was taken before the re-base.
    fn drained(&self) -> bool {
        let applicable = match self.journal.superblock().replica {
            ReplicaState::Held => self.epoch_end.is_some(),
            ReplicaState::Consistent | ReplicaState::Inconsistent => {
                self.staging.next_complete().is_some()
            }
        };
        self.applier.is_idle()
            && !applicable
            && self.appended.is_empty()
            && !self.flush_in_flight
            && !self.superblock_flush_due
            && self.journal.storage().in_flight() == 0
    }

    fn rebased_superblock(&self, rebase: Rebase) -> Superblock {
        let current = *self.journal.superblock();
        let fresh = current.history == GenerationId::NONE;
        let mut next = Superblock {
            generation: current.generation + 1,
            head_lsn: self.journal.tail_lsn(),
            history: rebase.to,
            applied_data_set: rebase.start.data_set,
            applied_seq: rebase.start.seq,
            applied_stream_end: rebase.start.stream_offset,
            replica: ReplicaState::Consistent,
            base_history: GenerationId::NONE,
            base_data_set: DataSetId::NONE,
            basis: ResyncBasis::Ancestor,
            replica_zeroed: false,
            discard: false,
            ..current
        };
        // The replica may have changed while the old history drained: its resync applied
        // to its end (consistent now though it was not when the re-base was decided), or
        // the operator's consent to go on inconsistent written (no image left to hold).
        let kind = match rebase.kind {
            RebaseKind::Inconsistent
                if !fresh && !current.discard && current.replica != ReplicaState::Inconsistent =>
            {
                RebaseKind::Held
            }
            RebaseKind::Held if current.replica_point().is_none() => RebaseKind::Inconsistent,
            kind => kind,
        };
        match kind {
            RebaseKind::Held => {
                let (history, data_set) = current
                    .replica_point()
                    .expect("a held re-base starts from a consistent replica");
                next.replica = ReplicaState::Held;
                next.base_history = history;
                next.base_data_set = data_set;
                next.basis = if fresh {
                    ResyncBasis::Zero
                } else {
                    ResyncBasis::Ancestor
                };
            }
            RebaseKind::Inconsistent => {
                next.replica = ReplicaState::Inconsistent;
                next.basis = if fresh || current.discard {
                    ResyncBasis::All
                } else if current.replica == ReplicaState::Inconsistent {
                    current.basis
                } else {
                    ResyncBasis::Ancestor
                };
            }
        }
        if current.discard {
            // Another secondary as far as any primary's write-intent record goes.
            let seed = [current.journal_id, current.incarnation, current.generation];
            let bytes: Vec<u8> = seed.iter().flat_map(|v| v.to_le_bytes()).collect();
            next.journal_id = xxhash_rust::xxh3::xxh3_64(&bytes).max(1);
        }
        next
    }

    /// Completions of a re-base's or an edit's superblock and flush.
    pub(super) fn history_completion(&mut self, tag: u64) {
        match tag {
            TAG_REBASE | TAG_EDIT => {
                let flush = if tag == TAG_REBASE {
                    TAG_FLUSH_REBASE
                } else {
                    TAG_FLUSH_EDIT
                };
                if let Err(error) = self.journal.storage_mut().submit_flush(flush) {
                    // The queue had room for the superblock and nothing else was submitted
                    // since: a full queue here is a device failure too.
                    self.fail(format!("journal flush: {error}"));
                }
            }
            TAG_FLUSH_REBASE => self.finish_rebase(),
            TAG_FLUSH_EDIT => {
                let Some(Edit::Writing(next)) = self.edit.take() else {
                    unreachable!("an edit's flush completes while it is written");
                };
                self.journal.superblock_durable(next);
            }
            _ => unreachable!("not a history tag: {tag}"),
        }
    }

    fn finish_rebase(&mut self) {
        let Some(Rebase {
            writing: Some(next),
            ..
        }) = self.rebase.take()
        else {
            unreachable!("a re-base's flush completes while it is written");
        };
        self.journal.superblock_durable(next);
        let (staging, cursor, inbox, records) =
            receiving_side(&self.hello, &self.journal, &self.replicas);
        self.staging = staging;
        self.cursor = cursor;
        self.inbox = Arc::new(inbox);
        self.records = records;
        self.inbox_version += 1;
        self.applier = Applier::new(self.applier_capacity(), self.config.bug, false);
        self.pending_acks.clear();
        self.epoch_end = None;
        self.applied_dirty = true;
        self.stats.rebases += 1;
        self.stats.last_staged = DataSetId::NONE;
        tracing::info!(history = %next.history, replica = ?next.replica, "re-based");
    }

    fn applier_capacity(&self) -> usize {
        let in_flight: u32 = self
            .replicas
            .iter()
            .map(|r| r.geometry().max_in_flight)
            .sum();
        in_flight as usize
    }

    /// The operator lets a held resync go on without a consistent image: the replica is
    /// marked inconsistent and data sets are applied as they complete, until the resync's
    /// end point. For a resync that does not fit the journal window.
    pub fn allow_inconsistent(&mut self) -> Result<(), &'static str> {
        if self.journal.superblock().replica != ReplicaState::Held {
            return Err("no resync is held back here: there is nothing to allow");
        }
        self.edit
            .get_or_insert(Edit::Pending(EditKind::AllowInconsistent));
        Ok(())
    }

    /// The operator lets the next primary overwrite this replica whatever its history (an
    /// unrelated history is refused otherwise): the next handshake starts a full resync,
    /// and the replica is inconsistent until it ends.
    pub fn discard_history(&mut self) {
        self.edit.get_or_insert(Edit::Pending(EditKind::Discard));
    }

    /// The operator allowed any history to overwrite the replica (written, or waiting).
    pub fn discard_pending(&self) -> bool {
        self.journal.superblock().discard
            || matches!(self.edit, Some(Edit::Pending(EditKind::Discard)))
    }

    /// An operator's change waits or is being written.
    pub fn edit_pending(&self) -> bool {
        self.edit.is_some()
    }

    pub(super) fn edit_writing(&self) -> bool {
        matches!(self.edit, Some(Edit::Writing(_)))
    }

    pub(super) fn progress_edit(&mut self) {
        let Some(Edit::Pending(kind)) = self.edit else {
            return;
        };
        if !self.applier.is_idle() || self.rebase.is_some_and(|r| r.writing()) {
            return;
        }
        let current = *self.journal.superblock();
        let mut next = Superblock {
            generation: current.generation + 1,
            ..current
        };
        match kind {
            EditKind::Discard => next.discard = true,
            EditKind::Adopt(history) => {
                assert_eq!(
                    current.history,
                    GenerationId::NONE,
                    "only a fresh journal adopts"
                );
                next.history = history;
                next.replica_zeroed = false;
            }
            EditKind::AllowInconsistent if current.replica == ReplicaState::Held => {
                next.replica = ReplicaState::Inconsistent;
                next.base_history = GenerationId::NONE;
                next.base_data_set = DataSetId::NONE;
            }
            // The held resync ended meanwhile: nothing is left to allow.
            EditKind::AllowInconsistent => {
                self.edit = None;
                return;
            }
        }
        match self.journal.submit_superblock(TAG_EDIT, next) {
            Ok(()) => self.edit = Some(Edit::Writing(next)),
            Err(StorageError::QueueFull(_)) => {}
            Err(error) => self.fail(format!("journal superblock: {error}")),
        }
    }

    /// Answers waiting digest requests from the replicas as they stand (see
    /// `primary::resync` for why any instant will do); returns how many.
    pub(super) fn answer_digest_requests(&mut self) -> usize {
        let mut answered = 0;
        while answered < DIGEST_REQUESTS_PER_POLL
            && self.digest_replies.len() < MAX_DIGEST_REPLIES
            && self.failed.is_none()
        {
            let Some(request) = self
                .digest_waiting
                .take()
                .or_else(|| self.inbox.next_digest_request())
            else {
                break;
            };
            // The inbox checked the range against the volume.
            let index = usize::from(request.volume.0);
            let len = request.len as usize;
            assert!(len <= MAX_DIGEST_SPAN_BYTES as usize);
            let replica = &mut self.replicas[index];
            if replica.in_flight() >= replica.geometry().max_in_flight {
                // The applier's writes fill the queue: after they complete.
                self.digest_waiting = Some(request);
                break;
            }
            let mut others = std::mem::take(&mut self.completions);
            others.clear();
            let block_size = replica.geometry().block_size;
            let read = read_blocking(
                replica,
                request.offset,
                &mut self.digest_buf[..len],
                &mut others,
            );
            for completion in others.drain(..) {
                self.replica_completion(index, completion);
            }
            self.completions = others;
            if let Err(error) = read {
                let name = &self.config.volume_names[index];
                self.fail(format!("replica {name}: reading for a resync: {error}"));
                break;
            }
            // A spare for each answer that can wait (MAX_DIGEST_REPLIES), so none allocates.
            let mut digests = self.digest_spares.pop().unwrap_or_default();
            digests.clear();
            digests_of(&self.digest_buf[..len], block_size, &mut digests);
            self.digest_replies.push_back(DigestsFrame {
                id: request.id,
                volume: request.volume,
                offset: request.offset,
                len: request.len,
                digests,
            });
            self.stats.digests_answered += 1;
            answered += 1;
        }
        answered
    }
}

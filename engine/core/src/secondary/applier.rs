//! The applier: takes the next complete data set, writes it to the replica volumes in seq
//! order (an overlapping later write waits for the earlier one, so the higher seq wins),
//! flushes the replicas, and only then persists the new watermark in the journal's
//! superblock; once that is durable the data set's records and journal space are freed.
//! A crash anywhere in between leaves the old watermark, and the data set is applied again.
//!
//! Data sets already complete when one's writes are all submitted follow it into the same
//! pass (group commit, up to `MAX_DATA_SETS_PER_PASS`): their writes go out behind its
//! own, and one replica flush and one watermark, the last data set's, cover them all. A
//! crash mid-pass is the same as a crash mid-data-set: the old watermark stands and every
//! data set after it is applied again, so the recovered replica is the image of the last
//! data set of the pass that was persisted. A pass never goes past a data set that ends a
//! resync (its watermark marks the replica consistent).
//!
//! A held resync (`Gate::Held`) is applied as one unit: nothing until the data set that
//! ends it is durable, then every data set up to it in turn, and one watermark for all, so
//! a crash mid-way re-applies the whole unit and the replica is never a mix of the old
//! image and part of the resync.

use super::config::InjectedBug;
use super::journal::{Journal, ReplicaState, ResyncBasis, Superblock};
use super::staging::{CompleteDataSet, SlotState, Staging};
use crate::protocol::RecordKind;
use crate::protocol::{DataSetId, GenerationId, Seq};
use crate::storage::inflight::InFlightWrites;
use crate::storage::{Storage, StorageError};

/// Replica tags: a write is tagged with its seq; a flush has the top bit set.
const TAG_REPLICA_FLUSH: u64 = 1 << 63;
/// Data sets applied under one replica flush and one watermark at most: enough that a
/// stream of small data sets costs a flush per batch, few enough that the journal space
/// of applied data sets is freed soon (it is freed when the watermark is durable).
const MAX_DATA_SETS_PER_PASS: u32 = 16;

/// What the applier may apply now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Each complete data set in turn, its watermark persisted after it.
    Open,
    /// A held resync: nothing until the data set that ends it is durable (`end`), then
    /// every data set up to it, as one unit.
    Held { end: Option<DataSetId> },
    /// Nothing new (a superblock of a re-base or of the operator is being written).
    Closed,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Idle,
    Writing {
        data_set: CompleteDataSet,
        next: Seq,
        /// Data sets in this pass so far, `data_set` included.
        passed: u32,
    },
    FlushingReplicas {
        data_set: CompleteDataSet,
        remaining: usize,
    },
    PersistingWatermark {
        data_set: CompleteDataSet,
        superblock: Superblock,
        durable: bool,
    },
}

#[derive(Debug)]
pub struct Applier {
    state: State,
    in_flight: InFlightWrites,
    bug: Option<InjectedBug>,
    stalled: Option<String>,
    /// Just restarted: the replica may hold part of the data set after the watermark
    /// (a crash mid-apply) until the complete ones found in the journal are applied.
    recovering: bool,
    /// The next data set of a held resync being applied as a unit.
    unit_next: Option<DataSetId>,
}

impl Applier {
    pub fn new(max_in_flight: usize, bug: Option<InjectedBug>, recovering: bool) -> Applier {
        Applier {
            state: State::Idle,
            in_flight: InFlightWrites::with_capacity(max_in_flight),
            bug,
            stalled: None,
            recovering,
            unit_next: None,
        }
    }

    /// The replica is exactly the image of the applied data set.
    pub fn is_between_data_sets(&self) -> bool {
        self.is_idle() && !self.recovering
    }

    /// Nothing is being applied (no data set, no unit): the superblock may be rewritten.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle) && self.unit_next.is_none()
    }

    pub fn stalled(&self) -> Option<&str> {
        self.stalled.as_deref()
    }

    pub fn replica_completion(&mut self, tag: u64) {
        if tag == TAG_REPLICA_FLUSH {
            let State::FlushingReplicas { remaining, .. } = &mut self.state else {
                unreachable!("replica flushes are only in flight while flushing replicas");
            };
            *remaining -= 1;
        } else {
            assert!(
                self.in_flight.remove(tag),
                "completion of a replica write in flight"
            );
        }
    }

    pub fn superblock_durable(&mut self) {
        let State::PersistingWatermark { durable, .. } = &mut self.state else {
            unreachable!("a superblock is only written while persisting the watermark");
        };
        *durable = true;
    }

    /// Makes all the progress possible now; true if at least one data set was applied.
    pub fn drive<S: Storage>(
        &mut self,
        staging: &mut Staging,
        journal: &mut Journal<S>,
        replicas: &mut [S],
        tag_superblock: u64,
        gate: Gate,
    ) -> bool {
        let mut applied = false;
        loop {
            match self.state {
                State::Idle => {
                    if self.stalled.is_some() {
                        return applied;
                    }
                    let Some(data_set) = self.next_to_apply(staging, gate) else {
                        return applied;
                    };
                    self.state = State::Writing {
                        data_set,
                        next: data_set.first_seq,
                        passed: 1,
                    };
                }
                State::Writing {
                    data_set,
                    next,
                    passed,
                } => {
                    let next = match self.submit_writes(staging, replicas, data_set, next) {
                        Ok(next) => next,
                        Err(error) => {
                            self.stalled = Some(format!("replica write: {error}"));
                            return applied;
                        }
                    };
                    self.state = State::Writing {
                        data_set,
                        next,
                        passed,
                    };
                    if next < data_set.sync_seq {
                        return applied;
                    }
                    if let Some(following) = self.following(staging, gate, &data_set, passed) {
                        self.state = State::Writing {
                            data_set: following,
                            next: following.first_seq,
                            passed: passed + 1,
                        };
                        continue;
                    }
                    if !self.in_flight.is_empty() {
                        return applied;
                    }
                    // Count only the flushes submitted, so their completions find this state
                    // even when a later one fails. Nothing else is in flight on a replica
                    // now, so a queue is never full here.
                    let mut submitted = 0;
                    let mut failed = None;
                    let flush = self.bug != Some(InjectedBug::UnflushedWatermark);
                    for replica in replicas.iter_mut().filter(|_| flush) {
                        match replica.submit_flush(TAG_REPLICA_FLUSH) {
                            Ok(()) => submitted += 1,
                            Err(error) => failed = Some(error),
                        }
                    }
                    self.state = State::FlushingReplicas {
                        data_set,
                        remaining: submitted,
                    };
                    if let Some(error) = failed {
                        self.stalled = Some(format!("replica flush: {error}"));
                    }
                }
                State::FlushingReplicas {
                    data_set,
                    remaining,
                } => {
                    if remaining > 0 || self.stalled.is_some() {
                        return applied;
                    }
                    if matches!(gate, Gate::Held { end: Some(end) } if data_set.id < end) {
                        // Inside a held unit: the watermark moves once, past its end.
                        self.unit_next = Some(data_set.id.next());
                        self.state = State::Idle;
                        continue;
                    }
                    let superblock = watermark(journal, &data_set);
                    match journal.submit_superblock(tag_superblock, superblock) {
                        Ok(()) => {}
                        Err(StorageError::QueueFull(_)) => return applied,
                        Err(error) => {
                            self.stalled = Some(format!("journal superblock: {error}"));
                            return applied;
                        }
                    }
                    self.state = State::PersistingWatermark {
                        data_set,
                        superblock,
                        durable: false,
                    };
                }
                State::PersistingWatermark {
                    data_set,
                    superblock,
                    durable,
                } => {
                    if !durable {
                        return applied;
                    }
                    journal.superblock_durable(superblock);
                    // Every data set of a unit, in order (one, outside a unit).
                    while staging.applied() < data_set.id {
                        let next = staging
                            .complete(staging.applied().next())
                            .expect("the unit's data sets are complete and held");
                        staging.advance(&next);
                    }
                    self.state = State::Idle;
                    self.unit_next = None;
                    self.recovering = false;
                    applied = true;
                    if matches!(gate, Gate::Held { .. }) {
                        // The unit made the replica consistent: the gate opens, which the
                        // caller works out anew.
                        return applied;
                    }
                }
            }
        }
    }

    /// The data set that joins the pass after `data_set` (all of whose writes are
    /// submitted), if it is complete and the gate and the pass's bounds allow it.
    fn following(
        &self,
        staging: &Staging,
        gate: Gate,
        data_set: &CompleteDataSet,
        passed: u32,
    ) -> Option<CompleteDataSet> {
        if data_set.ends_resync || passed >= MAX_DATA_SETS_PER_PASS || self.stalled.is_some() {
            return None;
        }
        let allowed = match gate {
            Gate::Open => true,
            Gate::Held { end: Some(end) } => data_set.id < end,
            Gate::Held { end: None } | Gate::Closed => false,
        };
        if !allowed {
            return None;
        }
        staging.complete(data_set.id.next())
    }

    /// The complete data set the gate lets the applier start now, if any.
    fn next_to_apply(&mut self, staging: &Staging, gate: Gate) -> Option<CompleteDataSet> {
        let next = match gate {
            Gate::Closed => return None,
            Gate::Open => {
                assert!(
                    self.unit_next.is_none(),
                    "a unit is applied only while held"
                );
                staging.next_complete()
            }
            Gate::Held { end: None } => None,
            Gate::Held { end: Some(end) } => {
                let id = self.unit_next.unwrap_or(staging.applied().next());
                assert!(id <= end, "a unit stops at its end");
                let next = staging.complete(id);
                assert!(
                    next.is_some(),
                    "every data set before a durable end is complete"
                );
                next
            }
        };
        if next.is_none() && self.unit_next.is_none() {
            // Nothing to apply past the watermark: no apply was cut short.
            self.recovering = false;
        }
        next
    }

    /// Submits the data set's writes from `next` on, in seq order, until one must wait.
    /// Returns the first seq not yet submitted.
    fn submit_writes<S: Storage>(
        &mut self,
        staging: &Staging,
        replicas: &mut [S],
        data_set: CompleteDataSet,
        mut next: Seq,
    ) -> Result<Seq, StorageError> {
        while next < data_set.sync_seq {
            let slot = *staging
                .slot(next)
                .expect("a complete data set holds every write");
            assert_eq!(
                slot.state,
                SlotState::Durable,
                "a complete data set is durable"
            );
            let (volume, offset, len) = match slot.kind {
                RecordKind::Write {
                    volume,
                    offset,
                    len,
                }
                | RecordKind::Zero {
                    volume,
                    offset,
                    len,
                    ..
                } => (volume, offset, len),
                RecordKind::Sync { .. } => {
                    unreachable!("seqs inside a data set are writes and zeroings")
                }
            };
            let replica = &mut replicas[usize::from(volume.0)];
            if self.in_flight.is_full()
                || replica.in_flight() >= replica.geometry().max_in_flight
                || self.in_flight.overlaps(volume, offset, u64::from(len))
            {
                return Ok(next);
            }
            let submitted = match slot.kind {
                RecordKind::Zero { unmap, .. } => {
                    replica.submit_write_zeroes(next.0, offset, u64::from(len), unmap)
                }
                _ => replica.submit_write(next.0, offset, staging.payload(next)),
            };
            match submitted {
                Ok(()) => {}
                Err(StorageError::QueueFull(_)) => return Ok(next),
                Err(error) => return Err(error),
            }
            self.in_flight
                .insert(next.0, volume, offset, u64::from(len));
            next = next.next();
        }
        Ok(next)
    }
}

/// The superblock that persists `data_set` as the watermark (after a unit: its last data
/// set). The data set that ends a resync makes the replica consistent again.
fn watermark<S: Storage>(journal: &Journal<S>, data_set: &CompleteDataSet) -> Superblock {
    let current = *journal.superblock();
    let mut next = Superblock {
        generation: current.generation + 1,
        applied_data_set: data_set.id,
        applied_seq: data_set.sync_seq,
        applied_stream_end: data_set.stream_end,
        head_lsn: journal.head_after(data_set.id),
        ..current
    };
    if data_set.ends_resync {
        next.replica = ReplicaState::Consistent;
        next.basis = ResyncBasis::default();
        next.base_history = GenerationId::NONE;
        next.base_data_set = DataSetId::NONE;
    }
    next
}

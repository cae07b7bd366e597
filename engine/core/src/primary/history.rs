//! The primary's history and what it keeps across restarts: which generation it writes
//! (resumed after a clean stop, new after a crash or a cut stream, descending from the one
//! before), the write-intent record (an extent's bit is durable before any write to it
//! starts; cleared once the secondary applied every write to it and it went a clearing
//! interval without one), what a handshake
//! decides from both histories, and dropping the window when it stays full
//! (`WindowFull::Track`).

use rand::RngCore;

use super::intent::{Shutdown, WriteIntent};
use super::resync::Resync;
use super::resync::{ResyncPhase, EXTENT_BYTES};
use super::*;
use crate::protocol::{GenerationId, HistoryFlags, PrimaryHistory, StreamStart, MAX_ANCESTORS};

/// How often set bits are checked for clearing (and written, lazily).
const CLEAR_INTERVAL_MS: u64 = 200;

/// The primary's history, in memory.
#[derive(Clone, Debug)]
pub(super) struct History {
    pub(super) generation: GenerationId,
    pub(super) ancestors: Vec<GenerationId>,
    /// The stream of this generation began at seq 1 (not resumed at a later seq).
    began_at_genesis_position: bool,
    /// Where the stream starts (a secondary re-basing onto this history starts there):
    /// where this generation began or resumed, or after the window was last dropped.
    pub(super) start: StreamStart,
    /// A record of this generation was released (a secondary staged it): the stream from
    /// seq 1 is no longer whole.
    pub(super) released_any: bool,
}

/// How a primary started, for its log and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A clean stop before: the same history goes on at the next seq.
    Resumed { data_set: DataSetId },
    /// A crash before (or a stop that could not drain): a new generation; what the
    /// write-intent record names is resynchronised.
    NewGeneration { extents_to_resync: u64 },
}

impl Default for Start {
    /// A new history with nothing to resynchronise (a fresh record).
    fn default() -> Self {
        Start::NewGeneration {
            extents_to_resync: 0,
        }
    }
}

impl<S: Storage> Primary<S> {
    /// Where the history stands as `intent` recorded it: resumes a clean stop, or begins a
    /// new generation (descending from the one there) after a crash. Marks the record
    /// running; writes wait until that is durable.
    #[allow(clippy::type_complexity)] // One call site, which names each part.
    pub(super) fn begin_history(
        intent: &mut WriteIntent<S>,
        rng: &mut ChaCha8Rng,
    ) -> (History, Start, Option<(DataSetId, Seq, u64)>, u64) {
        let sb = intent.superblock().clone();
        let (history, start, position) = match sb.shutdown {
            Shutdown::Clean {
                last_data_set,
                last_seq,
                stream_end,
            } => (
                History {
                    generation: sb.generation,
                    ancestors: sb.ancestors.clone(),
                    began_at_genesis_position: last_seq == Seq::NONE,
                    released_any: false,
                    start: StreamStart {
                        data_set: last_data_set,
                        seq: last_seq,
                        stream_offset: stream_end,
                    },
                },
                Start::Resumed {
                    data_set: last_data_set,
                },
                Some((last_data_set, last_seq, stream_end)),
            ),
            Shutdown::Running => {
                let mut ancestors = sb.ancestors.clone();
                ancestors.insert(0, sb.generation);
                ancestors.truncate(MAX_ANCESTORS);
                let history = History {
                    generation: new_generation(rng),
                    ancestors,
                    began_at_genesis_position: true,
                    released_any: false,
                    start: StreamStart::default(),
                };
                let start = Start::NewGeneration {
                    extents_to_resync: intent.set_count(),
                };
                (history, start, None)
            }
        };
        let (generation, ancestors) = (history.generation, history.ancestors.clone());
        let txn = intent.set_superblock(|sb| {
            sb.generation = generation;
            sb.ancestors = ancestors;
            sb.shutdown = Shutdown::Running;
        });
        (history, start, position, txn)
    }

    /// Our Hello says what `primary_history` says now.
    pub(super) fn refresh_hello(&mut self) {
        let history = self.primary_history();
        self.link.set_history(history);
    }

    pub fn start(&self) -> Start {
        self.start
    }

    /// What our Hello says of our history.
    pub(super) fn primary_history(&self) -> PrimaryHistory {
        PrimaryHistory {
            generation: self.history.generation,
            ancestors: self.history.ancestors.clone(),
            flags: self.history_flags(),
            start: self.history.start,
        }
    }

    fn history_flags(&self) -> HistoryFlags {
        let sb = self.intent.superblock();
        let genesis = sb.genesis_zero && self.history.ancestors.is_empty();
        HistoryFlags {
            genesis_stream: genesis
                && self.history.began_at_genesis_position
                && !self.history.released_any,
            genesis_bits: sb.genesis_zero && sb.bits_complete,
            ..HistoryFlags::default()
        }
    }

    /// Our Hello's flags follow what changed (a bit cleared, a record freed).
    pub(super) fn refresh_hello_flags(&mut self) {
        if self.link.history_flags() != self.history_flags() {
            self.refresh_hello();
        }
    }

    /// In `WindowFull::Track`, once writes have found the window full for the timeout,
    /// drop what it holds (`drop_window`): the application's writes go on, and the
    /// secondary re-bases onto the stream's new start and is resynchronised from the
    /// write-intent record, keeping the image of its last complete data set meanwhile.
    pub(super) fn check_window_full(&mut self, now_ms: u64) {
        let WindowFull::Track { timeout_ms } = self.config.on_window_full else {
            return;
        };
        let Some(since) = self.window_full_since_ms else {
            return;
        };
        if now_ms < since + timeout_ms || self.config.replication == Replication::Off {
            return;
        }
        tracing::warn!(
            generation = %self.history.generation,
            timeout_ms,
            "the retention window stayed full: dropping it; the secondary is resynchronised from the write-intent record when it can take it"
        );
        self.drop_window();
    }

    /// Drops what the retention window holds: the open data set is closed, every record is
    /// freed once it is on the local volume (its extents' bits stay set until a resync
    /// compares them), and the stream starts anew after it. A secondary that held less
    /// re-bases onto the new start (every lane greets it again), and the resync compares
    /// every extent marked, a new one begun for it.
    pub(super) fn drop_window(&mut self) {
        self.close_data_set();
        // Acknowledged by no one: released as soon as each is on the local volume.
        self.retention.ack_range(Seq::NONE, Seq(u64::MAX));
        self.history.start = StreamStart {
            data_set: self.last_closed,
            seq: Seq(self.next_seq.0 - 1),
            stream_offset: self.retention.stream_next(),
        };
        self.history.released_any = true;
        self.link.dropped_below(self.next_seq);
        self.link.greet_again();
        self.resync = Resync::new(&self.extent_counts(), self.config.resync_rate_bytes);
        self.window_full_since_ms = None;
        self.stats.window_drops += 1;
        self.release();
        self.refresh_hello();
    }

    /// Records a clean stop, once the secondary applied everything (nothing retained):
    /// every bit it allows is cleared and the stream's position is written, so the next
    /// start resumes this history at the next seq with nothing to resend or resynchronise.
    /// Returns the write-intent transaction to wait for (`intent_durable`).
    pub fn record_clean_stop(&mut self) -> Result<u64, &'static str> {
        if !self.retention.is_empty() || self.open.writes > 0 {
            return Err("the secondary has not applied everything yet");
        }
        if self.link.peer_applied() != self.last_closed {
            return Err("the secondary has not applied the last data set");
        }
        self.clear_extents_applied_up_to(Seq(u64::MAX));
        let shutdown = Shutdown::Clean {
            last_data_set: self.last_closed,
            last_seq: Seq(self.next_seq.0 - 1),
            stream_end: self.retention.stream_next(),
        };
        Ok(self.intent.set_superblock(|sb| sb.shutdown = shutdown))
    }

    /// Whether write-intent transaction `txn` is durable (and the record did not fail).
    pub fn intent_durable(&self, txn: u64) -> bool {
        self.intent.durable_txn() >= txn
    }

    pub fn generation(&self) -> GenerationId {
        self.history.generation
    }

    /// The generations this one descends from, newest first.
    pub fn ancestors(&self) -> &[GenerationId] {
        &self.history.ancestors
    }

    /// The volumes and the write-intent record's storage, as they stand (what a crash
    /// leaves, in the simulator).
    pub fn into_storages(self) -> (Vec<S>, S) {
        (self.volumes, self.intent.into_storage())
    }

    /// The write-intent record's storage (to copy a crashed primary's, in the simulator).
    pub fn intent_storage(&self) -> &S {
        self.intent.storage()
    }

    /// Extents the write-intent record marks as possibly differing from the secondary.
    pub fn out_of_sync_extents(&self) -> u64 {
        self.intent.set_count()
    }

    /// A secondary following this history answered: if it is resynchronising (it
    /// re-based onto us) and no resync runs for it, start one, comparing what may differ
    /// for it: the write-intent record if it covers this secondary, everything otherwise.
    pub(super) fn secondary_resumed(&mut self, now_ms: u64, hello: &Hello) {
        let flags = hello.flags;
        let journal_id = hello.resume.journal_id;
        let known = self.intent.superblock().peer_journal_id;
        if flags.held || flags.inconsistent {
            let running = matches!(
                self.resync.phase(),
                ResyncPhase::Scanning | ResyncPhase::Ending { .. }
            );
            if !running {
                let covered = flags.resync_from_zero || (journal_id == known && known != 0);
                if !covered || (flags.resync_all && journal_id != known) {
                    tracing::info!(
                        journal = journal_id,
                        "resync: the write-intent record does not cover this secondary; comparing every extent"
                    );
                    self.set_every_bit();
                }
                // The link took this Hello's applied point and window already.
                let held_credit_end = flags.held.then(|| self.link.credit_end()).flatten();
                self.start_resync(now_ms, held_credit_end);
            }
        }
        if journal_id != known {
            self.intent
                .set_superblock(|sb| sb.peer_journal_id = journal_id);
        }
    }

    fn set_every_bit(&mut self) {
        for (volume, &count) in self.extent_counts().iter().enumerate() {
            for extent in 0..count {
                let volume = VolumeId(volume as u16);
                if let Some(txn) = self.intent.set(volume, extent) {
                    self.intent_waits.push_back((self.next_seq, txn));
                }
            }
        }
    }

    pub(super) fn extent_counts(&self) -> Vec<u64> {
        (0..self.volumes.len())
            .map(|v| self.intent.extent_count(VolumeId(v as u16)))
            .collect()
    }

    /// A write (or zeroing, or resync record) of `seq` covers `len` bytes at `offset`:
    /// its extents' bits must be durable before it starts locally (a wait is queued when
    /// one was clear), and each extent's last write is `seq`.
    pub(super) fn note_write(
        &mut self,
        volume: VolumeId,
        offset: u64,
        len: u64,
        seq: Seq,
        local: bool,
    ) {
        if len == 0 {
            return;
        }
        let first = offset / EXTENT_BYTES;
        let last = (offset + len - 1) / EXTENT_BYTES;
        let mut wait = 0;
        let last_write = &mut self.last_write[usize::from(volume.0)];
        for extent in first..=last {
            last_write[extent as usize] = seq;
            if let Some(txn) = self.intent.set(volume, extent) {
                wait = wait.max(txn);
            }
        }
        if local && wait > self.intent.durable_txn() {
            self.intent_waits.push_back((seq, wait));
        }
    }

    /// Whether the local write of `seq` must wait for a write-intent transaction. Local
    /// writes start in seq order, so only the oldest waits count.
    pub(super) fn waits_for_intent(&mut self, seq: Seq) -> bool {
        let durable = self.intent.durable_txn();
        while let Some(&(at, txn)) = self.intent_waits.front() {
            if txn <= durable {
                self.intent_waits.pop_front();
                continue;
            }
            return at <= seq;
        }
        false
    }

    /// Every `CLEAR_INTERVAL_MS`: clears the bits of extents not written since the pass
    /// before (cold) whose every write the secondary applied.
    pub(super) fn clear_applied_extents(&mut self, now_ms: u64) {
        if now_ms < self.next_clear_ms {
            return;
        }
        self.next_clear_ms = now_ms + CLEAR_INTERVAL_MS;
        let horizon = std::mem::replace(&mut self.clear_horizon, Seq(self.next_seq.0 - 1));
        self.clear_extents_applied_up_to(horizon);
    }

    /// Clears the bits of extents last written at or before `horizon` whose every write
    /// the secondary applied (and that no resync still has to compare); written lazily,
    /// with the next transaction.
    fn clear_extents_applied_up_to(&mut self, horizon: Seq) {
        let Some(applied_seq) = self.link.peer_applied_seq() else {
            return;
        };
        let limit = applied_seq.min(horizon);
        let set: Vec<(VolumeId, u64)> = self.intent.set_extents().collect();
        for (volume, extent) in set {
            let written = self.last_write[usize::from(volume.0)][extent as usize];
            if written <= limit && !self.resync.pending(volume, extent) {
                self.intent.clear(volume, extent);
            }
        }
    }
}

/// The geometry of a storage that holds a write-intent record for `volumes` (4 KiB blocks).
pub fn record_geometry(volumes: &[VolumeInfo]) -> crate::storage::Geometry {
    let size = super::intent::required_bytes(volumes).next_multiple_of(4096);
    crate::storage::Geometry::new(size, 4096).expect("a record's size is whole 4 KiB blocks")
}

/// Formats a write-intent record for a new history `generation` on `storage`: nothing
/// written yet, so the first start begins it at seq 1. `genesis_zero`: the volumes are all
/// zeros (created by ordo), so a zeroed secondary follows from the start with no resync.
/// Waits until it is durable (start-up only).
pub fn format_record<S: Storage>(
    storage: S,
    volumes: &[VolumeInfo],
    generation: GenerationId,
    genesis_zero: bool,
) -> Result<WriteIntent<S>, super::intent::IntentError> {
    assert_ne!(generation, GenerationId::NONE);
    let mut intent = WriteIntent::format(storage, volumes, generation, genesis_zero)?;
    let txn = intent.set_superblock(|sb| {
        sb.shutdown = Shutdown::Clean {
            last_data_set: DataSetId::NONE,
            last_seq: Seq::NONE,
            stream_end: 0,
        }
    });
    while intent.durable_txn() < txn {
        intent.poll();
        if let Some(error) = intent.failed() {
            return Err(error.clone().into());
        }
    }
    Ok(intent)
}

fn new_generation(rng: &mut ChaCha8Rng) -> GenerationId {
    loop {
        let id = rng.next_u64();
        if id != 0 {
            return GenerationId(id);
        }
    }
}

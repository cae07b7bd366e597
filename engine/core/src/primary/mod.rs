//! The primary: accepts writes, writes them locally and acknowledges them at once, stamps
//! each with a `seq` and the open `data_set`, closes data sets by policy, and streams the
//! records to the secondary over several lanes without waiting for any data set to be
//! applied. A sans-I/O state machine: the driver feeds it writes, frames, storage polls and
//! clock ticks, and pulls frames to send with `poll_transmit`.

pub mod config;
mod history;
pub mod intent;
mod link;
pub mod resync;
pub mod retention;
mod stats;
mod sub_block;
pub mod tx;

use std::collections::VecDeque;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

pub use crate::protocol::PeerError;
pub use config::{ConfigError, DataSetPolicy, PrimaryConfig, Replication, WindowFull};
use history::History;
pub use history::{format_record, record_geometry, Start};
use intent::WriteIntent;
use link::Link;
use resync::Resync;
pub use resync::{ResyncPhase, ResyncRoom, ResyncStats};
use retention::{RecordKind, Retention};
pub use stats::PrimaryStats;

use crate::protocol::{
    stream_cost, DataSetId, Hello, Seq, VolumeId, VolumeInfo, RECORD_OVERHEAD_BYTES,
};
use crate::storage::inflight::InFlightWrites;
use crate::storage::{describe, Completion, Storage, StorageError};

/// Storage tags: a local write is tagged with its seq; a volume flush has the top bit set.
const FLUSH_TAG_BIT: u64 = 1 << 63;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryEvent {
    /// A write is on the primary's volume: acknowledge it to the application.
    WriteDone {
        token: u64,
        seq: Seq,
        result: Result<(), StorageError>,
    },
    /// A flush finished: `data_set` (closed by it, or the last closed one if nothing was
    /// open) is closed and the primary's volumes are durable.
    FlushDone {
        token: u64,
        data_set: DataSetId,
        result: Result<(), StorageError>,
    },
    /// A data set was closed: its writes are the seqs `first_seq..sync_seq`.
    DataSetClosed {
        data_set: DataSetId,
        first_seq: Seq,
        sync_seq: Seq,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SubmitError {
    /// The retention window is full: wait (the open data set was closed) and retry.
    #[error("retention window full; retry once the secondary catches up")]
    WindowFull,
    #[error("no volume {0:?} in this group")]
    UnknownVolume(VolumeId),
    #[error("write of {len} bytes is larger than the {max}-byte limit")]
    TooLarge { len: usize, max: u32 },
    #[error(transparent)]
    Invalid(#[from] StorageError),
    #[error("too many flushes pending")]
    TooManyFlushes,
    #[error("a local volume failed: {0}")]
    Failed(StorageError),
}

#[derive(Clone, Copy, Debug)]
struct OpenDataSet {
    id: DataSetId,
    first_seq: Seq,
    writes: u64,
    payload_bytes: u64,
    opened_at_ms: u64,
}

#[derive(Clone, Copy, Debug)]
enum FlushState {
    /// Waiting for every local write up to `through` to complete.
    WaitingLocal { through: Seq },
    /// Flushing: volumes (a bit each) whose flush is still to be submitted (their queue
    /// was full), and how many submitted flushes are still to complete.
    Flushing { to_submit: u64, remaining: usize },
}

#[derive(Clone, Debug)]
struct FlushWaiter {
    id: u64,
    token: u64,
    data_set: DataSetId,
    state: FlushState,
    result: Result<(), StorageError>,
}

#[derive(Debug)]
pub struct Primary<S: Storage> {
    config: PrimaryConfig,
    volumes: Vec<S>,
    /// The write-intent record and the history's persistent state (`history`).
    intent: WriteIntent<S>,
    history: History,
    start: Start,
    /// Per volume, per extent: the seq of the last write to it in this generation (0:
    /// none), which the secondary must have applied before the extent's bit is cleared.
    last_write: Vec<Vec<Seq>>,
    /// Local writes from a seq on wait for a write-intent transaction: (seq, txn).
    intent_waits: VecDeque<(Seq, u64)>,
    next_clear_ms: u64,
    /// The last seq given out when the previous clearing pass ran: an extent written after
    /// it is hot and keeps its bit (as DRBD's activity log keeps hot extents), so a working
    /// set written all the time costs no record transaction per pass.
    clear_horizon: Seq,
    resync: Resync,
    /// Since when writes have found the retention window full (`WindowFull::Track`).
    window_full_since_ms: Option<u64>,
    /// The write-intent transaction that records the generation this primary writes:
    /// nothing of it is sent before that is durable, so no secondary ever holds a history
    /// (or records of one) that a restart would not know.
    history_txn: u64,
    /// The clock of the last `tick`.
    now_ms: u64,
    retention: Retention,
    next_seq: Seq,
    open: OpenDataSet,
    last_closed: DataSetId,
    local_in_flight: InFlightWrites,
    local_deferred: VecDeque<Seq>,
    flushes: VecDeque<FlushWaiter>,
    next_flush_id: u64,
    events: VecDeque<PrimaryEvent>,
    completions: Vec<Completion>,
    link: Link,
    failed: Option<StorageError>,
    stats: PrimaryStats,
    /// A sub-block write merged with the blocks around it (`max_write_bytes`).
    merge: Vec<u8>,
    /// One block, for the ends of a sub-block read.
    block: Vec<u8>,
}

impl<S: Storage> Primary<S> {
    /// Starts a primary on its volumes and its write-intent record (formatted or opened by
    /// the caller on the same volumes): resumes the history a clean stop left, or begins a
    /// new generation after a crash (see `history`). `seed` drives the ids of new
    /// generations (random in a daemon, the seed's in the simulator).
    pub fn new(
        config: PrimaryConfig,
        volumes: Vec<S>,
        mut intent: WriteIntent<S>,
        seed: u64,
    ) -> Result<Primary<S>, ConfigError> {
        config.validate()?;
        if volumes.len() != config.volume_names.len() {
            return Err(ConfigError::Invalid(format!(
                "{} volume names for {} volumes",
                config.volume_names.len(),
                volumes.len()
            )));
        }
        let max_records = usize::try_from(config.window_bytes / RECORD_OVERHEAD_BYTES + 1)
            .map_err(|_| ConfigError::Invalid("retention window too large".into()))?;
        let in_flight: u32 = volumes.iter().map(|v| v.geometry().max_in_flight).sum();
        let max_block = volumes.iter().map(|v| v.geometry().block_size).max();
        let max_block = max_block.unwrap_or(0);
        let infos = describe(&config.volume_names, &volumes);
        let extents: Vec<u64> = (0..volumes.len())
            .map(|v| intent.extent_count(VolumeId(v as u16)))
            .collect();
        for (info, &count) in infos.iter().zip(&extents) {
            if count != info.size_bytes.div_ceil(resync::EXTENT_BYTES) {
                return Err(ConfigError::Invalid(format!(
                    "the write-intent record does not describe volume {}",
                    info.name
                )));
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (history, start, position, running_txn) = Self::begin_history(&mut intent, &mut rng);
        let (last_closed, last_seq, stream_end) =
            position.unwrap_or((DataSetId::NONE, Seq::NONE, 0));
        let mut retention =
            Retention::new(config.window_bytes, config.max_write_bytes, max_records);
        retention.resume_at(stream_end);
        let mut link = Link::new(&config, infos);
        link.resume_at(last_seq.next());
        let mut intent_waits = VecDeque::with_capacity(max_records);
        // Nothing is written before the record says a primary runs.
        intent_waits.push_back((Seq::NONE, running_txn));
        let mut primary = Primary {
            retention,
            next_seq: last_seq.next(),
            open: OpenDataSet {
                id: last_closed.next(),
                first_seq: last_seq.next(),
                writes: 0,
                payload_bytes: 0,
                opened_at_ms: 0,
            },
            last_closed,
            last_write: extents
                .iter()
                .map(|&n| vec![Seq::NONE; n as usize])
                .collect(),
            intent_waits,
            next_clear_ms: 0,
            clear_horizon: Seq::NONE,
            resync: Resync::new(&extents, config.resync_rate_bytes),
            window_full_since_ms: None,
            history_txn: running_txn,
            now_ms: 0,
            history,
            start,
            intent,
            local_in_flight: InFlightWrites::with_capacity(in_flight as usize),
            local_deferred: VecDeque::with_capacity(max_records),
            flushes: VecDeque::with_capacity(config.max_pending_flushes),
            next_flush_id: 0,
            events: VecDeque::with_capacity(max_records),
            completions: Vec::with_capacity(64),
            link,
            failed: None,
            stats: PrimaryStats::default(),
            merge: vec![0; config.max_write_bytes as usize],
            block: vec![0; max_block as usize],
            volumes,
            config,
        };
        primary.refresh_hello();
        Ok(primary)
    }

    pub fn volumes(&self) -> &[S] {
        &self.volumes
    }

    pub fn volume_infos(&self) -> &[VolumeInfo] {
        self.link.volumes()
    }

    pub fn stats(&self) -> PrimaryStats {
        self.stats
    }

    pub fn last_closed(&self) -> DataSetId {
        self.last_closed
    }

    /// Last data set the secondary reported applied.
    pub fn peer_applied(&self) -> DataSetId {
        self.link.peer_applied()
    }

    /// The oldest record retained, for a report of where the stream stands.
    pub fn retention_front(&self) -> Option<retention::Record> {
        self.retention
            .front_seq()
            .and_then(|seq| self.retention.get(seq))
            .copied()
    }

    /// Stream bytes held in the retention window.
    pub fn retention_bytes(&self) -> u64 {
        self.retention.used_bytes()
    }

    pub fn next_event(&mut self) -> Option<PrimaryEvent> {
        self.events.pop_front()
    }

    /// Accepts a write: assigns its seq and data set, starts the local write (its
    /// `WriteDone` event is the application's acknowledgement) and queues it for sending.
    /// `offset` and `data.len()` may be any bytes inside the volume: a write that starts or
    /// ends inside a block is merged with the rest of those blocks as the writes accepted
    /// before it left them (`merge_partial`), and goes as one block-aligned record whose
    /// span must fit `max_write_bytes`.
    pub fn submit_write(
        &mut self,
        now_ms: u64,
        volume: VolumeId,
        offset: u64,
        data: &[u8],
        token: u64,
    ) -> Result<Seq, SubmitError> {
        if let Some(error) = &self.failed {
            return Err(SubmitError::Failed(error.clone()));
        }
        let storage = self
            .volumes
            .get(usize::from(volume.0))
            .ok_or(SubmitError::UnknownVolume(volume))?;
        let (start, span) = storage.geometry().block_span(offset, data.len())?;
        if span > u64::from(self.config.max_write_bytes) {
            return Err(SubmitError::TooLarge {
                len: data.len(),
                max: self.config.max_write_bytes,
            });
        }
        let len = span as u32; // Lossless: at most max_write_bytes.
        self.admit(now_ms, stream_cost(len))?;
        let aligned = start == offset && span == data.len() as u64;
        let mut merge = std::mem::take(&mut self.merge);
        if !aligned {
            if let Err(error) = self.merge_partial(volume, start, offset, data, &mut merge) {
                self.merge = merge;
                return Err(error);
            }
        }
        let payload = if aligned {
            data
        } else {
            &merge[..len as usize]
        };
        let kind = RecordKind::Write {
            volume,
            offset: start,
            len,
        };
        let seq = self.accept(now_ms, kind, payload, token);
        self.merge = merge;
        self.stats.writes_accepted += 1;
        if !aligned {
            self.stats.sub_block_writes += 1;
        }
        Ok(seq)
    }

    /// Accepts a zeroing of `len` bytes at `offset` (whole blocks; the caller writes the
    /// partial blocks at its ends as zeros, `submit_write`): a record in the open data set
    /// like a write, with no payload, so it costs the stream and the journal a record
    /// header whatever its length. `unmap` lets both sides deallocate the range (NBD's
    /// TRIM, WRITE_ZEROES without NO_HOLE); it reads back as zeros either way. Its
    /// `WriteDone` event is the application's acknowledgement.
    pub fn submit_write_zeroes(
        &mut self,
        now_ms: u64,
        volume: VolumeId,
        offset: u64,
        len: u32,
        unmap: bool,
        token: u64,
    ) -> Result<Seq, SubmitError> {
        if let Some(error) = &self.failed {
            return Err(SubmitError::Failed(error.clone()));
        }
        let storage = self
            .volumes
            .get(usize::from(volume.0))
            .ok_or(SubmitError::UnknownVolume(volume))?;
        storage.geometry().check_zeroes(offset, u64::from(len))?;
        self.admit(now_ms, stream_cost(0))?;
        let kind = RecordKind::Zero {
            volume,
            offset,
            len,
            unmap,
        };
        let seq = self.accept(now_ms, kind, &[], token);
        self.stats.zeroes_accepted += 1;
        Ok(seq)
    }

    /// Whether a record of `cost` stream bytes fits the retention window now (with room
    /// for its data set's sync), leaving a held resync its room (`leaves_resync_room`).
    /// When it does not, the open data set is closed (a
    /// consistency point, so what is retained can complete) and the wait is timed for
    /// `WindowFull::Track`; a stream being cut takes nothing until the new one begins.
    fn admit(&mut self, now_ms: u64, cost: u64) -> Result<(), SubmitError> {
        if self.retention.fits(cost, RECORD_OVERHEAD_BYTES) && self.leaves_resync_room(cost) {
            return Ok(());
        }
        self.close_data_set();
        self.stats.window_full += 1;
        self.window_full_since_ms.get_or_insert(now_ms);
        Err(SubmitError::WindowFull)
    }

    /// Gives an admitted write or zeroing its seq in the open data set, retains it,
    /// starts it locally and closes the data set if the policy says so.
    fn accept(&mut self, now_ms: u64, kind: RecordKind, payload: &[u8], token: u64) -> Seq {
        let seq = self.next_seq;
        self.next_seq = seq.next();
        if self.open.writes == 0 {
            self.open.first_seq = seq;
            self.open.opened_at_ms = now_ms;
        }
        self.retention.push(seq, self.open.id, kind, payload, token);
        self.released_unsent(seq);
        self.open.writes += 1;
        self.open.payload_bytes += u64::from(kind.payload_len());
        if let RecordKind::Write {
            volume,
            offset,
            len,
        }
        | RecordKind::Zero {
            volume,
            offset,
            len,
            ..
        } = kind
        {
            self.note_write(volume, offset, u64::from(len), seq, true);
        }
        self.window_full_since_ms = None;
        self.start_local_write(seq);
        self.close_by_policy();
        seq
    }

    /// A resync record (see `resync`): a write of what the volume holds, in the open data
    /// set, already on the local volume, acknowledged to no one.
    fn accept_resync(&mut self, kind: RecordKind, payload: &[u8]) -> Seq {
        let seq = self.next_seq;
        self.next_seq = seq.next();
        if self.open.writes == 0 {
            self.open.first_seq = seq;
            self.open.opened_at_ms = self.now_ms;
        }
        self.retention.push(seq, self.open.id, kind, payload, 0);
        self.retention.get_mut(seq).expect("just pushed").local_done = true;
        self.open.writes += 1;
        self.open.payload_bytes += u64::from(kind.payload_len());
        self.close_by_policy();
        seq
    }

    fn close_by_policy(&mut self) {
        let policy = self.config.policy;
        if self.open.writes >= policy.max_writes || self.open.payload_bytes >= policy.max_bytes {
            self.close_data_set();
        }
    }

    /// A consistency point: closes the open data set and reports `FlushDone` once every
    /// write accepted so far is durable on the primary's volumes. Returns the data set
    /// the flush stands for.
    pub fn flush(&mut self, token: u64) -> Result<DataSetId, SubmitError> {
        if self.flushes.len() >= self.config.max_pending_flushes {
            return Err(SubmitError::TooManyFlushes);
        }
        self.close_data_set();
        let id = self.next_flush_id;
        self.next_flush_id += 1;
        self.flushes.push_back(FlushWaiter {
            id,
            token,
            data_set: self.last_closed,
            state: FlushState::WaitingLocal {
                through: Seq(self.next_seq.0 - 1),
            },
            result: Ok(()),
        });
        Ok(self.last_closed)
    }

    /// Advances time: closes a data set whose interval ran out and schedules resends of
    /// records not acknowledged in time.
    pub fn tick(&mut self, now_ms: u64) {
        let interval = self.config.policy.interval_ms;
        if interval > 0 && self.open.writes > 0 && now_ms >= self.open.opened_at_ms + interval {
            self.close_data_set();
        }
        self.link.schedule_timeouts(now_ms, &mut self.retention);
        self.now_ms = now_ms;
        self.clear_applied_extents(now_ms);
        self.poll_resync(now_ms);
        self.check_window_full(now_ms);
        self.refresh_hello_flags();
    }

    fn close_data_set(&mut self) {
        if self.open.writes == 0 {
            return;
        }
        self.close_data_set_with(false);
    }

    /// Closes the open data set (even an empty one) as the end point of the resync.
    fn close_data_set_ending_resync(&mut self) -> DataSetId {
        self.close_data_set_with(true);
        self.last_closed
    }

    fn close_data_set_with(&mut self, ends_resync: bool) {
        assert!(
            self.retention.fits(RECORD_OVERHEAD_BYTES, 0),
            "every accepted write reserved room for its data set's sync"
        );
        let sync_seq = self.next_seq;
        self.next_seq = sync_seq.next();
        if self.open.writes == 0 {
            self.open.first_seq = sync_seq;
        }
        let kind = RecordKind::Sync {
            first_seq: self.open.first_seq,
            write_count: self.open.writes,
            ends_resync,
        };
        assert_eq!(self.open.first_seq.0 + self.open.writes, sync_seq.0);
        self.retention.push(sync_seq, self.open.id, kind, &[], 0);
        self.released_unsent(sync_seq);
        self.events.push_back(PrimaryEvent::DataSetClosed {
            data_set: self.open.id,
            first_seq: self.open.first_seq,
            sync_seq,
        });
        self.stats.data_sets_closed += 1;
        self.last_closed = self.open.id;
        self.open = OpenDataSet {
            id: self.open.id.next(),
            first_seq: self.next_seq,
            writes: 0,
            payload_bytes: 0,
            opened_at_ms: 0,
        };
    }

    /// With replication off nothing waits for a secondary: a record counts as
    /// acknowledged from the start and goes as soon as it is on the local volume.
    fn released_unsent(&mut self, seq: Seq) {
        if self.config.replication == Replication::Off {
            self.retention.ack_range(seq, seq);
        }
    }

    fn start_local_write(&mut self, seq: Seq) {
        // Keep local writes in seq order: once one waits, every later one waits behind it.
        if !self.local_deferred.is_empty() || !self.try_submit_local(seq) {
            self.local_deferred.push_back(seq);
        }
    }

    /// Submits the local write of `seq` unless it overlaps one in flight or the volume's
    /// queue is full; false if it must wait.
    fn try_submit_local(&mut self, seq: Seq) -> bool {
        if self.waits_for_intent(seq) {
            return false;
        }
        let record = *self
            .retention
            .get(seq)
            .expect("a write is retained until done locally");
        let (volume, offset, len) = match record.kind {
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
            RecordKind::Sync { .. } => unreachable!("only writes and zeroings are done locally"),
        };
        let storage = &mut self.volumes[usize::from(volume.0)];
        if self.local_in_flight.is_full()
            || storage.in_flight() >= storage.geometry().max_in_flight
            || self
                .local_in_flight
                .overlaps(volume, offset, u64::from(len))
        {
            return false;
        }
        let submitted = match record.kind {
            RecordKind::Zero { unmap, .. } => {
                storage.submit_write_zeroes(seq.0, offset, u64::from(len), unmap)
            }
            _ => storage.submit_write(seq.0, offset, self.retention.payload(&record)),
        };
        match submitted {
            Ok(()) => {
                self.local_in_flight
                    .insert(seq.0, volume, offset, u64::from(len));
                true
            }
            Err(StorageError::QueueFull(_)) => false,
            Err(error) => {
                self.finish_local_write(seq, Err(error));
                true
            }
        }
    }

    fn finish_local_write(&mut self, seq: Seq, result: Result<(), StorageError>) {
        let record = self
            .retention
            .get_mut(seq)
            .expect("retained until done locally");
        assert!(!record.local_done, "a local write completes once");
        record.local_done = true;
        let token = record.token;
        if let Err(error) = &result {
            self.failed.get_or_insert(error.clone());
        }
        self.events
            .push_back(PrimaryEvent::WriteDone { token, seq, result });
    }

    /// Polls the local volumes: acknowledges finished writes, starts waiting ones and
    /// advances flushes. Returns how many completions it handled.
    pub fn poll_storage(&mut self) -> usize {
        let mut handled = self.intent.poll();
        if let Some(error) = self.intent.failed() {
            self.failed.get_or_insert(error.clone());
        }
        for index in 0..self.volumes.len() {
            self.completions.clear();
            let max = self.completions.capacity();
            self.volumes[index].poll(&mut self.completions, max);
            let mut batch = std::mem::take(&mut self.completions);
            handled += batch.len();
            batch.drain(..).for_each(|c| self.handle_completion(c));
            self.completions = batch;
        }
        self.after_completions();
        handled
    }

    fn handle_completion(&mut self, completion: Completion) {
        if completion.tag & FLUSH_TAG_BIT != 0 {
            self.finish_volume_flush(completion.tag & !FLUSH_TAG_BIT, completion.result);
        } else {
            assert!(
                self.local_in_flight.remove(completion.tag),
                "completion of a write in flight"
            );
            self.finish_local_write(Seq(completion.tag), completion.result);
        }
    }

    /// After completions: starts writes that waited for them, releases what is done and
    /// advances flushes.
    fn after_completions(&mut self) {
        while let Some(&seq) = self.local_deferred.front() {
            if !self.try_submit_local(seq) {
                break;
            }
            self.local_deferred.pop_front();
        }
        self.release();
        self.advance_flushes();
    }

    fn oldest_local_pending(&self) -> Option<Seq> {
        let in_flight = self.local_in_flight.min_tag().map(Seq);
        let deferred = self.local_deferred.front().copied();
        match (in_flight, deferred) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn advance_flushes(&mut self) {
        let oldest = self.oldest_local_pending();
        let all_volumes = u64::MAX >> (64 - self.volumes.len());
        for index in 0..self.flushes.len() {
            let waiter = &mut self.flushes[index];
            if let FlushState::WaitingLocal { through } = waiter.state {
                if oldest.is_some_and(|seq| seq <= through) {
                    continue;
                }
                waiter.state = FlushState::Flushing {
                    to_submit: all_volumes,
                    remaining: 0,
                };
            }
            let FlushState::Flushing {
                to_submit,
                remaining,
            } = &mut waiter.state
            else {
                unreachable!("set just above");
            };
            for (bit, volume) in self.volumes.iter_mut().enumerate() {
                if *to_submit & (1 << bit) == 0 {
                    continue;
                }
                match volume.submit_flush(FLUSH_TAG_BIT | waiter.id) {
                    Ok(()) => *remaining += 1,
                    Err(StorageError::QueueFull(_)) => continue,
                    Err(error) => waiter.result = Err(error),
                }
                *to_submit &= !(1 << bit);
            }
        }
        while let Some(waiter) = self.flushes.front() {
            if !matches!(
                waiter.state,
                FlushState::Flushing {
                    to_submit: 0,
                    remaining: 0
                }
            ) {
                break;
            }
            let waiter = self.flushes.pop_front().expect("front exists");
            self.events.push_back(PrimaryEvent::FlushDone {
                token: waiter.token,
                data_set: waiter.data_set,
                result: waiter.result,
            });
        }
    }

    fn finish_volume_flush(&mut self, id: u64, result: Result<(), StorageError>) {
        let waiter = self
            .flushes
            .iter_mut()
            .find(|w| w.id == id)
            .expect("a volume flush belongs to a pending flush");
        let FlushState::Flushing { remaining, .. } = &mut waiter.state else {
            unreachable!("volume flushes are submitted in the Flushing state");
        };
        assert!(*remaining > 0);
        *remaining -= 1;
        if let Err(error) = result {
            waiter.result = Err(error);
        }
    }

    pub fn lane_up(&mut self, lane: usize) {
        self.link.lane_up(lane);
    }

    /// The secondary answered the handshake on `lane`.
    pub fn lane_ready(&self, lane: usize) -> bool {
        self.link.lane_ready(lane)
    }

    /// The lane's connection is gone: what was sent on it and not acknowledged is resent.
    pub fn lane_down(&mut self, lane: usize) {
        self.link.lane_down(lane, &mut self.retention);
        self.resync.lanes_lost();
    }

    /// Handles a frame the secondary sent on `lane`. An error means the peer is wrong
    /// (mismatched group or volumes, or it broke the protocol): drop the lane.
    pub fn handle_frame(
        &mut self,
        lane: usize,
        frame: &crate::protocol::Frame<'_>,
    ) -> Result<(), PeerError> {
        use crate::protocol::Frame;
        let result = self.link.handle_frame(lane, frame, &mut self.retention);
        if self.link.take_unservable() {
            // It holds what we hold from, but not what we freed since: start afresh.
            self.drop_window();
        }
        match frame {
            Frame::Hello(hello) if result.is_ok() && self.link.lane_ready(lane) => {
                self.secondary_resumed(self.now_ms, hello);
            }
            Frame::Digests(digests) => self.resync.on_digests(digests)?,
            Frame::Applied(_) => self.resync_applied(self.link.peer_applied()),
            _ => {}
        }
        self.release();
        result
    }

    /// Frees what the secondary staged and is written locally; notes that the stream of
    /// this generation is no longer whole from seq 1 once anything was freed.
    fn release(&mut self) {
        if self.retention.release() > 0 && !self.history.released_any {
            self.history.released_any = true;
            self.refresh_hello();
        }
    }

    /// Appends frames for `lane` to `out` until about `max_bytes` were added; returns the
    /// number of bytes appended.
    pub fn poll_transmit<F: tx::FrameSink + ?Sized>(
        &mut self,
        now_ms: u64,
        lane: usize,
        out: &mut F,
        max_bytes: usize,
    ) -> usize {
        if self.config.replication == Replication::Off
            || self.intent.durable_txn() < self.history_txn
        {
            return 0;
        }
        let start = out.len();
        if self.link.lane_ready(lane) {
            while out.len() - start < max_bytes {
                let Some(request) = self.resync.next_request(now_ms) else {
                    break;
                };
                out.push(&crate::protocol::Frame::DigestRequest(request));
            }
        }
        let budget = max_bytes.saturating_sub(out.len() - start);
        self.link.poll_transmit(
            now_ms,
            lane,
            out,
            budget,
            &mut self.retention,
            &mut self.stats,
        );
        out.len() - start
    }

    /// The payload of retained record `seq` (what a `TxBatch` names).
    pub fn retained_payload(&self, seq: Seq) -> Option<&[u8]> {
        self.retention
            .get(seq)
            .map(|record| self.retention.payload(record))
    }

    /// The handshake failure that stalls replication, if any (visible in status).
    pub fn stalled(&self) -> Option<&PeerError> {
        self.link.stalled()
    }
}

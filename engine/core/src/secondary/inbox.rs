//! The secondary's receiving side, shared by every receiver thread: checks a record from
//! the primary, copies its payload into the staging arena and puts it in the lock-free
//! reorder buffer under its seq. Any number of threads may receive at once (one per lane);
//! the journal writer takes the records out strictly in seq order (`Secondary`).
//!
//! Where a record's bytes go: every record held lies in the stream window
//! `(applied_stream_end, applied_stream_end + window_bytes]`, so (as in the primary's
//! retention) its stream range maps to the arena at `stream_offset % window_bytes` without
//! overlapping any other honest record. Each receiver claims its record's whole stream
//! range there (payload and the record's overhead) before copying: a claim that overlaps
//! another means the primary sent two records over the same stream bytes, a protocol
//! violation, and nothing is copied. So two receivers never write the same bytes, and no
//! receiver writes bytes the journal writer or the applier is reading.
//!
//! What one receive costs: a few compares, one load of the published applied stream end,
//! one CAS and one store in the reorder buffer, one atomic OR per 64 claimed granules, and
//! the copy. No lock, no allocation, no syscall.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use ordo_lockfree::{ArenaWriter, Producer, Rejected};

use crate::protocol::digest::span_units;
use crate::protocol::{
    check_hello, stream_cost, DataSetId, DigestRequestFrame, Frame, GenerationId, Hello, PeerError,
    PrimaryHistory, RecordKind, Role, Seq, SyncFrame, WriteFrame, ZeroFrame,
};
use crate::storage::Geometry;

/// The arena's claim granule: stream offsets of honest records are multiples of it (record
/// payloads are whole blocks and `RECORD_OVERHEAD_BYTES` is a multiple of it).
pub const STAGING_GRANULE_BYTES: u64 = ordo_lockfree::GRANULE_BYTES as u64;

/// Resends of records already taken in seq order, queued for the journal writer to
/// acknowledge again (or to answer with the applied watermark). When full, a resend is
/// not answered; the primary sends it again later.
const REACK_QUEUE: usize = 4096;
/// Digest requests waiting for the poller; when full, a request is dropped and the
/// primary asks again after its timeout.
const DIGEST_REQUEST_QUEUE: usize = 64;

/// A record as the journal writer takes it from the reorder buffer (its seq is the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    pub data_set: DataSetId,
    pub stream_offset: u64,
    pub kind: RecordKind,
}

/// What became of a received record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// In the reorder buffer.
    Staged,
    /// Held already, not yet taken in order: acknowledged once it is durable.
    Duplicate,
    /// Taken in order already (durable, being journaled, or applied): queued to be
    /// acknowledged again.
    Resent,
    /// Past the window the primary was given: dropped; the primary resends it later.
    OutOfWindow,
}

/// What became of a frame from the primary (see `Inbox::deliver`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The primary's Hello passed the group and volume checks; its history is for the
    /// poller to decide on (`Secondary::lane_hello`).
    Hello(PrimaryHistory),
    /// A digest request, queued for the poller (or dropped when the queue is full).
    DigestRequest,
    /// A record on a lane whose Hello has not come: dropped and counted.
    BeforeHello,
    Record(Received),
}

/// Counters of the receiving side; each is exact, together they are not a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboxStats {
    pub staged: u64,
    pub duplicates: u64,
    pub out_of_window: u64,
    /// Resends not answered because the re-acknowledgement queue was full.
    pub reacks_dropped: u64,
    /// Records dropped because they arrived on a lane before its handshake.
    pub before_hello: u64,
    /// Digest requests dropped because the poller's queue was full.
    pub digest_requests_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    staged: AtomicU64,
    duplicates: AtomicU64,
    out_of_window: AtomicU64,
    reacks_dropped: AtomicU64,
    before_hello: AtomicU64,
    digest_requests_dropped: AtomicU64,
}

#[derive(Debug)]
pub struct Inbox {
    /// Our Hello as built at start (the checked fields never change).
    hello: Hello,
    volumes: Vec<Geometry>,
    window_bytes: u64,
    records: Producer<Staged>,
    arena: ArenaWriter,
    /// The applied stream end, published by the applier after it released the applied
    /// data set's arena ranges. A receiver that reads an older value only refuses more.
    applied_stream_end: AtomicU64,
    reacks: ArrayQueue<Seq>,
    digest_requests: ArrayQueue<DigestRequestFrame>,
    counters: Counters,
}

impl Inbox {
    pub(super) fn new(
        hello: Hello,
        volumes: Vec<Geometry>,
        window_bytes: u64,
        applied_stream_end: u64,
        records: Producer<Staged>,
        arena: ArenaWriter,
    ) -> Inbox {
        Inbox {
            hello,
            volumes,
            window_bytes,
            records,
            arena,
            applied_stream_end: AtomicU64::new(applied_stream_end),
            reacks: ArrayQueue::new(REACK_QUEUE),
            digest_requests: ArrayQueue::new(DIGEST_REQUEST_QUEUE),
            counters: Counters::default(),
        }
    }

    /// Checks the primary's Hello against ours (group, volumes, largest write).
    pub fn check_hello(&self, theirs: &Hello) -> Result<(), PeerError> {
        check_hello(&self.hello, theirs, Role::Primary)?;
        if theirs.max_write_bytes > self.hello.max_write_bytes {
            return Err(PeerError::Mismatch {
                field: "largest write",
                ours: format!("{} bytes (journal)", self.hello.max_write_bytes),
                theirs: format!("{} bytes", theirs.max_write_bytes),
            });
        }
        if theirs.generation == GenerationId::NONE {
            return Err(PeerError::Violation("a primary's Hello names no history"));
        }
        // Where its stream starts becomes our watermark if we re-base onto it: a lie must
        // not put it where the reorder buffer or the arena cannot follow.
        let start = theirs.history().start;
        let plausible = start.seq.0 < ordo_lockfree::SEQ_LIMIT / 4
            && start.data_set.0 <= start.seq.0
            && start.stream_offset.is_multiple_of(STAGING_GRANULE_BYTES)
            && start.stream_offset < u64::MAX / 4;
        if !plausible {
            return Err(PeerError::Violation(
                "a primary's Hello says its stream starts where no stream can",
            ));
        }
        Ok(())
    }

    /// Handles a frame from the primary on a lane that is `ready` (its Hello passed): the
    /// one dispatch both a receiver thread and `Secondary::handle_frame` use. An error
    /// means the peer is wrong or broke the protocol: drop the lane.
    pub fn deliver(&self, frame: &Frame<'_>, ready: bool) -> Result<Delivered, PeerError> {
        match frame {
            Frame::Hello(theirs) => self
                .check_hello(theirs)
                .map(|()| Delivered::Hello(theirs.history())),
            Frame::Write(_) | Frame::Zero(_) | Frame::Sync(_) | Frame::DigestRequest(_)
                if !ready =>
            {
                self.counters.before_hello.fetch_add(1, Ordering::Relaxed);
                Ok(Delivered::BeforeHello)
            }
            Frame::Write(write) => self.receive_write(write).map(Delivered::Record),
            Frame::Zero(zero) => self.receive_zero(zero).map(Delivered::Record),
            Frame::Sync(sync) => self.receive_sync(sync).map(Delivered::Record),
            Frame::DigestRequest(request) => self.receive_digest_request(request),
            Frame::Ack(_) | Frame::Applied(_) | Frame::Digests(_) => {
                Err(PeerError::Unexpected("an Ack, Applied or Digests frame"))
            }
        }
    }

    fn receive_digest_request(&self, request: &DigestRequestFrame) -> Result<Delivered, PeerError> {
        let volume = self
            .volumes
            .get(usize::from(request.volume.0))
            .ok_or(PeerError::Violation("a digest request for no volume"))?;
        if span_units(
            volume.size_bytes,
            volume.block_size,
            request.offset,
            request.len,
        )
        .is_none()
        {
            return Err(PeerError::Violation(
                "a digest request for a range that is not whole units inside the volume",
            ));
        }
        if self.digest_requests.push(*request).is_err() {
            self.counters
                .digest_requests_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(Delivered::DigestRequest)
    }

    /// The next digest request to answer.
    pub(super) fn next_digest_request(&self) -> Option<DigestRequestFrame> {
        self.digest_requests.pop()
    }

    pub fn receive_write(&self, write: &WriteFrame<'_>) -> Result<Received, PeerError> {
        let volume = self
            .volumes
            .get(usize::from(write.volume.0))
            .ok_or(PeerError::BadWrite(format!("no volume {}", write.volume.0)))?;
        volume
            .check_io(write.offset, write.payload.len())
            .map_err(|e| PeerError::BadWrite(e.to_string()))?;
        if write.payload.len() > self.hello.max_write_bytes as usize {
            return Err(PeerError::BadWrite(format!(
                "{} bytes is over the journal's largest write",
                write.payload.len()
            )));
        }
        let staged = Staged {
            data_set: write.data_set,
            stream_offset: write.stream_offset,
            kind: RecordKind::Write {
                volume: write.volume,
                offset: write.offset,
                len: write.payload.len() as u32,
            },
        };
        self.receive(write.seq, staged, write.payload)
    }

    pub fn receive_zero(&self, zero: &ZeroFrame) -> Result<Received, PeerError> {
        let volume = self
            .volumes
            .get(usize::from(zero.volume.0))
            .ok_or(PeerError::BadWrite(format!("no volume {}", zero.volume.0)))?;
        volume
            .check_zeroes(zero.offset, u64::from(zero.len))
            .map_err(|e| PeerError::BadWrite(e.to_string()))?;
        let staged = Staged {
            data_set: zero.data_set,
            stream_offset: zero.stream_offset,
            kind: RecordKind::Zero {
                volume: zero.volume,
                offset: zero.offset,
                len: zero.len,
                unmap: zero.unmap,
            },
        };
        self.receive(zero.seq, staged, &[])
    }

    pub fn receive_sync(&self, sync: &SyncFrame) -> Result<Received, PeerError> {
        if sync.first_seq.0.checked_add(sync.write_count) != Some(sync.seq.0) {
            return Err(PeerError::Violation(
                "a sync's seq is not its first seq plus its write count",
            ));
        }
        let staged = Staged {
            data_set: sync.data_set,
            stream_offset: sync.stream_offset,
            kind: RecordKind::Sync {
                first_seq: sync.first_seq,
                write_count: sync.write_count,
                ends_resync: sync.ends_resync,
            },
        };
        self.receive(sync.seq, staged, &[])
    }

    fn receive(&self, seq: Seq, staged: Staged, payload: &[u8]) -> Result<Received, PeerError> {
        if seq == Seq::NONE || seq.0 >= ordo_lockfree::SEQ_LIMIT / 2 {
            return Err(PeerError::Violation("seq out of range"));
        }
        let reservation = match self.records.reserve(seq.0) {
            Ok(reservation) => reservation,
            Err(Rejected::Duplicate(())) => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                return Ok(Received::Duplicate);
            }
            Err(Rejected::Stale(())) => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                if self.reacks.push(seq).is_err() {
                    self.counters.reacks_dropped.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Received::Resent);
            }
            Err(Rejected::Ahead(())) => return Ok(self.out_of_window()),
        };
        // Acquire, pairing with the applier's Release publish in `publish_applied`: the
        // arena ranges of the data sets applied up to this end are released before we may
        // claim them.
        let applied_end = self.applied_stream_end.load(Ordering::Acquire);
        let Some(stream_end) = staged
            .stream_offset
            .checked_add(stream_cost(payload.len() as u32))
        else {
            return Err(PeerError::Violation("stream offset overflows"));
        };
        if staged.stream_offset < applied_end {
            // Our seq is above every seq taken in order, so above the applied ones.
            return Err(PeerError::Violation(
                "a record above the applied seq lies before the applied stream end",
            ));
        }
        if !staged.stream_offset.is_multiple_of(STAGING_GRANULE_BYTES) {
            return Err(PeerError::Violation(
                "a stream offset is not a multiple of 512",
            ));
        }
        if stream_end - applied_end > self.window_bytes {
            // Dropping `reservation` frees the seq for the resend.
            return Ok(self.out_of_window());
        }
        let at = (staged.stream_offset % self.window_bytes) as usize;
        let claim = (stream_end - staged.stream_offset) as usize;
        if self.arena.claim_and_write(at, claim, payload).is_err() {
            return Err(PeerError::Violation("stream ranges of two records overlap"));
        }
        reservation.publish(staged);
        self.counters.staged.fetch_add(1, Ordering::Relaxed);
        Ok(Received::Staged)
    }

    fn out_of_window(&self) -> Received {
        self.counters.out_of_window.fetch_add(1, Ordering::Relaxed);
        Received::OutOfWindow
    }

    /// Called by the applier once the arena ranges of everything up to `stream_end` are
    /// released.
    pub(super) fn publish_applied(&self, stream_end: u64) {
        // Release, pairing with the Acquire in `receive`.
        self.applied_stream_end.store(stream_end, Ordering::Release);
    }

    /// The next resend to acknowledge again.
    pub(super) fn next_reack(&self) -> Option<Seq> {
        self.reacks.pop()
    }

    pub fn stats(&self) -> InboxStats {
        // Relaxed: statistics, publishing nothing.
        InboxStats {
            staged: self.counters.staged.load(Ordering::Relaxed),
            duplicates: self.counters.duplicates.load(Ordering::Relaxed),
            out_of_window: self.counters.out_of_window.load(Ordering::Relaxed),
            reacks_dropped: self.counters.reacks_dropped.load(Ordering::Relaxed),
            before_hello: self.counters.before_hello.load(Ordering::Relaxed),
            digest_requests_dropped: self
                .counters
                .digest_requests_dropped
                .load(Ordering::Relaxed),
        }
    }
}

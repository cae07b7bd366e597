//! The primary's front door. What runs on the poller's own thread (the NBD server)
//! submits requests straight into the pending table (`PrimaryService::submit`) and takes
//! their replies from the service's reply queue (`take_reply`): no thread handoff between
//! a client's socket and the write path. Other threads (the control socket) hand requests
//! to the poller through a bounded lock-free ring, crossbeam's `ArrayQueue` (Vyukov's
//! bounded MPMC queue with per-slot stamps), wake it, and get each reply on their own
//! channel. Nothing is allocated per request: a request carries its own buffer, and the
//! pending table and reply queue are sized once.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::thread::Thread;

use crossbeam_channel::Sender;
use crossbeam_queue::ArrayQueue;
use thiserror::Error;

use crate::primary_node::PrimaryNode;
use ordo_core::primary::{PrimaryEvent, SubmitError};
use ordo_core::protocol::{DataSetId, VolumeId};
use ordo_core::storage::{Storage, StorageError};

/// Most requests a poller round takes from the ring.
const BATCH: usize = 64;
/// Most reads a round serves: a read waits for the device, on the poller.
const READS_PER_ROUND: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `buf.len()` bytes.
    Read { volume: VolumeId, offset: u64 },
    /// Write `buf`; with `fua` the reply waits until it is durable on the primary.
    Write {
        volume: VolumeId,
        offset: u64,
        fua: bool,
    },
    /// Make `len` bytes at `offset` (whole blocks) read back as zeros; with `unmap` they
    /// may be deallocated (NBD's TRIM, WRITE_ZEROES without NO_HOLE). `buf` is unused. A
    /// write in every other respect, `fua` included.
    Zero {
        volume: VolumeId,
        offset: u64,
        len: u32,
        unmap: bool,
        fua: bool,
    },
    /// A consistency point: closes the open data set; the reply comes once every write
    /// acknowledged before it is durable on the primary's volumes.
    Flush,
}

#[derive(Debug)]
pub struct Request {
    pub op: Op,
    /// The data of a write, or the room for a read (its length is the read's length).
    pub buf: Vec<u8>,
    /// Echoed in the reply, for requesters with several requests in flight.
    pub user: u64,
    pub reply: ReplyTo,
}

/// Where a request's reply goes.
#[derive(Clone, Debug)]
pub enum ReplyTo {
    /// The service's own reply queue (`take_reply`), for requests submitted on the
    /// poller's thread.
    Poller,
    /// Another thread's channel: it must have room for every reply its owner awaits (the
    /// poller never blocks on it; a reply with no room is dropped).
    Channel(Sender<Reply>),
}

#[derive(Debug)]
pub struct Reply {
    pub user: u64,
    pub result: Result<(), ServiceError>,
    /// The request's buffer, handed back (filled, for a read).
    pub buf: Vec<u8>,
    /// For a flush: the data set it closed (or the last closed one).
    pub data_set: DataSetId,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the primary is shutting down")]
    ShuttingDown,
}

/// The token of the flush that closes the last data set when the service shuts down; no
/// pending request has it (the table is far smaller).
const DRAIN_TOKEN: u64 = u64::MAX;

/// Shutting down: new requests are refused; once every accepted one has started, one
/// flush closes the last data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    Open,
    /// Refusing new requests; the drain flush is not submitted yet.
    Refusing,
    /// The drain flush was submitted; `Some` once it is done, with its data set.
    Flushing(Option<DataSetId>),
}

/// Another thread's handle: cheap to clone, one per thread.
#[derive(Clone, Debug)]
pub struct Frontend {
    inbox: Arc<ArrayQueue<Request>>,
    poller: Arc<OnceLock<Waker>>,
}

impl Frontend {
    /// Queues a request for the poller; a full ring hands it back (backpressure: retry).
    pub fn submit(&self, request: Request) -> Result<(), Request> {
        debug_assert!(matches!(request.reply, ReplyTo::Channel(_)));
        self.inbox.push(request)?;
        if let Some(poller) = self.poller.get() {
            // Wakes a parked poller (a syscall: for control requests, never per write).
            poller.wake_by_ref();
        }
        Ok(())
    }

    /// Submits `request` (waiting while the ring is full) and waits for its reply on
    /// `replies`, which must be the receiving end of `request.reply` with no other request
    /// outstanding on it. `None` if the poller is gone.
    pub fn call(
        &self,
        request: Request,
        replies: &crossbeam_channel::Receiver<Reply>,
    ) -> Option<Reply> {
        self.submit_before(request, None).ok()?;
        replies.recv().ok()
    }

    /// `call`, giving up after `timeout` (waiting for room in the ring included): for
    /// control requests, which must not hang. A late reply lands in `replies`, so use a
    /// channel of its own for each such call.
    pub fn call_within(
        &self,
        request: Request,
        replies: &crossbeam_channel::Receiver<Reply>,
        timeout: std::time::Duration,
    ) -> Option<Reply> {
        let deadline = std::time::Instant::now() + timeout;
        self.submit_before(request, Some(deadline)).ok()?;
        replies.recv_deadline(deadline).ok()
    }

    /// Submits, yielding while the ring is full, until `deadline` if there is one.
    fn submit_before(
        &self,
        mut request: Request,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), Request> {
        loop {
            match self.submit(request) {
                Ok(()) => return Ok(()),
                Err(back) if deadline.is_some_and(|d| std::time::Instant::now() > d) => {
                    return Err(back)
                }
                Err(back) => {
                    request = back;
                    std::thread::yield_now();
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Not yet accepted by the primary (waiting its turn, or for room).
    Queued,
    /// Accepted; waiting for the primary's event.
    Started,
    /// A FUA write done locally, waiting for room to flush.
    FuaFlushQueued,
}

#[derive(Debug)]
struct Pending {
    request: Request,
    stage: Stage,
    /// When it first had to wait for room in the retention window.
    waiting_since_ms: Option<u64>,
}

/// Counters of the service itself (the primary and node have theirs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub errors: u64,
    /// Writes that had to wait for room in the retention window, and for how long.
    pub writes_waited: u64,
    pub wait_ms_total: u64,
    pub wait_ms_max: u64,
    /// Closed data sets the lag queue had no room to time (they replicate as usual): while
    /// one is unapplied, `lag_ms` understates the lag.
    pub lag_queue_full: u64,
}

/// What status reports of a primary, gathered by the poller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrimaryStatus {
    pub lanes: usize,
    pub lanes_up: usize,
    pub lanes_dropped: u64,
    pub last_error: Option<String>,
    /// Why replication is stalled (a handshake mismatch, lost secondary state).
    pub stalled: Option<String>,
    pub last_closed: DataSetId,
    pub last_sent: DataSetId,
    pub applied: DataSetId,
    pub lag_data_sets: u64,
    /// Stream bytes held for the secondary (written here, not yet applied there).
    pub lag_bytes: u64,
    /// Age of the oldest closed data set the secondary has not applied.
    pub lag_ms: u64,
    pub retention_window_bytes: u64,
    pub requests_in_flight: usize,
    /// A write is waiting for room in the retention window right now.
    pub window_full: bool,
    pub primary: ordo_core::primary::PrimaryStats,
    pub service: ServiceStats,
    /// The history written, what it descends from, and how this primary started.
    pub generation: ordo_core::protocol::GenerationId,
    pub ancestors: Vec<ordo_core::protocol::GenerationId>,
    pub start: ordo_core::primary::Start,
    pub resync: ordo_core::primary::ResyncStats,
    /// Extents (1 MiB) the write-intent record marks as possibly differing.
    pub out_of_sync_extents: u64,
    /// Since when writes have found the window full, if they do now.
    pub window_full_since_ms: Option<u64>,
    /// What they wait for is the room a held resync keeps in the secondary's window.
    pub waiting_for_resync_room: bool,
}

#[derive(Debug)]
pub struct PrimaryService<S: Storage> {
    node: PrimaryNode<S>,
    inbox: Arc<ArrayQueue<Request>>,
    poller: Arc<OnceLock<Waker>>,
    /// Replies of requests submitted on the poller's thread, until taken.
    replies: VecDeque<Reply>,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    /// Pending requests not yet accepted, in arrival order.
    queued: VecDeque<usize>,
    /// Closed data sets not yet applied by the secondary, with when they closed.
    closed: VecDeque<(DataSetId, u64)>,
    window_bytes: u64,
    closing: Closing,
    stats: ServiceStats,
}

impl<S: Storage> PrimaryService<S> {
    /// A service taking up to `max_requests` requests at once (ring and pending table).
    /// `window_bytes` is the primary's retention window (it bounds the closed data sets
    /// that can await the secondary).
    pub fn new(node: PrimaryNode<S>, max_requests: usize, window_bytes: u64) -> Self {
        assert!(max_requests > 0);
        // Each data set's sync costs RECORD_OVERHEAD_BYTES of stream, in our retention
        // window or (sent and staged) in the secondary's, typically no larger.
        let max_closed =
            (2 * window_bytes / ordo_core::protocol::RECORD_OVERHEAD_BYTES) as usize + 1;
        PrimaryService {
            node,
            inbox: Arc::new(ArrayQueue::new(max_requests)),
            poller: Arc::new(OnceLock::new()),
            replies: VecDeque::with_capacity(max_requests),
            pending: (0..max_requests).map(|_| None).collect(),
            free: (0..max_requests).rev().collect(),
            queued: VecDeque::with_capacity(max_requests),
            closed: VecDeque::with_capacity(max_closed),
            window_bytes,
            closing: Closing::Open,
            stats: ServiceStats::default(),
        }
    }

    /// Starts shutting down: requests from now on are refused with `ShuttingDown`; those
    /// already taken finish, then one flush closes the last data set. `drained` says when.
    pub fn close(&mut self) {
        if self.closing == Closing::Open {
            self.closing = Closing::Refusing;
        }
    }

    /// After `close`: the data set that holds every write acknowledged, once it is closed
    /// and durable here and every request has been answered (then wait for the secondary
    /// to apply it).
    pub fn drained(&self) -> Option<DataSetId> {
        match self.closing {
            Closing::Flushing(Some(data_set)) if self.in_flight() == 0 => Some(data_set),
            _ => None,
        }
    }

    pub fn frontend(&self) -> Frontend {
        Frontend {
            inbox: Arc::clone(&self.inbox),
            poller: Arc::clone(&self.poller),
        }
    }

    /// How frontends wake the poller when it waits for work.
    pub fn set_waker(&self, waker: Waker) {
        let _ = self.poller.set(waker);
    }

    /// Names the thread that polls, when it parks (`std::thread::park`) while idle.
    pub fn set_poller(&self, thread: Thread) {
        self.set_waker(Waker::from(Arc::new(Unpark(thread))));
    }

    /// Takes a request on the poller's thread, straight into the pending table (its reply
    /// is `ReplyTo::Poller`'s). A full table hands it back: offer it again after a
    /// `poll`, as replies free room.
    pub fn submit(&mut self, request: Request) -> Result<(), Request> {
        debug_assert!(matches!(request.reply, ReplyTo::Poller));
        if self.closing != Closing::Open {
            self.refuse(request);
            return Ok(());
        }
        let Some(index) = self.free.pop() else {
            return Err(request);
        };
        self.admit(index, request);
        Ok(())
    }

    /// Requests `submit` can take now.
    pub fn room(&self) -> usize {
        self.free.len()
    }

    /// The next reply of a request submitted on the poller's thread.
    pub fn take_reply(&mut self) -> Option<Reply> {
        self.replies.pop_front()
    }

    fn admit(&mut self, index: usize, request: Request) {
        self.pending[index] = Some(Pending {
            request,
            stage: Stage::Queued,
            waiting_since_ms: None,
        });
        self.queued.push_back(index);
    }

    pub fn node(&mut self) -> &mut PrimaryNode<S> {
        &mut self.node
    }

    /// Requests taken from the ring and not yet replied to.
    pub fn in_flight(&self) -> usize {
        self.pending.len() - self.free.len()
    }

    /// One round: takes requests, starts what can start, polls the node and replies to
    /// what finished. True if it did any work.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let mut work = false;
        for _ in 0..BATCH {
            let Some(&index) = self.free.last() else {
                break;
            };
            let Some(request) = self.inbox.pop() else {
                break;
            };
            work = true;
            if self.closing != Closing::Open {
                self.refuse(request);
                continue;
            }
            self.free.pop();
            self.admit(index, request);
        }
        work |= self.start_queued(now_ms);
        if self.closing == Closing::Refusing && self.queued.is_empty() {
            // Only `TooManyFlushes` can refuse it, and room comes back as other flushes
            // complete: try again next round. Never report drained without this flush.
            if self.node.primary().flush(DRAIN_TOKEN).is_ok() {
                self.closing = Closing::Flushing(None);
            }
        }
        work |= self.node.poll(now_ms);
        while let Some(event) = self.node.primary().next_event() {
            work = true;
            self.handle_event(event, now_ms);
        }
        let applied = self.node.primary().peer_applied();
        while self.closed.front().is_some_and(|&(id, _)| id <= applied) {
            self.closed.pop_front();
        }
        work
    }

    /// Starts queued requests in arrival order until one has to wait.
    fn start_queued(&mut self, now_ms: u64) -> bool {
        let mut work = false;
        let mut reads = 0;
        while let Some(&index) = self.queued.front() {
            let pending = self.pending[index]
                .as_mut()
                .expect("queued requests are pending");
            let primary = self.node.primary();
            let outcome = match (pending.stage, pending.request.op) {
                (Stage::FuaFlushQueued, _) | (_, Op::Flush) => {
                    primary.flush(index as u64).map(drop)
                }
                (_, Op::Write { volume, offset, .. }) => primary
                    .submit_write(now_ms, volume, offset, &pending.request.buf, index as u64)
                    .map(drop),
                (
                    _,
                    Op::Zero {
                        volume,
                        offset,
                        len,
                        unmap,
                        ..
                    },
                ) => primary
                    .submit_write_zeroes(now_ms, volume, offset, len, unmap, index as u64)
                    .map(drop),
                (_, Op::Read { .. }) if reads == READS_PER_ROUND => break,
                (_, Op::Read { volume, offset }) => {
                    reads += 1;
                    let read = primary.read(volume, offset, &mut pending.request.buf);
                    if read.is_ok() {
                        self.queued.pop_front();
                        self.stats.reads += 1;
                        self.finish(index, Ok(()), DataSetId::default());
                        work = true;
                        continue;
                    }
                    read
                }
            };
            match outcome {
                Ok(()) => {
                    if let Some(since) = pending.waiting_since_ms.take() {
                        let waited = now_ms.saturating_sub(since);
                        self.stats.writes_waited += 1;
                        self.stats.wait_ms_total += waited;
                        self.stats.wait_ms_max = self.stats.wait_ms_max.max(waited);
                    }
                    pending.stage = Stage::Started;
                    self.queued.pop_front();
                    work = true;
                }
                Err(SubmitError::WindowFull) => {
                    pending.waiting_since_ms.get_or_insert(now_ms);
                    break;
                }
                // Room comes back as the primary's flushes and device requests complete.
                Err(
                    SubmitError::TooManyFlushes | SubmitError::Invalid(StorageError::QueueFull(_)),
                ) => break,
                Err(error) => {
                    self.queued.pop_front();
                    self.finish(index, Err(error.into()), DataSetId::default());
                    work = true;
                }
            }
        }
        work
    }

    fn handle_event(&mut self, event: PrimaryEvent, now_ms: u64) {
        match event {
            PrimaryEvent::WriteDone { token, result, .. } => {
                let index = token as usize;
                let pending = self.pending[index].as_mut().expect("a write in flight");
                assert_eq!(pending.stage, Stage::Started);
                let (Op::Write { fua, .. } | Op::Zero { fua, .. }) = pending.request.op else {
                    unreachable!("WriteDone answers a write or a zeroing");
                };
                self.stats.writes += 1;
                if fua && result.is_ok() {
                    pending.stage = Stage::FuaFlushQueued;
                    self.queued.push_front(index);
                } else {
                    self.finish(index, result.map_err(Into::into), DataSetId::default());
                }
            }
            PrimaryEvent::FlushDone {
                token: DRAIN_TOKEN,
                data_set,
                result,
            } => {
                if let Err(error) = result {
                    tracing::error!("the closing flush failed: {error}");
                }
                assert_eq!(self.closing, Closing::Flushing(None));
                self.closing = Closing::Flushing(Some(data_set));
            }
            PrimaryEvent::FlushDone {
                token,
                data_set,
                result,
            } => {
                let index = token as usize;
                let pending = self.pending[index].as_ref().expect("a flush in flight");
                assert_eq!(pending.stage, Stage::Started);
                if pending.request.op == Op::Flush {
                    self.stats.flushes += 1;
                }
                self.finish(index, result.map_err(Into::into), data_set);
            }
            PrimaryEvent::DataSetClosed { data_set, .. } => {
                // Sized for both windows' worth of data sets; past that (a secondary with
                // a huge window) the newest go unrecorded, counted, which leaves the lag's
                // age, set by the oldest, exact until those are reached.
                if self.closed.len() < self.closed.capacity() {
                    self.closed.push_back((data_set, now_ms));
                } else {
                    self.stats.lag_queue_full += 1;
                }
            }
        }
    }

    fn finish(&mut self, index: usize, result: Result<(), ServiceError>, data_set: DataSetId) {
        let pending = self.pending[index]
            .take()
            .expect("finishing a pending request");
        if result.is_err() {
            self.stats.errors += 1;
        }
        self.free.push(index);
        self.reply(pending.request, result, data_set);
    }

    fn reply(&mut self, request: Request, result: Result<(), ServiceError>, data_set: DataSetId) {
        let reply = Reply {
            user: request.user,
            result,
            buf: request.buf,
            data_set,
        };
        match request.reply {
            ReplyTo::Poller => {
                // Room: at most one reply per pending slot, and the table's size is its
                // capacity; a refused request (while closing) took no slot but is
                // answered within the round it came in.
                self.replies.push_back(reply);
            }
            // Never blocks: each requester's channel has room for the replies it awaits.
            // A requester that went away no longer needs its reply.
            ReplyTo::Channel(channel) => drop(channel.try_send(reply)),
        }
    }

    /// Answers a request that arrived after `close`.
    fn refuse(&mut self, request: Request) {
        self.reply(
            request,
            Err(ServiceError::ShuttingDown),
            DataSetId::default(),
        );
    }

    pub fn status(&mut self, now_ms: u64) -> PrimaryStatus {
        let lanes = self.node.lanes();
        let lanes_up = self.node.lanes_up();
        let lanes_dropped = self.node.lanes_dropped();
        let last_error = self.node.last_error().map(str::to_string);
        let waiting = self.queued.front().and_then(|&i| {
            let pending = self.pending[i]
                .as_ref()
                .expect("queued requests are pending");
            pending.waiting_since_ms
        });
        let requests_in_flight = self.in_flight();
        let primary = self.node.primary();
        let last_closed = primary.last_closed();
        let applied = primary.peer_applied();
        PrimaryStatus {
            lanes,
            lanes_up,
            lanes_dropped,
            last_error,
            stalled: primary.stalled().map(ToString::to_string),
            last_closed,
            last_sent: primary.stats().last_sent,
            applied,
            lag_data_sets: last_closed.0.saturating_sub(applied.0),
            lag_bytes: primary.retention_bytes(),
            lag_ms: self
                .closed
                .front()
                .map_or(0, |&(_, at)| now_ms.saturating_sub(at)),
            retention_window_bytes: self.window_bytes,
            requests_in_flight,
            window_full: waiting.is_some(),
            primary: primary.stats(),
            service: self.stats,
            generation: primary.generation(),
            ancestors: primary.ancestors().to_vec(),
            start: primary.start(),
            resync: primary.resync_stats(),
            out_of_sync_extents: primary.out_of_sync_extents(),
            window_full_since_ms: waiting,
            waiting_for_resync_room: waiting.is_some() && primary.waits_for_resync_room(),
        }
    }
}

/// Wakes a poller that parks.
struct Unpark(Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ordo_core::primary::{Primary, PrimaryConfig};
    use ordo_core::storage::{Geometry, MemStorage};

    /// Calls `op` on the service, polling it (time standing still) until the reply comes.
    fn call(service: &mut PrimaryService<MemStorage>, op: Op, buf: Vec<u8>) -> Reply {
        let (reply, replies) = crossbeam_channel::bounded(1);
        let request = Request {
            op,
            buf,
            user: 0,
            reply: ReplyTo::Channel(reply),
        };
        service
            .frontend()
            .submit(request)
            .expect("room in the ring");
        for _ in 0..10_000 {
            service.poll(0);
            if let Ok(reply) = replies.try_recv() {
                return reply;
            }
        }
        panic!("no reply to {op:?}");
    }

    #[test]
    fn a_closed_data_set_the_lag_queue_has_no_room_for_is_counted() {
        // No secondary: every data set closed stays unapplied.
        let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let volume = MemStorage::new(Geometry::new(1 << 20, 4096).unwrap()).unwrap();
        let config = PrimaryConfig {
            volume_names: vec!["a".into()],
            lanes: 1,
            ..PrimaryConfig::default()
        };
        let infos =
            ordo_core::storage::describe(&config.volume_names, std::slice::from_ref(&volume));
        let record = MemStorage::new(ordo_core::primary::record_geometry(&infos)).unwrap();
        let generation = ordo_core::protocol::GenerationId(7);
        let record = ordo_core::primary::format_record(record, &infos, generation, true).unwrap();
        let primary = Primary::new(config, vec![volume], record, 1).unwrap();
        let node = PrimaryNode::new(primary, nobody.local_addr().unwrap(), 1).unwrap();
        let mut service = PrimaryService::new(node, 4, 1 << 20);
        let write = Op::Write {
            volume: VolumeId(0),
            offset: 0,
            fua: false,
        };

        call(&mut service, write, vec![1; 4096]).result.unwrap();
        let first = call(&mut service, Op::Flush, Vec::new());
        assert_eq!(first.result, Ok(()));
        assert_eq!(service.closed.len(), 1, "a closed data set is timed");
        assert_eq!(service.status(0).service.lag_queue_full, 0);

        // Fill the queue to its bound: the next closed data set finds no room.
        while service.closed.len() < service.closed.capacity() {
            service.closed.push_back((first.data_set, 0));
        }
        call(&mut service, write, vec![2; 4096]).result.unwrap();
        let second = call(&mut service, Op::Flush, Vec::new());
        assert!(
            second.data_set > first.data_set,
            "the flush closed a data set"
        );
        assert_eq!(service.closed.len(), service.closed.capacity());
        assert_eq!(service.status(0).service.lag_queue_full, 1);
    }
}

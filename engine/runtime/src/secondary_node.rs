//! A secondary on real sockets. Three kinds of threads:
//!
//! - an acceptor (started by `new`, not pinned) accepts the primary's lanes, assigns each a
//!   slot, and starts its receiver thread;
//! - one receiver thread per lane blocks in reads on its connection, decodes and checks
//!   each frame (crc included), and hands records straight to the secondary's `Inbox`:
//!   into the staging arena and the lock-free reorder buffer, concurrently from every
//!   lane. It tells the poller only of the lane's handshake and of its end, through a
//!   channel, and wakes the poller (`unpark`) after each read that staged something;
//! - the poller (whoever calls `poll`, usually pinned) owns the `Secondary` state machine
//!   and the sending half of each lane: one `poll` is one bounded round of its work (lane
//!   events, journal, apply, transmit); the caller loops it under an idle policy.
//!
//! Receivers are started by the acceptor rather than the poller so that they do not
//! inherit a pinned poller's single-core affinity; they run where the scheduler puts
//! them, or on the core given to `with_receiver_core`. Why this split: decoding, checking
//! and staging a frame is the per-byte work, and it scales with the lanes; ordering is
//! not needed for it (the reorder buffer orders). What must be serial (the journal's
//! order, the applied watermark, applying data sets one after another) is the poller's.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::idle::IdlePolicy;

use crate::lane::{FrameReader, Lane, LaneError};
use ordo_core::protocol::{
    PeerError, PrimaryHistory, MAX_CONTROL_FRAME_BYTES, RECORD_FRAME_OVERHEAD_BYTES,
};
use ordo_core::secondary::{Delivered, Inbox, Received, Secondary};
use ordo_core::storage::Storage;

/// Outgoing buffer per lane: acknowledgements and the watermark are small.
const TX_BYTES: usize = 256 << 10;
/// A connection that has not sent the primary's Hello by then is dropped, so idle or
/// stray connections cannot hold the lane slots.
const HANDSHAKE_MS: u64 = 10_000;
/// How long the acceptor sleeps when no connection is waiting (connections are rare; this
/// bounds how late a new lane starts and how long stopping takes).
const ACCEPT_IDLE: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub lanes_accepted: u64,
    /// Connections refused because every lane slot was taken.
    pub lanes_refused: u64,
    /// Lanes dropped for a bad frame, a protocol error or a closed socket.
    pub lanes_dropped: u64,
}

/// What the acceptor and the receiver threads tell the poller.
#[derive(Debug)]
enum Event {
    /// A new lane in slot `index`, its receiver running.
    Connected {
        index: usize,
        slot: LaneSlot,
        peer: String,
    },
    /// A connection refused: every slot was taken.
    Refused { peer: String },
    /// Accepting failed (the listener broke); the node keeps its lanes.
    AcceptError(String),
    /// The primary's Hello on a lane passed the group and volume checks; its history is
    /// the poller's to decide on.
    Hello {
        index: usize,
        generation: u64,
        history: PrimaryHistory,
    },
    /// A lane ended: the peer closed it, sent something wrong, or the poller shut it.
    Ended {
        index: usize,
        generation: u64,
        error: LaneError,
    },
}

/// The inbox receivers fill, and its version (`Secondary::inbox_version`): a re-base
/// replaces it, and each receiver, checking the version (one atomic load) before each read,
/// takes the new one (under the lock, once per re-base).
#[derive(Debug)]
struct SharedInbox {
    current: Mutex<Arc<Inbox>>,
    version: AtomicU64,
}

impl SharedInbox {
    fn new(inbox: Arc<Inbox>, version: u64) -> SharedInbox {
        SharedInbox {
            current: Mutex::new(inbox),
            version: AtomicU64::new(version),
        }
    }

    fn version(&self) -> u64 {
        // Acquire, pairing with the Release in `replace`: a receiver that sees the new
        // version finds the new inbox under the lock.
        self.version.load(Ordering::Acquire)
    }

    fn replace(&self, inbox: Arc<Inbox>, version: u64) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = inbox;
        self.version.store(version, Ordering::Release);
    }

    /// The inbox and the version it is (read together under the lock).
    fn current(&self) -> (Arc<Inbox>, u64) {
        let inbox = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (Arc::clone(&inbox), self.version.load(Ordering::Acquire))
    }
}

/// A lane's sending half and the receiver thread reading its other half.
#[derive(Debug)]
struct LaneSlot {
    lane: Lane,
    /// Tells this connection's events from those of an earlier one in the same slot.
    generation: u64,
    receiver: Option<JoinHandle<()>>,
}

impl Drop for LaneSlot {
    /// The receiver holds its own handle on the connection: shut it, or the thread would
    /// block in its read until the primary closes the connection.
    fn drop(&mut self) {
        self.lane.shutdown();
    }
}

/// The acceptor thread and what it shares with the poller.
#[derive(Debug)]
struct Acceptor {
    stop: Arc<AtomicBool>,
    /// Slots the poller freed, for the acceptor to reuse.
    freed: Sender<usize>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // Relaxed: the flag orders nothing else; the join publishes the thread's end.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panicked acceptor has nothing to hand back.
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
pub struct SecondaryNode<S: Storage> {
    secondary: Secondary<S>,
    local_addr: SocketAddr,
    lanes: Vec<Option<LaneSlot>>,
    events: Receiver<Event>,
    /// The thread to wake when records arrive: the poller, once it has polled.
    poller: Arc<OnceLock<Thread>>,
    acceptor: Acceptor,
    /// When each lane was accepted (for the handshake deadline).
    accepted_ms: Vec<u64>,
    /// The inbox receivers fill (a re-base replaces the secondary's).
    inbox: Arc<SharedInbox>,
    last_error: Option<String>,
    stats: NodeStats,
    /// The secondary said a held resync does not fit (logged once each time it starts to).
    held_full: bool,
}

impl<S: Storage> SecondaryNode<S> {
    /// `lanes` slots; a frame may carry up to `max_write_bytes` of payload. Starts the
    /// acceptor thread on `listener`.
    pub fn new(
        secondary: Secondary<S>,
        listener: TcpListener,
        lanes: usize,
        max_write_bytes: u32,
    ) -> io::Result<Self> {
        Self::with_receiver_core(secondary, listener, lanes, max_write_bytes, None)
    }

    /// `new`, with every receiver thread pinned to `receiver_core` if given.
    pub fn with_receiver_core(
        secondary: Secondary<S>,
        listener: TcpListener,
        lanes: usize,
        max_write_bytes: u32,
        receiver_core: Option<usize>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let (events_tx, events) = crossbeam_channel::unbounded();
        let (freed, freed_rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = Arc::new(OnceLock::new());
        let inbox = Arc::new(SharedInbox::new(
            Arc::clone(secondary.inbox()),
            secondary.inbox_version(),
        ));
        let accepting = Accepting {
            listener,
            occupied: vec![false; lanes],
            generations: 0,
            max_frame_bytes: (RECORD_FRAME_OVERHEAD_BYTES + max_write_bytes as usize)
                .max(MAX_CONTROL_FRAME_BYTES),
            inbox: Arc::clone(&inbox),
            events: events_tx,
            freed: freed_rx,
            stop: Arc::clone(&stop),
            poller: Arc::clone(&poller),
            receiver_core,
        };
        let thread = std::thread::Builder::new()
            .name("ordo-accept".into())
            .spawn(move || accepting.run())?;
        Ok(SecondaryNode {
            secondary,
            local_addr,
            lanes: (0..lanes).map(|_| None).collect(),
            events,
            poller,
            acceptor: Acceptor {
                stop,
                freed,
                thread: Some(thread),
            },
            accepted_ms: vec![0; lanes],
            inbox,
            last_error: None,
            stats: NodeStats::default(),
            held_full: false,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    pub fn secondary(&self) -> &Secondary<S> {
        &self.secondary
    }

    /// For reads at quiescence (`verify`); frames and storage stay with `poll`.
    pub fn secondary_mut(&mut self) -> &mut Secondary<S> {
        &mut self.secondary
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    pub fn lanes_up(&self) -> usize {
        self.lanes.iter().filter(|l| l.is_some()).count()
    }

    /// Stops accepting, ends every lane, waits for the threads, and gives the secondary
    /// back.
    pub fn into_secondary(mut self) -> Secondary<S> {
        self.acceptor.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.acceptor.thread.take() {
            let _ = thread.join();
        }
        // Lanes the acceptor announced but the poller never took.
        while let Ok(event) = self.events.try_recv() {
            drop(event);
        }
        for slot in &mut self.lanes {
            if let Some(mut slot) = slot.take() {
                slot.lane.shutdown();
                if let Some(receiver) = slot.receiver.take() {
                    // A receiver that panicked has nothing to hand back; its lane is gone.
                    let _ = receiver.join();
                }
            }
        }
        self.secondary
    }

    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Why the last lane was dropped, for the operator's log.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// One round; true if it did any work.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        self.poller.get_or_init(std::thread::current);
        let mut work = self.events(now_ms);
        for index in 0..self.lanes.len() {
            let Some(slot) = &mut self.lanes[index] else {
                continue;
            };
            if !self.secondary.lane_ready(index) && now_ms > self.accepted_ms[index] + HANDSHAKE_MS
            {
                self.drop_lane(index, &LaneError::NoHandshake(HANDSHAKE_MS));
                continue;
            }
            let (tx, room) = slot.lane.tx_room();
            let sent = self.secondary.poll_transmit(index, tx, room);
            match slot.lane.send() {
                Ok(_) => work |= sent > 0,
                Err(error) => self.drop_lane(index, &error),
            }
        }
        self.secondary.tick(now_ms);
        let held_full = self.secondary.held_resync_full();
        if held_full && !self.held_full {
            tracing::warn!(
                "the held resync fills the journal window before its end point: it cannot be applied as one unit, so it waits for the operator (`ordo resync --allow-inconsistent` lets it go on, the replica INCONSISTENT until it ends); the replica stays the image it was"
            );
        }
        self.held_full = held_full;
        work |= self.secondary.poll_storage() > 0;
        let version = self.secondary.inbox_version();
        if self.inbox.version() != version {
            // Re-based: every receiver fills the new inbox from its next read on.
            self.inbox
                .replace(Arc::clone(self.secondary.inbox()), version);
        }
        work
    }

    /// Handles what the acceptor and the receiver threads reported.
    fn events(&mut self, now_ms: u64) -> bool {
        let mut work = false;
        while let Ok(event) = self.events.try_recv() {
            work = true;
            match event {
                Event::Connected { index, slot, peer } => {
                    tracing::info!("lane {index} connected from {peer}");
                    assert!(self.lanes[index].is_none(), "the acceptor gave a free slot");
                    self.lanes[index] = Some(slot);
                    self.accepted_ms[index] = now_ms;
                    self.secondary.lane_up(index);
                    self.stats.lanes_accepted += 1;
                }
                Event::Refused { peer } => {
                    self.stats.lanes_refused += 1;
                    tracing::warn!(
                        "refused a connection from {peer}: all {} lanes are taken",
                        self.lanes.len()
                    );
                }
                Event::AcceptError(error) => self.last_error = Some(error),
                Event::Hello {
                    index,
                    generation,
                    history,
                } => {
                    if !self.is_current(index, generation) {
                        continue;
                    }
                    if let Err(error) = self.secondary.lane_hello(index, &history) {
                        tracing::error!("lane {index}: {error}");
                        self.tell_and_drop(index, &LaneError::Peer(error));
                    }
                }
                Event::Ended {
                    index,
                    generation,
                    error,
                } => {
                    if !self.is_current(index, generation) {
                        continue; // dropped already
                    }
                    if let LaneError::Peer(PeerError::Mismatch { .. }) = error {
                        self.tell_and_drop(index, &error);
                    } else {
                        self.drop_lane(index, &error);
                    }
                }
            }
        }
        work
    }

    /// Tells the primary who we are (so that it names the mismatch or the unrelated
    /// history too; best effort), then drops the lane.
    fn tell_and_drop(&mut self, index: usize, error: &LaneError) {
        let slot = self.lanes[index].as_mut().expect("current");
        let (tx, _) = slot.lane.tx_room();
        self.secondary.encode_hello(tx);
        let _ = slot.lane.send();
        self.drop_lane(index, error);
    }

    fn is_current(&self, index: usize, generation: u64) -> bool {
        self.lanes[index]
            .as_ref()
            .is_some_and(|slot| slot.generation == generation)
    }

    /// Shuts the lane (dropping its slot does): its receiver thread wakes with an error,
    /// reports it (ignored: the slot's generation moved on) and ends by itself.
    fn drop_lane(&mut self, index: usize, error: &LaneError) {
        let peer = self.lanes[index]
            .take()
            .and_then(|slot| slot.lane.stream().peer_addr().ok());
        // The acceptor may reuse the slot; it ends only with the node.
        let _ = self.acceptor.freed.send(index);
        self.secondary.lane_down(index);
        self.stats.lanes_dropped += 1;
        let message = match peer {
            Some(peer) => format!("lane {index} from {peer}: {error}"),
            None => format!("lane {index}: {error}"),
        };
        tracing::warn!("dropped {message}");
        self.last_error = Some(message);
    }
}

/// The acceptor thread's state.
struct Accepting {
    listener: TcpListener,
    occupied: Vec<bool>,
    generations: u64,
    max_frame_bytes: usize,
    inbox: Arc<SharedInbox>,
    events: Sender<Event>,
    freed: Receiver<usize>,
    stop: Arc<AtomicBool>,
    poller: Arc<OnceLock<Thread>>,
    /// Where receivers run, if pinned.
    receiver_core: Option<usize>,
}

impl Accepting {
    fn run(mut self) {
        // Relaxed: see `Acceptor::drop`.
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(index) = self.freed.try_recv() {
                self.occupied[index] = false;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.start_lane(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_IDLE),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = self.events.send(Event::AcceptError(format!("accept: {e}")));
                    std::thread::sleep(ACCEPT_IDLE);
                }
            }
        }
    }

    fn start_lane(&mut self, stream: TcpStream) {
        let peer = stream.peer_addr().map(|a| a.to_string());
        let peer = peer.unwrap_or_else(|_| "an unknown address".to_string());
        let Some(index) = self.occupied.iter().position(|taken| !taken) else {
            let _ = self.events.send(Event::Refused { peer });
            return;
        };
        let (lane, reader) = match Lane::split(stream, self.max_frame_bytes, TX_BYTES) {
            Ok(split) => split,
            Err(e) => {
                let _ = self
                    .events
                    .send(Event::AcceptError(format!("lane setup: {e}")));
                return;
            }
        };
        self.generations += 1;
        let receiver_core = self.receiver_core;
        // The receiver starts reading only once the poller has been told of its lane, so
        // its events always come after `Connected`.
        let (go, started) = crossbeam_channel::bounded::<()>(1);
        let receiving = Receiving {
            reader,
            inbox: Arc::clone(&self.inbox),
            events: self.events.clone(),
            poller: Arc::clone(&self.poller),
            index,
            generation: self.generations,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("ordo-rx{index}"))
            .spawn(move || {
                if let Some(id) = receiver_core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                        tracing::warn!("receiver {index}: could not pin to core {id}");
                    }
                }
                if started.recv().is_ok() {
                    receiving.run();
                }
            });
        match spawned {
            Ok(receiver) => {
                self.occupied[index] = true;
                let slot = LaneSlot {
                    lane,
                    generation: self.generations,
                    receiver: Some(receiver),
                };
                let _ = self.events.send(Event::Connected { index, slot, peer });
                let _ = go.send(());
                self.wake();
            }
            Err(e) => {
                lane.shutdown();
                let _ = self
                    .events
                    .send(Event::AcceptError(format!("receiver thread: {e}")));
            }
        }
    }

    fn wake(&self) {
        if let Some(poller) = self.poller.get() {
            poller.unpark();
        }
    }
}

/// A receiver thread's state: one lane's reading half.
struct Receiving {
    reader: FrameReader,
    inbox: Arc<SharedInbox>,
    events: Sender<Event>,
    poller: Arc<OnceLock<Thread>>,
    index: usize,
    generation: u64,
}

impl Receiving {
    /// Reads frames until the lane ends, staging every record.
    fn run(mut self) {
        let (mut inbox, mut version) = self.inbox.current();
        let mut ready = false;
        let error = loop {
            let mut hello = None;
            let mut staged = false;
            let shared = &self.inbox;
            let result = self.reader.read_frames(|frame| {
                // Looked at for each frame, not once per read: a receiver blocked in its
                // read across a re-base must hand what then arrives (the first digest
                // requests of the resync) to the new inbox. The lane stays as ready as it
                // was: the primary sends records on it only once the poller answered its
                // Hello, which it does only after the re-base.
                if shared.version() != version {
                    (inbox, version) = shared.current();
                }
                match inbox.deliver(frame, ready)? {
                    Delivered::Hello(history) => {
                        // Every one, not only the first: a primary that began a new
                        // generation greets its lanes again, and the poller decides anew.
                        hello = Some(history);
                        ready = true;
                    }
                    Delivered::BeforeHello | Delivered::Record(Received::OutOfWindow) => {}
                    Delivered::DigestRequest | Delivered::Record(_) => staged = true,
                }
                Ok(())
            });
            let woke = hello.is_some() || staged;
            if let Some(history) = hello {
                let (index, generation) = (self.index, self.generation);
                // Unbounded: a primary greets a lane again only when it is not answered
                // or begins a new generation, and a connection ends once.
                let _ = self.events.send(Event::Hello {
                    index,
                    generation,
                    history,
                });
            }
            if woke {
                self.wake();
            }
            if let Err(error) = result {
                break error;
            }
        };
        let (index, generation) = (self.index, self.generation);
        let _ = self.events.send(Event::Ended {
            index,
            generation,
            error,
        });
        self.wake();
    }

    /// Wakes a parked poller; an atomic swap when it is running.
    fn wake(&self) {
        if let Some(poller) = self.poller.get() {
            poller.unpark();
        }
    }
}

/// A secondary node polling on its own thread until stopped.
#[derive(Debug)]
pub struct SecondaryThread<S: Storage + Send + 'static> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<SecondaryNode<S>>,
}

impl<S: Storage + Send + 'static> SecondaryThread<S> {
    /// Polls `node` on a new thread, idling as `idle` says, with a millisecond clock that
    /// starts now.
    pub fn spawn(mut node: SecondaryNode<S>, idle: IdlePolicy) -> SecondaryThread<S> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            // Relaxed: the flag orders nothing else; the join below publishes the node.
            while !flag.load(Ordering::Relaxed) {
                let did = node.poll(started.elapsed().as_millis() as u64);
                idle.after_round(did.into());
            }
            node
        });
        SecondaryThread { stop, thread }
    }

    /// Asks the thread to stop after its current round and hands the node back (its
    /// connections still open); `Err` if the thread panicked.
    pub fn stop(self) -> std::thread::Result<SecondaryNode<S>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        self.thread.join()
    }
}

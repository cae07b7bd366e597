//! The primary's lane sender: a thread of its own owns every lane's socket and makes all
//! of the lanes' system calls, so the poller that takes requests, writes, acknowledges and
//! sequences never does. Each connected lane has two single-producer single-consumer byte
//! rings (rtrb: a bounded ring after Lamport, with cached head and tail indices): the
//! poller appends the frames `poll_transmit` batched (bytes copied from retention, no
//! lock, no allocation) and the sender writes them to the socket with vectored sends; the
//! sender appends what the secondary sent and the poller decodes it.
//!
//! Either side ends a lane by dropping its ends of the rings: the other sees them
//! abandoned. An idle sender waits in epoll on its sockets and a waker; the poller wakes
//! it only when it published bytes while the sender was waiting.

use std::io::{self, IoSlice, Read};
use std::net::TcpStream;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::{Events, Interest, Poll, Token, Waker};
use rtrb::{Consumer, Producer, RingBuffer};

use crate::lane::{detect_dead_peer, LaneError};

/// Bytes of frames a lane's outgoing ring holds: several rounds of the largest writes.
pub const TX_RING_BYTES: usize = 8 << 20;
/// Bytes from the secondary a lane's incoming ring holds (acks are small).
const RX_RING_BYTES: usize = 256 << 10;
/// One socket read's room.
const RECV_BYTES: usize = 64 << 10;
/// The longest an idle sender sleeps without being woken (it is woken for every byte to
/// send and every byte that arrives; this only bounds a lost wake).
const IDLE_WAIT: Duration = Duration::from_millis(10);
const WAKER: Token = Token(usize::MAX);

/// The poller's ends of one connected lane.
#[derive(Debug)]
pub struct LaneRings {
    /// Frames to send.
    pub tx: Producer<u8>,
    /// Bytes the secondary sent.
    pub rx: Consumer<u8>,
}

/// A lane handed to the sender: its socket and the sender's ends of its rings.
struct NewLane {
    index: usize,
    stream: TcpStream,
    tx: Consumer<u8>,
    rx: Producer<u8>,
}

/// The poller's handle on the sender thread; dropping it ends the thread.
#[derive(Debug)]
pub struct LaneSender {
    new_lanes: Sender<NewLane>,
    errors: Receiver<(usize, LaneError)>,
    waker: Arc<Waker>,
    waiting: Arc<AtomicBool>,
}

impl std::fmt::Debug for NewLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewLane")
            .field("index", &self.index)
            .finish()
    }
}

impl LaneSender {
    /// Starts the sender thread for up to `lanes` lanes, pinned to `core` if given.
    pub fn spawn(lanes: usize, core: Option<usize>) -> io::Result<LaneSender> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let waiting = Arc::new(AtomicBool::new(false));
        let (new_lanes, taken) = crossbeam_channel::bounded(lanes);
        let (failed, errors) = crossbeam_channel::bounded(lanes);
        let thread = Thread {
            poll,
            waiting: Arc::clone(&waiting),
            taken,
            failed,
            lanes: (0..lanes).map(|_| None).collect(),
        };
        std::thread::Builder::new()
            .name("lane-send".into())
            .spawn(move || {
                if let Some(id) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                        tracing::warn!("lane sender: could not pin to core {id}");
                    }
                }
                thread.run()
            })?;
        Ok(LaneSender {
            new_lanes,
            errors,
            waker,
            waiting,
        })
    }

    /// Hands a connected lane to the sender; returns the poller's ends of its rings.
    pub fn add(&self, index: usize, stream: TcpStream) -> Result<LaneRings, LaneError> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        detect_dead_peer(&stream)?;
        let (tx, tx_out) = RingBuffer::new(TX_RING_BYTES);
        let (rx_in, rx) = RingBuffer::new(RX_RING_BYTES);
        let lane = NewLane {
            index,
            stream,
            tx: tx_out,
            rx: rx_in,
        };
        self.new_lanes
            .try_send(lane)
            .map_err(|_| io::Error::other("the lane sender thread has ended or has no room"))?;
        let _ = self.waker.wake();
        Ok(LaneRings { tx, rx })
    }

    /// Why the sender dropped a lane, if it did.
    pub fn take_error(&self) -> Option<(usize, LaneError)> {
        self.errors.try_recv().ok()
    }

    /// After publishing bytes: wakes the sender if it is waiting (a syscall only then).
    pub fn published(&self) {
        // SeqCst fence and load against the sender's SeqCst store of `waiting` and its
        // load of the rings after it: either the sender sees our bytes before it waits,
        // or we see it waiting and wake it (Dekker's pattern).
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// A lane on the sender's side.
struct Connected {
    stream: mio::net::TcpStream,
    tx: Consumer<u8>,
    rx: Producer<u8>,
    readable: bool,
    writable: bool,
}

struct Thread {
    poll: Poll,
    waiting: Arc<AtomicBool>,
    taken: Receiver<NewLane>,
    failed: Sender<(usize, LaneError)>,
    lanes: Vec<Option<Connected>>,
}

impl Thread {
    fn run(mut self) {
        let mut events = Events::with_capacity(128);
        let mut scratch = vec![0u8; RECV_BYTES];
        loop {
            if !self.take_new_lanes() {
                return;
            }
            let mut work = false;
            for index in 0..self.lanes.len() {
                let Some(lane) = self.lanes[index].as_mut() else {
                    continue;
                };
                match lane.pump(&mut scratch) {
                    Ok(did) => work |= did,
                    Err(error) => self.drop_lane(index, error),
                }
            }
            if !work {
                self.wait(&mut events);
            }
        }
    }

    /// Takes lanes the poller handed over; false once the poller is gone.
    fn take_new_lanes(&mut self) -> bool {
        loop {
            match self.taken.try_recv() {
                Ok(new) => {
                    let mut stream = mio::net::TcpStream::from_std(new.stream);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, Token(new.index), interest)
                    {
                        let _ = self.failed.try_send((new.index, e.into()));
                        continue;
                    }
                    self.lanes[new.index] = Some(Connected {
                        stream,
                        tx: new.tx,
                        rx: new.rx,
                        readable: true,
                        writable: true,
                    });
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn drop_lane(&mut self, index: usize, error: LaneError) {
        if let Some(mut lane) = self.lanes[index].take() {
            let _ = self.poll.registry().deregister(&mut lane.stream);
        }
        // The poller learns of it from the abandoned rings; this says why.
        let _ = self.failed.try_send((index, error));
    }

    /// Waits for a socket, the poller's wake, or `IDLE_WAIT`.
    fn wait(&mut self, events: &mut Events) {
        self.waiting.store(true, Ordering::SeqCst);
        // Orders the store before the rings' loads (see `LaneSender::published`).
        fence(Ordering::SeqCst);
        let pending = self
            .lanes
            .iter()
            .flatten()
            .any(|l| l.tx.slots() > 0 && l.writable);
        if !pending && self.taken.is_empty() {
            // Interrupted or failed: the loop looks at everything again either way.
            let _ = self.poll.poll(events, Some(IDLE_WAIT));
            for event in events.iter() {
                if let Some(Some(lane)) = self.lanes.get_mut(event.token().0) {
                    lane.readable |= event.is_readable() || event.is_read_closed();
                    lane.writable |= event.is_writable() || event.is_write_closed();
                }
            }
        }
        self.waiting.store(false, Ordering::SeqCst);
    }
}

impl Connected {
    /// Sends what the poller queued and receives what the secondary sent; true if it moved
    /// any bytes.
    fn pump(&mut self, scratch: &mut [u8]) -> Result<bool, LaneError> {
        if self.tx.is_abandoned() {
            return Err(LaneError::Io(io::Error::other("dropped by the poller")));
        }
        let mut work = false;
        let queued = self.tx.slots();
        if queued > 0 && self.writable {
            let chunk = self
                .tx
                .read_chunk(queued)
                .expect("as many bytes as it holds");
            let (first, second) = chunk.as_slices();
            let slices = [IoSlice::new(first), IoSlice::new(second)];
            let socket = socket2::SockRef::from(&self.stream);
            match socket.send_vectored_with_flags(&slices, libc::MSG_DONTWAIT) {
                Ok(0) => return Err(LaneError::Closed),
                Ok(sent) => {
                    chunk.commit(sent);
                    work = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.readable && self.rx.slots() >= scratch.len() {
            match self.stream.read(scratch) {
                Ok(0) => return Err(LaneError::Closed),
                Ok(n) => {
                    self.rx
                        .push_entire_slice(&scratch[..n])
                        .expect("room for a whole read was checked");
                    work = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(work)
    }
}

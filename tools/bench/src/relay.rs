//! A userspace link for `ordo bench --link-delay-ms D --link-rate R`: this kernel has no
//! netem, so the lanes go through a TCP relay that holds every chunk it reads for D before
//! writing it on (RTT = 2D), and can cap each direction at R bytes per second. Each
//! direction is one wire shared by every lane, as on a real link: a chunk is serialized
//! (len/R) after the chunks read before it on any lane, then travels D. Each direction of
//! a connection is a reader and a writer thread joined by a bounded channel, so what is in
//! flight is bounded; buffers are recycled. When either side ends or fails, the end
//! travels the link after the bytes before it, then the whole connection is cut both
//! ways, so the primary sees its lane drop as on a real link loss.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{Builder, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

/// The link a relay emulates, the same both ways.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkShape {
    /// One way: a round trip takes twice this.
    pub delay: Duration,
    /// Per direction, shared by all connections; `None`: as fast as loopback goes.
    pub rate_bytes_per_s: Option<u64>,
}

/// What a relay has carried so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub connections: u64,
    /// Written on to upstream (the primary's frames).
    pub bytes_upstream: u64,
    /// Written back to the client (the secondary's answers).
    pub bytes_downstream: u64,
}

const CHUNK_BYTES: usize = 256 << 10;
/// Chunks queued per direction of a connection: 128 MiB at most, far above what a link
/// without a cap holds (3 GB/s × 2 ms: 6 MB).
const CHUNKS_IN_FLIGHT: usize = 512;
/// A capped direction holds what is on the wire (rate × delay) and a queue for the wire
/// of about this much, as a bottleneck's buffer would (netem's default: 1000 packets).
/// Beyond it the readers wait and TCP pushes back on the senders.
const BOTTLENECK_QUEUE_BYTES: u64 = 1 << 20;
/// Live connections at most (ordo bench opens at most 64 lanes).
const MAX_CONNECTIONS: usize = 256;
const MAX_DELAY: Duration = Duration::from_secs(3600);
const ACCEPT_POLL: Duration = Duration::from_millis(2);
const CONNECT_LIMIT: Duration = Duration::from_secs(2);
/// Sleep until this close to a chunk's due time, then yield until it is due: a sleep alone
/// overshoots by 70-160 µs (median) on this VM, this by under 1 µs.
const SPIN_WINDOW: Duration = Duration::from_micros(250);
/// A link's sockets; a direction is named by the side it reads from.
const CLIENT: usize = 0;
const UPSTREAM: usize = 1;

/// One direction of the link, shared by every connection.
#[derive(Debug)]
struct Wire {
    shape: LinkShape,
    /// When the chunks booked so far have been serialized.
    free_at: Mutex<Instant>,
    /// Written on, for the report.
    bytes: AtomicU64,
}

impl Wire {
    /// When a chunk of `len` bytes read at `arrived` is due at the far end: booked as it
    /// is read, so the lanes take the wire in the order their bytes came.
    fn book(&self, arrived: Instant, len: usize) -> Instant {
        let Some(rate) = self.shape.rate_bytes_per_s else {
            return arrived + self.shape.delay;
        };
        // At most 2^18 × 10^9 / 1: no overflow.
        let serialization = Duration::from_nanos(len as u64 * 1_000_000_000 / rate);
        let mut free_at = self.free_at.lock().unwrap_or_else(PoisonError::into_inner);
        *free_at = (*free_at).max(arrived) + serialization;
        *free_at + self.shape.delay
    }

    /// When a reader that booked a chunk due at `due` may read on: once the wire's queue
    /// is down to its bound. `None`: at once.
    fn read_on_at(&self, due: Instant) -> Option<Instant> {
        let rate = self.shape.rate_bytes_per_s?;
        let queue = Duration::from_nanos(BOTTLENECK_QUEUE_BYTES * 1_000_000_000 / rate);
        due.checked_sub(self.shape.delay + queue)
    }
}

#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    wires: Arc<[Wire; 2]>,
    acceptor: Option<JoinHandle<Vec<Connection>>>,
}

impl Relay {
    /// Listens on a free loopback port; every connection made there is joined to a new
    /// connection to `upstream`. Refuses a rate of 0 or a delay over an hour.
    pub fn start(upstream: SocketAddr, shape: LinkShape) -> io::Result<Relay> {
        if shape.rate_bytes_per_s == Some(0) || shape.delay > MAX_DELAY {
            let why = format!("no such link: {shape:?}");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let wire = || Wire {
            shape,
            free_at: Mutex::new(Instant::now()),
            bytes: AtomicU64::new(0),
        };
        let wires = Arc::new([wire(), wire()]);
        let (stopping, counting, shared) = (stop.clone(), connections.clone(), wires.clone());
        let acceptor = Builder::new()
            .name("relay-accept".into())
            .spawn(move || accept(&listener, upstream, &shared, &stopping, &counting))?;
        Ok(Relay {
            addr,
            stop,
            connections,
            wires,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> RelayStats {
        // Relaxed: counters for a report; they order nothing.
        RelayStats {
            connections: self.connections.load(Relaxed),
            bytes_upstream: self.wires[CLIENT].bytes.load(Relaxed),
            bytes_downstream: self.wires[UPSTREAM].bytes.load(Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Relaxed: the acceptor sees it within a poll; joining it orders the rest.
        self.stop.store(true, Relaxed);
        // Its connections, dropped here, cut their links. If it panicked (it has said so on
        // stderr), they were dropped as it unwound.
        if let Some(acceptor) = self.acceptor.take() {
            drop(acceptor.join());
        }
    }
}

/// Both sockets of a relayed connection.
#[derive(Debug)]
struct Link {
    sockets: [TcpStream; 2],
    /// Taken when cut: the threads' waits then see the channel disconnected.
    cut_signal: Mutex<Option<Sender<()>>>,
}

impl Link {
    /// Shuts both sockets down both ways: both ends see the link drop, and every reader
    /// and writer of it returns.
    fn cut(&self) {
        // A poisoned lock only means a relay thread panicked; the signal is still whole.
        let mut signal = self
            .cut_signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(signal.take());
        for socket in &self.sockets {
            socket.shutdown(Shutdown::Both).ok(); // Already shut down or reset: as good.
        }
    }
}

/// A link and its threads; dropping it cuts the link and joins them.
#[derive(Debug)]
struct Connection {
    link: Arc<Link>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.link.cut();
        for thread in self.threads.drain(..) {
            thread.join().ok(); // A panic has been printed; the link is cut either way.
        }
    }
}

/// Accepts until stopped; returns the connections still live, for the relay to cut.
fn accept(
    listener: &TcpListener,
    upstream: SocketAddr,
    wires: &Arc<[Wire; 2]>,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Vec<Connection> {
    let mut connections: Vec<Connection> = Vec::new();
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let finished = |c: &mut Connection| c.threads.iter().all(|t| t.is_finished());
                connections.extract_if(.., finished).for_each(drop);
                if connections.len() >= MAX_CONNECTIONS {
                    tracing::warn!("relay: {MAX_CONNECTIONS} connections already; refused one");
                    continue;
                }
                match connect(client, upstream, wires) {
                    Ok(connection) => {
                        connections.push(connection);
                        count.fetch_add(1, Relaxed); // Relaxed: a counter for the report.
                    }
                    Err(error) => tracing::warn!("relay: connecting to {upstream}: {error}"),
                }
                assert!(connections.len() <= MAX_CONNECTIONS);
            }
            Err(error) => {
                if error.kind() != io::ErrorKind::WouldBlock {
                    tracing::warn!("relay: accept: {error}");
                }
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
    connections
}

/// Joins `client` to a new connection to `upstream`: a reader and a writer each way.
fn connect(
    client: TcpStream,
    upstream: SocketAddr,
    wires: &Arc<[Wire; 2]>,
) -> io::Result<Connection> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&upstream, CONNECT_LIMIT)?;
    for socket in [&client, &server] {
        socket.set_nodelay(true)?;
    }
    let (cut_signal, cut) = bounded::<()>(0);
    let link = Arc::new(Link {
        sockets: [client, server],
        cut_signal: Mutex::new(Some(cut_signal)),
    });
    // Dropped on a failure below: the threads started so far are cut off and joined.
    let mut connection = Connection {
        link: Arc::clone(&link),
        threads: Vec::with_capacity(4),
    };
    for from in [CLIENT, UPSTREAM] {
        let (chunks_in, chunks) = bounded::<Chunk>(CHUNKS_IN_FLIGHT);
        let (recycle, recycled) = bounded::<Box<[u8]>>(CHUNKS_IN_FLIGHT);
        let (reading, writing) = (Arc::clone(&link), Arc::clone(&link));
        let (reader_wires, writer_wires) = (Arc::clone(wires), Arc::clone(wires));
        let (reader_cut, writer_cut) = (cut.clone(), cut.clone());
        let name = ["relay-up", "relay-down"][from];
        let reader = Builder::new().name(format!("{name}-read")).spawn(move || {
            let (socket, wire) = (&reading.sockets[from], &reader_wires[from]);
            read_side(socket, wire, &chunks_in, &recycled, &reader_cut);
        });
        connection.threads.push(reader?);
        let writer = Builder::new().name(format!("{name}-write")).spawn(move || {
            let (socket, wire) = (&writing.sockets[1 - from], &writer_wires[from]);
            write_side(socket, wire, &chunks, &recycle, &writer_cut);
            writing.cut();
        });
        connection.threads.push(writer?);
    }
    Ok(connection)
}

/// Bytes to write on at `due`; `len == 0` is the end of their side, passed on in turn.
#[derive(Debug)]
struct Chunk {
    due: Instant,
    buf: Box<[u8]>,
    len: usize,
}

fn read_side(
    mut socket: &TcpStream,
    wire: &Wire,
    chunks: &Sender<Chunk>,
    recycled: &Receiver<Box<[u8]>>,
    cut: &Receiver<()>,
) {
    loop {
        // One the writer is done with, or a fresh calloc'd one, its pages untouched until
        // read into: the relay runs in the primary, whose peak memory ordo bench reports.
        let mut buf = recycled
            .try_recv()
            .unwrap_or_else(|_| vec![0; CHUNK_BYTES].into_boxed_slice());
        let len = loop {
            match socket.read(&mut buf) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // A failure ends this side as a close does: the far side sees the link drop.
                result => break result.unwrap_or(0),
            }
        };
        let due = wire.book(Instant::now(), len);
        if chunks.send(Chunk { due, buf, len }).is_err() || len == 0 {
            return;
        }
        // The wire's queue is full: leave the next bytes in the sender's socket (TCP's
        // back-pressure), to be read, and timed, once there is room.
        if let Some(read_on_at) = wire.read_on_at(due) {
            if !wait_until(read_on_at, Duration::ZERO, cut) {
                return;
            }
        }
    }
}

/// Writes each chunk on at its due time. Returns once its side's end has come through,
/// writing failed, or the link was cut; the caller then cuts the link.
fn write_side(
    mut socket: &TcpStream,
    wire: &Wire,
    chunks: &Receiver<Chunk>,
    recycle: &Sender<Box<[u8]>>,
    cut: &Receiver<()>,
) {
    let mut last_due = None;
    for chunk in chunks {
        assert!(chunk.len <= chunk.buf.len() && chunk.buf.len() == CHUNK_BYTES);
        // Booked in order: the wire only moves forward.
        assert!(
            last_due <= Some(chunk.due),
            "{last_due:?} then {:?}",
            chunk.due
        );
        last_due = Some(chunk.due);
        if !wait_until(chunk.due, SPIN_WINDOW, cut) || chunk.len == 0 {
            return;
        }
        if socket.write_all(&chunk.buf[..chunk.len]).is_err() {
            return;
        }
        wire.bytes.fetch_add(chunk.len as u64, Relaxed); // Relaxed: for the report.
        recycle.try_send(chunk.buf).ok(); // If the pool is full, this one is freed.
    }
}

/// Waits until `due`, sleeping until `spin` before it and yielding after: false at once
/// if the link is cut meanwhile.
fn wait_until(due: Instant, spin: Duration, cut: &Receiver<()>) -> bool {
    if let Some(early) = due.checked_sub(spin) {
        // Nothing is ever sent on `cut`: it only ends, when the link is cut.
        if Instant::now() < early && cut.recv_deadline(early) != Err(RecvTimeoutError::Timeout) {
            return false;
        }
    }
    while Instant::now() < due {
        std::thread::yield_now();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn shape(delay_ms: u64, rate_bytes_per_s: Option<u64>) -> LinkShape {
        let delay = Duration::from_millis(delay_ms);
        LinkShape {
            delay,
            rate_bytes_per_s,
        }
    }

    /// Echoes one connection back to itself until it ends, on a thread.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            io::copy(&mut &stream, &mut &stream).ok();
        });
        addr
    }

    /// A read sees the far end closed (not a timeout).
    fn assert_closed(mut stream: &TcpStream) {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        match stream.read(&mut [0u8; 16]) {
            Ok(0) => {}
            Ok(n) => panic!("read {n} bytes, not an end"),
            Err(e) => assert!(e.kind() != io::ErrorKind::WouldBlock, "still open: {e}"),
        }
    }

    #[test]
    fn bytes_arrive_whole_and_in_order_both_ways() {
        let relay = Relay::start(echo_server(), shape(1, None)).unwrap();
        let client = TcpStream::connect(relay.local_addr()).unwrap();
        let mut sent = vec![0u8; 8 << 20];
        ChaCha8Rng::seed_from_u64(3).fill_bytes(&mut sent);
        let mut received = vec![0u8; sent.len()];
        std::thread::scope(|s| {
            s.spawn(|| (&client).write_all(&sent).unwrap());
            (&client).read_exact(&mut received).unwrap();
        });
        assert!(received == sent, "the echo differs");
        // A ping after them: every byte before it has been written on (and counted).
        (&client).write_all(b"!").unwrap();
        (&client).read_exact(&mut [0u8; 1]).unwrap();
        let (stats, total) = (relay.stats(), sent.len() as u64);
        assert_eq!(stats.connections, 1);
        let each_way = [stats.bytes_upstream, stats.bytes_downstream];
        assert!(
            each_way.iter().all(|b| (total..=total + 1).contains(b)),
            "{stats:?}"
        );
    }

    /// The shortest of three round trips of a small message through `relay` to an echo.
    fn round_trip(relay: &Relay) -> Duration {
        let client = TcpStream::connect(relay.local_addr()).unwrap();
        client.set_nodelay(true).unwrap();
        let once = |_| {
            let started = Instant::now();
            (&client).write_all(b"ping").unwrap();
            let mut answer = [0u8; 4];
            (&client).read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"ping");
            started.elapsed()
        };
        (0..3).map(once).min().unwrap()
    }

    #[test]
    fn a_round_trip_takes_at_least_twice_the_delay() {
        let delayed = Relay::start(echo_server(), shape(30, None)).unwrap();
        let rtt = round_trip(&delayed);
        assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
        let direct = Relay::start(echo_server(), shape(0, None)).unwrap();
        let rtt = round_trip(&direct);
        assert!(rtt < Duration::from_millis(30), "{rtt:?} without delay");
    }

    #[test]
    fn a_capped_link_is_one_wire_for_all_its_connections() {
        let sink = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Relay::start(sink.local_addr().unwrap(), shape(0, Some(4 << 20))).unwrap();
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                let client = TcpStream::connect(relay.local_addr()).unwrap();
                let (upstream, _) = sink.accept().unwrap();
                s.spawn(move || (&client).write_all(&vec![7u8; 1 << 20]).unwrap());
                s.spawn(move || {
                    let mut draining = (&upstream).take(1 << 20);
                    assert_eq!(io::copy(&mut draining, &mut io::sink()).unwrap(), 1 << 20);
                });
            }
        });
        // 2 MiB in all at 4 MiB/s: half a second from the first byte's arrival (a quarter
        // if each connection had a wire of its own).
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
    }

    #[test]
    fn an_end_on_either_side_cuts_the_link_and_a_dropped_relay_cuts_all() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = server.local_addr().unwrap();
        let relay = Relay::start(upstream, shape(5, None)).unwrap();
        let client = TcpStream::connect(relay.local_addr()).unwrap();
        drop(server.accept().unwrap());
        assert_closed(&client);
        let client = TcpStream::connect(relay.local_addr()).unwrap();
        let (accepted, _) = server.accept().unwrap();
        drop(client);
        assert_closed(&accepted);
        // Bytes held for 10 s on the way do not keep a dropped relay waiting.
        let slow = Relay::start(upstream, shape(10_000, Some(1 << 20))).unwrap();
        let client = TcpStream::connect(slow.local_addr()).unwrap();
        let (accepted, _) = server.accept().unwrap();
        (&client).write_all(b"held up").unwrap();
        let started = Instant::now();
        drop(slow);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_closed(&client);
        assert_closed(&accepted);
    }

    #[test]
    fn a_link_with_no_bandwidth_is_refused() {
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
        let error = Relay::start(nowhere, shape(1, Some(0))).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}

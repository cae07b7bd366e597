//! A userspace link for `ordo bench --link-delay-ms D --link-rate R`: this kernel has no
//! netem, so the lanes go through a TCP relay that holds every chunk it reads for D before
//! writing it on (RTT = 2D), and can cap each direction at R bytes per second (a chunk
//! departs once the chunks before it have, plus its serialization time len/R, then
//! travels D). Each direction of each connection has a reader and a writer thread joined
//! by a bounded channel, so what is in flight is bounded; buffers are recycled, not
//! allocated per chunk. An end or a failure on one side is passed on to the other.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

/// The link a relay emulates, the same both ways.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkShape {
    /// One way.
    pub delay: Duration,
    /// Per direction; `None`: as fast as loopback goes.
    pub rate_bytes_per_s: Option<u64>,
}

const CHUNK_BYTES: usize = 256 << 10;
/// Chunks in flight per direction: 128 MiB at most, far above 3 GB/s × 2 ms.
const CHUNKS_IN_FLIGHT: usize = 512;
const ACCEPT_POLL: Duration = Duration::from_millis(2);
/// Sleep until this close to a chunk's due time, then yield until it is due.
const SPIN_WINDOW: Duration = Duration::from_micros(200);

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// Every socket relayed, to shut down when the relay is dropped.
    sockets: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on a free loopback port; every connection made there is joined to a new
    /// connection to `upstream`.
    pub fn start(upstream: SocketAddr, shape: LinkShape) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || accept(&listener, upstream, shape, &accepting))?;
        Ok(Relay {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().ok();
        }
        let sockets = std::mem::take(&mut *lock(&self.shared.sockets));
        for socket in &sockets {
            socket.shutdown(Shutdown::Both).ok();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for thread in threads {
            thread.join().ok();
        }
    }
}

/// A poisoned lock only means a relay thread panicked; the list itself is still whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept(listener: &TcpListener, upstream: SocketAddr, shape: LinkShape, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                if let Err(error) = join(client, upstream, shape, shared) {
                    tracing::warn!("relay: connecting to {upstream}: {error}");
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(error) => {
                tracing::warn!("relay: accept: {error}");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// Connects `client` to `upstream` through two delayed directions.
fn join(
    client: TcpStream,
    upstream: SocketAddr,
    shape: LinkShape,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(upstream)?;
    for socket in [&client, &server] {
        socket.set_nodelay(true)?;
    }
    {
        let mut sockets = lock(&shared.sockets);
        sockets.push(client.try_clone()?);
        sockets.push(server.try_clone()?);
    }
    let directions = [(client.try_clone()?, server.try_clone()?), (server, client)];
    let mut threads = lock(&shared.threads);
    for (from, to) in directions {
        let (full, filled) = bounded::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
        let (empty, emptied) = bounded::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        threads.push(std::thread::spawn(move || read_side(from, &full, &emptied)));
        threads.push(std::thread::spawn(move || {
            write_side(to, shape, &filled, &empty);
        }));
    }
    Ok(())
}

/// Reads chunks, stamps their arrival and queues them. When `from` ends, the sender is
/// dropped: the writer writes what is queued, then closes the far side.
fn read_side(mut from: TcpStream, full: &Sender<(Instant, Vec<u8>)>, emptied: &Receiver<Vec<u8>>) {
    loop {
        let mut buf = emptied
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES));
        buf.resize(CHUNK_BYTES, 0);
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.truncate(n);
                if full.send((Instant::now(), buf)).is_err() {
                    break;
                }
            }
        }
    }
    from.shutdown(Shutdown::Read).ok();
}

/// Writes each chunk once it is due. When the reader's side ended, passes the end on (a
/// half close, as TCP does); when writing fails, the far side is gone: drops it whole.
fn write_side(
    mut to: TcpStream,
    shape: LinkShape,
    filled: &Receiver<(Instant, Vec<u8>)>,
    empty: &Sender<Vec<u8>>,
) {
    // When the link is free again: the previous chunk's departure plus its length / rate.
    let mut free_at: Option<Instant> = None;
    for (arrived, buf) in filled {
        let departs = match (shape.rate_bytes_per_s, free_at) {
            (Some(rate), free) => {
                let start = free.map_or(arrived, |f| f.max(arrived));
                let end = start + Duration::from_secs_f64(buf.len() as f64 / rate as f64);
                free_at = Some(end);
                end
            }
            (None, _) => arrived,
        };
        wait_until(departs + shape.delay);
        if to.write_all(&buf).is_err() {
            to.shutdown(Shutdown::Both).ok();
            return;
        }
        empty.try_send(buf).ok();
    }
    to.shutdown(Shutdown::Write).ok();
}

fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > SPIN_WINDOW {
            std::thread::sleep(left - SPIN_WINDOW);
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// An echo server for one connection at a time, on a thread.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    io::copy(&mut reader, &mut stream).ok();
                    stream.shutdown(Shutdown::Write).ok();
                });
            }
        });
        addr
    }

    fn shape(delay_ms: u64, rate: Option<u64>) -> LinkShape {
        LinkShape {
            delay: Duration::from_millis(delay_ms),
            rate_bytes_per_s: rate,
        }
    }

    #[test]
    fn bytes_arrive_whole_and_in_order_both_ways() {
        let relay = Relay::start(echo_server(), shape(1, None)).unwrap();
        let mut client = TcpStream::connect(relay.local_addr()).unwrap();
        let mut sent = vec![0u8; 8 << 20];
        ChaCha8Rng::seed_from_u64(3).fill_bytes(&mut sent);
        let mut writer = client.try_clone().unwrap();
        let data = sent.clone();
        let sending = std::thread::spawn(move || {
            writer.write_all(&data).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut received = Vec::new();
        client.read_to_end(&mut received).unwrap();
        sending.join().unwrap();
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the echo differs");
    }

    fn round_trip(relay: &Relay) -> Duration {
        let mut client = TcpStream::connect(relay.local_addr()).unwrap();
        client.set_nodelay(true).unwrap();
        let started = Instant::now();
        client.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"ping");
        started.elapsed()
    }

    #[test]
    fn a_round_trip_takes_at_least_twice_the_delay() {
        let delayed = Relay::start(echo_server(), shape(30, None)).unwrap();
        let rtt = round_trip(&delayed);
        assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
        let direct = Relay::start(echo_server(), shape(0, None)).unwrap();
        let rtt = round_trip(&direct);
        assert!(rtt < Duration::from_millis(60), "{rtt:?} without delay");
    }

    #[test]
    fn a_capped_link_takes_its_serialization_time() {
        let sink = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = sink.local_addr().unwrap();
        let draining = std::thread::spawn(move || {
            let (mut stream, _) = sink.accept().unwrap();
            let started = Instant::now();
            let mut got = 0;
            let mut buf = vec![0u8; 64 << 10];
            while got < 2 << 20 {
                got += stream.read(&mut buf).unwrap();
            }
            started.elapsed()
        });
        let relay = Relay::start(upstream, shape(0, Some(4 << 20))).unwrap();
        let mut client = TcpStream::connect(relay.local_addr()).unwrap();
        client.write_all(&vec![7u8; 2 << 20]).unwrap();
        let took = draining.join().unwrap();
        // 2 MiB at 4 MiB/s: half a second, less the first chunk's own serialization.
        assert!(took >= Duration::from_millis(400), "{took:?}");
    }

    #[test]
    fn a_closed_upstream_closes_the_client_and_drop_returns() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = server.local_addr().unwrap();
        let relay = Relay::start(upstream, shape(5, None)).unwrap();
        let mut client = TcpStream::connect(relay.local_addr()).unwrap();
        let (accepted, _) = server.accept().unwrap();
        drop(accepted);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(client.read(&mut buf), Ok(0) | Err(_)));
        // A second connection stays open until the relay goes.
        let mut other = TcpStream::connect(relay.local_addr()).unwrap();
        let _held = server.accept().unwrap();
        let started = Instant::now();
        drop(relay);
        assert!(started.elapsed() < Duration::from_secs(5));
        other
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert!(matches!(other.read(&mut buf), Ok(0) | Err(_)));
    }
}

//! An NBD server run by a poller (after SPDK's `lib/nbd` and `lib/iscsi/conn.c`, which
//! serve their sockets from a reactor): one thread owns the listener and every client
//! connection, all non-blocking, and each `poll` does a bounded amount of work on them
//! (accepts, reads what arrived, starts the requests it completes, sends the replies it
//! has). No thread is made per connection or per request. Requests go to a `Backend`
//! that starts them and later hands each outcome back through `Server::complete`, so many
//! are in flight per connection and replies go out in completion order (NBD matches them
//! by handle). A client that stalls mid-request holds its own request slot and nothing
//! else: the poller never waits on a socket.
//!
//! Readiness comes from epoll (mio): a connection is read only after the kernel said it is
//! readable and until a read finds nothing, so idle connections cost no syscall, and an
//! idle poller can `wait` until a socket or its waker has something.

mod conn;
mod options;
mod types;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::export::ServeError;
use conn::Conn;
use types::Pool;
pub use types::{Backend, ExportInfo, Io, Limits, Tag};

/// How a connection ended, for the owner's log.
#[derive(Debug)]
pub struct Ended {
    pub peer: Option<SocketAddr>,
    /// `Ok` for a client that disconnected between requests.
    pub result: Result<(), ServeError>,
}

/// Sets what the owner wants on each accepted socket (keepalive, say) before it is served.
pub type Configure = dyn Fn(std::os::fd::BorrowedFd<'_>) -> io::Result<()> + Send;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// Readiness events taken per round.
const EVENTS: usize = 256;

pub struct Server {
    poll: Poll,
    events: Events,
    /// Events were taken by `wait` and not yet applied by `poll`.
    events_pending: bool,
    waker: Arc<mio::Waker>,
    listener: Option<TcpListener>,
    listener_ready: bool,
    exports: Vec<ExportInfo>,
    limits: Limits,
    configure: Option<Box<Configure>>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    pool: Pool,
    ended: VecDeque<Ended>,
}

impl Server {
    /// A server of `exports` accepting on `listener` (if any; connections can also be
    /// handed over with `adopt`).
    pub fn new(
        listener: Option<std::net::TcpListener>,
        exports: Vec<ExportInfo>,
        limits: Limits,
    ) -> io::Result<Server> {
        assert!(limits.max_connections > 0 && limits.max_connections < WAKER.0);
        assert!(limits.requests_per_connection > 0 && limits.requests_per_connection <= 1 << 16);
        let largest = exports.iter().map(|e| e.max_request_bytes as usize).max();
        assert!(limits.bytes_per_connection >= largest.unwrap_or(0));
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let listener = match listener {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                let mut listener = TcpListener::from_std(listener);
                poll.registry()
                    .register(&mut listener, LISTENER, Interest::READABLE)?;
                Some(listener)
            }
            None => None,
        };
        let max = limits.max_connections;
        Ok(Server {
            poll,
            events: Events::with_capacity(EVENTS),
            events_pending: false,
            waker,
            listener,
            listener_ready: true,
            exports,
            limits,
            configure: None,
            conns: (0..max).map(|_| None).collect(),
            free: (0..max as u32).rev().collect(),
            pool: Pool::new(max * limits.requests_per_connection.min(64)),
            ended: VecDeque::with_capacity(max),
        })
    }

    /// What to set on each accepted socket before it is served.
    pub fn configure_accepted(&mut self, configure: Box<Configure>) {
        self.configure = Some(configure);
    }

    /// Wakes the thread in `wait` from another thread (one syscall; for rare events such
    /// as a control request, never per write).
    pub fn waker(&self) -> std::task::Waker {
        std::task::Waker::from(Arc::new(Wake(Arc::clone(&self.waker))))
    }

    pub fn exports(&self) -> &[ExportInfo] {
        &self.exports
    }

    /// Clients connected now.
    pub fn connections(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    /// Stops accepting: the listener is closed; connected clients are still served.
    pub fn stop_accepting(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
    }

    /// Serves a connection accepted elsewhere.
    pub fn adopt(&mut self, stream: std::net::TcpStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let peer = stream.peer_addr().ok();
        self.add(mio::net::TcpStream::from_std(stream), peer, Instant::now());
        Ok(())
    }

    /// The next connection that ended, and how.
    pub fn take_ended(&mut self) -> Option<Ended> {
        self.ended.pop_front()
    }

    /// Waits up to `timeout` for a socket to have something or the waker to be woken.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        if self.events_pending {
            return Ok(());
        }
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.events_pending = !self.events.is_empty();
        Ok(())
    }

    /// One round: takes readiness, accepts, reads and starts requests, sends replies.
    /// True if it did any work. Never blocks.
    pub fn poll(&mut self, now: Instant, backend: &mut impl Backend) -> bool {
        let mut work = self.take_events();
        work |= self.accept(now);
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_mut() else {
                continue;
            };
            let exports = &self.exports;
            work |= conn.poll(index as u32, now, exports, &mut self.pool, backend);
            if conn.finished() {
                self.close(index);
            }
        }
        work
    }

    /// The outcome of a request `Backend::start` took: its reply is queued for the client
    /// (sent by the next `poll`) and `buf` returns to the pool.
    pub fn complete(&mut self, tag: Tag, result: Result<(), u32>, buf: Vec<u8>) {
        let conn = self.conns[tag.conn as usize]
            .as_mut()
            .expect("a connection stays until its requests are answered");
        let buf = conn.complete(tag.slot, result, buf);
        self.pool.give(buf);
    }

    fn take_events(&mut self) -> bool {
        if !self.events_pending {
            match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
                Err(e) => panic!("epoll_wait failed on a valid epoll fd: {e}"),
            }
        }
        self.events_pending = false;
        let mut any = false;
        for event in self.events.iter() {
            any = true;
            match event.token() {
                LISTENER => self.listener_ready = true,
                WAKER => {}
                Token(index) => {
                    if let Some(Some(conn)) = self.conns.get_mut(index) {
                        conn.ready(
                            event.is_readable() || event.is_read_closed(),
                            event.is_writable(),
                        );
                    }
                }
            }
        }
        any
    }

    fn accept(&mut self, now: Instant) -> bool {
        let mut work = false;
        while self.listener_ready {
            let Some(listener) = &self.listener else {
                return work;
            };
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    break;
                }
                // A client that reset before we took it, or out of file descriptors:
                // try again next round.
                Err(_) => break,
            };
            work = true;
            if self.free.is_empty() {
                let max = self.limits.max_connections;
                self.end(Some(peer), Err(ServeError::TooManyClients(max)));
                continue;
            }
            use std::os::fd::AsFd;
            let configured = self
                .configure
                .as_ref()
                .map_or(Ok(()), |configure| configure(stream.as_fd()));
            match configured.and_then(|()| stream.set_nodelay(true)) {
                Ok(()) => self.add(stream, Some(peer), now),
                Err(e) => self.end(Some(peer), Err(e.into())),
            }
        }
        work
    }

    fn add(&mut self, mut stream: mio::net::TcpStream, peer: Option<SocketAddr>, now: Instant) {
        let Some(index) = self.free.pop() else {
            let max = self.limits.max_connections;
            return self.end(peer, Err(ServeError::TooManyClients(max)));
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(index as usize), interest)
        {
            self.free.push(index);
            return self.end(peer, Err(e.into()));
        }
        self.conns[index as usize] = Some(Conn::new(stream, peer, now, self.limits));
    }

    fn close(&mut self, index: usize) {
        let mut conn = self.conns[index].take().expect("closing a connection");
        let _ = self.poll.registry().deregister(conn.stream_mut());
        self.free.push(index as u32);
        let (peer, result, buffers) = conn.into_parts();
        buffers.into_iter().for_each(|b| self.pool.give(b));
        self.end(peer, result);
    }

    fn end(&mut self, peer: Option<SocketAddr>, result: Result<(), ServeError>) {
        // Bounded: the owner takes them every round; past the bound the oldest go.
        if self.ended.len() == self.ended.capacity() {
            self.ended.pop_front();
        }
        self.ended.push_back(Ended { peer, result });
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("exports", &self.exports)
            .field("limits", &self.limits)
            .field("accepting", &self.listener.is_some())
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

/// The server's waker as a `std::task::Waker`.
struct Wake(Arc<mio::Waker>);

impl std::task::Wake for Wake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // A failed wake (the eventfd's counter full) leaves a wake already pending.
        let _ = self.0.wake();
    }
}

//! One client connection on the poller: its bytes in (a receive buffer, or a write's own
//! buffer while its data arrives), its requests in flight (slots, bounded in number and
//! bytes), and its replies out (a send buffer drained as the socket takes it).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::options::{self, Handshake, Step};
use super::types::{Backend, ExportInfo, Io, Limits, Pool, Tag};
use crate::export::ServeError;
use crate::handshake;
use crate::transmission::{
    self, Command, Request, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE,
    REQUEST_HEADER_BYTES,
};
use crate::{EINVAL, ENOTSUP, EOVERFLOW, MAX_OPTION_BYTES};

/// How long the handshake may take: a client that connects and never negotiates must not
/// hold a connection slot.
pub(crate) const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive buffer: a queue depth's worth of 4 KiB writes, and the largest option.
const RX_BYTES: usize = 128 << 10;
const _: () = assert!(RX_BYTES >= 16 + MAX_OPTION_BYTES as usize);
const _: () = assert!(RX_BYTES >= REQUEST_HEADER_BYTES);
/// Socket reads per connection per round, so one busy client cannot starve the others.
const READS_PER_ROUND: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshake(Handshake),
    Transmission { export: usize },
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    handle: u64,
    /// A read: its data follows a successful reply.
    read: bool,
    /// Its buffer's length, counted in `held_bytes`.
    bytes: usize,
}

/// A write whose data is arriving, straight into its own buffer.
#[derive(Debug)]
struct Body {
    slot: u32,
    request: Request,
    buf: Vec<u8>,
    filled: usize,
    /// The reply it gets without reaching the backend, once its data is in.
    error: Option<u32>,
}

/// A request the backend had no room for yet.
#[derive(Debug)]
struct Held {
    slot: u32,
    io: Io,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    peer: Option<SocketAddr>,
    phase: Phase,
    deadline: Option<Instant>,
    limits: Limits,
    readable: bool,
    writable: bool,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    body: Option<Body>,
    held: Option<Held>,
    /// Parsing stopped for room (a slot, bytes, or the backend's): read no more until
    /// some comes back.
    blocked: bool,
    tx: Vec<u8>,
    tx_start: usize,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    held_bytes: usize,
    /// Set once the connection is to end: nothing more is parsed; it closes once every
    /// request taken is answered and the replies are sent (or cannot be).
    ending: Option<Result<(), ServeError>>,
    /// The socket failed: replies are dropped.
    dead: bool,
    /// Buffers of requests dropped unstarted, for the pool.
    spare: Vec<Vec<u8>>,
}

impl Conn {
    pub(crate) fn new(
        stream: TcpStream,
        peer: Option<SocketAddr>,
        now: Instant,
        limits: Limits,
    ) -> Conn {
        let mut tx = Vec::with_capacity(4096);
        handshake::encode_greeting(&mut tx);
        let depth = limits.requests_per_connection;
        Conn {
            stream,
            peer,
            phase: Phase::Handshake(Handshake::ClientFlags),
            deadline: Some(now + NEGOTIATION_TIMEOUT),
            limits,
            readable: true,
            writable: true,
            rx: vec![0; RX_BYTES].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            body: None,
            held: None,
            blocked: false,
            tx,
            tx_start: 0,
            slots: vec![Slot::default(); depth],
            free_slots: (0..depth as u32).rev().collect(),
            held_bytes: 0,
            ending: None,
            dead: false,
            spare: Vec::new(),
        }
    }

    pub(crate) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The kernel said the socket has something to read, or room to write.
    pub(crate) fn ready(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    fn tx_pending(&self) -> usize {
        self.tx.len() - self.tx_start
    }

    /// Ended, every request answered, and every reply sent or undeliverable.
    pub(crate) fn finished(&self) -> bool {
        self.ending.is_some() && self.in_flight() == 0 && (self.dead || self.tx_pending() == 0)
    }

    pub(crate) fn into_parts(self) -> (Option<SocketAddr>, Result<(), ServeError>, Vec<Vec<u8>>) {
        let result = self.ending.expect("only an ended connection is closed");
        (self.peer, result, self.spare)
    }

    /// One round of this connection; true if it did any work.
    pub(crate) fn poll(
        &mut self,
        index: u32,
        now: Instant,
        exports: &[ExportInfo],
        pool: &mut Pool,
        backend: &mut impl Backend,
    ) -> bool {
        if self.deadline.is_some_and(|d| now > d) && self.ending.is_none() {
            self.end(Err(ServeError::NegotiationTimeout(NEGOTIATION_TIMEOUT)));
        }
        let mut work = match self.receive(index, exports, pool, backend) {
            Ok(work) => work,
            Err(error) => {
                self.end(Err(error));
                true
            }
        };
        work |= self.send();
        work
    }

    /// Ends the connection: after an error, what was not started yet is dropped.
    fn end(&mut self, result: Result<(), ServeError>) {
        if self.ending.is_some() {
            return;
        }
        if result.is_err() {
            let body = self.body.take().map(|b| (b.slot, b.buf));
            let held = self.held.take().map(|h| (h.slot, h.buf));
            for (slot, buf) in body.into_iter().chain(held) {
                self.release(slot);
                self.spare.push(buf);
            }
        }
        self.ending = Some(result);
    }

    fn receive(
        &mut self,
        index: u32,
        exports: &[ExportInfo],
        pool: &mut Pool,
        backend: &mut impl Backend,
    ) -> Result<bool, ServeError> {
        let mut work = false;
        for _ in 0..READS_PER_ROUND {
            work |= self.take(index, exports, pool, backend)?;
            if self.ending.is_some() || self.blocked || !self.readable {
                break;
            }
            let read = match &mut self.body {
                Some(body) => read(&mut self.stream, &mut body.buf[body.filled..]),
                None => {
                    self.rx.copy_within(self.rx_start..self.rx_end, 0);
                    self.rx_end -= self.rx_start;
                    self.rx_start = 0;
                    read(&mut self.stream, &mut self.rx[self.rx_end..])
                }
            };
            match read {
                Ok(Some(0)) => {
                    self.closed_by_peer();
                    return Ok(true);
                }
                Ok(Some(n)) => {
                    work = true;
                    match &mut self.body {
                        Some(body) => body.filled += n,
                        None => self.rx_end += n,
                    }
                }
                Ok(None) => {
                    self.readable = false;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(work)
    }

    /// The client closed its side: between requests a clean end, else a truncated one.
    fn closed_by_peer(&mut self) {
        let partial = match &self.body {
            Some(body) => REQUEST_HEADER_BYTES + body.filled,
            None => self.rx_end - self.rx_start,
        };
        match partial {
            0 => self.end(Ok(())),
            partial => self.end(Err(ServeError::Truncated(partial))),
        }
    }

    /// Parses what arrived and starts the requests it completes, as room allows.
    fn take(
        &mut self,
        index: u32,
        exports: &[ExportInfo],
        pool: &mut Pool,
        backend: &mut impl Backend,
    ) -> Result<bool, ServeError> {
        let mut work = false;
        loop {
            let Phase::Transmission { export } = self.phase else {
                if self.ending.is_some() || !self.negotiate(exports)? {
                    return Ok(work);
                }
                work = true;
                continue;
            };
            if self.body.is_some() {
                if !self.fill_body() {
                    return Ok(work);
                }
                let body = self.body.take().expect("a body is being filled");
                self.dispatch(
                    index,
                    export,
                    body.slot,
                    body.request,
                    body.buf,
                    body.error,
                    pool,
                    backend,
                );
                work = true;
                continue;
            }
            if let Some(held) = self.held.take() {
                let tag = Tag {
                    conn: index,
                    slot: held.slot,
                };
                if let Err(buf) = backend.start(tag, export, held.io, held.buf) {
                    self.held = Some(Held { buf, ..held });
                    self.blocked = true;
                    return Ok(work);
                }
                work = true;
            }
            if self.ending.is_some() {
                return Ok(work);
            }
            match self.next_request(&exports[export], pool)? {
                Next::Started {
                    slot,
                    request,
                    buf,
                    error,
                } => {
                    work = true;
                    match request.data_len() {
                        0 => self.dispatch(index, export, slot, request, buf, error, pool, backend),
                        _ => {
                            self.body = Some(Body {
                                slot,
                                request,
                                buf,
                                filled: 0,
                                error,
                            });
                        }
                    }
                }
                Next::Disconnect => {
                    self.end(Ok(()));
                    return Ok(true);
                }
                Next::Wait => return Ok(work),
            }
        }
    }

    /// One handshake step; true if it took bytes.
    fn negotiate(&mut self, exports: &[ExportInfo]) -> Result<bool, ServeError> {
        let Phase::Handshake(mut state) = self.phase else {
            unreachable!("negotiating in transmission");
        };
        let input = &self.rx[self.rx_start..self.rx_end];
        let step = options::step(&mut state, input, exports, &mut self.tx)?;
        self.phase = Phase::Handshake(state);
        let took = match step {
            Step::NeedMore => return Ok(false),
            Step::Took(took) => took,
            Step::Chosen { index, took } => {
                self.phase = Phase::Transmission { export: index };
                self.deadline = None;
                took
            }
            Step::End { took } => {
                self.end(Ok(()));
                took
            }
        };
        self.rx_start += took;
        Ok(true)
    }

    /// Copies what the receive buffer holds of the body's data; true once it is whole.
    fn fill_body(&mut self) -> bool {
        let body = self.body.as_mut().expect("a body is being filled");
        let want = body.buf.len() - body.filled;
        let n = want.min(self.rx_end - self.rx_start);
        body.buf[body.filled..body.filled + n]
            .copy_from_slice(&self.rx[self.rx_start..self.rx_start + n]);
        body.filled += n;
        self.rx_start += n;
        body.filled == body.buf.len()
    }

    /// The next request header, given a slot and a buffer if there is room for it.
    fn next_request(&mut self, export: &ExportInfo, pool: &mut Pool) -> Result<Next, ServeError> {
        let input = &self.rx[self.rx_start..self.rx_end];
        let Some(request) = transmission::parse_request(input)? else {
            self.blocked = false;
            return Ok(Next::Wait);
        };
        // A TRIM or WRITE_ZEROES carries no data, so any length keeps the stream whole.
        if request.length > export.max_request_bytes && request.buffer_len() > 0 {
            return Err(ServeError::RequestTooLarge(request.length));
        }
        if request.command == Command::Disconnect {
            self.rx_start += REQUEST_HEADER_BYTES;
            return Ok(Next::Disconnect);
        }
        let bytes = request.buffer_len();
        let held = self.held_bytes + self.tx_pending();
        if self.free_slots.is_empty()
            || (held > 0 && held + bytes > self.limits.bytes_per_connection)
        {
            self.blocked = true;
            return Ok(Next::Wait);
        }
        self.blocked = false;
        self.rx_start += REQUEST_HEADER_BYTES;
        let slot = self.free_slots.pop().expect("a free slot");
        self.slots[slot as usize] = Slot {
            handle: request.handle,
            read: request.command == Command::Read,
            bytes,
        };
        self.held_bytes += bytes;
        let buf = pool.take(bytes);
        let error = check(export, &request);
        Ok(Next::Started {
            slot,
            request,
            buf,
            error,
        })
    }

    #[allow(clippy::too_many_arguments)] // reason: one request's parts and where it goes
    fn dispatch(
        &mut self,
        index: u32,
        export: usize,
        slot: u32,
        request: Request,
        buf: Vec<u8>,
        error: Option<u32>,
        pool: &mut Pool,
        backend: &mut impl Backend,
    ) {
        if let Some(errno) = error {
            let buf = self.complete(slot, Err(errno), buf);
            return pool.give(buf);
        }
        let fua = request.flags & CMD_FLAG_FUA != 0;
        let (offset, len) = (request.offset, request.length);
        let io = match request.command {
            Command::Read => Io::Read { offset },
            Command::Write => Io::Write { offset, fua },
            Command::Flush => Io::Flush,
            Command::WriteZeroes => Io::WriteZeroes {
                offset,
                len,
                may_unmap: request.flags & CMD_FLAG_NO_HOLE == 0,
                fua,
            },
            Command::Trim => Io::Trim { offset, len },
            Command::Disconnect | Command::Other(_) => unreachable!("answered by check"),
        };
        let tag = Tag { conn: index, slot };
        if let Err(buf) = backend.start(tag, export, io, buf) {
            self.held = Some(Held { slot, io, buf });
            self.blocked = true;
        }
    }

    /// Queues the reply of the request in `slot`; returns its buffer.
    pub(crate) fn complete(&mut self, slot: u32, result: Result<(), u32>, buf: Vec<u8>) -> Vec<u8> {
        let Slot { handle, read, .. } = self.slots[slot as usize];
        self.release(slot);
        if !self.dead {
            transmission::encode_simple_reply(&mut self.tx, result.err().unwrap_or(0), handle);
            if read && result.is_ok() {
                self.tx.extend_from_slice(&buf);
            }
        }
        buf
    }

    fn release(&mut self, slot: u32) {
        debug_assert!(
            !self.free_slots.contains(&slot),
            "slot {slot} released twice"
        );
        self.held_bytes -= self.slots[slot as usize].bytes;
        self.slots[slot as usize] = Slot::default();
        self.free_slots.push(slot);
        // Room came back: parsing may go on.
        self.blocked = false;
    }

    /// Sends what the socket takes of the queued replies; true if it sent any.
    fn send(&mut self) -> bool {
        if self.dead || !self.writable || self.tx_pending() == 0 {
            return false;
        }
        let mut sent = false;
        while self.tx_pending() > 0 {
            match self.stream.write(&self.tx[self.tx_start..]) {
                Ok(0) => return self.fail_send(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_start += n;
                    sent = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail_send(e),
            }
        }
        if self.tx_pending() == 0 {
            self.tx.clear();
            self.tx_start = 0;
        }
        sent
    }

    fn fail_send(&mut self, error: io::Error) -> bool {
        self.dead = true;
        self.tx.clear();
        self.tx_start = 0;
        self.end(Err(error.into()));
        true
    }
}

enum Next {
    Started {
        slot: u32,
        request: Request,
        buf: Vec<u8>,
        error: Option<u32>,
    },
    Disconnect,
    /// No whole header yet, or no room for it.
    Wait,
}

/// One read: `Some(n)` bytes (0 at the end of the stream), `None` if there was nothing.
fn read(stream: &mut TcpStream, into: &mut [u8]) -> io::Result<Option<usize>> {
    debug_assert!(!into.is_empty());
    loop {
        match stream.read(into) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The error reply a request gets without reaching the backend, if any.
fn check(export: &ExportInfo, r: &Request) -> Option<u32> {
    match r.command {
        Command::Read | Command::Write => in_range(export, r).err(),
        Command::Flush => None,
        Command::Trim | Command::WriteZeroes if !export.can_zero => Some(ENOTSUP),
        // Not offered (no NBD_FLAG_SEND_FAST_ZERO), so not to be asked for.
        Command::WriteZeroes if r.flags & CMD_FLAG_FAST_ZERO != 0 => Some(EINVAL),
        Command::Trim | Command::WriteZeroes => in_range(export, r).err(),
        Command::Disconnect | Command::Other(_) => Some(ENOTSUP),
    }
}

fn in_range(export: &ExportInfo, r: &Request) -> Result<(), u32> {
    let block = u64::from(export.min_block_size);
    let end = r.offset.checked_add(u64::from(r.length));
    if end.is_none_or(|end| end > export.size_bytes) {
        return Err(EOVERFLOW);
    }
    if !r.offset.is_multiple_of(block) || !u64::from(r.length).is_multiple_of(block) {
        return Err(EINVAL);
    }
    Ok(())
}

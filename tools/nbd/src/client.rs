//! One NBD client connection for `ordo bench --target`: the fixed newstyle handshake
//! (`NBD_OPT_GO`) on a blocking socket, then the transmission phase on a nonblocking one,
//! driven by the caller's loop with many requests in flight. Requests are encoded into a
//! send buffer and replies parsed in a receive buffer, both sized when it connects, so
//! nothing is allocated per request.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::handshake::{self, Info, OptionReply, INFO_BLOCK_SIZE, OPT_GO, REP_ACK, REP_INFO};
use crate::transmission::{self, SimpleReply, CMD_DISC, REQUEST_HEADER_BYTES, SIMPLE_REPLY_BYTES};
use crate::{NbdError, MAX_OPTION_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("NBD protocol: {0}")]
    Protocol(#[from] NbdError),
    #[error("the server refused export {export:?}: {message} (reply {reply:#x})")]
    Refused {
        export: String,
        reply: u32,
        message: String,
    },
    #[error("unexpected option reply {reply:#x} to option {option} in the handshake")]
    UnexpectedReply { option: u32, reply: u32 },
    #[error("the server accepted the export without giving its size")]
    NoExportSize,
    #[error("a reply for handle {0}, which has no request in flight")]
    UnknownHandle(u64),
    #[error("the server closed the connection")]
    Closed,
}

/// What the server said of the export in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub size_bytes: u64,
    /// Transmission flags (`crate::TFLAG_*`).
    pub flags: u16,
    /// Requests must be whole multiples of this, at offsets that are.
    pub min_block: u32,
    pub max_request_bytes: u32,
}

/// Block sizes a server that names none must accept (the protocol's defaults).
const DEFAULT_MIN_BLOCK: u32 = 1;
const DEFAULT_MAX_REQUEST: u32 = 32 << 20;

#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    pub export: ExportInfo,
    /// Encoded requests; `sent` bytes of them are on the socket. Its capacity is fixed.
    send: Vec<u8>,
    sent: usize,
    /// Replies read and not yet taken: `recv[start..end]`.
    recv: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Connection {
    /// Connects and negotiates `export`; then room for `send_bytes` of requests not yet
    /// sent and `recv_bytes` of replies not yet taken (at least one request and reply of
    /// `max_payload` bytes each).
    pub fn open(
        addr: SocketAddr,
        export: &str,
        timeout: Duration,
        send_bytes: usize,
        recv_bytes: usize,
        max_payload: usize,
    ) -> Result<Connection, ClientError> {
        assert!(send_bytes >= REQUEST_HEADER_BYTES + max_payload);
        assert!(recv_bytes >= SIMPLE_REPLY_BYTES + max_payload);
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let info = negotiate(&mut stream, export)?;
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        stream.set_nonblocking(true)?;
        Ok(Connection {
            stream,
            export: info,
            send: Vec::with_capacity(send_bytes),
            sent: 0,
            recv: vec![0; recv_bytes].into_boxed_slice(),
            start: 0,
            end: 0,
        })
    }

    /// Queues a request (a write's `payload` after its header); false if the send buffer
    /// has no room for it now (it has once what is queued went out).
    pub fn try_request(
        &mut self,
        command: u16,
        handle: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> bool {
        let needed = REQUEST_HEADER_BYTES + payload.len();
        if self.send.len() + needed > self.send.capacity() && self.sent > 0 {
            // Moves the unsent tail to the front: a copy within the buffer.
            self.send.drain(..self.sent);
            self.sent = 0;
        }
        if self.send.len() + needed > self.send.capacity() {
            return false;
        }
        let capacity = self.send.capacity();
        transmission::encode_request(&mut self.send, 0, command, handle, offset, length);
        self.send.extend_from_slice(payload);
        debug_assert_eq!(
            self.send.capacity(),
            capacity,
            "the send buffer never grows"
        );
        true
    }

    /// Bytes queued and not yet on the socket.
    #[cfg(test)]
    pub fn unsent(&self) -> usize {
        self.send.len() - self.sent
    }

    /// Sends what the socket takes without blocking; true if it took anything.
    pub fn send(&mut self) -> Result<bool, ClientError> {
        let mut any = false;
        while self.sent < self.send.len() {
            match self.stream.write(&self.send[self.sent..]) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => {
                    self.sent += n;
                    any = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if self.sent == self.send.len() {
            self.send.clear();
            self.sent = 0;
        }
        Ok(any)
    }

    /// Reads what has arrived without blocking; true if anything did.
    pub fn receive(&mut self) -> Result<bool, ClientError> {
        if self.start > 0 {
            self.recv.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.recv.len() {
            return Ok(false);
        }
        loop {
            match self.stream.read(&mut self.recv[self.end..]) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next whole reply and its data: `data_len(handle)` says how many bytes a
    /// successful reply to that handle carries (a read's length), or `None` if no request
    /// with that handle is in flight.
    pub fn next_reply(
        &mut self,
        data_len: impl Fn(u64) -> Option<usize>,
    ) -> Result<Option<(SimpleReply, &[u8])>, ClientError> {
        let pending = &self.recv[self.start..self.end];
        let Some(reply) = transmission::parse_simple_reply(pending)? else {
            return Ok(None);
        };
        let len = data_len(reply.handle).ok_or(ClientError::UnknownHandle(reply.handle))?;
        let len = if reply.error == 0 { len } else { 0 };
        assert!(
            SIMPLE_REPLY_BYTES + len <= self.recv.len(),
            "the caller sized the receive buffer for its largest reply"
        );
        if pending.len() < SIMPLE_REPLY_BYTES + len {
            return Ok(None);
        }
        let at = self.start + SIMPLE_REPLY_BYTES;
        self.start = at + len;
        Ok(Some((reply, &self.recv[at..at + len])))
    }

    /// Says goodbye (`NBD_CMD_DISC`) once what is queued went out, and closes.
    pub fn disconnect(mut self, timeout: Duration) -> Result<(), ClientError> {
        if !self.try_request(CMD_DISC, 0, 0, 0, &[]) {
            self.send.drain(..self.sent);
            self.sent = 0;
            transmission::encode_request(&mut self.send, 0, CMD_DISC, 0, 0, 0);
        }
        self.stream.set_nonblocking(false)?;
        self.stream.set_write_timeout(Some(timeout))?;
        self.stream.write_all(&self.send[self.sent..])?;
        self.stream.shutdown(std::net::Shutdown::Both)?;
        Ok(())
    }
}

/// The handshake: greeting, flags, `NBD_OPT_GO` asking for block sizes, the replies.
fn negotiate(stream: &mut TcpStream, export: &str) -> Result<ExportInfo, ClientError> {
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting)?;
    let server_flags = handshake::parse_greeting(&greeting)?.expect("the whole greeting");
    let mut out = Vec::with_capacity(32 + export.len());
    handshake::encode_client_flags(&mut out, server_flags);
    handshake::encode_go(&mut out, OPT_GO, export, &[INFO_BLOCK_SIZE]);
    stream.write_all(&out)?;
    let mut size = None;
    let (mut min_block, mut max_request) = (DEFAULT_MIN_BLOCK, DEFAULT_MAX_REQUEST);
    let mut buf = vec![0u8; 20 + MAX_OPTION_BYTES as usize];
    loop {
        let reply = read_option_reply(stream, &mut buf)?;
        if reply.option != OPT_GO {
            return Err(ClientError::UnexpectedReply {
                option: reply.option,
                reply: reply.reply,
            });
        }
        match reply.reply {
            REP_INFO => match handshake::decode_info(reply.data)? {
                Info::Export { size: s, flags } => size = Some((s, flags)),
                Info::BlockSize {
                    minimum, maximum, ..
                } => (min_block, max_request) = (minimum.max(1), maximum),
                Info::Other(_) => {}
            },
            REP_ACK => break,
            _ if reply.is_error() => {
                return Err(ClientError::Refused {
                    export: export.to_string(),
                    reply: reply.reply,
                    message: String::from_utf8_lossy(reply.data).into_owned(),
                })
            }
            other => {
                return Err(ClientError::UnexpectedReply {
                    option: reply.option,
                    reply: other,
                })
            }
        }
    }
    let (size_bytes, flags) = size.ok_or(ClientError::NoExportSize)?;
    Ok(ExportInfo {
        size_bytes,
        flags,
        min_block,
        max_request_bytes: max_request,
    })
}

/// One option reply, read whole into `buf` (its length is bounded by the codec).
fn read_option_reply<'a>(
    stream: &mut TcpStream,
    buf: &'a mut [u8],
) -> Result<OptionReply<'a>, ClientError> {
    stream.read_exact(&mut buf[..20])?;
    // Checks the magic and bounds the length before reading the data.
    if let Some((reply, _)) = handshake::parse_option_reply(&buf[..20])? {
        debug_assert!(reply.data.is_empty());
    }
    let len = u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes")) as usize;
    stream.read_exact(&mut buf[20..20 + len])?;
    let (reply, used) = handshake::parse_option_reply(&buf[..20 + len])?.expect("read whole");
    debug_assert_eq!(used, 20 + len);
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::time::Instant;

    use super::*;
    use crate::server::serve;
    use crate::test_export::MemExport;
    use crate::transmission::{CMD_FLUSH, CMD_READ, CMD_WRITE};
    use crate::{EOVERFLOW, TFLAG_SEND_FLUSH};

    /// Serves a 1 MiB export named "data" to one client, with ordo's NBD server.
    fn serve_one() -> (
        &'static MemExport,
        SocketAddr,
        std::thread::JoinHandle<Result<(), String>>,
    ) {
        let export = MemExport::leaked("data", 1 << 20, 512, 64 << 10);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
            serve(stream, &[export]).map_err(|e| e.to_string())
        });
        (export, addr, thread)
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Drives `conn` until `want` replies came; returns (handle, error, data) of each.
    fn replies(
        conn: &mut Connection,
        want: usize,
        data_len: impl Fn(u64) -> Option<usize>,
    ) -> Vec<(u64, u32, Vec<u8>)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        while got.len() < want {
            assert!(
                Instant::now() < deadline,
                "only {} replies of {want}",
                got.len()
            );
            conn.send().unwrap();
            conn.receive().unwrap();
            while let Some((reply, data)) = conn.next_reply(&data_len).unwrap() {
                got.push((reply.handle, reply.error, data.to_vec()));
            }
            std::thread::yield_now();
        }
        got.sort();
        got
    }

    #[test]
    fn pipelined_writes_flush_and_reads_against_ordos_server() {
        let (export, addr, server) = serve_one();
        // Room for four 4 KiB writes at a time: the rest wait for the socket.
        let mut conn = Connection::open(addr, "data", TIMEOUT, 4 * 4124, 4 * 4112, 4096).unwrap();
        assert_eq!(conn.export.size_bytes, 1 << 20);
        assert_eq!(conn.export.min_block, 512);
        assert_eq!(conn.export.max_request_bytes, 64 << 10);
        assert_ne!(conn.export.flags & TFLAG_SEND_FLUSH, 0);
        for handle in 0..4u64 {
            let payload = [handle as u8 + 1; 4096];
            assert!(conn.try_request(CMD_WRITE, handle, handle * 8192, 4096, &payload));
        }
        assert!(
            !conn.try_request(CMD_WRITE, 9, 0, 4096, &[0; 4096]),
            "a fifth write has no room until the first four went out"
        );
        assert_eq!(conn.unsent(), 4 * 4124);
        let writes = replies(&mut conn, 4, |h| (h < 4).then_some(0));
        assert_eq!(
            writes.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
            [(0, 0), (1, 0), (2, 0), (3, 0)]
        );
        assert!(conn.try_request(CMD_FLUSH, 7, 0, 0, &[]));
        replies(&mut conn, 1, |h| (h == 7).then_some(0));
        assert_eq!(*export.flushes.lock().unwrap(), 1);
        {
            let data = export.data.lock().unwrap();
            assert!(data[8192..12288].iter().all(|&b| b == 2));
            assert!(data[4096..8192].iter().all(|&b| b == 0));
        }
        // Reads carry their data after the reply header; one out of range fails alone.
        for handle in 0..3u64 {
            assert!(conn.try_request(CMD_READ, handle, handle * 8192, 4096, &[]));
        }
        assert!(conn.try_request(CMD_READ, 3, 1 << 20, 4096, &[]));
        let reads = replies(&mut conn, 4, |h| (h < 4).then_some(4096));
        for (handle, error, data) in &reads[..3] {
            assert_eq!(*error, 0);
            assert!(
                data.iter().all(|&b| b == *handle as u8 + 1),
                "read {handle}"
            );
        }
        assert_eq!((reads[3].1, reads[3].2.len()), (EOVERFLOW, 0));
        conn.disconnect(TIMEOUT).unwrap();
        server.join().unwrap().expect("a clean disconnect");
    }

    #[test]
    fn a_reply_nobody_asked_for_and_an_unknown_export_are_errors() {
        let (_, addr, server) = serve_one();
        let refused = Connection::open(addr, "nope", TIMEOUT, 8192, 8192, 4096).unwrap_err();
        assert!(refused.to_string().contains("no such export"), "{refused}");
        drop(server);
        let (_, addr, server) = serve_one();
        let mut conn = Connection::open(addr, "", TIMEOUT, 8192, 8192, 4096).unwrap();
        assert_eq!(conn.export.size_bytes, 1 << 20, "the only export, unnamed");
        assert!(conn.try_request(CMD_WRITE, 5, 0, 512, &[1; 512]));
        let deadline = Instant::now() + TIMEOUT;
        let error = loop {
            assert!(Instant::now() < deadline);
            conn.send().unwrap();
            conn.receive().unwrap();
            match conn.next_reply(|h| (h != 5).then_some(0)) {
                Ok(None) => std::thread::yield_now(),
                Ok(Some(_)) => panic!("handle 5 was not expected"),
                Err(error) => break error,
            }
        };
        assert!(matches!(error, ClientError::UnknownHandle(5)), "{error}");
        conn.disconnect(TIMEOUT).unwrap();
        server.join().unwrap().unwrap();
    }
}

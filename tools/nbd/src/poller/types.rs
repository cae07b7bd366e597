//! What the poller server and its backends share: a request's I/O and tag, the backend
//! that starts requests, what an export is, the server's bounds, and the buffer pool.

use crate::export::Export;

/// What a request asks of the backend, checked against its export first (range, the
/// minimum block size, a length the export takes, support for zeroing): a backend is
/// never given one the export cannot take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Fill the buffer (its length is the read's) from `offset`.
    Read { offset: u64 },
    /// Write the buffer at `offset`; with `fua`, complete once it is durable.
    Write { offset: u64, fua: bool },
    /// Complete once every write already completed is durable.
    Flush,
    /// Make `len` bytes at `offset` read back as zeros; `may_unmap` (no NO_HOLE flag)
    /// allows deallocating them. The buffer is empty.
    WriteZeroes {
        offset: u64,
        len: u32,
        may_unmap: bool,
        fua: bool,
    },
    /// The client no longer needs `len` bytes at `offset` (advisory). The buffer is empty.
    Trim { offset: u64, len: u32 },
}

/// Names a request in flight (its connection and slot) until its outcome comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag {
    pub(crate) conn: u32,
    pub(crate) slot: u32,
}

impl Tag {
    /// As one number, for backends that carry a `u64` with a request.
    pub fn to_u64(self) -> u64 {
        u64::from(self.conn) << 32 | u64::from(self.slot)
    }

    pub fn from_u64(value: u64) -> Tag {
        Tag {
            conn: (value >> 32) as u32,
            slot: value as u32,
        }
    }
}

/// Serves the I/O of a server's exports without blocking the poller.
pub trait Backend {
    /// Starts `io` on export `export` (an index into the server's exports). Its outcome
    /// (Ok, or an errno for the reply) comes back through `Server::complete` with `tag`
    /// and `buf` (filled, for a read). `Err(buf)`: it cannot start now (no room); the
    /// server offers it again on a later round and reads nothing more of that client
    /// meanwhile.
    fn start(&mut self, tag: Tag, export: usize, io: Io, buf: Vec<u8>) -> Result<(), Vec<u8>>;
}

/// What the server advertises of an export and checks requests against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub size_bytes: u64,
    /// NBD's preferred block size.
    pub block_size: u32,
    /// NBD's minimum block size: requests must be aligned to it (1: any byte range).
    pub min_block_size: u32,
    pub max_request_bytes: u32,
    /// Takes TRIM and WRITE_ZEROES (else they are answered ENOTSUP).
    pub can_zero: bool,
}

impl ExportInfo {
    pub fn of(export: &dyn Export) -> ExportInfo {
        ExportInfo {
            name: export.name().to_string(),
            size_bytes: export.size_bytes(),
            block_size: export.block_size(),
            min_block_size: export.min_block_size(),
            max_request_bytes: export.max_request_bytes(),
            can_zero: export.can_zero(),
        }
    }
}

/// Bounds of a server; every one is checked at `Server::new` and held at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Client connections served at once; more are refused at accept.
    pub max_connections: usize,
    /// Requests in flight per connection (started and not yet answered).
    pub requests_per_connection: usize,
    /// Bytes a connection may hold in buffers (requests in flight, and replies not yet
    /// taken by the client) before it is read no further; one request of the largest
    /// size is always taken when nothing else is held.
    pub bytes_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            requests_per_connection: 128,
            bytes_per_connection: 16 << 20,
        }
    }
}

/// Buffers of requests, reused: a buffer keeps its capacity, so once the pool is warm
/// nothing is allocated per request.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Vec<Vec<u8>>,
    max_free: usize,
}

impl Pool {
    /// A pool that keeps at most `max_free` idle buffers.
    pub(crate) fn new(max_free: usize) -> Pool {
        Pool {
            free: Vec::new(),
            max_free,
        }
    }

    /// A buffer of `len` bytes (zeroed where it grew).
    pub(crate) fn take(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.free.pop().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    pub(crate) fn give(&mut self, buf: Vec<u8>) {
        if self.free.len() < self.max_free {
            self.free.push(buf);
        }
    }
}

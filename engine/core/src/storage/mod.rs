//! The storage seam: one trait for a block volume in a completion model (submit a write,
//! read or flush with a tag, poll for completions), so that in-memory volumes, files,
//! io_uring and SPDK bdevs all fit behind it and the engine never knows which it has.
//! The backend here is `mem` (simulator and tests); `ordo-runtime` has `file` (positional
//! I/O inside submit) and `uring` (io_uring, O_DIRECT where the filesystem allows it), and
//! `ordo-spdk` has SPDK bdevs. `contract` is the suite every one of them runs.
//!
//! Contract every backend keeps (and `check_io` enforces):
//! - offsets and lengths are multiples of the block size, inside the volume, and a single
//!   read or write is at most `max_io_bytes` (a zeroing request of any length); anything
//!   else is a typed error, never a panic;
//! - `submit_*` consumes its buffer before it returns (the caller may reuse it at once);
//!   the request is finished only when `poll` reports its tag, and completions are never
//!   delivered inline inside `submit_*`;
//! - requests in flight may complete in any order; two overlapping writes in flight have
//!   no defined order (callers that care wait for the first);
//! - a flush completes after every write that completed before the flush was submitted
//!   is durable;
//! - at most `max_in_flight` requests are in flight; one more is `QueueFull` (backpressure).

pub mod completions;
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
pub mod inflight;
pub mod mem;

pub use mem::MemStorage;

use thiserror::Error;

/// Caller-chosen id of one request, echoed in its completion.
pub type IoTag = u64;

/// Shape and limits of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub size_bytes: u64,
    /// 512 or 4096.
    pub block_size: u32,
    /// Largest single request.
    pub max_io_bytes: u32,
    /// Most requests in flight at once.
    pub max_in_flight: u32,
}

pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
pub const DEFAULT_MAX_IO_BYTES: u32 = 1 << 20;
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 256;

impl Geometry {
    /// A geometry with the defaults (4096-byte blocks, 1 MiB requests, 256 in flight),
    /// validated: `size_bytes` must be a positive multiple of the block size.
    pub fn new(size_bytes: u64, block_size: u32) -> Result<Geometry, StorageError> {
        let geometry = Geometry {
            size_bytes,
            block_size,
            max_io_bytes: DEFAULT_MAX_IO_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        };
        geometry.validate()?;
        Ok(geometry)
    }

    pub fn validate(&self) -> Result<(), StorageError> {
        if self.block_size != 512 && self.block_size != 4096 {
            return Err(StorageError::BadGeometry("block size must be 512 or 4096"));
        }
        if self.size_bytes == 0 || !self.size_bytes.is_multiple_of(u64::from(self.block_size)) {
            return Err(StorageError::BadGeometry(
                "size must be a positive multiple of the block size",
            ));
        }
        if self.max_io_bytes < self.block_size || !self.max_io_bytes.is_multiple_of(self.block_size)
        {
            return Err(StorageError::BadGeometry(
                "max request size must be a positive multiple of the block size",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(StorageError::BadGeometry("max in flight must be positive"));
        }
        Ok(())
    }

    /// Checks a zeroing request: like `check_io`, without the request size limit.
    pub fn check_zeroes(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        let block = u64::from(self.block_size);
        if len == 0 || !offset.is_multiple_of(block) || !len.is_multiple_of(block) {
            return Err(StorageError::Unaligned {
                offset,
                len,
                block_size: self.block_size,
            });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(StorageError::OutOfRange {
                offset,
                len,
                size: self.size_bytes,
            }),
        }
    }

    /// The block-aligned span `(start, len)` covering `len` bytes at `offset`, which may
    /// start and end anywhere inside the volume (NBD clients may write single bytes):
    /// `Unaligned` only for an empty request, `OutOfRange` past the end. The caller checks
    /// the span against its own size limit.
    pub fn block_span(&self, offset: u64, len: usize) -> Result<(u64, u64), StorageError> {
        let block = u64::from(self.block_size);
        let len_u64 = len as u64;
        if len == 0 {
            return Err(StorageError::Unaligned {
                offset,
                len: 0,
                block_size: self.block_size,
            });
        }
        match offset.checked_add(len_u64) {
            Some(end) if end <= self.size_bytes => {
                let start = offset - offset % block;
                Ok((start, end.next_multiple_of(block) - start))
            }
            _ => Err(StorageError::OutOfRange {
                offset,
                len: len_u64,
                size: self.size_bytes,
            }),
        }
    }

    /// Checks one read or write request against this geometry.
    pub fn check_io(&self, offset: u64, len: usize) -> Result<(), StorageError> {
        let block = u64::from(self.block_size);
        let len_u64 = len as u64;
        if len == 0 || !offset.is_multiple_of(block) || !len_u64.is_multiple_of(block) {
            return Err(StorageError::Unaligned {
                offset,
                len: len_u64,
                block_size: self.block_size,
            });
        }
        if len_u64 > u64::from(self.max_io_bytes) {
            return Err(StorageError::TooLarge {
                len: len_u64,
                max: self.max_io_bytes,
            });
        }
        match offset.checked_add(len_u64) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(StorageError::OutOfRange {
                offset,
                len: len_u64,
                size: self.size_bytes,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StorageError {
    #[error("bad geometry: {0}")]
    BadGeometry(&'static str),
    #[error(
        "request at offset {offset} length {len} is not aligned to the {block_size}-byte block"
    )]
    Unaligned {
        offset: u64,
        len: u64,
        block_size: u32,
    },
    #[error("request at offset {offset} length {len} is past the end of the {size}-byte volume")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("request of {len} bytes is larger than the {max}-byte limit")]
    TooLarge { len: u64, max: u32 },
    #[error("{0} requests already in flight")]
    QueueFull(u32),
    #[error("I/O error ({kind:?}): {message}")]
    Io {
        kind: std::io::ErrorKind,
        message: String,
    },
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub tag: IoTag,
    pub result: Result<(), StorageError>,
}

/// A block volume in a completion model. See the module docs for the contract.
pub trait Storage {
    fn geometry(&self) -> Geometry;

    /// Starts writing `data` at `offset`; `data` is consumed before this returns.
    fn submit_write(&mut self, tag: IoTag, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.submit_write_with(tag, offset, data.len(), &mut |out| {
            out.copy_from_slice(data)
        })
    }

    /// Starts writing `len` bytes at `offset` that `fill` puts straight into the request's
    /// buffer (exactly `len` bytes, of unspecified contents before): a record assembled in
    /// place from a header and a payload held elsewhere, with no copy in between. `fill`
    /// runs once before this returns, and only if the request is accepted.
    fn submit_write_with(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StorageError>;

    /// Starts making `len` bytes at `offset` read back as zeros: block-aligned and inside
    /// the volume like a write, but not bounded by `max_io_bytes` (it carries no data).
    /// With `unmap` the backend may deallocate the range (punch a hole, unmap blocks)
    /// instead of writing zeros; without it the range stays allocated. A write in the
    /// contract's other respects: it completes through `poll`, a flush covers it, it has
    /// no defined order against an overlapping request in flight.
    fn submit_write_zeroes(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), StorageError>;

    /// Starts reading `buf.len()` bytes at `offset` into `buf`. The contents of `buf` are
    /// defined once the completion for `tag` reports success (backends here fill it
    /// before returning; asynchronous ones may copy at completion).
    fn submit_read(&mut self, tag: IoTag, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;

    /// Starts a flush: completes once every write completed before this call is durable.
    fn submit_flush(&mut self, tag: IoTag) -> Result<(), StorageError>;

    /// Appends finished requests to `out` (at most `max`); returns how many it appended.
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize;

    /// Requests submitted and not yet reported by `poll`.
    fn in_flight(&self) -> u32;
}

/// Reads `buf.len()` bytes at `offset`, waiting for the completion: for recovery, verify and
/// tests, never the hot path. `others` receives unrelated completions, which are handed back
/// to the caller rather than lost. The tag `u64::MAX` is reserved for it.
pub fn read_blocking<S: Storage + ?Sized>(
    storage: &mut S,
    offset: u64,
    buf: &mut [u8],
    others: &mut Vec<Completion>,
) -> Result<(), StorageError> {
    const READ_TAG: IoTag = u64::MAX;
    storage.submit_read(READ_TAG, offset, buf)?;
    wait_for(storage, READ_TAG, others)
}

/// Polls until the completion for `tag` arrives and returns its result; completions of
/// other requests go to `others`. For start-up, recovery and tests, never the hot path.
pub fn wait_for<S: Storage + ?Sized>(
    storage: &mut S,
    tag: IoTag,
    others: &mut Vec<Completion>,
) -> Result<(), StorageError> {
    let mut batch = Vec::with_capacity(8);
    loop {
        batch.clear();
        storage.poll(&mut batch, 8);
        let mut found = None;
        // Every other completion of the batch goes to `others`, those after ours too.
        for completion in batch.drain(..) {
            if completion.tag == tag && found.is_none() {
                found = Some(completion.result);
            } else {
                others.push(completion);
            }
        }
        if let Some(result) = found {
            return result;
        }
    }
}

/// What a handshake says of each volume: its name (from `names`, in order), size and
/// block size.
pub fn describe<S: Storage>(names: &[String], volumes: &[S]) -> Vec<crate::protocol::VolumeInfo> {
    assert_eq!(names.len(), volumes.len(), "one name per volume");
    names
        .iter()
        .zip(volumes)
        .map(|(name, volume)| crate::protocol::VolumeInfo {
            name: name.clone(),
            size_bytes: volume.geometry().size_bytes,
            block_size: volume.geometry().block_size,
        })
        .collect()
}

/// A zeroed buffer with every page already mapped. `vec![0; n]` takes fresh pages from
/// the kernel lazily, so the first write to each would fault (and the kernel clear it) on
/// the hot path; arenas sized at startup are touched here instead.
pub fn prefaulted(len: usize) -> Vec<u8> {
    const PAGE_BYTES: usize = 4096;
    let mut buf = vec![0u8; len];
    // The allocator's memory is known to be zero: black_box keeps the writes that map it.
    let bytes = std::hint::black_box(&mut buf[..]);
    for page in bytes.chunks_mut(PAGE_BYTES) {
        page[0] = 0;
    }
    buf
}

/// Waits until nothing is in flight on `storage`, discarding the completions: for handing
/// storage from one owner to the next (a restart), never the hot path.
pub fn drain<S: Storage + ?Sized>(storage: &mut S) {
    let mut discarded = Vec::with_capacity(64);
    while storage.in_flight() > 0 {
        discarded.clear();
        storage.poll(&mut discarded, 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_span_covers_any_byte_range_inside_the_volume() {
        let geometry = Geometry::new(16 * 4096, 4096).unwrap();
        assert_eq!(geometry.block_span(0, 4096), Ok((0, 4096)));
        assert_eq!(geometry.block_span(1, 1), Ok((0, 4096)));
        assert_eq!(geometry.block_span(4095, 2), Ok((0, 8192)));
        assert_eq!(geometry.block_span(5000, 10_000), Ok((4096, 12288)));
        assert_eq!(geometry.block_span(16 * 4096 - 1, 1), Ok((15 * 4096, 4096)));
        assert!(matches!(
            geometry.block_span(16 * 4096 - 1, 2),
            Err(StorageError::OutOfRange { .. })
        ));
        assert!(matches!(
            geometry.block_span(u64::MAX, 2),
            Err(StorageError::OutOfRange { .. })
        ));
        assert!(matches!(
            geometry.block_span(7, 0),
            Err(StorageError::Unaligned { len: 0, .. })
        ));
    }
}

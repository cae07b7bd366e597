//! What a server serves: an `Export` (a block device, with errno values for the replies),
//! and how serving a connection fails.

use std::io;

use crate::NbdError;

/// A block device exported over NBD. Errors are errno values for the reply.
pub trait Export: Send + Sync {
    fn name(&self) -> &str;
    fn size_bytes(&self) -> u64;
    /// The block size requests should be aligned to for speed (NBD's preferred size).
    fn block_size(&self) -> u32;
    /// The alignment requests must have (NBD's minimum block size): a request that
    /// starts or ends elsewhere is refused with EINVAL. 1 takes any byte range; the
    /// default takes whole blocks only.
    fn min_block_size(&self) -> u32 {
        self.block_size()
    }
    /// Largest single request accepted.
    fn max_request_bytes(&self) -> u32;
    /// Fills `buf` (its length is the request's) from `offset`. `buf` is owned so an
    /// export may hand it to another thread and back; it must return it with its length.
    fn read(&self, offset: u64, buf: &mut Vec<u8>) -> Result<(), u32>;
    /// Writes `data` at `offset` (owned for the same reason as in `read`); with `fua`,
    /// returns once the data is durable.
    fn write(&self, offset: u64, data: &mut Vec<u8>, fua: bool) -> Result<(), u32>;
    /// Returns once every write already acknowledged is durable.
    fn flush(&self) -> Result<(), u32>;
    /// Whether it takes TRIM and WRITE_ZEROES (advertised to clients); if not, the
    /// server answers them ENOTSUP without calling it.
    fn can_zero(&self) -> bool {
        false
    }
    /// Makes `len` bytes at `offset` read back as zeros; `may_unmap` (no NO_HOLE flag)
    /// allows deallocating them; with `fua`, returns once that is durable.
    fn write_zeroes(&self, offset: u64, len: u32, may_unmap: bool, fua: bool) -> Result<(), u32> {
        let _ = (offset, len, may_unmap, fua);
        Err(crate::ENOTSUP)
    }
    /// The client no longer needs `len` bytes at `offset` (advisory: what they read
    /// back as afterwards is the export's choice).
    fn trim(&self, offset: u64, len: u32) -> Result<(), u32> {
        let _ = (offset, len);
        Err(crate::ENOTSUP)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Protocol(#[from] NbdError),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("request of {0} bytes is over the limit; the stream cannot be resynchronised")]
    RequestTooLarge(u32),
    #[error("connection closed mid-request ({0} bytes of it received)")]
    Truncated(usize),
    #[error("no export chosen within {0:?} of connecting")]
    NegotiationTimeout(std::time::Duration),
    #[error("refused: {0} clients are connected already")]
    TooManyClients(usize),
}

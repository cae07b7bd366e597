//! ordo-nbd: the NBD protocol (fixed newstyle handshake and transmission), knowing nothing
//! of replication. `handshake` and `transmission` are a sans-I/O codec: they parse what a
//! client sends from a byte buffer and encode the server's replies, and the reverse for
//! a client. `server` (with `pipeline`) serves any `server::Export` over TCP; `client` is a
//! pipelined client connection (what `ordo bench --target` drives). Numbers follow the
//! NBD protocol document (NetworkBlockDevice/nbd `doc/proto.md`); all integers are
//! big-endian. The parsers are fuzzed (`fuzz/`).
#![forbid(unsafe_code)]

pub mod client;
pub mod export;
/// The fuzz targets' bodies (`fuzz/`, `tests/fuzz_regressions.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod poller;
pub mod server;
#[cfg(test)]
mod test_export;
pub mod transmission;
pub mod url;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Errors carried in replies: the errno values the protocol names, which are Linux's.
pub const EIO: u32 = libc::EIO as u32;
pub const EINVAL: u32 = libc::EINVAL as u32;
pub const ENOSPC: u32 = libc::ENOSPC as u32;
pub const EOVERFLOW: u32 = libc::EOVERFLOW as u32;
pub const ENOTSUP: u32 = libc::ENOTSUP as u32;
pub const ESHUTDOWN: u32 = libc::ESHUTDOWN as u32;

/// Longest string (export name, message) the protocol allows.
pub const MAX_STRING_BYTES: usize = 4096;

/// Something the client sent that breaks the protocol: the connection is dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NbdError {
    #[error("bad magic {found:#x} (expected {expected:#x})")]
    BadMagic { expected: u64, found: u64 },
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("option data of {0} bytes is over the {MAX_OPTION_BYTES}-byte limit")]
    OptionTooLong(u32),
    /// The server does not speak the fixed newstyle handshake (client side).
    #[error("the server's handshake flags {0:#x} lack fixed newstyle")]
    NotFixedNewstyle(u16),
    /// An `NBD_REP_INFO` too short for its type (client side).
    #[error("NBD_REP_INFO of type {info} has {len} bytes, too few")]
    ShortInfo { info: u16, len: usize },
}

/// Largest option payload accepted (a name of `MAX_STRING_BYTES` and its info requests).
pub const MAX_OPTION_BYTES: u32 = 8192;

fn be_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

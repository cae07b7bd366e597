//! The replication protocol: identifiers, frames and their fixed, checked wire format.

pub mod codec;
pub mod digest;
pub mod frame;
pub mod handshake;
pub mod history;
pub mod ids;

pub use codec::{
    decode, encode, encode_write_head, frame_len, DecodeError, HEADER_BYTES,
    MAX_CONTROL_FRAME_BYTES, RECORD_FRAME_OVERHEAD_BYTES,
};
pub use frame::*;
pub use handshake::{check_hello, PeerError};
pub use history::{decide, Decision, PrimaryHistory, StreamStart};
pub use ids::*;

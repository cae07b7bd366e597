//! The replication protocol: identifiers, frames and their fixed, checked wire format.

pub mod codec;
pub mod frame;
pub mod handshake;
pub mod ids;

pub use codec::{decode, encode, frame_len, DecodeError, HEADER_BYTES};
pub use frame::*;
pub use handshake::{check_hello, PeerError};
pub use ids::*;

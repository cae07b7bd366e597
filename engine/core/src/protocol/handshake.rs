//! What both sides check in the other's `Hello`, and the errors a misbehaving peer earns.
//! A `PeerError` drops the lane it arrived on; the daemon keeps serving.

use thiserror::Error;

use super::frame::{Hello, Role};
use super::ids::GenerationId;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PeerError {
    #[error("handshake mismatch on {field}: we have {ours}, the peer has {theirs}")]
    Mismatch {
        field: &'static str,
        ours: String,
        theirs: String,
    },
    #[error("the secondary's journal window ({window} bytes) is smaller than one data set can be ({needed} bytes)")]
    WindowTooSmall { window: u64, needed: u64 },
    #[error("the secondary holds history {secondary}, which is not this primary's ({primary}) nor one it descends from: another primary's or another group's replica; refusing to overwrite it (if it is to be discarded, say so on the secondary: ordo resync --discard-my-data)")]
    UnrelatedHistory {
        primary: GenerationId,
        secondary: GenerationId,
    },
    #[error("unexpected frame from the peer: {0}")]
    Unexpected(&'static str),
    #[error("invalid write from the peer: {0}")]
    BadWrite(String),
    #[error("the peer broke the protocol: {0}")]
    Violation(&'static str),
}

/// Checks that `theirs` comes from the role we expect and describes the same group and
/// volumes (names, sizes, block sizes, in order) as `ours`.
pub fn check_hello(ours: &Hello, theirs: &Hello, expected_role: Role) -> Result<(), PeerError> {
    let mismatch = |field, ours: String, theirs: String| {
        Err(PeerError::Mismatch {
            field,
            ours,
            theirs,
        })
    };
    if theirs.role != expected_role {
        return mismatch(
            "role",
            format!("{expected_role:?} expected"),
            format!("{:?}", theirs.role),
        );
    }
    if theirs.group != ours.group {
        return mismatch(
            "group id",
            ours.group.0.to_string(),
            theirs.group.0.to_string(),
        );
    }
    if theirs.volumes.len() != ours.volumes.len() {
        return mismatch(
            "volume count",
            ours.volumes.len().to_string(),
            theirs.volumes.len().to_string(),
        );
    }
    for (mine, other) in ours.volumes.iter().zip(&theirs.volumes) {
        if mine.name != other.name {
            return mismatch("volume name", mine.name.clone(), other.name.clone());
        }
        if mine.size_bytes != other.size_bytes {
            let field = "volume size";
            return mismatch(
                field,
                format!("{}: {}", mine.name, mine.size_bytes),
                other.size_bytes.to_string(),
            );
        }
        if mine.block_size != other.block_size {
            let field = "block size";
            return mismatch(
                field,
                format!("{}: {}", mine.name, mine.block_size),
                other.block_size.to_string(),
            );
        }
    }
    Ok(())
}

//! ordo-lockfree: the lock-free structures between ordo's receiver threads and the thread
//! that journals and applies what they receive: the reorder buffer (records by seq) and
//! the staging arena (their payloads, in claimed ranges).
//!
//! The only crate in the workspace besides spdk-glue/ that needs `unsafe`: its structures
//! keep values in `UnsafeCell` slots whose ownership atomics hand from thread to thread.
//! Every such file names its algorithm and argues each `Ordering` where it is used; all
//! synchronization primitives come from `primitive`, which loom replaces under
//! `--cfg loom` (ci/loom.sh).

mod arena;
mod primitive;
mod reorder;

pub use arena::{ArenaError, ArenaReader, ArenaWriter, StagingArena, GRANULE_BYTES};
pub use reorder::{
    Consumer, Producer, Rejected, ReorderBuffer, ReorderStats, Reservation, SEQ_LIMIT,
};

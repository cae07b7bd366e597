//! ordo-lockfree: the lock-free structures between ordo's receiver threads and its applier.
//!
//! The only crate in the workspace besides spdk-glue/ that needs `unsafe`: its structures
//! keep values in `UnsafeCell` slots whose ownership atomics hand from thread to thread.
//! Every such file names its algorithm and argues each `Ordering` where it is used; all
//! synchronization primitives come from `primitive`, which loom replaces under
//! `--cfg loom` (ci/loom.sh).

mod primitive;
mod reorder;

pub use reorder::{Consumer, Producer, Rejected, ReorderBuffer, ReorderStats, SEQ_LIMIT};

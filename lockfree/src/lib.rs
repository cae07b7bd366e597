//! ordo-lockfree: the lock-free structures between ordo's receiver threads and its applier.
//!
//! - [`ReorderBuffer`]: receivers insert writes that arrive out of seq order from several
//!   lanes (in one step, or reserving a seq before its value exists); one consumer takes
//!   them strictly in seq order.
//! - [`StagingArena`]: receivers copy record payloads into claimed, granule-aligned ranges
//!   of one preallocated buffer; one reader reads each range once it is written and
//!   releases it for reuse.
//!
//! The only crate in the workspace besides spdk-glue/ that needs `unsafe`: its structures
//! keep values in `UnsafeCell` slots, or bytes in a raw buffer, whose ownership atomics
//! hand from thread to thread. Every such file names its algorithm and argues each
//! `Ordering` where it is used; all synchronization primitives come from `primitive`,
//! which loom replaces under `--cfg loom` (ci/loom.sh).

mod arena;
mod primitive;
mod reorder;

pub use arena::{ArenaError, ArenaReader, ArenaWriter, StagingArena, GRANULE_BYTES};
pub use reorder::{
    Consumer, Producer, Rejected, ReorderBuffer, ReorderStats, Reservation, SEQ_LIMIT,
};

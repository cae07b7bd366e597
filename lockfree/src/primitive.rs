//! The one place that chooses between std's synchronization primitives and loom's
//! model-checked ones (`RUSTFLAGS="--cfg loom"`, see ci/loom.sh). Everything else in the
//! crate imports from here, so the code loom checks is the code that ships.
//!
//! loom's `UnsafeCell` hands out its pointer through a closure so it can see where each
//! access starts and ends; the std build gets a shim of the same shape that compiles to a
//! plain `std::cell::UnsafeCell` (tokio and crossbeam do the same).

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

#[cfg(not(loom))]
pub(crate) use shim::UnsafeCell;

#[cfg(not(loom))]
mod shim {
    /// `std::cell::UnsafeCell` behind loom's closure API. Only `with_mut` exists: every
    /// access to a slot moves a value in or out, so none is a shared read.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) fn new(value: T) -> UnsafeCell<T> {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        /// Calls `f` with a pointer to the contents. Dereferencing it is the caller's
        /// `unsafe`, argued there: this only mirrors loom's signature.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

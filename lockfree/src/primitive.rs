//! The one place that chooses between std's synchronization primitives and loom's
//! model-checked ones (`RUSTFLAGS="--cfg loom"`, see ci/loom.sh). Everything else in the
//! crate imports from here, so the code loom checks is the code that ships.
//!
//! loom's `UnsafeCell` hands out its pointer through a closure so it can see where each
//! access starts and ends; the std build gets a shim of the same shape that compiles to a
//! plain `std::cell::UnsafeCell` (tokio and crossbeam do the same).
//!
//! Memory that is not kept in `UnsafeCell`s (the staging arena's bytes: one plain buffer,
//! so that a copy into it is one memcpy) is shown to loom through [`AccessCells`]: one
//! loom cell per region standing for its bytes, accessed around every real access, so loom
//! checks their causality as it does a cell's. The std build's `AccessCells` is empty and
//! its methods do nothing.

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
pub(crate) use shim::{AccessCells, UnsafeCell};

#[cfg(loom)]
pub(crate) use loom_access::AccessCells;

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

    /// Nothing: see the loom version for what it stands for.
    #[derive(Debug)]
    pub(crate) struct AccessCells;

    /// Nothing: see the loom version.
    #[derive(Debug)]
    #[must_use = "the access ends when this guard drops"]
    pub(crate) struct Writing;

    impl AccessCells {
        pub(crate) fn new(_regions: usize) -> AccessCells {
            AccessCells
        }

        #[inline(always)]
        pub(crate) fn write(&self, _regions: std::ops::Range<usize>) -> Writing {
            Writing
        }

        #[inline(always)]
        pub(crate) fn read(&self, _regions: std::ops::Range<usize>) {}
    }
}

#[cfg(loom)]
mod loom_access {
    use std::ops::Range;

    use loom::cell::{MutPtr, UnsafeCell};

    /// One loom cell per region of a plain buffer (a granule of the staging arena). The
    /// cells hold nothing: accessing one tells loom the region's bytes are accessed, so it
    /// fails the model on an access not ordered after a conflicting one of another thread.
    #[derive(Debug)]
    pub(crate) struct AccessCells(Box<[UnsafeCell<()>]>);

    /// A write access to some regions, from `AccessCells::write` until this drops.
    #[derive(Debug)]
    #[must_use = "the access ends when this guard drops"]
    pub(crate) struct Writing {
        _guards: Vec<MutPtr<()>>,
    }

    impl AccessCells {
        pub(crate) fn new(regions: usize) -> AccessCells {
            AccessCells((0..regions).map(|_| UnsafeCell::new(())).collect())
        }

        /// Starts a write access to `regions`, checked against every earlier access.
        #[track_caller]
        pub(crate) fn write(&self, regions: Range<usize>) -> Writing {
            Writing {
                _guards: self.0[regions].iter().map(UnsafeCell::get_mut).collect(),
            }
        }

        /// A read access to `regions` at this point, checked against every earlier write.
        #[track_caller]
        pub(crate) fn read(&self, regions: Range<usize>) {
            for cell in &self.0[regions] {
                cell.with(|_| ());
            }
        }
    }
}

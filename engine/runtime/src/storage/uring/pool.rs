//! The io_uring backend's request buffers: one page-aligned region, allocated at open and
//! carved into equal slots, one per request that may be in flight. A write copies into its
//! slot, which the kernel reads until the request's completion is reaped; O_DIRECT needs
//! that alignment, and the hot path never allocates.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;

use ordo_core::storage::StorageError;

/// Alignment of the region and of every slot: a page, which satisfies O_DIRECT on devices
/// with logical blocks of up to 4096 bytes.
pub(super) const BUFFER_ALIGN_BYTES: usize = 4096;

pub(super) struct BufferPool {
    base: NonNull<u8>,
    layout: Layout,
    /// Distance between slots: the requested slot size rounded up to the alignment.
    slot_bytes: usize,
    slot_count: u32,
}

impl BufferPool {
    /// Allocates `slot_count` zeroed slots of at least `slot_bytes` each. A pool the machine
    /// cannot hold is an error, not an abort: its size comes from configuration.
    pub(super) fn new(slot_count: u32, slot_bytes: u32) -> Result<BufferPool, StorageError> {
        assert!(
            slot_count > 0 && slot_bytes > 0,
            "the geometry was validated"
        );
        let slot_bytes = (slot_bytes as usize).next_multiple_of(BUFFER_ALIGN_BYTES);
        let layout = slot_bytes
            .checked_mul(slot_count as usize)
            .and_then(|size| Layout::from_size_align(size, BUFFER_ALIGN_BYTES).ok())
            .ok_or(StorageError::BadGeometry(
                "the buffer pool does not fit in this machine's address space",
            ))?;
        // SAFETY: the layout's size is positive (both factors are), as `alloc_zeroed`
        // requires. Zeroed rather than uninitialised, so that a slot is always a valid
        // `[u8]`; the pages are only touched when a slot is first used.
        let base = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(base).ok_or_else(|| StorageError::Io {
            kind: std::io::ErrorKind::OutOfMemory,
            message: format!("cannot allocate a {}-byte buffer pool", layout.size()),
        })?;
        debug_assert_eq!(base.as_ptr() as usize % BUFFER_ALIGN_BYTES, 0);
        Ok(BufferPool {
            base,
            layout,
            slot_bytes,
            slot_count,
        })
    }

    pub(super) fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Where `slot` starts, for an SQE to name.
    pub(super) fn slot_ptr(&self, slot: u32) -> *mut u8 {
        assert!(slot < self.slot_count, "slot {slot} out of range");
        // SAFETY: `slot < slot_count`, so the offset is inside the allocation of
        // `slot_count * slot_bytes` bytes (and fits in isize, as the layout does).
        unsafe { self.base.as_ptr().add(slot as usize * self.slot_bytes) }
    }

    /// The memory of `slot`, to fill before a write or to read into.
    ///
    /// # Safety
    ///
    /// No request the kernel may still be working on uses `slot`: its last request's
    /// completion has been reaped, or it never had one. The kernel accesses the memory of
    /// a request in flight behind Rust's back, so a slice over it would alias that access.
    pub(super) unsafe fn slot_mut(&mut self, slot: u32) -> &mut [u8] {
        let start = self.slot_ptr(slot);
        // SAFETY: `start .. start + slot_bytes` lies inside the allocation (see
        // `slot_ptr`), is initialised (zeroed in `new`, only ever written with bytes since)
        // and does not overlap another slot. `&mut self` rules out any other slice into the
        // pool for the returned lifetime, and the caller rules out the kernel.
        unsafe { std::slice::from_raw_parts_mut(start, self.slot_bytes) }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with exactly `layout` and is freed only
        // here, once. The owner drops the pool only after every request that used it has
        // completed (see `UringStorage`'s `Drop`).
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

// SAFETY: the pool owns its allocation exclusively, as a `Box<[u8]>` does, and has no
// thread affinity; the only other user of its memory is the kernel, for requests in
// flight, which does not care which thread later drops it.
unsafe impl Send for BufferPool {}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("slot_count", &self.slot_count)
            .field("slot_bytes", &self.slot_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_disjoint_and_zeroed() {
        let mut pool = BufferPool::new(3, 1000).unwrap();
        assert_eq!(pool.slot_bytes(), BUFFER_ALIGN_BYTES);
        for slot in 0..3 {
            let start = pool.slot_ptr(slot) as usize;
            assert_eq!(start % BUFFER_ALIGN_BYTES, 0);
            assert_eq!(start - pool.slot_ptr(0) as usize, slot as usize * 4096);
            // SAFETY: no request was ever made with this pool.
            let memory = unsafe { pool.slot_mut(slot) };
            assert!(memory.iter().all(|&b| b == 0));
            memory.fill(slot as u8 + 1);
        }
        for slot in 0..3 {
            // SAFETY: as above.
            let memory = unsafe { pool.slot_mut(slot) };
            assert!(memory.iter().all(|&b| b == slot as u8 + 1), "slots overlap");
        }
    }

    #[test]
    fn a_pool_larger_than_the_address_space_is_an_error() {
        // About 2^64 bytes: past isize::MAX, which Layout refuses (or an overflow on a
        // 32-bit machine).
        let r = BufferPool::new(u32::MAX, u32::MAX);
        assert!(matches!(r, Err(StorageError::BadGeometry(_))), "{r:?}");
    }
}

//! Memory the device can reach: SPDK's DMA allocator (hugepages, or plain memory without
//! them), one region per bdev cut into request slots at start-up.

use std::ptr::NonNull;

use crate::error::SpdkError;
use crate::sys;

#[derive(Debug)]
pub struct DmaBuffer {
    ptr: NonNull<u8>,
}

impl DmaBuffer {
    /// `len` zeroed bytes aligned to `align` (a power of two).
    pub fn zeroed(len: usize, align: usize) -> Result<DmaBuffer, SpdkError> {
        assert!(align.is_power_of_two() && len > 0);
        // SAFETY: the environment is started (callers hold an `Env`); the last argument
        // must be NULL in this SPDK version.
        let raw = unsafe { sys::spdk_dma_zmalloc(len, align, std::ptr::null_mut()) };
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or(SpdkError::DmaAlloc { bytes: len })?;
        Ok(DmaBuffer { ptr })
    }

    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by spdk_dma_zmalloc and freed once; the owner (a bdev)
        // drops it only after every request using it completed.
        unsafe { sys::spdk_dma_free(self.ptr.as_ptr().cast()) };
    }
}

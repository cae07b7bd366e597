//! One SPDK thread per OS thread that opens bdevs, polled by that OS thread (ordo's poller)
//! from `Storage::poll`. Shared by every bdev the OS thread opened; the last one to go
//! exits and destroys it.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};

use crate::env::Env;
use crate::error::SpdkError;
use crate::sys;

thread_local! {
    static CURRENT: RefCell<Weak<SpdkThread>> = const { RefCell::new(Weak::new()) };
}

#[derive(Debug)]
pub struct SpdkThread {
    raw: NonNull<sys::spdk_thread>,
    /// Bound to the OS thread that created it: neither Send nor Sync.
    _here: PhantomData<*mut ()>,
}

impl SpdkThread {
    /// This OS thread's SPDK thread, created (and made current) on first use.
    pub fn current(_env: &Env) -> Result<Rc<SpdkThread>, SpdkError> {
        if let Some(thread) = CURRENT.with(|current| current.borrow().upgrade()) {
            return Ok(thread);
        }
        // SAFETY: the thread library was initialised with the environment (`_env` proves
        // it); the name is a NUL-terminated literal, NULL cpumask means any core.
        let raw = unsafe { sys::spdk_thread_create(c"ordo_poller".as_ptr(), std::ptr::null()) };
        let raw = NonNull::new(raw).ok_or(SpdkError::Thread("spdk_thread_create failed"))?;
        // SAFETY: `raw` is a live SPDK thread that only this OS thread polls; bdev calls
        // made from here on (open, get_io_channel) belong to it.
        unsafe { sys::spdk_set_thread(raw.as_ptr()) };
        let thread = Rc::new(SpdkThread {
            raw,
            _here: PhantomData,
        });
        CURRENT.with(|current| *current.borrow_mut() = Rc::downgrade(&thread));
        Ok(thread)
    }

    /// Runs the messages and pollers due on this SPDK thread (I/O completions among
    /// them); returns whether it did anything.
    pub fn poll(&self) -> bool {
        // SAFETY: `raw` is live (destroyed only in Drop) and polled only from the OS
        // thread that created it (`SpdkThread` is neither Send nor Sync).
        unsafe { sys::spdk_thread_poll(self.raw.as_ptr(), 0, 0) > 0 }
    }
}

impl Drop for SpdkThread {
    fn drop(&mut self) {
        let raw = self.raw.as_ptr();
        // SAFETY: `raw` is live and ours; exiting asks SPDK to release what it still
        // holds (io channels put by the bdevs, which were dropped before us: they hold
        // an `Rc` to this thread). SPDK forces the exit after its own timeout, so the
        // loop ends.
        unsafe {
            sys::spdk_set_thread(raw);
            sys::spdk_thread_exit(raw);
            while !sys::spdk_thread_is_exited(raw) {
                sys::spdk_thread_poll(raw, 0, 0);
            }
            sys::spdk_thread_destroy(raw);
            sys::spdk_set_thread(std::ptr::null_mut());
        }
    }
}

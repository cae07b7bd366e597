//! `IoThread`: the SPDK thread one bdev owns. Its descriptor, io channel and completions
//! belong to it, and the bdev polls it from `Storage::poll` (and while a read waits), so
//! the owner never has to return to anyone for its I/O to progress:
//! - under `env::init` (ordo's own threads) nothing else polls it;
//! - on a reactor (`app::start`) it is created on the reactor the bdev was opened from, so
//!   the reactor polls it too, but never at the same time: the reactor is single-threaded
//!   and busy running the poller that owns the bdev whenever that poller polls it.
//!
//! Never the SPDK thread the owner itself runs on: a thread must not be polled from inside
//! one of its own pollers.

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::error::SpdkError;
use crate::sys;

/// Just under SPDK's own timeout for a thread's exit, after which it forces it.
const FORCED_EXIT: std::time::Duration = std::time::Duration::from_millis(4500);

#[derive(Debug)]
pub struct IoThread {
    raw: NonNull<sys::spdk_thread>,
    /// On a reactor: the reactor destroys it once it exited.
    reactor: bool,
    /// Bound to the OS thread that created it: neither Send nor Sync.
    _here: PhantomData<*mut ()>,
}

/// `IoThread::enter`'s guard: the SPDK thread that was current before, made current again
/// on drop.
#[derive(Debug)]
pub struct Entered {
    previous: *mut sys::spdk_thread,
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: restores the thread that was current on this OS thread (or none).
        unsafe { sys::spdk_set_thread(self.previous) };
    }
}

impl IoThread {
    /// A new SPDK thread; on a reactor, pinned to the reactor this runs on. SPDK's
    /// environment must be started (`env::init` or `app::start`). With reactors running,
    /// only a reactor may open bdevs: elsewhere the framework would schedule the thread
    /// on some reactor, which would then poll it at the same time as its owner.
    pub fn new() -> Result<IoThread, SpdkError> {
        let reactor = crate::app::on_reactor();
        if !reactor && crate::app::running() {
            return Err(SpdkError::NotOnReactor);
        }
        // SAFETY: plain data, filled in below before SPDK reads it.
        let mut cpuset: sys::spdk_cpuset = unsafe { std::mem::zeroed() };
        let mask = if reactor {
            // SAFETY: on a reactor, the current core is the reactor's; the set is ours.
            unsafe {
                let core = sys::spdk_env_get_current_core();
                sys::spdk_cpuset_zero(&mut cpuset);
                sys::spdk_cpuset_set_cpu(&mut cpuset, core, true);
            }
            &cpuset as *const sys::spdk_cpuset
        } else {
            std::ptr::null()
        };
        // SAFETY: the thread library is initialised (the environment is started); the
        // name is a NUL-terminated literal; the cpuset (or NULL, any core) is copied.
        let raw = unsafe { sys::spdk_thread_create(c"ordo_io".as_ptr(), mask) };
        let raw = NonNull::new(raw).ok_or(SpdkError::Thread("spdk_thread_create failed"))?;
        Ok(IoThread {
            raw,
            reactor,
            _here: PhantomData,
        })
    }

    /// Makes this SPDK thread current on this OS thread until the guard drops: bdev calls
    /// made meanwhile (open, get_io_channel, submit, close) belong to it.
    pub fn enter(&self) -> Entered {
        // SAFETY: reading and setting this OS thread's current SPDK thread; `raw` is live.
        unsafe {
            let previous = sys::spdk_get_thread();
            sys::spdk_set_thread(self.raw.as_ptr());
            Entered { previous }
        }
    }

    /// Runs the messages and pollers due on this thread (I/O completions among them).
    pub fn poll(&self) -> bool {
        // SAFETY: `raw` is live (destroyed only in Drop) and polled only from this OS
        // thread, never from inside one of its own pollers (see the module docs);
        // spdk_thread_poll makes it current and restores the previous one.
        unsafe { sys::spdk_thread_poll(self.raw.as_ptr(), 0, 0) > 0 }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let raw = self.raw.as_ptr();
        {
            let _entered = self.enter();
            // SAFETY: `raw` is live and current; its owner released its channel and
            // descriptor first. Exiting runs the release messages; SPDK forces the exit
            // after its own timeout, so the loop below ends.
            unsafe { sys::spdk_thread_exit(raw) };
        }
        let started = std::time::Instant::now();
        // SAFETY: as in `poll`.
        while !unsafe { sys::spdk_thread_is_exited(raw) } {
            self.poll();
        }
        if self.reactor {
            return;
        }
        // SPDK forces the exit after its own timeout (5 s) even with channels still
        // registered; freeing the thread then would leave them pointing at freed memory.
        if started.elapsed() >= FORCED_EXIT {
            tracing::warn!(
                "an SPDK thread took {:?} to exit: leaked, not freed",
                started.elapsed()
            );
            return;
        }
        // SAFETY: exited cleanly, and nobody else knows it: freed once, here.
        unsafe { sys::spdk_thread_destroy(raw) };
    }
}

//! One request's life between a `BdevStorage` and SPDK: its slot (state, DMA buffer,
//! io-wait entry), handing it to the bdev layer (`issue`), and the callbacks SPDK calls
//! back (completion, room again after `-ENOMEM`, bdev events), which record into the
//! bdev's `Finished` for `poll` to report. Slots and `Finished` are separate allocations
//! reached only through raw pointers while SPDK may hold them.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

use ordo_core::storage::IoTag;

use crate::sys;

const ENOMEM: c_int = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Write,
    Read,
    Flush,
    /// `spdk_bdev_write_zeroes`: the bdev layer writes zeros itself where the bdev has no
    /// native command, so the range reads back as zeros on every bdev (an unmap would not
    /// promise that).
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Free,
    /// With the bdev layer.
    Submitted,
    /// In SPDK's io-wait queue after `-ENOMEM`.
    Waiting,
    /// Finished (`Ok` or the errno / failure), not yet reported by `poll`.
    Done(Result<(), c_int>),
}

/// What the callbacks need to resubmit a request and to report it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub(crate) desc: *mut sys::spdk_bdev_desc,
    pub(crate) channel: *mut sys::spdk_io_channel,
    pub(crate) bdev: *mut sys::spdk_bdev,
    /// The finished-request queue (its own allocation, apart from the slots).
    pub(crate) done: *mut Finished,
}

/// What the callbacks report back, in an allocation of its own (apart from the slots).
#[derive(Debug)]
pub(crate) struct Finished {
    /// Slots finished and not yet reported by `poll`; capacity for every slot.
    pub(crate) queue: VecDeque<u32>,
    /// Requests that had to wait for room in the bdev layer (`-ENOMEM`).
    pub(crate) io_waits: u64,
    /// SPDK said the bdev is going away (hot remove, controller lost): new requests are
    /// refused and the descriptor is closed once nothing is in flight, as SPDK requires.
    pub(crate) removed: bool,
}

/// One request in flight. Slots live in a boxed slice that never moves or resizes while
/// the bdev is open: SPDK holds `*mut Slot` as its callback argument.
pub(crate) struct Slot {
    pub(crate) index: u32,
    pub(crate) target: Target,
    pub(crate) state: State,
    pub(crate) op: Op,
    pub(crate) tag: IoTag,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// This slot's part of the DMA region.
    pub(crate) buf: *mut u8,
    /// SPDK links this into its io-wait queue while the request waits for room.
    pub(crate) wait: sys::spdk_bdev_io_wait_entry,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("index", &self.index)
            .field("state", &self.state)
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

/// Hands the slot's request to the bdev layer; on `-ENOMEM` queues it to wait for room.
/// Any other refusal finishes it with that error (reported by `poll`).
///
/// # Safety
/// `slot` points to a live slot of an open `BdevStorage`, on that bdev's SPDK thread, and
/// no reference to the slot is alive.
pub(crate) unsafe fn issue(slot: *mut Slot) {
    // SAFETY: the caller's contract.
    let (target, op, offset, len, buf) = unsafe {
        let s = &*slot;
        (s.target, s.op, s.offset, s.len, s.buf)
    };
    let arg = slot.cast::<c_void>();
    // Before the call: on some error paths (a split request failing) SPDK runs the
    // completion callback inside it and still returns 0, and the callback's `Done` must
    // stand.
    // SAFETY: the caller's contract.
    unsafe { (*slot).state = State::Submitted };
    // SAFETY: descriptor and channel are open on this SPDK thread; the buffer is the
    // slot's DMA memory (at least `len` bytes), untouched until the completion; `arg`
    // stays valid until the callback (the slots outlive every request in flight).
    let rc = unsafe {
        let (desc, channel, done) = (target.desc, target.channel, Some(io_done as _));
        match op {
            // The same arguments for either direction.
            Op::Write | Op::Read => {
                let submit = if op == Op::Write {
                    sys::spdk_bdev_write
                } else {
                    sys::spdk_bdev_read
                };
                submit(desc, channel, buf.cast(), offset, len, done, arg)
            }
            Op::Flush => sys::spdk_bdev_flush(desc, channel, offset, len, done, arg),
            Op::Zero => sys::spdk_bdev_write_zeroes(desc, channel, offset, len, done, arg),
        }
    };
    if rc == 0 {
        return;
    }
    if rc == -ENOMEM {
        // SAFETY: the caller's contract; the entry is inside the slot, which stays put
        // until SPDK calls `io_retry` with it.
        let queued = unsafe {
            (*slot).state = State::Waiting;
            (*target.done).io_waits += 1;
            (*slot).wait.bdev = target.bdev;
            (*slot).wait.cb_fn = Some(io_retry);
            (*slot).wait.cb_arg = arg;
            sys::spdk_bdev_queue_io_wait(target.bdev, target.channel, &mut (*slot).wait)
        };
        if queued == 0 {
            return;
        }
        // SAFETY: the caller's contract.
        unsafe { finish(slot, Err(-queued)) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { finish(slot, Err(-rc)) };
}

/// Marks the slot finished and queues it for `poll`.
///
/// # Safety
/// As for `issue`.
pub(crate) unsafe fn finish(slot: *mut Slot, result: Result<(), c_int>) {
    // SAFETY: the caller's contract; the done queue is a separate allocation of the same
    // bdev, with capacity for every slot, so the push never reallocates.
    unsafe {
        (*slot).state = State::Done(result);
        let done = &mut (*(*slot).target.done).queue;
        debug_assert!(done.len() < done.capacity());
        done.push_back((*slot).index);
    }
}

/// SPDK's completion callback, on the bdev's SPDK thread inside `spdk_thread_poll`.
extern "C" fn io_done(bdev_io: *mut sys::spdk_bdev_io, success: bool, arg: *mut c_void) {
    // SAFETY: SPDK hands back the bdev_io it gave us, to be freed once.
    unsafe { sys::spdk_bdev_free_io(bdev_io) };
    let slot = arg.cast::<Slot>();
    // SAFETY: `arg` is the `*mut Slot` passed in `issue`; the slot is live (a bdev waits
    // for its requests before it frees them) and no reference to it is held during the
    // poll that runs this callback.
    unsafe { finish(slot, if success { Ok(()) } else { Err(0) }) };
}

/// SPDK's io-wait callback: room in the bdev layer again.
extern "C" fn io_retry(arg: *mut c_void) {
    // SAFETY: `arg` is the waiting slot (see `issue`), on its SPDK thread, unreferenced.
    unsafe { issue(arg.cast::<Slot>()) };
}

/// Events on an open bdev, on its SPDK thread inside a poll. On removal (hot remove, a
/// lost controller) SPDK waits for the descriptor to close: `poll` closes it once nothing
/// is in flight. A resize changes nothing here (the geometry was fixed at open).
pub(crate) extern "C" fn bdev_event(
    kind: sys::spdk_bdev_event_type,
    _bdev: *mut sys::spdk_bdev,
    ctx: *mut c_void,
) {
    if kind == sys::spdk_bdev_event_type::SPDK_BDEV_EVENT_REMOVE {
        // SAFETY: `ctx` is the bdev's `Finished`, which outlives its descriptor; no other
        // reference to it is held during the poll that runs this callback.
        unsafe { (*ctx.cast::<Finished>()).removed = true };
    }
}

/// The `Finished` of a bdev being opened: freed if opening fails, handed to the
/// `BdevStorage` (which frees it in its Drop) otherwise.
pub(crate) struct FinishedBox(pub(crate) NonNull<Finished>);

impl FinishedBox {
    pub(crate) fn new(max_in_flight: u32) -> FinishedBox {
        let boxed = Box::new(Finished {
            queue: VecDeque::with_capacity(max_in_flight as usize),
            io_waits: 0,
            removed: false,
        });
        // SAFETY: Box::into_raw never returns null.
        FinishedBox(unsafe { NonNull::new_unchecked(Box::into_raw(boxed)) })
    }

    pub(crate) fn into_raw(self) -> *mut Finished {
        let raw = self.0.as_ptr();
        std::mem::forget(self);
        raw
    }
}

impl Drop for FinishedBox {
    fn drop(&mut self) {
        // SAFETY: from Box::into_raw in `new`, not handed over (into_raw forgets), and the
        // descriptor that had it as event context is already closed (dropped first).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

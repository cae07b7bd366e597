//! `BdevStorage`: the engine's `Storage` on an SPDK bdev (malloc in CI, NVMe on bare
//! metal). A descriptor and an io channel on an SPDK thread of its own (`IoThread`, which
//! `poll` polls), one DMA region cut into `max_in_flight` request slots (no allocation per
//! request), completions recorded by the callback into a queue that `poll` drains: never
//! delivered inside `submit_*`. A request the bdev layer has no room for (`-ENOMEM`)
//! waits in SPDK's io-wait queue and is resubmitted from there (`request.rs`).
//!
//! Reads wait for the device inside `submit_read`, as the io_uring backend's `pread` does:
//! they serve recovery, verification and the application's reads, not the write path.

use std::ffi::{c_int, CString};
use std::ptr::{self, NonNull};

use ordo_core::storage::{Completion, Geometry, IoTag, Storage, StorageError};

use crate::dma::DmaBuffer;
use crate::env::Env;
use crate::error::SpdkError;
use crate::request::{bdev_event, finish, issue, Finished, FinishedBox, Op, Slot, State, Target};
use crate::sys;
use crate::thread::IoThread;

/// An SPDK bdev opened for reading and writing on this OS thread.
#[derive(Debug)]
pub struct BdevStorage {
    name: String,
    geometry: Geometry,
    flush_supported: bool,
    /// `Box<[Slot]>` turned into a raw pointer: the callbacks reach slots through the
    /// pointers SPDK hands back, so no `&mut` to the whole slice is held across SPDK calls.
    slots: NonNull<[Slot]>,
    done: NonNull<Finished>,
    /// Slots not taken; the others are in flight (taken and not yet reported by `poll`).
    free: Vec<u32>,
    slot_bytes: usize,
    /// Released in `Drop::drop` on `thread`, after every request completed: the channel,
    /// then its descriptor.
    channel: Option<Channel>,
    desc: Option<Desc>,
    /// Fields drop in this order after `Drop::drop`: the DMA region, then the SPDK thread.
    _pool: DmaBuffer,
    thread: IoThread,
}

impl BdevStorage {
    /// Opens bdev `name` for this OS thread (on a reactor: for this reactor's poller),
    /// with up to `max_in_flight` requests of at most `max_io_bytes` each; the DMA region
    /// is their product. The bdev's own block size must be 512 or 4096. `_started` proves
    /// SPDK runs (`env::init` or `app::start`).
    pub fn open(
        _started: &Env,
        name: &str,
        max_in_flight: u32,
        max_io_bytes: u32,
    ) -> Result<BdevStorage, SpdkError> {
        let bad = |what: String| SpdkError::BdevShape {
            name: name.to_string(),
            what,
        };
        let c_name = CString::new(name).map_err(|_| bad("a name with a NUL byte".into()))?;
        let thread = IoThread::new()?;
        // Before the descriptor (dropped after it on an error below): its events land here.
        let done = FinishedBox::new(max_in_flight);
        let entered = thread.enter();
        let mut desc = ptr::null_mut();
        // SAFETY: the bdev's own SPDK thread is current (entered); the name is
        // NUL-terminated and copied by SPDK; `desc` is written on success only. The event
        // context outlives the descriptor (closed before it is freed).
        let rc = unsafe {
            sys::spdk_bdev_open_ext(
                c_name.as_ptr(),
                true,
                Some(bdev_event),
                done.0.as_ptr().cast(),
                &mut desc,
            )
        };
        let desc = match NonNull::new(desc) {
            Some(desc) if rc == 0 => Desc(desc),
            _ => {
                return Err(SpdkError::Bdev {
                    name: name.to_string(),
                    what: "cannot open it (no bdev of that name in the SPDK config?)",
                    errno: -rc,
                })
            }
        };
        // SAFETY: `desc` is open; the bdev lives at least as long as the descriptor.
        let bdev = unsafe { sys::spdk_bdev_desc_get_bdev(desc.0.as_ptr()) };
        // SAFETY: `bdev` is the descriptor's live bdev.
        let (block_size, blocks, buf_align, flush_supported, write_cache) = unsafe {
            (
                sys::spdk_bdev_get_block_size(bdev),
                sys::spdk_bdev_get_num_blocks(bdev),
                sys::spdk_bdev_get_buf_align(bdev),
                sys::spdk_bdev_io_type_supported(
                    bdev,
                    sys::spdk_bdev_io_type::SPDK_BDEV_IO_TYPE_FLUSH,
                ),
                sys::spdk_bdev_has_write_cache(bdev),
            )
        };
        // SAFETY: as above.
        let (md_size, zoned, write_unit) = unsafe {
            (
                sys::spdk_bdev_get_md_size(bdev),
                sys::spdk_bdev_is_zoned(bdev),
                sys::spdk_bdev_get_write_unit_size(bdev),
            )
        };
        if md_size != 0 || zoned || write_unit > 1 {
            return Err(bad(format!(
                "separate metadata ({md_size} bytes), zoned ({zoned}) or a write unit of {write_unit} blocks: ordo writes plain blocks"
            )));
        }
        if !flush_supported && write_cache {
            // A flush would be acknowledged without reaching the media.
            return Err(bad(
                "it has a volatile write cache but cannot flush it, so nothing written to it would be durable"
                    .into(),
            ));
        }
        let size_bytes = blocks
            .checked_mul(u64::from(block_size))
            .ok_or_else(|| bad(format!("{blocks} blocks of {block_size} bytes overflow")))?;
        let geometry = Geometry {
            size_bytes,
            block_size,
            max_io_bytes,
            max_in_flight,
        };
        geometry.validate().map_err(|e| bad(e.to_string()))?;
        // SAFETY: `desc` is open and this OS thread's SPDK thread is current.
        let channel = unsafe { sys::spdk_bdev_get_io_channel(desc.0.as_ptr()) };
        let channel = NonNull::new(channel).ok_or(SpdkError::Bdev {
            name: name.to_string(),
            what: "no io channel",
            errno: 0,
        })?;
        let channel = Channel(channel);
        // Every slot starts aligned as the bdev wants its buffers, so SPDK never bounces.
        let align = buf_align.max(block_size as usize).next_power_of_two();
        let slot_bytes = (max_io_bytes as usize).next_multiple_of(align);
        let pool = DmaBuffer::zeroed(slot_bytes * max_in_flight as usize, align)?;
        let done = done.into_raw();
        let target = Target {
            desc: desc.0.as_ptr(),
            channel: channel.0.as_ptr(),
            bdev,
            done,
        };
        let slots: Box<[Slot]> = (0..max_in_flight)
            .map(|index| Slot {
                index,
                target,
                state: State::Free,
                op: Op::Flush,
                tag: 0,
                offset: 0,
                len: 0,
                // SAFETY: slot `index` < max_in_flight, so its part is inside the region.
                buf: unsafe { pool.as_mut_ptr().add(index as usize * slot_bytes) },
                // SAFETY: plain C data (pointers and a function pointer option), filled in
                // before SPDK sees it.
                wait: unsafe { std::mem::zeroed() },
            })
            .collect();
        let storage = BdevStorage {
            name: name.to_string(),
            geometry,
            flush_supported,
            // SAFETY: Box::into_raw never returns null.
            slots: unsafe { NonNull::new_unchecked(Box::into_raw(slots)) },
            // SAFETY: as above.
            done: unsafe { NonNull::new_unchecked(done) },
            free: (0..max_in_flight).rev().collect(),
            slot_bytes,
            channel: Some(channel),
            desc: Some(desc),
            _pool: pool,
            thread,
        };
        drop(entered);
        tracing::info!(
            "SPDK bdev {name}: {size_bytes} bytes, {block_size}-byte blocks, flush {}",
            if flush_supported {
                "supported"
            } else {
                "not supported (the bdev reports no volatile write cache: a completed write is durable)"
            }
        );
        Ok(storage)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests that found the bdev layer out of room (`-ENOMEM`) and waited in SPDK's
    /// io-wait queue before going out: backpressure from SPDK, counted.
    pub fn io_waits(&self) -> u64 {
        // SAFETY: read between polls; the callbacks write it only inside one.
        unsafe { (*self.done.as_ptr()).io_waits }
    }

    fn slot(&mut self, index: u32) -> *mut Slot {
        assert!(index < self.geometry.max_in_flight);
        // SAFETY: `slots` points to a live boxed slice of max_in_flight slots.
        unsafe { self.slots.as_ptr().cast::<Slot>().add(index as usize) }
    }

    /// Takes a free slot for a request, or refuses with `QueueFull`.
    fn admit(
        &mut self,
        op: Op,
        tag: IoTag,
        offset: u64,
        len: u64,
    ) -> Result<*mut Slot, StorageError> {
        let index = self
            .free
            .pop()
            .ok_or(StorageError::QueueFull(self.geometry.max_in_flight))?;
        let slot = self.slot(index);
        // SAFETY: a free slot is not known to SPDK; no other reference to it exists.
        unsafe {
            assert_eq!((*slot).state, State::Free);
            (*slot).op = op;
            (*slot).tag = tag;
            (*slot).offset = offset;
            (*slot).len = len;
        }
        Ok(slot)
    }

    /// SPDK said the bdev is going away: refuse new requests.
    fn refuse_if_removed(&self) -> Result<(), StorageError> {
        // SAFETY: read between polls; the event callback writes it only inside one.
        if unsafe { (*self.done.as_ptr()).removed } {
            return Err(StorageError::Io {
                kind: std::io::ErrorKind::NotConnected,
                message: format!("SPDK bdev {} was removed", self.name),
            });
        }
        Ok(())
    }

    /// Requests SPDK still holds (submitted, or waiting for room), as opposed to finished
    /// ones `poll` has not reported yet.
    fn with_spdk(&mut self) -> usize {
        (0..self.geometry.max_in_flight)
            .filter(|&i| {
                let slot = self.slot(i);
                // SAFETY: read between polls, no reference held across one.
                matches!(unsafe { (*slot).state }, State::Submitted | State::Waiting)
            })
            .count()
    }

    fn buffer(&mut self, slot: *mut Slot, len: usize) -> &mut [u8] {
        assert!(len <= self.slot_bytes);
        // SAFETY: the slot's buffer is `slot_bytes` long inside the DMA region, used by
        // this request only, and SPDK does not touch it until the request is issued.
        unsafe { std::slice::from_raw_parts_mut((*slot).buf, len) }
    }

    fn error(&self, op: &str, offset: u64, errno: c_int) -> StorageError {
        StorageError::Io {
            kind: if errno == 0 {
                std::io::ErrorKind::Other
            } else {
                std::io::Error::from_raw_os_error(errno).kind()
            },
            message: if errno == 0 {
                format!("SPDK bdev {}: {op} at offset {offset} failed", self.name)
            } else {
                format!(
                    "SPDK bdev {}: {op} at offset {offset}: errno {errno}",
                    self.name
                )
            },
        }
    }
}

impl Storage for BdevStorage {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn submit_write_with(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), StorageError> {
        self.geometry.check_io(offset, len)?;
        self.refuse_if_removed()?;
        let slot = self.admit(Op::Write, tag, offset, len as u64)?;
        fill(self.buffer(slot, len));
        let _entered = self.thread.enter();
        // SAFETY: a slot of ours, with the bdev's SPDK thread current, the buffer filled
        // and no reference to the slot alive.
        unsafe { issue(slot) };
        Ok(())
    }

    /// Zeros written by the bdev layer (natively where the bdev can, else from its zero
    /// buffer), whatever `unmap` says: an SPDK unmap does not promise zeros on read.
    fn submit_write_zeroes(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: u64,
        _unmap: bool,
    ) -> Result<(), StorageError> {
        self.geometry.check_zeroes(offset, len)?;
        self.refuse_if_removed()?;
        let slot = self.admit(Op::Zero, tag, offset, len)?;
        let _entered = self.thread.enter();
        // SAFETY: as in submit_write_with; a zeroing uses no buffer.
        unsafe { issue(slot) };
        Ok(())
    }

    fn submit_read(&mut self, tag: IoTag, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.geometry.check_io(offset, buf.len())?;
        self.refuse_if_removed()?;
        let slot = self.admit(Op::Read, tag, offset, buf.len() as u64)?;
        {
            let _entered = self.thread.enter();
            // SAFETY: as in submit_write_with.
            unsafe { issue(slot) };
        }
        // The callback changes the state inside a poll (SPDK holds the slot pointer).
        loop {
            // SAFETY: read between polls, with no reference held across one.
            if !matches!(unsafe { (*slot).state }, State::Submitted | State::Waiting) {
                break;
            }
            self.thread.poll();
        }
        // SAFETY: finished: SPDK is done with the slot's buffer.
        if let State::Done(Ok(())) = unsafe { (*slot).state } {
            buf.copy_from_slice(self.buffer(slot, buf.len()));
        }
        Ok(())
    }

    fn submit_flush(&mut self, tag: IoTag) -> Result<(), StorageError> {
        self.refuse_if_removed()?;
        let slot = self.admit(Op::Flush, tag, 0, self.geometry.size_bytes)?;
        if self.flush_supported {
            let _entered = self.thread.enter();
            // SAFETY: as in submit_write_with.
            unsafe { issue(slot) };
        } else {
            // No volatile cache: a completed write is already durable. Reported by poll.
            // SAFETY: our slot, unknown to SPDK.
            unsafe { finish(slot, Ok(())) };
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        self.thread.poll();
        let mut reported = 0;
        while reported < max {
            // SAFETY: the callbacks push only during `thread.poll()`, which has returned;
            // this is the only reference to the queue now.
            let Some(index) = (unsafe { (*self.done.as_ptr()).queue.pop_front() }) else {
                break;
            };
            let slot = self.slot(index);
            // SAFETY: a finished slot: SPDK no longer refers to it.
            let (state, op, tag, offset) =
                unsafe { ((*slot).state, (*slot).op, (*slot).tag, (*slot).offset) };
            let result = match state {
                State::Done(Ok(())) => Ok(()),
                State::Done(Err(errno)) => {
                    let what = match op {
                        Op::Write => "write",
                        Op::Read => "read",
                        Op::Flush => "flush",
                        Op::Zero => "write zeroes",
                    };
                    Err(self.error(what, offset, errno))
                }
                other => unreachable!("slot {index} queued as done in state {other:?}"),
            };
            // SAFETY: as above.
            unsafe { (*slot).state = State::Free };
            self.free.push(index);
            out.push(Completion { tag, result });
            reported += 1;
        }
        self.close_if_removed();
        reported
    }

    fn in_flight(&self) -> u32 {
        self.geometry.max_in_flight - self.free.len() as u32
    }
}

impl BdevStorage {
    /// Removed and nothing left with SPDK: release the channel and close the descriptor,
    /// so SPDK can finish removing the bdev.
    fn close_if_removed(&mut self) {
        // SAFETY: read between polls (see `refuse_if_removed`).
        let removed = unsafe { (*self.done.as_ptr()).removed };
        if removed && self.desc.is_some() && self.with_spdk() == 0 {
            tracing::warn!("SPDK bdev {} was removed: closing it", self.name);
            let _entered = self.thread.enter();
            drop(self.channel.take());
            drop(self.desc.take());
        }
    }
}

impl Drop for BdevStorage {
    fn drop(&mut self) {
        // SPDK may still write into slots and buffers of requests it holds: wait for
        // every one (the bdev layer completes or fails each, on its own timeouts). A slot
        // taken but never handed over (a `fill` that panicked) is not waited for.
        let mut discard = Vec::new();
        while self.with_spdk() > 0 {
            discard.clear();
            self.poll(&mut discard, usize::MAX);
        }
        {
            let _entered = self.thread.enter();
            drop(self.channel.take());
            drop(self.desc.take());
        }
        // SAFETY: nothing is in flight, so SPDK holds no pointer into the slots or the
        // queue; both came from Box::into_raw in `open` and are freed once.
        unsafe {
            drop(Box::from_raw(self.slots.as_ptr()));
            drop(Box::from_raw(self.done.as_ptr()));
        }
    }
}

/// An open bdev descriptor, closed on drop (with the SPDK thread that opened it current:
/// the owner enters it first).
#[derive(Debug)]
struct Desc(NonNull<sys::spdk_bdev_desc>);

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: closed once, with the SPDK thread that opened it current (BdevStorage's
        // Drop and `open` enter it); its channel was put first, or never taken.
        unsafe { sys::spdk_bdev_close(self.0.as_ptr()) };
    }
}

/// An io channel, put back on drop (with its SPDK thread current); the thread's exit
/// runs the release.
#[derive(Debug)]
struct Channel(NonNull<sys::spdk_io_channel>);

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: put once, with its SPDK thread current and nothing in flight on it
        // (BdevStorage waits for its requests first).
        unsafe { sys::spdk_put_io_channel(self.0.as_ptr()) };
    }
}

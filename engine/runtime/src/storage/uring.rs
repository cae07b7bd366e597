//! A volume on a file or block device through io_uring, opened with O_DIRECT where the
//! filesystem allows it. `submit_*` only queues an SQE; `poll` hands everything queued to
//! the kernel in one io_uring_enter and reaps every CQE there is, so a poller makes at most
//! one syscall per call however many requests it carries. Reads are synchronous.

mod pool;

use std::fmt;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use io_uring::{opcode, squeue, types, IoUring};

use self::pool::BufferPool;
use super::volume_file::{open_volume, zero_range};
use ordo_core::storage::completions::CompletionQueue;
use ordo_core::storage::{
    Completion, Geometry, IoTag, Storage, StorageError, DEFAULT_MAX_IO_BYTES,
};

/// Largest `queue_depth`. Each request in flight owns a `max_io_bytes` buffer (1 MiB), so
/// this is already 4 GiB of buffers for one volume.
pub const QUEUE_DEPTH_MAX: u32 = 4096;
const _: () = assert!(
    QUEUE_DEPTH_MAX == 4096,
    "open's BadGeometry message names it"
);
// Nodes run their storage on their own thread (runtime::SecondaryThread needs Send).
const _: fn() = || {
    fn send<T: Send>() {}
    send::<UringStorage>();
};

/// What a request slot has in flight. An SQE's user_data is its slot's index; the slot
/// keeps the caller's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    /// A write of `len` bytes from the slot's buffer.
    Write {
        tag: IoTag,
        len: u32,
    },
    /// A flush; the slot's buffer is unused.
    Flush {
        tag: IoTag,
    },
}

/// A volume backed by a regular file or a block device, driven through an io_uring.
pub struct UringStorage {
    path: PathBuf,
    geometry: Geometry,
    direct_io: bool,
    ring: IoUring,
    /// One per request that may be in flight (`max_in_flight` of them).
    slots: Vec<Slot>,
    /// Indices of the `Free` slots; its capacity is fixed, so freeing never allocates.
    free_slots: Vec<u32>,
    /// Finished requests (reaped CQEs and reads) not yet reported by `poll`.
    ready: CompletionQueue,
    /// Times `io_uring_enter` refused a submission for now (EAGAIN, EBUSY, EINTR); the
    /// SQEs stayed queued for the next `poll`.
    submits_deferred: u64,
    /// A buffer per slot, and the file the SQEs name by fd: both freed (closed) only in
    /// `drop`, after the kernel has finished every request that uses them.
    pool: ManuallyDrop<BufferPool>,
    file: ManuallyDrop<File>,
}

/// How `open_with` sets the ring up: `open` uses one SQ entry per slot and real O_DIRECT.
#[derive(Clone, Copy, Debug)]
struct RingConfig {
    sq_entries: u32,
    /// Behave as on a filesystem that refuses O_DIRECT (for tests of the fallback).
    refuse_direct: bool,
    /// Largest request, and so the size of each pooled buffer.
    max_io_bytes: u32,
}

impl UringStorage {
    /// Opens the volume at `path`, sized as `FileStorage::open` does (created sparse with
    /// `Some(size)`, all of an existing file or device with `None`), with at most
    /// `queue_depth` requests in flight (1 to `QUEUE_DEPTH_MAX`; it becomes the geometry's
    /// `max_in_flight`) and a preallocated buffer of `max_io_bytes` for each.
    ///
    /// The file is opened with O_DIRECT where the filesystem accepts it and buffered where
    /// it refuses it (EINVAL at open); `direct_io` says which. Flushes are an fdatasync
    /// either way, which also flushes the device's volatile cache.
    pub fn open(
        path: &Path,
        size_bytes: Option<u64>,
        block_size: u32,
        queue_depth: u32,
    ) -> Result<UringStorage, StorageError> {
        UringStorage::open_with_max_io(
            path,
            size_bytes,
            block_size,
            queue_depth,
            DEFAULT_MAX_IO_BYTES,
        )
    }

    /// `open` with another largest request (and so buffer size) than the default 1 MiB:
    /// a journal's records are a block larger than the largest write they carry.
    pub fn open_with_max_io(
        path: &Path,
        size_bytes: Option<u64>,
        block_size: u32,
        queue_depth: u32,
        max_io_bytes: u32,
    ) -> Result<UringStorage, StorageError> {
        let config = RingConfig {
            sq_entries: queue_depth,
            refuse_direct: false,
            max_io_bytes,
        };
        UringStorage::open_with(path, size_bytes, block_size, queue_depth, config)
    }

    fn open_with(
        path: &Path,
        size_bytes: Option<u64>,
        block_size: u32,
        queue_depth: u32,
        config: RingConfig,
    ) -> Result<UringStorage, StorageError> {
        // Refuse a bad queue depth before creating anything.
        if !(1..=QUEUE_DEPTH_MAX).contains(&queue_depth) {
            return Err(StorageError::BadGeometry("queue depth must be 1 to 4096"));
        }
        assert!((1..=queue_depth).contains(&config.sq_entries));
        let mut direct_io = false;
        let (file, geometry) = open_volume(path, size_bytes, block_size, |options, path| {
            let (file, direct) = open_preferring_direct(|flags| {
                if config.refuse_direct && flags & libc::O_DIRECT != 0 {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                options.clone().custom_flags(flags).open(path)
            })?;
            direct_io = direct;
            Ok(file)
        })?;
        let geometry = Geometry {
            max_in_flight: queue_depth,
            max_io_bytes: config.max_io_bytes,
            ..geometry
        };
        geometry.validate()?;

        let pool = BufferPool::new(queue_depth, geometry.max_io_bytes)?;
        assert!(pool.slot_bytes() >= geometry.max_io_bytes as usize);
        // The CQ holds a completion for every slot, so it can never overflow.
        let ring = IoUring::builder()
            .setup_cqsize(queue_depth)
            .build(config.sq_entries)?;
        assert!(ring.params().cq_entries() >= queue_depth);
        Ok(UringStorage {
            path: path.to_path_buf(),
            geometry,
            direct_io,
            ring,
            slots: vec![Slot::Free; queue_depth as usize],
            // Popped from the end: slot 0 first.
            free_slots: (0..queue_depth).rev().collect(),
            ready: CompletionQueue::new(queue_depth)?,
            submits_deferred: 0,
            pool: ManuallyDrop::new(pool),
            file: ManuallyDrop::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the volume is open with O_DIRECT (else buffered, through the page cache).
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// Times the kernel refused a batch for now (it was retried at the next `poll`).
    pub fn submits_deferred(&self) -> u64 {
        self.submits_deferred
    }

    /// Requests in the ring: pushed to the SQ or in the kernel, CQE not yet reaped.
    fn busy_slots(&self) -> u32 {
        debug_assert!(self.free_slots.len() <= self.slots.len());
        self.geometry.max_in_flight - self.free_slots.len() as u32
    }

    fn admit(&self) -> Result<(), StorageError> {
        let in_flight = self.in_flight();
        assert!(in_flight <= self.geometry.max_in_flight);
        if in_flight == self.geometry.max_in_flight {
            return Err(StorageError::QueueFull(self.geometry.max_in_flight));
        }
        Ok(())
    }

    /// Takes a free slot for an admitted request.
    fn take_slot(&mut self, request: Slot) -> u32 {
        assert_ne!(request, Slot::Free);
        let slot = self
            .free_slots
            .pop()
            .expect("an admitted request has a free slot");
        assert_eq!(self.slots[slot as usize], Slot::Free);
        self.slots[slot as usize] = request;
        slot
    }

    /// Queues `entry` for the request in `slot`, first submitting what is queued if the SQ
    /// is full. If it still does not fit (the kernel refused that submission for now), the
    /// slot is freed and the request is refused as `QueueFull`, to be retried after a poll.
    fn push(&mut self, slot: u32, entry: squeue::Entry) -> Result<(), StorageError> {
        let entry = entry.user_data(u64::from(slot));
        if self.try_push(&entry) {
            return Ok(());
        }
        self.submit_queued();
        if self.try_push(&entry) {
            return Ok(());
        }
        self.slots[slot as usize] = Slot::Free;
        self.free_slots.push(slot);
        Err(StorageError::QueueFull(self.geometry.max_in_flight))
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        let slot = entry.get_user_data() as usize;
        assert_ne!(self.slots[slot], Slot::Free, "an SQE names a taken slot");
        // SAFETY: what the entry points at stays valid until its CQE is reaped, however
        // long it waits in the SQ before `poll` submits it. Its buffer (a write's; a flush
        // has none) is the memory of `slot`, which `slots` marks taken until `reap` sees
        // the CQE, so nothing reuses it meanwhile; the pool is freed only in `drop`, after
        // every CQE is reaped. Its fd is `self.file`'s, which is closed only after that
        // same wait, so the number cannot name another file while the kernel may use it.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Hands every queued SQE to the kernel in one io_uring_enter. If the kernel refuses
    /// for now (EAGAIN, EBUSY, EINTR), they stay queued for the next call.
    fn submit_queued(&mut self) {
        if self.ring.submission().is_empty() {
            return;
        }
        match self.ring.submit() {
            Ok(_) => {}
            Err(e) if is_transient(&e) => self.submits_deferred += 1,
            // Anything else (EBADF, EFAULT, EINVAL...) means the ring or an SQE is broken.
            Err(e) => panic!("io_uring_enter refused valid SQEs: {e}"),
        }
    }

    /// Moves every available CQE into `ready` and frees its slot.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let slot = usize::try_from(cqe.user_data())
                .ok()
                .filter(|&slot| slot < self.slots.len())
                .expect("a CQE's user_data is a slot index");
            let (tag, result) = match std::mem::replace(&mut self.slots[slot], Slot::Free) {
                Slot::Write { tag, len } => (tag, write_result(cqe.result(), len)),
                Slot::Flush { tag } => (tag, flush_result(cqe.result())),
                Slot::Free => panic!("a CQE for slot {slot}, which had nothing in flight"),
            };
            assert!(self.free_slots.len() < self.free_slots.capacity());
            self.free_slots.push(slot as u32);
            self.ready.push(tag, result);
        }
    }

    /// Reads synchronously into `buf`: through the memory of a free slot when O_DIRECT
    /// wants aligned buffers, straight into `buf` otherwise.
    fn read_now(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.direct_io {
            return self.file.read_exact_at(buf, offset);
        }
        // Admitted, so fewer than max_in_flight requests are in flight: a slot is free.
        let slot = *self
            .free_slots
            .last()
            .expect("an admitted request has a free slot");
        // SAFETY: the slot is free, so no request in flight uses its memory, and it stays
        // free while this call holds the slice.
        let bounce = &mut unsafe { self.pool.slot_mut(slot) }[..buf.len()];
        self.file.read_exact_at(bounce, offset)?;
        buf.copy_from_slice(bounce);
        Ok(())
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }
}

/// Opens with O_DIRECT (`open` takes the extra open(2) flags), or buffered where the
/// filesystem refuses O_DIRECT with EINVAL at open (tmpfs before Linux 6.6, some FUSE
/// filesystems); returns the file and whether it is in direct mode.
fn open_preferring_direct(
    open: impl Fn(libc::c_int) -> io::Result<File>,
) -> io::Result<(File, bool)> {
    match open(libc::O_DIRECT) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open(0)?, false)),
        Err(e) => Err(e),
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
    )
}

/// What a write's CQE result means. A short write is an error, not resubmitted: for regular
/// files and block devices the kernel itself finishes a write cut short while it tried not
/// to block, so a short result means the rest failed (no space, a device error) and a
/// resubmission would only fetch that error later. `WriteZero` as `write_all` reports it.
fn write_result(res: i32, len: u32) -> Result<(), StorageError> {
    match u32::try_from(res) {
        Err(_) => Err(io::Error::from_raw_os_error(-res).into()),
        Ok(written) if written == len => Ok(()),
        Ok(written) => Err(StorageError::Io {
            kind: io::ErrorKind::WriteZero,
            message: format!("short write: {written} of {len} bytes"),
        }),
    }
}

/// What a flush's CQE result means: fsync returns 0 or a negative errno.
fn flush_result(res: i32) -> Result<(), StorageError> {
    if res < 0 {
        return Err(io::Error::from_raw_os_error(-res).into());
    }
    Ok(())
}

impl Storage for UringStorage {
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
        self.admit()?;
        // check_io bounds the length by max_io_bytes, a u32.
        let slot = self.take_slot(Slot::Write {
            tag,
            len: len as u32,
        });
        // SAFETY: the slot was free, so no request in flight uses its memory.
        let buffer = unsafe { self.pool.slot_mut(slot) };
        fill(&mut buffer[..len]);
        let entry = opcode::Write::new(self.fd(), self.pool.slot_ptr(slot), len as u32)
            .offset(offset)
            .build();
        self.push(slot, entry)
    }

    /// Reads synchronously (a pread), since `buf` is borrowed only for this call and so
    /// cannot stay in the ring; the completion still comes from `poll`. Reads are not the
    /// hot path: recovery, verify and NBD reads.
    fn submit_read(&mut self, tag: IoTag, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.geometry.check_io(offset, buf.len())?;
        self.admit()?;
        // A file cut short behind our back fails here as UnexpectedEof, in the completion.
        let result = self.read_now(offset, buf);
        self.ready.push(tag, result.map_err(StorageError::from));
        Ok(())
    }

    /// Zeroes synchronously (fallocate, as `FileStorage` does; zeros written through a free
    /// slot's aligned memory where there is none), like a read: zeroing is not the hot
    /// path. The completion still comes from `poll`.
    fn submit_write_zeroes(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), StorageError> {
        self.geometry.check_zeroes(offset, len)?;
        self.admit()?;
        // Admitted, so fewer than max_in_flight requests are in flight: a slot is free.
        let slot = *self
            .free_slots
            .last()
            .expect("an admitted request has a free slot");
        let (file, pool) = (&*self.file, &mut *self.pool);
        let result = zero_range(file, offset, len, unmap, || {
            // SAFETY: the slot is free, so no request in flight uses its memory, and it
            // stays free while this call holds the slice.
            unsafe { pool.slot_mut(slot) }
        });
        self.ready.push(tag, result.map_err(StorageError::from));
        Ok(())
    }

    /// An fdatasync in the ring. It covers every write whose completion `poll` reported
    /// before this call: that write's CQE was reaped, so the kernel had finished it.
    fn submit_flush(&mut self, tag: IoTag) -> Result<(), StorageError> {
        self.admit()?;
        let slot = self.take_slot(Slot::Flush { tag });
        let entry = opcode::Fsync::new(self.fd())
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.push(slot, entry)
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        self.submit_queued();
        self.reap();
        self.ready.poll(out, max)
    }

    fn in_flight(&self) -> u32 {
        self.busy_slots() + self.ready.len()
    }
}

impl Drop for UringStorage {
    fn drop(&mut self) {
        // The kernel may still read the buffers of requests in flight: wait for every CQE
        // (submitting what is still queued) before freeing them.
        while self.busy_slots() > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                // Cannot tell when the kernel will be done: leak the pool and the fd rather
                // than free memory it may still read or let the fd number be reused.
                Err(_) => return,
            }
            self.reap();
        }
        // SAFETY: every request's CQE has been reaped, so the kernel uses no slot and no
        // longer needs the fd; neither is touched after this (this is `drop`), and each is
        // dropped once.
        unsafe {
            ManuallyDrop::drop(&mut self.pool);
            ManuallyDrop::drop(&mut self.file);
        }
    }
}

impl fmt::Debug for UringStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringStorage")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .field("direct_io", &self.direct_io)
            .field("in_flight", &self.in_flight())
            .field("submits_deferred", &self.submits_deferred)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;

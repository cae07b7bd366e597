//! A simulated disk: requests complete after a random number of polls and in any order,
//! and a crash keeps, drops or tears (any subset of blocks) each write not yet covered by
//! a completed flush. Reads see the latest writes, as a real device's cache would. Writes
//! and flushes can fail (an injected I/O error) at a rate the world sets and can change.

use std::cell::Cell;
use std::rc::Rc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::storage::{Completion, Geometry, IoTag, Storage, StorageError};

#[derive(Clone, Debug)]
struct UnflushedWrite {
    offset: u64,
    data: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Write,
    Read,
    /// Covers the writes that had completed when it was submitted.
    Flush {
        covers: u64,
    },
}

#[derive(Clone, Debug)]
pub struct SimDisk {
    geometry: Geometry,
    durable: Vec<u8>,
    visible: Vec<u8>,
    /// Completed writes not yet durable, in completion order, numbered from `first_unflushed`.
    unflushed: Vec<UnflushedWrite>,
    first_unflushed: u64,
    /// Submitted and not yet reported: (tag, op, the write's data if a write).
    in_flight: Vec<(IoTag, Op, Option<UnflushedWrite>)>,
    complete_percent: u32,
    rng: ChaCha8Rng,
    /// Writes and flushes that fail, per 10,000 completions; shared with the world, which
    /// turns it off when the faults stop. A failed write may or may not have reached the
    /// medium (a crash decides); a failed flush makes nothing durable.
    io_errors: Rc<Cell<u32>>,
    /// Writes torn or dropped by crashes so far, and I/O errors injected.
    pub torn_writes: u64,
    pub dropped_writes: u64,
    pub injected_errors: u64,
}

/// The message of an injected error, so the world can tell it from a real failure.
pub const INJECTED_ERROR: &str = "injected I/O error";

impl SimDisk {
    /// A zeroed disk; each poll completes each request in flight with `complete_percent` %.
    pub fn new(geometry: Geometry, complete_percent: u32, seed: u64) -> SimDisk {
        assert!((1..=100).contains(&complete_percent));
        let size = geometry.size_bytes as usize;
        SimDisk {
            geometry,
            durable: vec![0; size],
            visible: vec![0; size],
            unflushed: Vec::new(),
            first_unflushed: 0,
            in_flight: Vec::new(),
            complete_percent,
            rng: ChaCha8Rng::seed_from_u64(seed),
            io_errors: Rc::new(Cell::new(0)),
            torn_writes: 0,
            dropped_writes: 0,
            injected_errors: 0,
        }
    }

    /// Fails writes and flushes at the rate `io_errors` holds (per 10,000), from now on.
    pub fn fail_at(&mut self, io_errors: &Rc<Cell<u32>>) {
        self.io_errors = Rc::clone(io_errors);
    }

    /// Never fails again (a copy checked on the side).
    pub fn never_fail(&mut self) {
        self.io_errors = Rc::new(Cell::new(0));
    }

    fn inject_error(&mut self) -> bool {
        let rate = self.io_errors.get();
        // No randomness is drawn at rate 0, so seeds without errors run as before.
        let fail = rate > 0 && self.rng.random_ratio(rate, 10_000);
        self.injected_errors += u64::from(fail);
        fail
    }

    /// What a reader sees now.
    pub fn contents(&self) -> &[u8] {
        &self.visible
    }

    /// Makes `data` the disk's durable contents, as if written long before (a volume that
    /// held data before ordo ran). Nothing may be in flight.
    pub fn preset(&mut self, data: &[u8]) {
        assert!(self.in_flight.is_empty() && self.unflushed.is_empty());
        self.durable.copy_from_slice(data);
        self.visible.copy_from_slice(data);
    }

    /// Power loss: requests in flight are lost; each write not known durable survives
    /// whole, not at all, or as a random subset of its blocks.
    pub fn crash(&mut self) {
        let pending: Vec<UnflushedWrite> = self
            .unflushed
            .drain(..)
            .chain(self.in_flight.drain(..).filter_map(|(_, _, w)| w))
            .collect();
        let block = self.geometry.block_size as usize;
        for write in pending {
            let at = write.offset as usize;
            match self.rng.random_range(0..3) {
                0 => self.dropped_writes += 1,
                1 => self.durable[at..at + write.data.len()].copy_from_slice(&write.data),
                _ => {
                    self.torn_writes += 1;
                    for (i, chunk) in write.data.chunks(block).enumerate() {
                        if self.rng.random_bool(0.5) {
                            let start = at + i * block;
                            self.durable[start..start + chunk.len()].copy_from_slice(chunk);
                        }
                    }
                }
            }
        }
        self.first_unflushed = 0;
        self.visible.copy_from_slice(&self.durable);
    }

    fn check_queue(&self) -> Result<(), StorageError> {
        if self.in_flight.len() >= self.geometry.max_in_flight as usize {
            return Err(StorageError::QueueFull(self.geometry.max_in_flight));
        }
        Ok(())
    }

    fn completed_writes(&self) -> u64 {
        self.first_unflushed + self.unflushed.len() as u64
    }

    fn persist_through(&mut self, covers: u64) {
        while self.first_unflushed < covers {
            let write = self.unflushed.remove(0);
            let at = write.offset as usize;
            self.durable[at..at + write.data.len()].copy_from_slice(&write.data);
            self.first_unflushed += 1;
        }
    }
}

impl Storage for SimDisk {
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
        self.check_queue()?;
        let at = offset as usize;
        let visible = &mut self.visible[at..at + len];
        fill(visible);
        let write = UnflushedWrite {
            offset,
            data: visible.to_vec(),
        };
        self.in_flight.push((tag, Op::Write, Some(write)));
        Ok(())
    }

    /// A write of zeros to the simulated medium: kept, dropped or torn by a crash like any
    /// other write (an unmap may be lost in a power cut just as well).
    fn submit_write_zeroes(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: u64,
        _unmap: bool,
    ) -> Result<(), StorageError> {
        self.geometry.check_zeroes(offset, len)?;
        self.check_queue()?;
        let (at, len) = (offset as usize, len as usize);
        self.visible[at..at + len].fill(0);
        let write = UnflushedWrite {
            offset,
            data: vec![0; len],
        };
        self.in_flight.push((tag, Op::Write, Some(write)));
        Ok(())
    }

    fn submit_read(&mut self, tag: IoTag, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.geometry.check_io(offset, buf.len())?;
        self.check_queue()?;
        let at = offset as usize;
        buf.copy_from_slice(&self.visible[at..at + buf.len()]);
        self.in_flight.push((tag, Op::Read, None));
        Ok(())
    }

    fn submit_flush(&mut self, tag: IoTag) -> Result<(), StorageError> {
        self.check_queue()?;
        let covers = self.completed_writes();
        self.in_flight.push((tag, Op::Flush { covers }, None));
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let mut done = 0;
        let mut index = 0;
        while index < self.in_flight.len() && done < max {
            if !self.rng.random_ratio(self.complete_percent, 100) {
                index += 1;
                continue;
            }
            let (tag, op, write) = self.in_flight.swap_remove(index);
            let failed = !matches!(op, Op::Read) && self.inject_error();
            match op {
                Op::Write => self
                    .unflushed
                    .push(write.expect("a write carries its data")),
                Op::Read => {}
                Op::Flush { .. } if failed => {}
                Op::Flush { covers } => self.persist_through(covers),
            }
            let result = if failed {
                Err(StorageError::Io {
                    kind: std::io::ErrorKind::Other,
                    message: INJECTED_ERROR.to_string(),
                })
            } else {
                Ok(())
            };
            out.push(Completion { tag, result });
            done += 1;
        }
        done
    }

    fn in_flight(&self) -> u32 {
        self.in_flight.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> SimDisk {
        SimDisk::new(Geometry::new(16 * 4096, 4096).unwrap(), 100, 7)
    }

    fn drain(disk: &mut SimDisk) -> Vec<IoTag> {
        let mut out = Vec::new();
        disk.poll(&mut out, 64);
        out.iter().map(|c| c.tag).collect()
    }

    #[test]
    fn injected_errors_fail_writes_and_flushes_and_a_failed_flush_persists_nothing() {
        let rate = Rc::new(Cell::new(0));
        let mut disk = disk();
        disk.fail_at(&rate);
        // A completed write, then a flush that covers it and fails.
        disk.submit_write(1, 0, &[7; 4096]).unwrap();
        assert_eq!(drain(&mut disk), [1]);
        rate.set(10_000);
        disk.submit_flush(2).unwrap();
        let mut out = Vec::new();
        while out.is_empty() {
            disk.poll(&mut out, 8);
        }
        let Err(StorageError::Io { message, .. }) = &out[0].result else {
            panic!("{out:?}");
        };
        assert_eq!(message, INJECTED_ERROR);
        assert_eq!(disk.injected_errors, 1);
        assert!(
            disk.durable.iter().all(|&b| b == 0),
            "the failed flush made nothing durable"
        );
        // At rate 0 a completion draws nothing from the disk's randomness beyond the
        // completion decision itself: the word position moves as for a disk never set up
        // to fail.
        rate.set(0);
        let mut plain = SimDisk::new(Geometry::new(16 * 4096, 4096).unwrap(), 100, 9);
        let mut failing = plain.clone();
        failing.fail_at(&rate);
        for tag in 10..20 {
            plain.submit_write(tag, 0, &[1; 4096]).unwrap();
            failing.submit_write(tag, 0, &[1; 4096]).unwrap();
        }
        assert_eq!(drain(&mut plain), drain(&mut failing));
        assert_eq!(plain.rng.get_word_pos(), failing.rng.get_word_pos());
        assert_eq!(failing.injected_errors, 0);
    }

    #[test]
    fn a_flushed_write_survives_a_crash() {
        let mut disk = disk();
        disk.submit_write(1, 0, &[7; 4096]).unwrap();
        drain(&mut disk);
        disk.submit_flush(2).unwrap();
        drain(&mut disk);
        disk.crash();
        assert!(disk.contents()[..4096].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_flush_does_not_cover_writes_completed_after_it_was_submitted() {
        let mut disk = disk();
        disk.submit_write(1, 0, &[7; 4096]).unwrap();
        disk.submit_flush(2).unwrap();
        drain(&mut disk);
        // The write was in flight when the flush was submitted: nothing is promised.
        let mut survived = 0;
        for seed in 0..64 {
            let mut copy = disk.clone();
            copy.rng = ChaCha8Rng::seed_from_u64(seed);
            copy.crash();
            survived += usize::from(copy.contents()[0] == 7);
        }
        assert!(
            survived > 0 && survived < 64,
            "kept {survived} of 64 crashes"
        );
    }
}

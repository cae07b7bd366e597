//! The application's side of a world: the writes, partial-block writes, zeroings, reads
//! and flushes it submits to the primary each step, each kind drawn from its own stream
//! so that adding one left every seed's other draws as they were.

use rand::{Rng, RngCore};

use super::World;
use crate::primary::SubmitError;
use crate::protocol::VolumeId;
use crate::sim::Violation;
use crate::storage::StorageError;

impl World {
    pub(super) fn workload(&mut self) -> Result<(), Violation> {
        if self.writes_left == 0 {
            return Ok(());
        }
        if self.rng.random_ratio(self.config.write_percent, 100) {
            let volume = self.rng.random_range(0..self.config.volumes.len());
            let geometry = self.config.volumes[volume];
            let block = u64::from(geometry.block_size);
            let max_blocks = u64::from(self.config.primary.max_write_bytes) / block;
            let blocks = self
                .rng
                .random_range(1..=max_blocks.min(geometry.size_bytes / block));
            let offset = block
                * self
                    .rng
                    .random_range(0..=geometry.size_bytes / block - blocks);
            let mut data = vec![0u8; (blocks * block) as usize];
            self.rng.fill_bytes(&mut data);
            let (cut_head, cut_tail) = self.partial_cut(data.len());
            let offset = offset + cut_head as u64;
            let data = &data[cut_head..data.len() - cut_tail];
            let token = self.next_token;
            self.next_token += 1;
            let now_ms = self.now_us / 1000;
            match self
                .primary
                .submit_write(now_ms, VolumeId(volume as u16), offset, data, token)
            {
                Ok(seq) => {
                    self.writes_left -= 1;
                    self.stats.writes += 1;
                    if cut_head + cut_tail > 0 {
                        self.stats.partial_writes += 1;
                    }
                    self.model
                        .write(seq, volume, offset, data)
                        .map_err(|e| self.violation(e))?;
                }
                Err(SubmitError::WindowFull) => self.stats.window_full += 1,
                // A partial block's merge reads the volume: with its queue full, the
                // application retries after the next poll, as it would a read.
                Err(SubmitError::Invalid(StorageError::QueueFull(_)))
                    if cut_head + cut_tail > 0 =>
                {
                    self.stats.partial_queue_full += 1;
                }
                Err(error) => return Err(self.violation(format!("write refused: {error}"))),
            }
            self.drain_primary_events()?;
        }
        if self.zero_percent > 0 && self.zero_rng.random_ratio(self.zero_percent, 100) {
            self.zero_primary()?;
        }
        if self.rng.random_ratio(self.config.flush_per_mille, 1000) {
            self.flush_primary()?;
        }
        if self.read_percent > 0 && self.reads_rng.random_ratio(self.read_percent, 100) {
            self.read_primary()?;
        }
        Ok(())
    }

    /// Bytes to cut from the head and the tail of a drawn write of `len` bytes (whole
    /// blocks) so that it starts or ends inside a block, leaving at least one byte: none
    /// unless this seed writes partial blocks and this write is one of them.
    fn partial_cut(&mut self, len: usize) -> (usize, usize) {
        if self.partial_percent == 0 || !self.partial_rng.random_ratio(self.partial_percent, 100) {
            return (0, 0);
        }
        let head = self.partial_rng.random_range(0..len.min(4096));
        let tail = self.partial_rng.random_range(0..(len - head).min(4096));
        (head, tail)
    }

    /// A range zeroed on the primary, any number of blocks up to the whole volume, with or
    /// without leave to deallocate: a record in its data set like a write, with no payload.
    fn zero_primary(&mut self) -> Result<(), Violation> {
        let volume = self.zero_rng.random_range(0..self.config.volumes.len());
        let geometry = self.config.volumes[volume];
        let block = u64::from(geometry.block_size);
        let blocks_total = geometry.size_bytes / block;
        let blocks = self.zero_rng.random_range(1..=blocks_total);
        let offset = block * self.zero_rng.random_range(0..=blocks_total - blocks);
        let len = (blocks * block) as u32;
        let unmap = self.zero_rng.random_bool(0.5);
        let token = self.next_token;
        self.next_token += 1;
        let now_ms = self.now_us / 1000;
        let volume_id = VolumeId(volume as u16);
        match self
            .primary
            .submit_write_zeroes(now_ms, volume_id, offset, len, unmap, token)
        {
            Ok(seq) => {
                self.stats.zeroes += 1;
                self.model
                    .zero(seq, volume, offset, u64::from(len))
                    .map_err(|e| self.violation(e))?;
            }
            Err(SubmitError::WindowFull) => self.stats.window_full += 1,
            Err(error) => return Err(self.violation(format!("zeroing refused: {error}"))),
        }
        self.drain_primary_events()
    }

    /// An application read on the primary while its writes are in flight: it waits for the
    /// device, and every other completion that arrives meanwhile must still be handled (a
    /// lost one leaves a write never acknowledged, and the run never catches up).
    fn read_primary(&mut self) -> Result<(), Violation> {
        let volume = self.reads_rng.random_range(0..self.config.volumes.len());
        let geometry = self.config.volumes[volume];
        let block = u64::from(geometry.block_size);
        let blocks_total = geometry.size_bytes / block;
        let max_blocks = (u64::from(self.config.primary.max_write_bytes) / block).min(blocks_total);
        let blocks = self.reads_rng.random_range(1..=max_blocks);
        let offset = block * self.reads_rng.random_range(0..=blocks_total - blocks);
        let mut buf = vec![0u8; (blocks * block) as usize];
        match self.primary.read(VolumeId(volume as u16), offset, &mut buf) {
            Ok(()) => self.stats.reads += 1,
            Err(SubmitError::Invalid(StorageError::QueueFull(_))) => {}
            Err(error) => return Err(self.violation(format!("read refused: {error}"))),
        }
        self.drain_primary_events()
    }

    pub(super) fn flush_primary(&mut self) -> Result<(), Violation> {
        let token = self.next_token;
        self.next_token += 1;
        match self.primary.flush(token) {
            Ok(_) => self.stats.flushes += 1,
            Err(SubmitError::TooManyFlushes) => {}
            Err(error) => return Err(self.violation(format!("flush refused: {error}"))),
        }
        self.drain_primary_events()
    }
}

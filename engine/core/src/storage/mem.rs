//! An in-memory volume, the analogue of an SPDK malloc bdev: the simulator's and the tests'
//! storage. Everything is allocated in `new`; a request does its copy at submit and queues
//! its completion, which only `poll` hands out, so callers see the same completion model as
//! with a real device.

use std::fmt;
use std::ops::Range;

use super::completions::{out_of_memory, CompletionQueue};
use super::{Completion, Geometry, IoTag, Storage, StorageError};

/// A preallocated, zero-filled volume held in memory. A flush is a no-op on the data: for
/// this backend memory is the durable medium.
pub struct MemStorage {
    geometry: Geometry,
    volume: Vec<u8>,
    /// Finished requests not yet reported by `poll`.
    completions: CompletionQueue,
}

impl MemStorage {
    /// Validates `geometry`, then allocates and zeroes the whole volume and a completion
    /// queue for `max_in_flight` requests. An allocation the machine cannot satisfy is an
    /// `Io` error of kind `OutOfMemory` rather than an abort, since the size comes from
    /// configuration.
    pub fn new(geometry: Geometry) -> Result<MemStorage, StorageError> {
        geometry.validate()?;
        let size_bytes = usize::try_from(geometry.size_bytes).map_err(|_| {
            StorageError::BadGeometry("size does not fit in this machine's address space")
        })?;

        let mut volume = Vec::new();
        volume
            .try_reserve_exact(size_bytes)
            .map_err(out_of_memory)?;
        // Zero (and so touch) every page now, not on the first write to it.
        volume.resize(size_bytes, 0);
        let completions = CompletionQueue::new(geometry.max_in_flight)?;

        assert_eq!(volume.len(), size_bytes);
        Ok(MemStorage {
            geometry,
            volume,
            completions,
        })
    }

    /// The whole volume, for verify and tests.
    pub fn contents(&self) -> &[u8] {
        &self.volume
    }

    /// Validates a read or write and admits it to the queue; returns its byte range.
    fn admit_io(&self, offset: u64, len: usize) -> Result<Range<usize>, StorageError> {
        self.geometry.check_io(offset, len)?;
        self.admit()?;
        // check_io bounds offset + len by size_bytes, which `new` proved fits in usize.
        let start = offset as usize;
        let end = start + len;
        debug_assert!(end <= self.volume.len());
        Ok(start..end)
    }

    fn admit(&self) -> Result<(), StorageError> {
        self.completions.admit()
    }

    fn complete(&mut self, tag: IoTag, result: Result<(), StorageError>) {
        self.completions.push(tag, result);
    }
}

impl Storage for MemStorage {
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
        let range = self.admit_io(offset, len)?;
        fill(&mut self.volume[range]);
        self.complete(tag, Ok(()));
        Ok(())
    }

    fn submit_write_zeroes(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: u64,
        _unmap: bool,
    ) -> Result<(), StorageError> {
        self.geometry.check_zeroes(offset, len)?;
        self.admit()?;
        // check_zeroes bounds offset + len by size_bytes, which `new` proved fits in usize.
        self.volume[offset as usize..(offset + len) as usize].fill(0);
        self.complete(tag, Ok(()));
        Ok(())
    }

    fn submit_read(&mut self, tag: IoTag, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let range = self.admit_io(offset, buf.len())?;
        buf.copy_from_slice(&self.volume[range]);
        self.complete(tag, Ok(()));
        Ok(())
    }

    fn submit_flush(&mut self, tag: IoTag) -> Result<(), StorageError> {
        self.admit()?;
        self.complete(tag, Ok(()));
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        self.completions.poll(out, max)
    }

    fn in_flight(&self) -> u32 {
        self.completions.len()
    }
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStorage")
            .field("geometry", &self.geometry)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::contract::{ok, pattern, ContractBackend};
    use crate::storage::wait_for;

    /// Memory volumes for the contract suite; nothing is kept past a drop.
    struct Mem;

    impl ContractBackend for Mem {
        type Volume = MemStorage;
        type Backing = ();
        fn create(size_bytes: u64, block_size: u32) -> ((), MemStorage) {
            let geometry = Geometry::new(size_bytes, block_size).unwrap();
            ((), MemStorage::new(geometry).unwrap())
        }
        fn reopen(_: &(), _: u32) -> Option<MemStorage> {
            None
        }
    }

    crate::storage_contract_tests!(Mem);

    fn small(block_size: u32) -> MemStorage {
        let geometry = Geometry {
            max_io_bytes: 4 * block_size,
            max_in_flight: 4,
            ..Geometry::new(16 * u64::from(block_size), block_size).unwrap()
        };
        MemStorage::new(geometry).unwrap()
    }

    #[test]
    fn new_rejects_bad_geometry_and_zeroes_the_volume() {
        let bad = Geometry {
            size_bytes: 4096,
            block_size: 1024,
            max_io_bytes: 4096,
            max_in_flight: 1,
        };
        assert!(matches!(
            MemStorage::new(bad),
            Err(StorageError::BadGeometry(_))
        ));
        let zero_in_flight = Geometry {
            max_in_flight: 0,
            ..Geometry::new(4096, 4096).unwrap()
        };
        assert!(matches!(
            MemStorage::new(zero_in_flight),
            Err(StorageError::BadGeometry(_))
        ));

        let storage = small(4096);
        assert_eq!(storage.contents().len(), 16 * 4096);
        assert!(storage.contents().iter().all(|&b| b == 0));
        assert_eq!(storage.in_flight(), 0);
    }

    #[test]
    fn a_blocking_read_hands_back_the_completions_around_its_own() {
        let mut storage = small(4096);
        let data = pattern(4096, 0x11);
        storage.submit_write(1, 0, &data).unwrap();
        storage.submit_write(2, 4096, &data).unwrap();
        // The read completes between writes 2 and 3, all in one poll batch.
        let mut buf = vec![0u8; 4096];
        let read_tag = u64::MAX;
        storage.submit_read(read_tag, 0, &mut buf).unwrap();
        storage.submit_write(3, 8192, &data).unwrap();
        let mut others = Vec::new();
        wait_for(&mut storage, read_tag, &mut others).unwrap();
        assert_eq!(buf, data);
        assert_eq!(others, [ok(1), ok(2), ok(3)], "none lost");
        assert_eq!(storage.in_flight(), 0);
    }

    #[test]
    fn contents_are_the_volume_written() {
        let mut storage = small(512);
        let data = pattern(3 * 512, 0x5a);
        storage.submit_write(1, 1024, &data).unwrap();
        let mut out = Vec::new();
        storage.poll(&mut out, usize::MAX);
        assert_eq!(out, [ok(1)]);
        let mut image = vec![0u8; 16 * 512];
        image[1024..1024 + data.len()].copy_from_slice(&data);
        assert_eq!(storage.contents(), image);
    }

    #[test]
    fn debug_shows_geometry_not_contents() {
        let storage = small(512);
        let text = format!("{storage:?}");
        assert!(text.contains("geometry") && text.contains("in_flight"));
        assert!(text.len() < 300, "{text}");
    }
}

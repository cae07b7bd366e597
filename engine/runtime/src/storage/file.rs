//! A volume on a file or block device through positional I/O: the simple, portable backend
//! beside io_uring (`uring`). Each request runs its syscall inside `submit_*` (so a submit
//! may block on the disk) and queues the outcome; `poll` only hands out queued completions
//! and never makes a syscall.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::volume_file::{open_volume, zero_range};
use ordo_core::storage::completions::CompletionQueue;
use ordo_core::storage::{Completion, Geometry, IoTag, Storage, StorageError};

/// A volume backed by a regular file or a block device, opened read+write.
pub struct FileStorage {
    path: PathBuf,
    file: File,
    geometry: Geometry,
    /// Finished requests not yet reported by `poll`; its length is the in-flight count.
    completions: CompletionQueue,
    /// Where `submit_write_with` assembles a request: it grows to the largest one once.
    assembled: Vec<u8>,
}

impl FileStorage {
    /// Opens the volume at `path` with the default request and queue limits.
    ///
    /// With `Some(size)` the file is created if missing and, if it is a regular file
    /// shorter than `size`, extended (sparse) to `size`; a longer file keeps its length and
    /// the volume is its first `size` bytes. A block device smaller than `size` is
    /// `BadGeometry`. With `None` the file must exist and the volume is all of it. Either
    /// way the size must be a positive multiple of `block_size` (512 or 4096).
    pub fn open(
        path: &Path,
        size_bytes: Option<u64>,
        block_size: u32,
    ) -> Result<FileStorage, StorageError> {
        let (file, geometry) = open_volume(path, size_bytes, block_size, |options, path| {
            options.open(path)
        })?;
        let completions = CompletionQueue::new(geometry.max_in_flight)?;
        Ok(FileStorage {
            path: path.to_path_buf(),
            file,
            geometry,
            completions,
            assembled: Vec::new(),
        })
    }

    /// Raises or lowers the largest single request (default 1 MiB), e.g. for a journal
    /// whose records are a block larger than the largest write.
    pub fn set_max_io_bytes(&mut self, max_io_bytes: u32) -> Result<(), StorageError> {
        let geometry = Geometry {
            max_io_bytes,
            ..self.geometry
        };
        geometry.validate()?;
        self.geometry = geometry;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn admit(&self) -> Result<(), StorageError> {
        self.completions.admit()
    }

    fn complete(&mut self, tag: IoTag, result: std::io::Result<()>) {
        self.completions
            .push(tag, result.map_err(StorageError::from));
    }
}

impl Storage for FileStorage {
    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn submit_write(&mut self, tag: IoTag, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.geometry.check_io(offset, data.len())?;
        self.admit()?;
        let result = self.file.write_all_at(data, offset);
        self.complete(tag, result);
        Ok(())
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
        if self.assembled.len() < len {
            self.assembled.resize(len, 0);
        }
        fill(&mut self.assembled[..len]);
        let result = self.file.write_all_at(&self.assembled[..len], offset);
        self.complete(tag, result);
        Ok(())
    }

    /// A hole punched (`unmap`) or a zeroed range allocated, by fallocate where the file
    /// or device has it, else zeros written a request's worth at a time.
    fn submit_write_zeroes(
        &mut self,
        tag: IoTag,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), StorageError> {
        self.geometry.check_zeroes(offset, len)?;
        self.admit()?;
        let (file, zeros) = (&self.file, &mut self.assembled);
        let chunk = len.min(u64::from(self.geometry.max_io_bytes)) as usize;
        let result = zero_range(file, offset, len, unmap, || {
            zeros.resize(zeros.len().max(chunk), 0);
            &mut zeros[..chunk]
        });
        self.complete(tag, result);
        Ok(())
    }

    fn submit_read(&mut self, tag: IoTag, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        self.geometry.check_io(offset, buf.len())?;
        self.admit()?;
        // A file cut short behind our back fails here as UnexpectedEof, in the completion.
        let result = self.file.read_exact_at(buf, offset);
        self.complete(tag, result);
        Ok(())
    }

    fn submit_flush(&mut self, tag: IoTag) -> Result<(), StorageError> {
        self.admit()?;
        // Every earlier write has returned from pwrite, so fdatasync covers them all.
        let result = self.file.sync_data();
        self.complete(tag, result);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        self.completions.poll(out, max)
    }

    fn in_flight(&self) -> u32 {
        self.completions.len()
    }
}

impl fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStorage")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::file_contract::{file_contract_tests, volume, FileBackend};

    /// `FileStorage::open` for the contract suite.
    struct Files;

    impl FileBackend for Files {
        type Volume = FileStorage;
        fn open(
            path: &Path,
            size_bytes: Option<u64>,
            block_size: u32,
        ) -> Result<FileStorage, StorageError> {
            FileStorage::open(path, size_bytes, block_size)
        }
    }

    file_contract_tests!(Files);

    #[test]
    fn debug_shows_path_and_geometry() {
        let (_dir, path, storage) = volume::<Files>(512);
        assert_eq!(storage.path(), path);
        let text = format!("{storage:?}");
        assert!(
            text.contains("volume") && text.contains("geometry"),
            "{text}"
        );
    }
}

//! A volume on a file or block device through positional I/O, the stand-in until io_uring.
//! Each request runs its syscall inside `submit_*` (so a submit may block on the disk) and
//! queues the outcome; `poll` only hands out queued completions and never makes a syscall.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::completions::CompletionQueue;
use super::volume_file::open_volume;
use super::{Completion, Geometry, IoTag, Storage, StorageError};

/// A volume backed by a regular file or a block device, opened read+write.
pub struct FileStorage {
    path: PathBuf,
    file: File,
    geometry: Geometry,
    /// Finished requests not yet reported by `poll`; its length is the in-flight count.
    completions: CompletionQueue,
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
        })
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
    use crate::storage::{read_blocking, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_IO_BYTES};
    use tempfile::TempDir;

    const BLOCK_SIZES: [u32; 2] = [512, 4096];
    /// Larger than one request, so that TooLarge and OutOfRange are distinct cases.
    const VOLUME_BYTES: u64 = 2 * DEFAULT_MAX_IO_BYTES as u64;

    fn volume(block_size: u32) -> (TempDir, PathBuf, FileStorage) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volume");
        let storage = FileStorage::open(&path, Some(VOLUME_BYTES), block_size).unwrap();
        (dir, path, storage)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| ((i / 7) as u8 ^ seed) | 1).collect()
    }

    fn poll_all(storage: &mut FileStorage) -> Vec<Completion> {
        let mut out = Vec::new();
        storage.poll(&mut out, usize::MAX);
        out
    }

    fn ok(tag: IoTag) -> Completion {
        Completion {
            tag,
            result: Ok(()),
        }
    }

    #[test]
    fn created_sparse_then_reopened_keeps_size_and_data() {
        for block_size in BLOCK_SIZES {
            let (_dir, path, mut storage) = volume(block_size);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), VOLUME_BYTES);
            let expected = Geometry::new(VOLUME_BYTES, block_size).unwrap();
            assert_eq!(storage.geometry(), expected);
            let data = pattern(3 * block_size as usize, 7);
            let offset = 5 * u64::from(block_size);
            storage.submit_write(1, offset, &data).unwrap();
            storage.submit_flush(2).unwrap();
            assert_eq!(poll_all(&mut storage), [ok(1), ok(2)]);
            drop(storage);

            let mut storage = FileStorage::open(&path, None, block_size).unwrap();
            assert_eq!(storage.geometry(), expected);
            let mut buf = vec![0u8; data.len()];
            read_blocking(&mut storage, offset, &mut buf, &mut Vec::new()).unwrap();
            assert_eq!(buf, data);
            drop(storage);

            // Reopening with a smaller size neither truncates the file nor loses data.
            let smaller = 16 * u64::from(block_size);
            let mut storage = FileStorage::open(&path, Some(smaller), block_size).unwrap();
            assert_eq!(storage.geometry().size_bytes, smaller);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), VOLUME_BYTES);
            read_blocking(&mut storage, offset, &mut buf, &mut Vec::new()).unwrap();
            assert_eq!(buf, data);
        }
    }

    #[test]
    fn a_shorter_existing_file_is_extended_keeping_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volume");
        let head = pattern(4096, 9);
        std::fs::write(&path, &head).unwrap();
        let mut storage = FileStorage::open(&path, Some(4 * 4096), 4096).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 4096);
        let mut buf = vec![0xaau8; 2 * 4096];
        read_blocking(&mut storage, 0, &mut buf, &mut Vec::new()).unwrap();
        assert_eq!(buf[..4096], head);
        assert!(buf[4096..].iter().all(|&b| b == 0));
    }

    #[test]
    fn open_rejects_bad_sizes_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("odd");
        std::fs::write(&odd, vec![0u8; 4096 + 512]).unwrap();
        let bad_geometry = |r: Result<FileStorage, StorageError>| {
            assert!(matches!(r, Err(StorageError::BadGeometry(_))), "{r:?}");
        };
        bad_geometry(FileStorage::open(&odd, None, 4096));
        FileStorage::open(&odd, None, 512).unwrap();
        bad_geometry(FileStorage::open(&odd, None, 1024));

        let empty = dir.path().join("empty");
        std::fs::write(&empty, []).unwrap();
        bad_geometry(FileStorage::open(&empty, None, 512));

        let never = dir.path().join("never-created");
        bad_geometry(FileStorage::open(&never, Some(4096 + 512), 4096));
        bad_geometry(FileStorage::open(&never, Some(0), 512));
        assert!(!never.exists(), "a refused geometry creates no file");

        match FileStorage::open(&never, None, 4096) {
            Err(StorageError::Io { kind, .. }) => assert_eq!(kind, std::io::ErrorKind::NotFound),
            other => panic!("expected an Io error, got {other:?}"),
        }
    }

    #[test]
    fn write_then_read_back() {
        for block_size in BLOCK_SIZES {
            let block = block_size as usize;
            let (_dir, path, mut storage) = volume(block_size);
            let data = pattern(4 * block, 0x3c);
            let offset = VOLUME_BYTES - 4 * u64::from(block_size);
            storage.submit_write(1, offset, &data).unwrap();
            assert_eq!(poll_all(&mut storage), [ok(1)]);

            let mut buf = vec![0u8; data.len()];
            storage.submit_read(2, offset, &mut buf).unwrap();
            assert_eq!(poll_all(&mut storage), [ok(2)]);
            assert_eq!(buf, data);

            storage.submit_flush(3).unwrap();
            let mut buf = vec![0u8; block];
            let mut others = Vec::new();
            read_blocking(
                &mut storage,
                offset + 3 * block as u64,
                &mut buf,
                &mut others,
            )
            .unwrap();
            assert_eq!(buf, data[3 * block..]);
            assert_eq!(others, [ok(3)]);

            let mut image = vec![0u8; VOLUME_BYTES as usize];
            image[offset as usize..].copy_from_slice(&data);
            assert!(std::fs::read(&path).unwrap() == image);
        }
    }

    #[test]
    fn invalid_requests_are_typed_errors_and_touch_nothing() {
        for block_size in BLOCK_SIZES {
            let block = u64::from(block_size);
            let size = VOLUME_BYTES;
            let (_dir, path, mut storage) = volume(block_size);
            let one = vec![0xffu8; block_size as usize];
            let two = vec![0xffu8; 2 * block_size as usize];
            let too_large = vec![0xffu8; DEFAULT_MAX_IO_BYTES as usize + block_size as usize];
            let last_aligned = u64::MAX - block + 1;

            let unaligned = |offset: u64, len: usize| StorageError::Unaligned {
                offset,
                len: len as u64,
                block_size,
            };
            let out_of_range = |offset: u64, len: usize| StorageError::OutOfRange {
                offset,
                len: len as u64,
                size,
            };
            let cases: [(u64, &[u8], StorageError); 8] = [
                (1, &one, unaligned(1, one.len())),
                (block / 2, &one, unaligned(block / 2, one.len())),
                (0, &one[1..], unaligned(0, one.len() - 1)),
                (0, &[], unaligned(0, 0)),
                (size, &one, out_of_range(size, one.len())),
                (size - block, &two, out_of_range(size - block, two.len())),
                (last_aligned, &one, out_of_range(last_aligned, one.len())),
                (
                    0,
                    &too_large,
                    StorageError::TooLarge {
                        len: too_large.len() as u64,
                        max: DEFAULT_MAX_IO_BYTES,
                    },
                ),
            ];
            for (offset, data, expected) in cases {
                assert_eq!(storage.submit_write(9, offset, data), Err(expected.clone()));
                let mut buf = vec![0xaau8; data.len()];
                assert_eq!(storage.submit_read(9, offset, &mut buf), Err(expected));
                assert!(buf.iter().all(|&b| b == 0xaa), "read buffer untouched");
            }
            assert_eq!(storage.in_flight(), 0);
            assert!(poll_all(&mut storage).is_empty());
            let contents = std::fs::read(&path).unwrap();
            assert_eq!(contents.len() as u64, size, "file not extended");
            assert!(contents.iter().all(|&b| b == 0), "nothing written");
        }
    }

    #[test]
    fn queue_full_at_max_in_flight_and_recovers_after_poll() {
        for block_size in BLOCK_SIZES {
            let (_dir, path, mut storage) = volume(block_size);
            let mut buf = vec![0u8; block_size as usize];
            storage.submit_flush(0).unwrap();
            for tag in 1..IoTag::from(DEFAULT_MAX_IN_FLIGHT) {
                storage.submit_read(tag, 0, &mut buf).unwrap();
            }
            assert_eq!(storage.in_flight(), DEFAULT_MAX_IN_FLIGHT);

            let full = Err(StorageError::QueueFull(DEFAULT_MAX_IN_FLIGHT));
            let data = pattern(block_size as usize, 5);
            let next = IoTag::from(DEFAULT_MAX_IN_FLIGHT);
            assert_eq!(storage.submit_write(next, 0, &data), full);
            assert_eq!(storage.submit_read(next, 0, &mut buf), full);
            assert_eq!(storage.submit_flush(next), full);
            assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));

            let mut out = Vec::new();
            assert_eq!(storage.poll(&mut out, 1), 1);
            assert_eq!(out, [ok(0)]);
            storage.submit_write(next, 0, &data).unwrap();
            assert_eq!(storage.in_flight(), DEFAULT_MAX_IN_FLIGHT);
            let tags: Vec<IoTag> = poll_all(&mut storage).iter().map(|c| c.tag).collect();
            assert_eq!(tags, (1..=next).collect::<Vec<_>>());
            assert_eq!(std::fs::read(&path).unwrap()[..data.len()], data);
        }
    }

    #[test]
    fn completions_come_only_from_poll_in_order_and_bounded_by_max() {
        let (_dir, _path, mut storage) = volume(512);
        let data = pattern(1024, 3);
        storage.submit_write(10, 0, &data).unwrap();
        storage.submit_flush(11).unwrap();
        storage.submit_write(12, 1024, &data).unwrap();
        assert_eq!(storage.in_flight(), 3, "nothing completed inside submit");

        let mut out = vec![ok(99)];
        assert_eq!(storage.poll(&mut out, 0), 0);
        assert_eq!(storage.poll(&mut out, 2), 2);
        assert_eq!(storage.in_flight(), 1);
        assert_eq!(storage.poll(&mut out, 2), 1);
        assert_eq!(storage.poll(&mut out, 2), 0);
        assert_eq!(out, [ok(99), ok(10), ok(11), ok(12)]);
        assert_eq!(storage.in_flight(), 0);
    }

    #[test]
    fn flush_completes() {
        for block_size in BLOCK_SIZES {
            let (_dir, _path, mut storage) = volume(block_size);
            storage.submit_flush(1).unwrap();
            assert_eq!(storage.in_flight(), 1);
            assert_eq!(poll_all(&mut storage), [ok(1)]);
        }
    }

    #[test]
    fn a_failing_syscall_fails_the_completion_not_the_submit() {
        let (_dir, path, mut storage) = volume(4096);
        // Cut the file short behind the storage's back: the read passes validation and
        // fails in the kernel.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let mut buf = vec![0u8; 4096];
        storage.submit_read(1, 8 * 4096, &mut buf).unwrap();
        storage.submit_flush(2).unwrap();
        let completions = poll_all(&mut storage);
        assert_eq!(completions.len(), 2);
        assert_eq!(completions[0].tag, 1);
        match &completions[0].result {
            Err(StorageError::Io { kind, .. }) => {
                assert_eq!(*kind, std::io::ErrorKind::UnexpectedEof)
            }
            other => panic!("expected an Io error, got {other:?}"),
        }
        assert_eq!(completions[1], ok(2));
    }

    #[test]
    fn debug_shows_path_and_geometry() {
        let (_dir, path, storage) = volume(512);
        assert_eq!(storage.path(), path);
        let text = format!("{storage:?}");
        assert!(
            text.contains("volume") && text.contains("geometry"),
            "{text}"
        );
    }
}

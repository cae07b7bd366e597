//! The storage contract for backends on a file or block device: `file_contract_tests!(B)`
//! makes `B` (a [`FileBackend`]) a `ContractBackend` on a temporary file, instantiates the
//! shared suite from `ordo_core::storage::contract`, and adds what only a file has
//! (creating, extending and reopening it, a syscall failing behind the backend's back).

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use ordo_core::storage::contract::{ok, pattern, poll_until, BLOCK_SIZES, VOLUME_BYTES};
use ordo_core::storage::{read_blocking, Storage, StorageError};
use tempfile::TempDir;

/// A backend the contract tests can open on a path (a marker type of the test module:
/// one backend may be opened in more than one way).
pub(crate) trait FileBackend {
    type Volume: Storage + Debug;
    /// Opens as the backend's `open` does, with whatever queue limits it picks for tests.
    fn open(
        path: &Path,
        size_bytes: Option<u64>,
        block_size: u32,
    ) -> Result<Self::Volume, StorageError>;
}

/// A temporary directory and the volume file in it.
pub(crate) type Backing = (TempDir, PathBuf);

/// Instantiates the shared contract suite and the file tests for `$backend`.
macro_rules! file_contract_tests {
    ($backend:ty) => {
        impl ordo_core::storage::contract::ContractBackend for $backend {
            type Volume = <$backend as $crate::storage::file_contract::FileBackend>::Volume;
            type Backing = $crate::storage::file_contract::Backing;
            fn create(size_bytes: u64, block_size: u32) -> (Self::Backing, Self::Volume) {
                $crate::storage::file_contract::create::<$backend>(size_bytes, block_size)
            }
            fn reopen(backing: &Self::Backing, block_size: u32) -> Option<Self::Volume> {
                Some(<$backend as $crate::storage::file_contract::FileBackend>::open(
                    &backing.1, None, block_size,
                ).unwrap())
            }
        }

        ordo_core::storage_contract_tests!($backend);

        mod file_contract {
            use super::*;
            use $crate::storage::file_contract as f;

            $crate::storage::file_contract::file_contract_tests!(@tests $backend;
                created_sparse_then_reopened_smaller_keeps_size_and_data,
                a_shorter_existing_file_is_extended_keeping_its_data,
                open_rejects_bad_sizes_and_missing_files,
                writes_land_in_the_file,
                a_failing_syscall_fails_the_completion_not_the_submit,
            );
        }
    };
    (@tests $backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                f::$name::<$backend>();
            }
        )*
    };
}
pub(crate) use file_contract_tests;

pub(crate) fn create<B: FileBackend>(size_bytes: u64, block_size: u32) -> (Backing, B::Volume) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volume");
    let storage = B::open(&path, Some(size_bytes), block_size).unwrap();
    ((dir, path), storage)
}

/// A new `VOLUME_BYTES` volume file.
pub(crate) fn volume<B: FileBackend>(block_size: u32) -> (TempDir, PathBuf, B::Volume) {
    let ((dir, path), storage) = create::<B>(VOLUME_BYTES, block_size);
    (dir, path, storage)
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

pub(crate) fn created_sparse_then_reopened_smaller_keeps_size_and_data<B: FileBackend>() {
    for block_size in BLOCK_SIZES {
        let (_dir, path, mut storage) = volume::<B>(block_size);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), VOLUME_BYTES);
        let data = pattern(3 * block_size as usize, 7);
        let offset = 5 * u64::from(block_size);
        storage.submit_write(1, offset, &data).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);
        drop(storage);

        // Reopening with a smaller size neither truncates the file nor loses data.
        let smaller = 16 * u64::from(block_size);
        let mut storage = B::open(&path, Some(smaller), block_size).unwrap();
        assert_eq!(storage.geometry().size_bytes, smaller);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), VOLUME_BYTES);
        let mut buf = vec![0u8; data.len()];
        read_blocking(&mut storage, offset, &mut buf, &mut Vec::new()).unwrap();
        assert_eq!(buf, data);
    }
}

pub(crate) fn a_shorter_existing_file_is_extended_keeping_its_data<B: FileBackend>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volume");
    let head = pattern(4096, 9);
    std::fs::write(&path, &head).unwrap();
    let mut storage = B::open(&path, Some(4 * 4096), 4096).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 4096);
    let mut buf = vec![0xaau8; 2 * 4096];
    read_blocking(&mut storage, 0, &mut buf, &mut Vec::new()).unwrap();
    assert_eq!(buf[..4096], head);
    assert!(buf[4096..].iter().all(|&b| b == 0));
}

pub(crate) fn open_rejects_bad_sizes_and_missing_files<B: FileBackend>() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd");
    std::fs::write(&odd, vec![0u8; 4096 + 512]).unwrap();
    let bad_geometry = |r: Result<B::Volume, StorageError>| {
        assert!(matches!(r, Err(StorageError::BadGeometry(_))), "{r:?}");
    };
    bad_geometry(B::open(&odd, None, 4096));
    B::open(&odd, None, 512).unwrap();
    bad_geometry(B::open(&odd, None, 1024));

    let empty = dir.path().join("empty");
    std::fs::write(&empty, []).unwrap();
    bad_geometry(B::open(&empty, None, 512));

    let never = dir.path().join("never-created");
    bad_geometry(B::open(&never, Some(4096 + 512), 4096));
    bad_geometry(B::open(&never, Some(0), 512));
    assert!(!never.exists(), "a refused geometry creates no file");

    match B::open(&never, None, 4096) {
        Err(StorageError::Io { kind, .. }) => assert_eq!(kind, std::io::ErrorKind::NotFound),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

/// What the backend reports written is in the file itself, read past the backend.
pub(crate) fn writes_land_in_the_file<B: FileBackend>() {
    for block_size in BLOCK_SIZES {
        let block = block_size as usize;
        let (_dir, path, mut storage) = volume::<B>(block_size);
        let data = pattern(4 * block, 0x3c);
        let offset = VOLUME_BYTES - 4 * u64::from(block_size);
        storage.submit_write(1, offset, &data).unwrap();
        let assembled = pattern(2 * block, 0x5a);
        storage
            .submit_write_with(2, 0, assembled.len(), &mut |out| {
                out.copy_from_slice(&assembled)
            })
            .unwrap();
        assert_eq!(poll_until(&mut storage, 2, 2), [ok(1), ok(2)]);
        let mut image = vec![0u8; VOLUME_BYTES as usize];
        image[offset as usize..].copy_from_slice(&data);
        image[..2 * block].copy_from_slice(&assembled);
        assert!(read_file(&path) == image);
    }
}

pub(crate) fn a_failing_syscall_fails_the_completion_not_the_submit<B: FileBackend>() {
    let (_dir, path, mut storage) = volume::<B>(4096);
    // Cut the file short behind the storage's back: the read passes validation and fails
    // in the kernel.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    storage.submit_read(1, 8 * 4096, &mut buf).unwrap();
    storage.submit_flush(2).unwrap();
    let completions = poll_until(&mut storage, 2, 2);
    assert_eq!(completions[0].tag, 1);
    match &completions[0].result {
        Err(StorageError::Io { kind, .. }) => {
            assert_eq!(*kind, std::io::ErrorKind::UnexpectedEof)
        }
        other => panic!("expected an Io error, got {other:?}"),
    }
    assert_eq!(completions[1], ok(2));
}

//! UringStorage's tests: the storage contract in direct and in buffered mode, then what is
//! particular to io_uring (batching, a full SQ, the O_DIRECT fallback, CQE results).

use super::*;
use crate::storage::file_contract::{file_contract_tests, volume, FileBackend};
use ordo_core::storage::contract::{ok, pattern, poll_until, VOLUME_BYTES};

/// Small enough to fill quickly, large enough to batch.
const QUEUE_DEPTH: u32 = 32;

/// `UringStorage::open` (O_DIRECT where the filesystem allows it) for the contract suite.
struct Direct;

impl FileBackend for Direct {
    type Volume = UringStorage;
    fn open(
        path: &Path,
        size_bytes: Option<u64>,
        block_size: u32,
    ) -> Result<UringStorage, StorageError> {
        UringStorage::open(path, size_bytes, block_size, QUEUE_DEPTH)
    }
}

file_contract_tests!(Direct);

/// The backend as on a filesystem that refuses O_DIRECT, which then runs buffered.
struct Buffered;

impl FileBackend for Buffered {
    type Volume = UringStorage;
    fn open(
        path: &Path,
        size_bytes: Option<u64>,
        block_size: u32,
    ) -> Result<UringStorage, StorageError> {
        let config = RingConfig {
            sq_entries: QUEUE_DEPTH,
            refuse_direct: true,
            max_io_bytes: DEFAULT_MAX_IO_BYTES,
        };
        let storage = UringStorage::open_with(path, size_bytes, block_size, QUEUE_DEPTH, config)?;
        assert!(!storage.direct_io());
        Ok(storage)
    }
}

mod buffered {
    use super::*;
    file_contract_tests!(Buffered);
}

#[test]
fn submit_only_queues_and_poll_submits_the_batch() {
    let (_dir, path, mut storage) = volume::<Direct>(4096);
    for tag in 0..3 {
        storage
            .submit_write(tag, tag * 4096, &pattern(4096, tag as u8))
            .unwrap();
    }
    storage.submit_flush(3).unwrap();
    assert_eq!(
        storage.ring.submission().len(),
        4,
        "all queued, none entered"
    );
    assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));

    let completions = poll_until(&mut storage, 4, usize::MAX);
    assert_eq!(completions, [ok(0), ok(1), ok(2), ok(3)]);
    assert!(storage.ring.submission().is_empty());
    let contents = std::fs::read(&path).unwrap();
    for tag in 0..3 {
        let block = &contents[tag * 4096..(tag + 1) * 4096];
        assert_eq!(block, pattern(4096, tag as u8));
    }
}

#[test]
fn a_full_submission_queue_is_submitted_to_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volume");
    let config = RingConfig {
        sq_entries: 2,
        refuse_direct: false,
        max_io_bytes: DEFAULT_MAX_IO_BYTES,
    };
    let mut storage = UringStorage::open_with(&path, Some(VOLUME_BYTES), 512, 8, config).unwrap();
    assert_eq!(storage.ring.submission().capacity(), 2);
    let mut image = vec![0u8; VOLUME_BYTES as usize];
    for tag in 0..8u64 {
        let data = pattern(1024, tag as u8);
        let offset = tag as usize * 1024;
        storage.submit_write(tag, offset as u64, &data).unwrap();
        assert!(storage.ring.submission().len() <= 2);
        image[offset..offset + 1024].copy_from_slice(&data);
    }
    assert_eq!(storage.in_flight(), 8);
    let completions = poll_until(&mut storage, 8, 3);
    assert_eq!(completions, (0..8).map(ok).collect::<Vec<_>>());
    assert!(std::fs::read(&path).unwrap() == image);
    assert_eq!(storage.submits_deferred(), 0);
}

#[test]
fn open_rejects_bad_queue_depths_and_sets_max_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volume");
    for queue_depth in [0, QUEUE_DEPTH_MAX + 1] {
        let r = UringStorage::open(&path, Some(VOLUME_BYTES), 4096, queue_depth);
        assert!(matches!(r, Err(StorageError::BadGeometry(_))), "{r:?}");
        assert!(!path.exists(), "a refused queue depth creates no file");
    }
    let storage = UringStorage::open(&path, Some(VOLUME_BYTES), 4096, 3).unwrap();
    assert_eq!(storage.geometry().max_in_flight, 3);
    assert_eq!(storage.slots.len(), 3);
}

#[test]
fn the_open_falls_back_to_buffered_only_on_einval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, [0u8; 512]).unwrap();
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&path)
    };
    let refusing = |flags: libc::c_int| {
        if flags & libc::O_DIRECT != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        open(flags)
    };
    assert!(open_preferring_direct(open).unwrap().1);
    assert!(!open_preferring_direct(refusing).unwrap().1);
    let missing = |_| Err(io::Error::from_raw_os_error(libc::ENOENT));
    let e = open_preferring_direct(missing).unwrap_err();
    assert_eq!(
        e.kind(),
        io::ErrorKind::NotFound,
        "other errors are not retried"
    );
}

/// Whether O_DIRECT opens on the filesystem holding `dir`, from what the kernel says of
/// that filesystem rather than from the code under test: ext4, xfs and btrfs always,
/// tmpfs since Linux 6.6. None where we cannot tell.
fn expected_direct_io(dir: &Path) -> Option<bool> {
    match filesystem_type(dir)?.as_str() {
        "ext4" | "xfs" | "btrfs" => Some(true),
        "tmpfs" => Some(kernel_version()? >= (6, 6)),
        _ => None,
    }
}

/// The type of the last filesystem mounted at the longest mount point above `dir`.
fn filesystem_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts = mountinfo.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = Path::new(fields.get(4)?);
        let separator = fields.iter().position(|&field| field == "-")?;
        let fs_type = fields.get(separator + 1)?.to_string();
        let depth = mount_point.components().count();
        dir.starts_with(mount_point).then_some((depth, fs_type))
    });
    mounts.max_by_key(|(depth, _)| *depth).map(|(_, fs)| fs)
}

fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

#[test]
fn direct_io_where_the_filesystem_allows_it() {
    let shm = Path::new("/dev/shm");
    let dirs = [Some(std::env::temp_dir()), shm.is_dir().then(|| shm.into())];
    let mut known = 0;
    for parent in dirs.into_iter().flatten() {
        let dir = tempfile::tempdir_in(&parent).unwrap();
        let path = dir.path().join("volume");
        let mut storage = UringStorage::open(&path, Some(VOLUME_BYTES), 512, 4).unwrap();
        if let Some(expected) = expected_direct_io(dir.path()) {
            assert_eq!(storage.direct_io(), expected, "{parent:?}");
            known += 1;
        }
        // Either way the volume works, at the smallest block size.
        let data = pattern(512, 1);
        storage.submit_write(1, 512, &data).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);
        let mut buf = vec![0u8; 512];
        storage.submit_read(2, 512, &mut buf).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(2)]);
        assert_eq!(buf, data);
    }
    assert!(
        known > 0,
        "no filesystem here whose O_DIRECT support is known"
    );
}

#[test]
fn cqe_results_become_typed_errors() {
    assert_eq!(write_result(4096, 4096), Ok(()));
    let eio = StorageError::from(io::Error::from_raw_os_error(libc::EIO));
    assert_eq!(write_result(-libc::EIO, 4096), Err(eio.clone()));
    match write_result(512, 4096) {
        Err(StorageError::Io { kind, message }) => {
            assert_eq!(kind, io::ErrorKind::WriteZero);
            assert!(message.contains("512 of 4096"), "{message}");
        }
        other => panic!("a short write is an error, got {other:?}"),
    }
    assert_eq!(flush_result(0), Ok(()));
    assert_eq!(flush_result(-libc::EIO), Err(eio));
}

#[test]
fn debug_shows_path_geometry_and_mode() {
    let (_dir, path, storage) = volume::<Direct>(512);
    assert_eq!(storage.path(), path);
    let text = format!("{storage:?}");
    for field in ["volume", "geometry", "direct_io", "in_flight"] {
        assert!(text.contains(field), "{text}");
    }
}

//! The storage contract (see the module docs of `storage`) as tests that any backend on a
//! file or block device runs: `contract_tests!(Backend)` in its test module instantiates
//! them all; checks that need no file take any `Storage`. They assume nothing the contract
//! leaves open, such as completion order.

use std::fmt::Debug;
use std::ops::Range;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::{read_blocking, Completion, IoTag, Storage, StorageError};

pub(crate) const BLOCK_SIZES: [u32; 2] = [512, 4096];
/// Larger than one request (1 MiB by default), so that TooLarge and OutOfRange are distinct.
pub(crate) const VOLUME_BYTES: u64 = 2 << 20;

/// A backend the contract tests can open on a path.
pub(crate) trait FileVolume: Storage + Debug + Sized {
    /// Opens as the backend's `open` does, with whatever queue limits it picks for tests.
    fn open(path: &Path, size_bytes: Option<u64>, block_size: u32) -> Result<Self, StorageError>;
}

/// Instantiates every contract test for `$backend`, a `FileVolume`, in a module `contract`.
macro_rules! contract_tests {
    ($backend:ty) => {
        mod contract {
            use super::*;
            use $crate::storage::contract_tests as c;

            $crate::storage::contract_tests::contract_tests!(@tests $backend;
                created_sparse_then_reopened_keeps_size_and_data,
                a_shorter_existing_file_is_extended_keeping_its_data,
                open_rejects_bad_sizes_and_missing_files,
                write_then_read_back,
                invalid_requests_are_typed_errors_and_touch_nothing,
                queue_full_at_max_in_flight_and_recovers_after_poll,
                completions_come_only_from_poll_bounded_by_max,
                flush_completes,
                many_writes_in_one_batch_complete_over_several_polls,
                drop_with_requests_in_flight_completes_them,
                a_failing_syscall_fails_the_completion_not_the_submit,
            );
        }
    };
    (@tests $backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                c::$name::<$backend>();
            }
        )*
    };
}
pub(crate) use contract_tests;

pub(crate) fn volume<S: FileVolume>(block_size: u32) -> (TempDir, PathBuf, S) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volume");
    let storage = S::open(&path, Some(VOLUME_BYTES), block_size).unwrap();
    (dir, path, storage)
}

/// `len` bytes that differ from block to block and from zero.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i / 7) as u8 ^ seed) | 1).collect()
}

pub(crate) fn ok(tag: IoTag) -> Completion {
    Completion {
        tag,
        result: Ok(()),
    }
}

/// Polls (at most `max` at a time) until `count` completions have arrived; returns them
/// sorted by tag, since the contract leaves their order open.
pub(crate) fn poll_until<S: Storage>(storage: &mut S, count: usize, max: usize) -> Vec<Completion> {
    const EMPTY_POLLS_MAX: u32 = 10_000_000;
    let mut out = Vec::new();
    let mut empty_polls = 0;
    while out.len() < count {
        let before = out.len();
        let polled = storage.poll(&mut out, max);
        assert!(polled <= max && out.len() == before + polled);
        if polled == 0 {
            empty_polls += 1;
            assert!(empty_polls < EMPTY_POLLS_MAX, "completions never arrived");
            std::thread::yield_now();
        }
    }
    assert_eq!(out.len(), count, "no more completions than requests");
    out.sort_by_key(|c| c.tag);
    out
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

pub(crate) fn created_sparse_then_reopened_keeps_size_and_data<S: FileVolume>() {
    for block_size in BLOCK_SIZES {
        let (_dir, path, mut storage) = volume::<S>(block_size);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), VOLUME_BYTES);
        let geometry = storage.geometry();
        assert_eq!(geometry.size_bytes, VOLUME_BYTES);
        assert_eq!(geometry.block_size, block_size);
        let data = pattern(3 * block_size as usize, 7);
        let offset = 5 * u64::from(block_size);
        storage.submit_write(1, offset, &data).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);
        storage.submit_flush(2).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(2)]);
        drop(storage);

        let mut storage = S::open(&path, None, block_size).unwrap();
        assert_eq!(storage.geometry(), geometry);
        let mut buf = vec![0u8; data.len()];
        read_blocking(&mut storage, offset, &mut buf, &mut Vec::new()).unwrap();
        assert_eq!(buf, data);
        drop(storage);

        // Reopening with a smaller size neither truncates the file nor loses data.
        let smaller = 16 * u64::from(block_size);
        let mut storage = S::open(&path, Some(smaller), block_size).unwrap();
        assert_eq!(storage.geometry().size_bytes, smaller);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), VOLUME_BYTES);
        read_blocking(&mut storage, offset, &mut buf, &mut Vec::new()).unwrap();
        assert_eq!(buf, data);
    }
}

pub(crate) fn a_shorter_existing_file_is_extended_keeping_its_data<S: FileVolume>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("volume");
    let head = pattern(4096, 9);
    std::fs::write(&path, &head).unwrap();
    let mut storage = S::open(&path, Some(4 * 4096), 4096).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 4096);
    let mut buf = vec![0xaau8; 2 * 4096];
    read_blocking(&mut storage, 0, &mut buf, &mut Vec::new()).unwrap();
    assert_eq!(buf[..4096], head);
    assert!(buf[4096..].iter().all(|&b| b == 0));
}

pub(crate) fn open_rejects_bad_sizes_and_missing_files<S: FileVolume>() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd");
    std::fs::write(&odd, vec![0u8; 4096 + 512]).unwrap();
    let bad_geometry = |r: Result<S, StorageError>| {
        assert!(matches!(r, Err(StorageError::BadGeometry(_))), "{r:?}");
    };
    bad_geometry(S::open(&odd, None, 4096));
    S::open(&odd, None, 512).unwrap();
    bad_geometry(S::open(&odd, None, 1024));

    let empty = dir.path().join("empty");
    std::fs::write(&empty, []).unwrap();
    bad_geometry(S::open(&empty, None, 512));

    let never = dir.path().join("never-created");
    bad_geometry(S::open(&never, Some(4096 + 512), 4096));
    bad_geometry(S::open(&never, Some(0), 512));
    assert!(!never.exists(), "a refused geometry creates no file");

    match S::open(&never, None, 4096) {
        Err(StorageError::Io { kind, .. }) => assert_eq!(kind, std::io::ErrorKind::NotFound),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

pub(crate) fn write_then_read_back<S: FileVolume>() {
    for block_size in BLOCK_SIZES {
        let block = block_size as usize;
        let (_dir, path, mut storage) = volume::<S>(block_size);
        let data = pattern(4 * block, 0x3c);
        let offset = VOLUME_BYTES - 4 * u64::from(block_size);
        storage.submit_write(1, offset, &data).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);

        let mut buf = vec![0u8; data.len()];
        storage.submit_read(2, offset, &mut buf).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(2)]);
        assert_eq!(buf, data);

        storage.submit_flush(3).unwrap();
        let mut buf = vec![0u8; block];
        let mut others = Vec::new();
        let last = offset + 3 * block as u64;
        read_blocking(&mut storage, last, &mut buf, &mut others).unwrap();
        assert_eq!(buf, data[3 * block..]);
        others.extend(poll_until(&mut storage, 1 - others.len(), 1));
        assert_eq!(others, [ok(3)]);

        let mut image = vec![0u8; VOLUME_BYTES as usize];
        image[offset as usize..].copy_from_slice(&data);
        assert!(read_file(&path) == image);

        // A write assembled in place lands like any other, even over stale buffer bytes.
        let assembled = pattern(2 * block, 0x5a);
        storage
            .submit_write_with(4, 0, assembled.len(), &mut |out| {
                out.copy_from_slice(&assembled)
            })
            .unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(4)]);
        image[..2 * block].copy_from_slice(&assembled);
        assert!(read_file(&path) == image);
        let refused = storage.submit_write_with(5, 1, block, &mut |_| panic!("not admitted"));
        assert!(
            refused.is_err(),
            "a misaligned request is refused before fill"
        );
    }
}

pub(crate) fn invalid_requests_are_typed_errors_and_touch_nothing<S: FileVolume>() {
    for block_size in BLOCK_SIZES {
        let (_dir, path, mut storage) = volume::<S>(block_size);
        refuses_invalid_requests(&mut storage);
        let contents = read_file(&path);
        assert_eq!(contents.len() as u64, VOLUME_BYTES, "file not extended");
        assert!(contents.iter().all(|&b| b == 0), "nothing written");
    }
}

/// Every kind of invalid read and write, on any backend, is its typed error, leaves the
/// read buffer alone and puts nothing in flight. Needs at least two blocks in the volume.
pub(crate) fn refuses_invalid_requests<S: Storage>(storage: &mut S) {
    let geometry = storage.geometry();
    let (block_size, size) = (geometry.block_size, geometry.size_bytes);
    let block = u64::from(block_size);
    let one = vec![0xffu8; block_size as usize];
    let two = vec![0xffu8; 2 * block_size as usize];
    let too_large = vec![0xffu8; (geometry.max_io_bytes + block_size) as usize];
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
    let too_large_error = StorageError::TooLarge {
        len: too_large.len() as u64,
        max: geometry.max_io_bytes,
    };
    let cases: [(u64, &[u8], StorageError); 8] = [
        (1, &one, unaligned(1, one.len())),
        (block / 2, &one, unaligned(block / 2, one.len())),
        (0, &one[1..], unaligned(0, one.len() - 1)),
        (0, &[], unaligned(0, 0)),
        (size, &one, out_of_range(size, one.len())),
        (size - block, &two, out_of_range(size - block, two.len())),
        (last_aligned, &one, out_of_range(last_aligned, one.len())),
        (0, &too_large, too_large_error),
    ];
    for (offset, data, expected) in cases {
        assert_eq!(storage.submit_write(9, offset, data), Err(expected.clone()));
        let mut buf = vec![0xaau8; data.len()];
        assert_eq!(storage.submit_read(9, offset, &mut buf), Err(expected));
        assert!(buf.iter().all(|&b| b == 0xaa), "read buffer untouched");
    }
    assert_eq!(storage.in_flight(), 0);
    let mut out = Vec::new();
    assert_eq!(storage.poll(&mut out, usize::MAX), 0);
}

pub(crate) fn queue_full_at_max_in_flight_and_recovers_after_poll<S: FileVolume>() {
    for block_size in BLOCK_SIZES {
        let block = block_size as usize;
        let (_dir, path, mut storage) = volume::<S>(block_size);
        let max_in_flight = storage.geometry().max_in_flight;
        let mut buf = vec![0u8; block];
        // One of each kind fills the queue: a write, a flush, and reads.
        storage
            .submit_write(0, block as u64, &pattern(block, 4))
            .unwrap();
        storage.submit_flush(1).unwrap();
        for tag in 2..IoTag::from(max_in_flight) {
            storage.submit_read(tag, 0, &mut buf).unwrap();
        }
        assert_eq!(storage.in_flight(), max_in_flight);

        let full = Err(StorageError::QueueFull(max_in_flight));
        let data = pattern(block, 5);
        let next = IoTag::from(max_in_flight);
        assert_eq!(storage.submit_write(next, 0, &data), full);
        assert_eq!(storage.submit_read(next, 0, &mut buf), full);
        assert_eq!(storage.submit_flush(next), full);
        assert_eq!(storage.in_flight(), max_in_flight);
        assert!(read_file(&path)[..block].iter().all(|&b| b == 0));

        let first = poll_until(&mut storage, 1, 1);
        assert!(first[0].result.is_ok() && first[0].tag < next);
        storage.submit_write(next, 0, &data).unwrap();
        assert_eq!(storage.in_flight(), max_in_flight);
        let rest = poll_until(&mut storage, max_in_flight as usize, usize::MAX);
        assert_eq!(storage.in_flight(), 0);
        let mut tags: Vec<IoTag> = rest.iter().chain(&first).map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..=next).collect::<Vec<_>>());
        assert!(rest.iter().all(|c| c.result.is_ok()));
        assert_eq!(read_file(&path)[..block], data);
    }
}

pub(crate) fn completions_come_only_from_poll_bounded_by_max<S: FileVolume>() {
    let (_dir, _path, mut storage) = volume::<S>(512);
    completions_only_from_poll_bounded_by_max(&mut storage);
}

/// On any backend with 512-byte blocks: three requests stay in flight until `poll` reports
/// them, at most `max` at a time, appended to what the caller's vector holds.
pub(crate) fn completions_only_from_poll_bounded_by_max<S: Storage>(storage: &mut S) {
    assert_eq!(storage.geometry().block_size, 512);
    let data = pattern(1024, 3);
    storage.submit_write(10, 0, &data).unwrap();
    storage.submit_flush(11).unwrap();
    storage.submit_write(12, 1024, &data).unwrap();
    assert_eq!(storage.in_flight(), 3, "nothing completed inside submit");

    let mut out = vec![ok(99)];
    assert_eq!(storage.poll(&mut out, 0), 0);
    assert_eq!(out, [ok(99)], "poll appends, and max 0 appends nothing");
    let mut completed = Vec::new();
    while completed.len() < 3 {
        let polled = storage.poll(&mut out, 2);
        assert!(polled <= 2);
        completed.extend(out.drain(1..));
        assert_eq!(storage.in_flight() as usize, 3 - completed.len());
    }
    assert_eq!(storage.poll(&mut out, 2), 0);
    completed.sort_by_key(|c| c.tag);
    assert_eq!(completed, [ok(10), ok(11), ok(12)]);
}

pub(crate) fn flush_completes<S: FileVolume>() {
    for block_size in BLOCK_SIZES {
        let (_dir, _path, mut storage) = volume::<S>(block_size);
        storage.submit_flush(1).unwrap();
        assert_eq!(storage.in_flight(), 1);
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);
        assert_eq!(storage.in_flight(), 0);
    }
}

/// Writes one block for each tag in `tags` to every other block (no two writes adjacent)
/// and applies them to `image`.
fn write_every_other_block<S: FileVolume>(storage: &mut S, tags: Range<IoTag>, image: &mut [u8]) {
    let block = storage.geometry().block_size as usize;
    for tag in tags {
        let offset = 2 * tag as usize * block;
        let data = pattern(block, tag as u8);
        storage.submit_write(tag, offset as u64, &data).unwrap();
        image[offset..offset + block].copy_from_slice(&data);
    }
}

pub(crate) fn many_writes_in_one_batch_complete_over_several_polls<S: FileVolume>() {
    for block_size in BLOCK_SIZES {
        let (_dir, path, mut storage) = volume::<S>(block_size);
        let max_in_flight = IoTag::from(storage.geometry().max_in_flight);
        let mut image = vec![0u8; VOLUME_BYTES as usize];
        write_every_other_block(&mut storage, 0..max_in_flight, &mut image);
        let completions = poll_until(&mut storage, max_in_flight as usize, 3);
        assert_eq!(completions, (0..max_in_flight).map(ok).collect::<Vec<_>>());
        storage.submit_flush(u64::MAX - 1).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(u64::MAX - 1)]);
        assert!(read_file(&path) == image);
    }
}

/// Drops the storage with requests in every state: submitted to the device, finished but
/// not reported, not yet handed to the device (whatever the backend's states are).
pub(crate) fn drop_with_requests_in_flight_completes_them<S: FileVolume>() {
    let (_dir, path, mut storage) = volume::<S>(4096);
    let max_in_flight = IoTag::from(storage.geometry().max_in_flight);
    let mut image = vec![0u8; VOLUME_BYTES as usize];
    write_every_other_block(&mut storage, 0..max_in_flight / 2, &mut image);
    assert_eq!(storage.poll(&mut Vec::new(), 0), 0);
    write_every_other_block(&mut storage, max_in_flight / 2..max_in_flight, &mut image);
    assert_eq!(u64::from(storage.in_flight()), max_in_flight);
    drop(storage);
    assert!(
        read_file(&path) == image,
        "every write submitted before the drop is done"
    );
}

pub(crate) fn a_failing_syscall_fails_the_completion_not_the_submit<S: FileVolume>() {
    let (_dir, path, mut storage) = volume::<S>(4096);
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

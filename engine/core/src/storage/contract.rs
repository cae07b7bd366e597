//! The storage contract (see the module docs of `storage`) as tests that every backend
//! runs: `ordo_core::storage_contract_tests!(Backend)` in a backend's test module
//! instantiates them all for a type that implements [`ContractBackend`]. They check only
//! through the trait (reads, completions, in-flight counts), so they hold for memory,
//! files, io_uring and SPDK bdevs alike, and assume nothing the contract leaves open, such
//! as completion order. What is particular to a backend (opening a file, O_DIRECT) stays
//! in its own tests.
//!
//! Compiled for this crate's tests and, for other crates' tests, under the
//! `contract-tests` feature (a dev-dependency feature: it never reaches a binary).

use std::fmt::Debug;
use std::ops::Range;

use super::{read_blocking, Completion, IoTag, Storage, StorageError};

pub const BLOCK_SIZES: [u32; 2] = [512, 4096];
/// Larger than one request (1 MiB by default), so that TooLarge and OutOfRange are distinct.
pub const VOLUME_BYTES: u64 = 2 << 20;

/// A backend the contract tests can create volumes of: implemented by a type of the test
/// crate (a marker), so that any backend type, or one backend opened two ways, can be
/// tested without a wrapper.
pub trait ContractBackend {
    /// The storage under test.
    type Volume: Storage + Debug;
    /// What keeps a volume's backing store alive across a drop of the handle (a temporary
    /// directory, a bdev), so that it can be opened again.
    type Backing;

    /// A new zeroed volume of `size_bytes` with `block_size`-byte blocks, with whatever
    /// queue limits the backend picks for tests.
    fn create(size_bytes: u64, block_size: u32) -> (Self::Backing, Self::Volume);

    /// The volume in `backing` opened again after the last handle was dropped; `None` for
    /// a backend that keeps nothing past a drop (memory).
    fn reopen(backing: &Self::Backing, block_size: u32) -> Option<Self::Volume>;
}

/// Instantiates every contract test for `$backend`, a `ContractBackend`, in a module
/// `contract`.
#[macro_export]
macro_rules! storage_contract_tests {
    ($backend:ty) => {
        mod contract {
            use super::*;
            use $crate::storage::contract as c;

            $crate::storage_contract_tests!(@tests $backend;
                write_then_read_back,
                writes_survive_a_reopen,
                invalid_requests_are_typed_errors_and_touch_nothing,
                queue_full_at_max_in_flight_and_recovers_after_poll,
                completions_come_only_from_poll_bounded_by_max,
                flush_completes,
                many_writes_in_one_batch_complete_over_several_polls,
                drop_with_requests_in_flight_completes_them,
                zeroes_read_back_as_zeros_and_leave_the_rest,
                invalid_zeroes_are_typed_errors_and_touch_nothing,
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

/// `len` bytes that differ from block to block and from zero.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i / 7) as u8 ^ seed) | 1).collect()
}

pub fn ok(tag: IoTag) -> Completion {
    Completion {
        tag,
        result: Ok(()),
    }
}

/// Polls (at most `max` at a time) until `count` completions have arrived; returns them
/// sorted by tag, since the contract leaves their order open.
pub fn poll_until<S: Storage>(storage: &mut S, count: usize, max: usize) -> Vec<Completion> {
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

/// The whole volume, read through the storage in requests of at most `max_io_bytes`.
/// Nothing else may be in flight.
pub fn image<S: Storage>(storage: &mut S) -> Vec<u8> {
    assert_eq!(storage.in_flight(), 0, "image of a quiet volume only");
    let geometry = storage.geometry();
    let mut image = vec![0u8; geometry.size_bytes as usize];
    let mut others = Vec::new();
    for (i, chunk) in image.chunks_mut(geometry.max_io_bytes as usize).enumerate() {
        let offset = i as u64 * u64::from(geometry.max_io_bytes);
        read_blocking(storage, offset, chunk, &mut others).unwrap();
    }
    assert!(others.is_empty(), "no stray completions: {others:?}");
    image
}

fn volume<B: ContractBackend>(block_size: u32) -> (B::Backing, B::Volume) {
    let (backing, storage) = B::create(VOLUME_BYTES, block_size);
    let geometry = storage.geometry();
    assert_eq!(geometry.size_bytes, VOLUME_BYTES);
    assert_eq!(geometry.block_size, block_size);
    (backing, storage)
}

pub fn write_then_read_back<B: ContractBackend>() {
    for block_size in BLOCK_SIZES {
        let block = block_size as usize;
        let (_backing, mut storage) = volume::<B>(block_size);
        assert!(
            image(&mut storage).iter().all(|&b| b == 0),
            "created zeroed"
        );
        let data = pattern(4 * block, 0x3c);
        let offset = VOLUME_BYTES - 4 * u64::from(block_size);
        storage.submit_write(1, offset, &data).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);

        let mut buf = vec![0u8; data.len()];
        storage.submit_read(2, offset, &mut buf).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(2)]);
        assert_eq!(buf, data);

        // A blocking read hands back an unrelated completion rather than losing it.
        storage.submit_flush(3).unwrap();
        let mut buf = vec![0u8; block];
        let mut others = Vec::new();
        let last = offset + 3 * block as u64;
        read_blocking(&mut storage, last, &mut buf, &mut others).unwrap();
        assert_eq!(buf, data[3 * block..]);
        others.extend(poll_until(&mut storage, 1 - others.len(), 1));
        assert_eq!(others, [ok(3)]);

        let mut expected = vec![0u8; VOLUME_BYTES as usize];
        expected[offset as usize..].copy_from_slice(&data);
        assert!(image(&mut storage) == expected);

        // A write assembled in place lands like any other, even over stale buffer bytes.
        let assembled = pattern(2 * block, 0x5a);
        storage
            .submit_write_with(4, 0, assembled.len(), &mut |out| {
                out.copy_from_slice(&assembled)
            })
            .unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(4)]);
        expected[..2 * block].copy_from_slice(&assembled);
        assert!(image(&mut storage) == expected);
        let refused = storage.submit_write_with(5, 1, block, &mut |_| panic!("not admitted"));
        assert!(
            refused.is_err(),
            "a misaligned request is refused before fill"
        );
    }
}

pub fn writes_survive_a_reopen<B: ContractBackend>() {
    for block_size in BLOCK_SIZES {
        let (backing, mut storage) = volume::<B>(block_size);
        let data = pattern(3 * block_size as usize, 7);
        let offset = 5 * u64::from(block_size);
        storage.submit_write(1, offset, &data).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);
        storage.submit_flush(2).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(2)]);
        let geometry = storage.geometry();
        let expected = image(&mut storage);
        drop(storage);
        let Some(mut storage) = B::reopen(&backing, block_size) else {
            return;
        };
        assert_eq!(storage.geometry().size_bytes, geometry.size_bytes);
        assert_eq!(storage.geometry().block_size, geometry.block_size);
        assert!(image(&mut storage) == expected);
    }
}

pub fn invalid_requests_are_typed_errors_and_touch_nothing<B: ContractBackend>() {
    for block_size in BLOCK_SIZES {
        let (_backing, mut storage) = volume::<B>(block_size);
        refuses_invalid_requests(&mut storage);
        assert!(
            image(&mut storage).iter().all(|&b| b == 0),
            "nothing written"
        );

        // The last block itself is in range.
        let block = u64::from(block_size);
        let one = vec![0xffu8; block_size as usize];
        storage.submit_write(1, VOLUME_BYTES - block, &one).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);
    }
}

/// Every kind of invalid read and write is its typed error, leaves the read buffer alone
/// and puts nothing in flight. Needs at least two blocks in the volume.
pub fn refuses_invalid_requests<S: Storage>(storage: &mut S) {
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

pub fn queue_full_at_max_in_flight_and_recovers_after_poll<B: ContractBackend>() {
    for block_size in BLOCK_SIZES {
        let block = block_size as usize;
        let (_backing, mut storage) = volume::<B>(block_size);
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
        let refused = pattern(block, 6);
        let data = pattern(block, 5);
        let next = IoTag::from(max_in_flight);
        assert_eq!(storage.submit_write(next, 2 * block as u64, &refused), full);
        assert_eq!(storage.submit_read(next, 0, &mut buf), full);
        assert_eq!(storage.submit_flush(next), full);
        assert_eq!(storage.in_flight(), max_in_flight);

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
        let image = image(&mut storage);
        assert_eq!(image[..block], data);
        assert!(
            image[2 * block..3 * block].iter().all(|&b| b == 0),
            "a refused write writes nothing"
        );
    }
}

/// Three requests stay in flight until `poll` reports them, at most `max` at a time,
/// appended to what the caller's vector holds.
pub fn completions_come_only_from_poll_bounded_by_max<B: ContractBackend>() {
    let (_backing, mut storage) = volume::<B>(512);
    let data = pattern(1024, 3);
    storage.submit_write(10, 0, &data).unwrap();
    storage.submit_flush(11).unwrap();
    storage.submit_write(12, 1024, &data).unwrap();
    assert_eq!(storage.in_flight(), 3, "nothing completed inside submit");

    let mut out = vec![ok(99)];
    assert_eq!(storage.poll(&mut out, 0), 0);
    assert_eq!(out, [ok(99)], "poll appends, and max 0 appends nothing");
    let mut completed = Vec::new();
    let mut empty_polls = 0u32;
    while completed.len() < 3 {
        let polled = storage.poll(&mut out, 2);
        assert!(polled <= 2);
        completed.extend(out.drain(1..));
        assert_eq!(storage.in_flight() as usize, 3 - completed.len());
        if polled == 0 {
            empty_polls += 1;
            assert!(empty_polls < 10_000_000, "completions never arrived");
            std::thread::yield_now();
        }
    }
    assert_eq!(storage.poll(&mut out, 2), 0);
    completed.sort_by_key(|c| c.tag);
    assert_eq!(completed, [ok(10), ok(11), ok(12)]);
}

pub fn flush_completes<B: ContractBackend>() {
    for block_size in BLOCK_SIZES {
        let (_backing, mut storage) = volume::<B>(block_size);
        storage.submit_flush(1).unwrap();
        assert_eq!(storage.in_flight(), 1);
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(1)]);
        assert_eq!(storage.in_flight(), 0);
    }
}

/// Writes one block for each tag in `tags` to every other block (no two writes adjacent)
/// and applies them to `expected`.
fn write_every_other_block<S: Storage>(storage: &mut S, tags: Range<IoTag>, expected: &mut [u8]) {
    let block = storage.geometry().block_size as usize;
    for tag in tags {
        let offset = 2 * tag as usize * block;
        let data = pattern(block, tag as u8);
        storage.submit_write(tag, offset as u64, &data).unwrap();
        expected[offset..offset + block].copy_from_slice(&data);
    }
}

pub fn many_writes_in_one_batch_complete_over_several_polls<B: ContractBackend>() {
    for block_size in BLOCK_SIZES {
        let (_backing, mut storage) = volume::<B>(block_size);
        let max_in_flight = IoTag::from(storage.geometry().max_in_flight);
        let mut expected = vec![0u8; VOLUME_BYTES as usize];
        write_every_other_block(&mut storage, 0..max_in_flight, &mut expected);
        let completions = poll_until(&mut storage, max_in_flight as usize, 3);
        assert_eq!(completions, (0..max_in_flight).map(ok).collect::<Vec<_>>());
        storage.submit_flush(u64::MAX - 1).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(u64::MAX - 1)]);
        assert!(image(&mut storage) == expected);
    }
}

/// Drops the storage with requests in every state: submitted to the device, finished but
/// not reported, not yet handed to the device (whatever the backend's states are). Every
/// write submitted before the drop is done once it returns.
pub fn drop_with_requests_in_flight_completes_them<B: ContractBackend>() {
    let (backing, mut storage) = volume::<B>(4096);
    let max_in_flight = IoTag::from(storage.geometry().max_in_flight);
    let mut expected = vec![0u8; VOLUME_BYTES as usize];
    write_every_other_block(&mut storage, 0..max_in_flight / 2, &mut expected);
    assert_eq!(storage.poll(&mut Vec::new(), 0), 0);
    write_every_other_block(
        &mut storage,
        max_in_flight / 2..max_in_flight,
        &mut expected,
    );
    assert_eq!(u64::from(storage.in_flight()), max_in_flight);
    drop(storage);
    if let Some(mut storage) = B::reopen(&backing, 4096) {
        assert!(
            image(&mut storage) == expected,
            "every write submitted before the drop is done"
        );
    }
}

/// A range zeroed, with and without leave to deallocate, larger than one request and
/// over data: it reads back as zeros, the blocks around it keep their data, and it lasts.
pub fn zeroes_read_back_as_zeros_and_leave_the_rest<B: ContractBackend>() {
    for block_size in BLOCK_SIZES {
        let block = u64::from(block_size);
        let (backing, mut storage) = volume::<B>(block_size);
        let max_io = storage.geometry().max_io_bytes as usize;
        let mut expected = pattern(VOLUME_BYTES as usize, 0x42);
        for (i, chunk) in expected.chunks(max_io).enumerate() {
            storage
                .submit_write(i as IoTag, (i * max_io) as u64, chunk)
                .unwrap();
        }
        let writes = expected.chunks(max_io).count();
        poll_until(&mut storage, writes, usize::MAX);
        // Past one request's size, from the second block to the third from the end.
        let (offset, len) = (block, VOLUME_BYTES - 3 * block);
        storage.submit_write_zeroes(100, offset, len, true).unwrap();
        storage.submit_write_zeroes(101, 0, block, false).unwrap();
        assert_eq!(poll_until(&mut storage, 2, 1), [ok(100), ok(101)]);
        expected[..(offset + len) as usize].fill(0);
        storage.submit_flush(102).unwrap();
        assert_eq!(poll_until(&mut storage, 1, 1), [ok(102)]);
        assert!(image(&mut storage) == expected, "{block_size}-byte blocks");
        drop(storage);
        if let Some(mut storage) = B::reopen(&backing, block_size) {
            assert!(image(&mut storage) == expected, "zeros last");
        }
    }
}

/// A zeroing request that is misaligned, empty or past the end is its typed error and
/// puts nothing in flight; one larger than `max_io_bytes` is fine.
pub fn invalid_zeroes_are_typed_errors_and_touch_nothing<B: ContractBackend>() {
    let (_backing, mut storage) = volume::<B>(4096);
    let data = pattern(VOLUME_BYTES as usize, 9);
    storage.submit_write(1, 0, &data[..4096]).unwrap();
    poll_until(&mut storage, 1, 1);
    let unaligned = |offset, len| StorageError::Unaligned {
        offset,
        len,
        block_size: 4096,
    };
    let out_of_range = |offset, len| StorageError::OutOfRange {
        offset,
        len,
        size: VOLUME_BYTES,
    };
    let cases = [
        (512, 4096, unaligned(512, 4096)),
        (0, 100, unaligned(0, 100)),
        (0, 0, unaligned(0, 0)),
        (VOLUME_BYTES, 4096, out_of_range(VOLUME_BYTES, 4096)),
        (4096, VOLUME_BYTES, out_of_range(4096, VOLUME_BYTES)),
        (u64::MAX - 4095, 4096, out_of_range(u64::MAX - 4095, 4096)),
    ];
    for (offset, len, expected) in cases {
        for unmap in [false, true] {
            let refused = storage.submit_write_zeroes(9, offset, len, unmap);
            assert_eq!(refused, Err(expected.clone()));
        }
    }
    assert_eq!(storage.in_flight(), 0);
    assert!(
        image(&mut storage)[..4096] == data[..4096],
        "nothing zeroed"
    );
}

//! `BdevStorage` against real SPDK malloc bdevs: the storage contract (see
//! `ordo_engine::storage`) on SPDK I/O. One SPDK environment for this whole test binary
//! (SPDK starts once per process); each test opens a bdev of its own, on its own thread.

#![cfg(feature = "spdk")]

use std::io::Write;
use std::sync::OnceLock;

use ordo_engine::storage::{read_blocking, wait_for, Completion, Storage, StorageError};
use ordo_spdk::{BdevStorage, Env, EnvOptions, SpdkError};

const MALLOC_BYTES: u64 = 4 << 20;

/// Malloc0..Malloc5: 4 MiB each; Malloc4 has 512-byte blocks, the rest 4096. Meta0 has
/// separate metadata, which ordo cannot write; Gone0 is removed by a test.
fn env() -> &'static Env {
    static CONFIG: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    let file = CONFIG.get_or_init(|| {
        let bdevs: Vec<String> = (0..6)
            .map(|i| {
                let block = if i == 4 { 512 } else { 4096 };
                format!(
                    r#"{{"method": "bdev_malloc_create", "params": {{"name": "Malloc{i}", "num_blocks": {}, "block_size": {block}}}}}"#,
                    MALLOC_BYTES / block
                )
            })
            .collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let meta = r#"{"method": "bdev_malloc_create", "params": {"name": "Meta0", "num_blocks": 256, "block_size": 4096, "md_size": 8}},
            {"method": "bdev_malloc_create", "params": {"name": "Gone0", "num_blocks": 256, "block_size": 4096}}"#;
        write!(
            file,
            r#"{{"subsystems": [{{"subsystem": "bdev", "config": [{}, {meta}]}}]}}"#,
            bdevs.join(","),
        )
        .unwrap();
        file
    });
    ordo_spdk::init(options(file.path())).expect("SPDK starts (no hugepages, 1 GiB)")
}

fn options(config: &std::path::Path) -> EnvOptions {
    EnvOptions {
        name: "ordo_spdk_test".into(),
        config: config.to_path_buf(),
        mem_size_mb: Some(1024),
        no_huge: true,
        no_pci: true,
        reactor_cores: None,
    }
}

fn open(name: &str, max_in_flight: u32) -> BdevStorage {
    BdevStorage::open(env(), name, max_in_flight, 128 << 10).unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn complete_all(storage: &mut BdevStorage, count: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    while out.len() < count {
        storage.poll(&mut out, 64);
    }
    out
}

#[test]
fn geometry_comes_from_the_bdev() {
    let storage = open("Malloc0", 8);
    let geometry = storage.geometry();
    assert_eq!(geometry.size_bytes, MALLOC_BYTES);
    assert_eq!(geometry.block_size, 4096);
    assert_eq!(geometry.max_in_flight, 8);
    let small = open("Malloc4", 8);
    assert_eq!(small.geometry().block_size, 512);
    assert_eq!(small.geometry().size_bytes, MALLOC_BYTES);
}

#[test]
fn writes_then_flush_then_read_back() {
    let mut storage = open("Malloc1", 16);
    let mut image = vec![0u8; MALLOC_BYTES as usize];
    for i in 0..16u64 {
        let offset = i * 3 * 4096;
        let data = pattern(i as u8, 8192);
        storage.submit_write(i, offset, &data).unwrap();
        image[offset as usize..][..data.len()].copy_from_slice(&data);
    }
    let mut completions = complete_all(&mut storage, 16);
    completions.sort_by_key(|c| c.tag);
    assert!(completions.iter().all(|c| c.result.is_ok()));
    assert_eq!(
        completions.iter().map(|c| c.tag).collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
    storage.submit_flush(99).unwrap();
    assert_eq!(wait_for(&mut storage, 99, &mut Vec::new()), Ok(()));
    let mut read = vec![0u8; 128 << 10];
    for chunk in 0..(MALLOC_BYTES as usize / read.len()) {
        let offset = chunk * read.len();
        read_blocking(&mut storage, offset as u64, &mut read, &mut Vec::new()).unwrap();
        assert_eq!(read, image[offset..][..read.len()], "chunk {chunk}");
    }
    assert_eq!(storage.in_flight(), 0);
}

#[test]
fn submit_write_with_fills_in_place() {
    let mut storage = open("Malloc2", 4);
    let data = pattern(7, 4096);
    storage
        .submit_write_with(1, 8192, 4096, &mut |out| out.copy_from_slice(&data))
        .unwrap();
    assert_eq!(wait_for(&mut storage, 1, &mut Vec::new()), Ok(()));
    let mut read = vec![0u8; 4096];
    read_blocking(&mut storage, 8192, &mut read, &mut Vec::new()).unwrap();
    assert_eq!(read, data);
}

#[test]
fn bad_requests_are_typed_errors_and_touch_nothing() {
    let mut storage = open("Malloc3", 4);
    let block = vec![0xAB; 4096];
    assert!(matches!(
        storage.submit_write(1, 100, &block),
        Err(StorageError::Unaligned { .. })
    ));
    assert!(matches!(
        storage.submit_write(1, 0, &block[..100]),
        Err(StorageError::Unaligned { .. })
    ));
    assert!(matches!(
        storage.submit_write(1, MALLOC_BYTES, &block),
        Err(StorageError::OutOfRange { .. })
    ));
    assert!(matches!(
        storage.submit_write(1, 0, &vec![0; 256 << 10]),
        Err(StorageError::TooLarge { .. })
    ));
    assert_eq!(storage.in_flight(), 0);
    let mut read = vec![0xFFu8; 4096];
    read_blocking(&mut storage, 0, &mut read, &mut Vec::new()).unwrap();
    assert_eq!(read, vec![0u8; 4096], "a refused write wrote nothing");
}

#[test]
fn queue_full_at_max_in_flight_then_room_after_poll() {
    let mut storage = open("Malloc5", 4);
    let block = pattern(1, 4096);
    for tag in 0..4 {
        storage.submit_write(tag, tag * 4096, &block).unwrap();
    }
    assert_eq!(
        storage.submit_write(9, 0, &block),
        Err(StorageError::QueueFull(4))
    );
    assert_eq!(storage.in_flight(), 4);
    // Completions come only from poll, at most `max` at a time.
    let mut out = Vec::new();
    while out.is_empty() {
        assert!(storage.poll(&mut out, 1) <= 1);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(storage.in_flight(), 3);
    storage.submit_write(9, 0, &block).unwrap();
    complete_all(&mut storage, 4);
    assert_eq!(storage.in_flight(), 0);
}

#[test]
fn dropping_with_requests_in_flight_waits_for_them() {
    let block = pattern(3, 4096);
    {
        let mut storage = open("Malloc0", 32);
        for tag in 0..32 {
            storage
                .submit_write(tag, (1 << 20) + tag * 4096, &block)
                .unwrap();
        }
    }
    let mut storage = open("Malloc0", 4);
    let mut read = vec![0u8; 4096];
    read_blocking(
        &mut storage,
        (1 << 20) + 31 * 4096,
        &mut read,
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(read, block);
}

#[test]
fn a_missing_bdev_is_a_typed_error() {
    let error = BdevStorage::open(env(), "NoSuchBdev", 4, 4096).unwrap_err();
    assert!(
        matches!(error, SpdkError::Bdev { ref name, .. } if name == "NoSuchBdev"),
        "{error}"
    );
}

#[test]
fn spdk_starts_once_per_process() {
    let env = env();
    assert!(std::ptr::eq(
        ordo_spdk::init(env.options().clone()).unwrap(),
        env
    ));
    let mut other = env.options().clone();
    other.mem_size_mb = Some(512);
    assert!(matches!(
        ordo_spdk::init(other),
        Err(SpdkError::AlreadyStarted)
    ));
}

#[test]
fn a_bdev_with_separate_metadata_is_refused() {
    let error = BdevStorage::open(env(), "Meta0", 4, 4096).unwrap_err();
    assert!(
        matches!(error, SpdkError::BdevShape { ref name, .. } if name == "Meta0"),
        "{error}"
    );
    assert!(error.to_string().contains("metadata"), "{error}");
}

/// A `fill` that panics leaves its slot taken but never handed to SPDK: dropping the bdev
/// must not wait for it (it would wait forever), and the bdev still works until then.
#[test]
fn a_panicking_fill_neither_wedges_the_bdev_nor_its_drop() {
    let mut storage = open("Malloc2", 4);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = storage.submit_write_with(1, 0, 4096, &mut |_| panic!("a bug in fill"));
    }));
    assert!(panicked.is_err());
    let data = pattern(5, 4096);
    storage.submit_write(2, 4096, &data).unwrap();
    assert_eq!(wait_for(&mut storage, 2, &mut Vec::new()), Ok(()));
    drop(storage);
}

/// Hot remove: SPDK unregisters the bdev under an open `BdevStorage`. New requests are
/// refused, what was in flight completes, and the descriptor is closed once idle, which
/// is what lets SPDK finish the removal.
#[test]
fn a_removed_bdev_refuses_requests_and_lets_spdk_finish_removing_it() {
    let mut storage = open("Gone0", 8);
    let data = pattern(9, 4096);
    for tag in 0..4 {
        storage.submit_write(tag, tag * 4096, &data).unwrap();
    }
    let removal = env().remove_bdev("Gone0").unwrap();
    let mut completions = Vec::new();
    let refused = loop {
        storage.poll(&mut completions, 64);
        match storage.submit_flush(99) {
            Err(error) => break error,
            Ok(()) => {
                ordo_engine::storage::wait_for(&mut storage, 99, &mut completions).unwrap();
            }
        }
    };
    assert!(
        matches!(
            refused,
            StorageError::Io {
                kind: std::io::ErrorKind::NotConnected,
                ..
            }
        ),
        "{refused}"
    );
    while completions.len() < 4 {
        storage.poll(&mut completions, 64);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rc = loop {
        storage.poll(&mut completions, 64);
        if let Ok(rc) = removal.try_recv() {
            break rc;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SPDK never finished removing the bdev: its descriptor stayed open"
        );
    };
    assert_eq!(rc, 0, "SPDK finished removing the bdev");
    assert!(
        BdevStorage::open(env(), "Gone0", 4, 4096).is_err(),
        "it is gone"
    );
}

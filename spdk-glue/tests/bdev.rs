//! `BdevStorage` against real SPDK malloc bdevs: the shared storage contract suite
//! (`ordo_core::storage::contract`) on SPDK I/O, then what is particular to SPDK. One SPDK
//! environment for this whole test binary (SPDK starts once per process); each test opens
//! a bdev of its own, on its own thread.

#![cfg(feature = "spdk")]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use ordo_core::storage::contract::{ContractBackend, VOLUME_BYTES};
use ordo_core::storage::{wait_for, Storage, StorageError};
use ordo_spdk::{BdevStorage, Env, EnvOptions, SpdkError};

const MALLOC_BYTES: u64 = 4 << 20;
/// Fresh (zeroed) bdevs for the contract suite, per block size: one per volume it creates.
const CONTRACT_BDEVS: usize = 12;

/// Malloc0..Malloc5: 4 MiB each; Malloc4 has 512-byte blocks, the rest 4096. Meta0 has
/// separate metadata, which ordo cannot write; Gone0 is removed by a test. Contract512_N
/// and Contract4096_N are the contract suite's volumes.
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
            .chain([512u64, 4096].into_iter().flat_map(|block| {
                (0..CONTRACT_BDEVS).map(move |i| {
                    format!(
                        r#"{{"method": "bdev_malloc_create", "params": {{"name": "Contract{block}_{i}", "num_blocks": {}, "block_size": {block}}}}}"#,
                        VOLUME_BYTES / block
                    )
                })
            }))
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

/// Malloc bdevs for the contract suite: a fresh one (zeroed) for each volume it creates.
struct Bdevs;

impl ContractBackend for Bdevs {
    type Volume = BdevStorage;
    /// The bdev's name.
    type Backing = String;

    fn create(size_bytes: u64, block_size: u32) -> (String, BdevStorage) {
        static NEXT: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
        assert_eq!(
            size_bytes, VOLUME_BYTES,
            "the contract bdevs are made at start"
        );
        let i = NEXT[usize::from(block_size == 4096)].fetch_add(1, Ordering::Relaxed);
        assert!(
            i < CONTRACT_BDEVS,
            "more contract volumes than CONTRACT_BDEVS"
        );
        let name = format!("Contract{block_size}_{i}");
        let storage = open(&name, 32);
        (name, storage)
    }

    fn reopen(name: &String, _block_size: u32) -> Option<BdevStorage> {
        Some(open(name, 32))
    }
}

ordo_core::storage_contract_tests!(Bdevs);

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
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
                ordo_core::storage::wait_for(&mut storage, 99, &mut completions).unwrap();
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

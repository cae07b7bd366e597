//! A bdev layer out of requests (`-ENOMEM`): `BdevStorage` queues the request in SPDK's
//! io-wait queue and sends it when room comes back. A process of its own (SPDK starts once
//! per process), with a request pool of 48 for one malloc bdev.

#![cfg(feature = "spdk")]

use std::io::Write;

use ordo_core::storage::{read_blocking, Storage};
use ordo_spdk::{BdevStorage, EnvOptions};

#[test]
fn out_of_bdev_requests_waits_in_spdk_and_loses_nothing() {
    let mut config = tempfile::NamedTempFile::new().unwrap();
    write!(
        config,
        r#"{{"subsystems": [{{"subsystem": "bdev", "config": [
            {{"method": "bdev_set_options", "params": {{"bdev_io_pool_size": 48, "bdev_io_cache_size": 4}}}},
            {{"method": "bdev_malloc_create", "params": {{"name": "Malloc0", "num_blocks": 1024, "block_size": 4096}}}}
        ]}}]}}"#
    )
    .unwrap();
    let env = ordo_spdk::init(EnvOptions {
        name: "ordo_spdk_io_wait".into(),
        config: config.path().to_path_buf(),
        mem_size_mb: Some(1024),
        no_huge: true,
        no_pci: true,
        reactor_cores: None,
    })
    .unwrap();
    let mut storage = BdevStorage::open(env, "Malloc0", 128, 128 << 10).unwrap();
    let mut image = vec![0u8; 128 * 4096];
    for tag in 0..128u64 {
        let data: Vec<u8> = (0..4096).map(|i| (i as u8) ^ (tag as u8)).collect();
        storage.submit_write(tag, tag * 4096, &data).unwrap();
        image[tag as usize * 4096..][..4096].copy_from_slice(&data);
    }
    let mut completions = Vec::new();
    while completions.len() < 128 {
        storage.poll(&mut completions, 64);
    }
    assert!(completions.iter().all(|c| c.result.is_ok()));
    let mut tags: Vec<u64> = completions.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(
        tags,
        (0..128).collect::<Vec<_>>(),
        "each request completes once"
    );
    assert!(
        storage.io_waits() > 0,
        "128 in flight on a 48-request pool never waited"
    );
    let mut read = vec![0u8; 128 << 10];
    for (chunk, expected) in image.chunks(read.len()).enumerate() {
        read_blocking(
            &mut storage,
            (chunk * read.len()) as u64,
            &mut read,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(read, expected, "chunk {chunk}");
    }
}

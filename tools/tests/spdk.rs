//! Both daemons on SPDK bdevs (`cargo test --features spdk`, SPDK_DIR pointing at a built
//! SPDK), their pollers on SPDK reactors (and once on their own threads): malloc bdevs for
//! writing, flushing and verifying; a secondary on aio bdevs (files, so they outlive the
//! process) killed with SIGKILL and recovering from its journal bdev with the invariant
//! checked against the client's model after each restart; `ordo bench` on a malloc bdev.
//! SPDK runs without hugepages here (`--spdk-no-huge`).

#![cfg(feature = "spdk")]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use common::model::{kill_secondary_while_writing, replica_digest, MODEL_BLOCKS};
use common::nbd::NbdClient;
use common::{assert_verifies, free_port, random_bytes, Daemon, Pair, BLOCK, CATCH_UP, ORDO};

/// Memory each daemon gives SPDK: its pools, the malloc bdevs, 64 MiB of DMA per volume.
const SPDK_MEM_MB: &str = "1024";

/// Where a daemon's poller runs.
#[derive(Clone, Copy, Debug)]
enum Runtime {
    /// An SPDK poller on a reactor on this core (the default with SPDK).
    Reactor(usize),
    /// ordo's own poller thread (`--spdk-own-threads`).
    OwnThread,
}

fn spdk_args(config: &Path, runtime: Runtime) -> Vec<String> {
    let mut args: Vec<String> = [
        "--spdk-config",
        &config.display().to_string(),
        "--spdk-no-huge",
        "--spdk-mem-mb",
        SPDK_MEM_MB,
        "--spdk-no-pci",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    match runtime {
        Runtime::Reactor(core) => args.extend(["--cores".to_string(), core.to_string()]),
        Runtime::OwnThread => args.push("--spdk-own-threads".into()),
    }
    args
}

/// SPDK's reactors claim their cores (a lock file per core), and this machine may have
/// only two: one pair of daemons on reactors at a time.
fn reactor_cores() -> MutexGuard<'static, ()> {
    static CORES: Mutex<()> = Mutex::new(());
    CORES.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_config(path: &Path, bdevs: &[String]) -> PathBuf {
    let text = format!(
        r#"{{"subsystems": [{{"subsystem": "bdev", "config": [{}]}}]}}"#,
        bdevs.join(",")
    );
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn malloc(name: &str, bytes: usize) -> String {
    format!(
        r#"{{"method": "bdev_malloc_create", "params": {{"name": "{name}", "num_blocks": {}, "block_size": {BLOCK}}}}}"#,
        bytes / BLOCK
    )
}

fn aio(name: &str, file: &Path, bytes: u64) -> String {
    let handle = std::fs::File::create(file).unwrap();
    handle.set_len(bytes).unwrap();
    format!(
        r#"{{"method": "bdev_aio_create", "params": {{"name": "{name}", "filename": "{}", "block_size": {BLOCK}}}}}"#,
        file.display()
    )
}

/// A primary serving malloc bdev `Malloc0` (`bytes` long) as volume `data`, and a
/// secondary whose replica is bdev `Replica0` and journal bdev `Journal0`, as `secondary`
/// (a list of bdev-creating methods) defines them. On reactors, the primary's is on core
/// 0 and the secondary's on core 1.
fn spdk_pair(dir: &Path, bytes: usize, secondary: &[String], reactors: bool) -> Pair {
    let runtime = |core| {
        if reactors {
            Runtime::Reactor(core)
        } else {
            Runtime::OwnThread
        }
    };
    let port = free_port();
    let state = dir.join("state");
    let mut args: Vec<String> = [
        "secondary",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        &state.display().to_string(),
        "--volume",
        "data=spdk:Replica0",
        "--journal-bdev",
        "Journal0",
        "--window-bytes",
        "64M",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(spdk_args(
        &write_config(&dir.join("secondary.json"), secondary),
        runtime(1),
    ));
    let secondary = Daemon::start("secondary", dir, &args, &state.join("control.sock"));
    let nbd: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let control = dir.join("primary.sock");
    let mut args: Vec<String> = [
        "primary",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--volume",
        "data=spdk:Malloc0",
        "--nbd",
        &nbd.to_string(),
        "--control",
        &control.display().to_string(),
        "--lanes",
        "4",
        "--data-set-interval-ms",
        "5",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let primary_config = write_config(&dir.join("primary.json"), &[malloc("Malloc0", bytes)]);
    args.extend(spdk_args(&primary_config, runtime(0)));
    let primary = Daemon::start("primary", dir, &args, &control);
    Pair {
        secondary,
        primary,
        nbd,
        primary_image: PathBuf::new(),
        replica_image: PathBuf::new(),
    }
}

/// Malloc bdevs on both sides: 8 MiB written in 64 KiB requests through NBD, flushed; the
/// secondary applies everything, `ordo verify` passes, the primary reads back the image
/// and the replica's digest equals the image's, block by block. Both daemons' pollers run
/// on SPDK reactors, or on their own threads.
fn malloc_bdevs_replicate_flush_and_verify(reactors: bool) {
    let dir = tempfile::tempdir().unwrap();
    let bytes = 8 << 20;
    let secondary = [malloc("Replica0", bytes), malloc("Journal0", 160 << 20)];
    let pair = spdk_pair(dir.path(), bytes, &secondary, reactors);
    let image = random_bytes(bytes, 42);
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    for (i, chunk) in image.chunks(64 << 10).enumerate() {
        assert_eq!(client.write((i * chunk.len()) as u64, chunk).unwrap(), 0);
    }
    assert_eq!(client.flush().unwrap(), 0);
    for (i, chunk) in image.chunks(1 << 20).enumerate() {
        let read = client.read((i << 20) as u64, 1 << 20).unwrap();
        assert!(read == chunk, "the primary read back MiB {i} wrong");
    }
    client.disconnect();
    pair.wait_caught_up(CATCH_UP);
    assert!(assert_verifies(&pair) > 0);
    let (_, crcs) = replica_digest(&pair.secondary);
    let expected: Vec<u32> = image.chunks(BLOCK).map(crc32c::crc32c).collect();
    assert!(
        crcs == expected,
        "the replica's digest differs from the image"
    );
    let log = pair.primary.log();
    assert!(log.contains("SPDK bdev Malloc0"), "{log}");
    assert_eq!(
        log.contains("reactors on cores [0]"),
        reactors,
        "where the poller ran: {log}"
    );
}

#[test]
fn on_reactors_malloc_bdevs_replicate_flush_and_verify() {
    let _cores = reactor_cores();
    malloc_bdevs_replicate_flush_and_verify(true);
}

#[test]
fn on_own_threads_malloc_bdevs_replicate_flush_and_verify() {
    malloc_bdevs_replicate_flush_and_verify(false);
}

/// The simulation's invariant on real SPDK I/O, both daemons on reactors: the
/// secondary's replica and journal are aio bdevs over files (a malloc bdev dies with its
/// process); it is killed with SIGKILL three times while a client writes; after each restart it recovers from its journal
/// bdev to the image of a prefix of the writes, and at the end it equals the model.
#[test]
fn a_secondary_on_bdevs_killed_three_times_recovers_a_prefix_image() {
    let _cores = reactor_cores();
    let dir = tempfile::tempdir().unwrap();
    let bytes = MODEL_BLOCKS * BLOCK;
    let secondary = [
        aio("Replica0", &dir.path().join("replica.img"), bytes as u64),
        aio("Journal0", &dir.path().join("journal.img"), 160 << 20),
    ];
    let mut pair = spdk_pair(dir.path(), bytes, &secondary, true);
    let image = kill_secondary_while_writing(&mut pair, 3);
    let (_, crcs) = replica_digest(&pair.secondary);
    let expected: Vec<u32> = image.chunks(BLOCK).map(crc32c::crc32c).collect();
    assert!(crcs == expected, "the replica differs from the model");
    let log = pair.secondary.log();
    assert!(
        log.matches("recovered from journal bdev Journal0").count() >= 3,
        "{log}"
    );
}

/// `ordo bench --backend spdk:Malloc0`: a replicated run on a malloc bdev reports writes.
#[test]
fn bench_runs_replicated_on_a_malloc_bdev() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir.path().join("bench.json"),
        &[malloc("Malloc0", 64 << 20)],
    );
    let json = dir.path().join("bench-report.json");
    let mut args = vec![
        "bench".to_string(),
        "--backend".into(),
        "spdk:Malloc0".into(),
        "--size".into(),
        "64M".into(),
        "--runtime".into(),
        "1".into(),
        "--ramp".into(),
        "0".into(),
        "--bs".into(),
        "4K".into(),
        "--iodepth".into(),
        "8".into(),
        "--output-format".into(),
        "json".into(),
        "--output".into(),
        json.display().to_string(),
    ];
    args.extend(spdk_args(&config, Runtime::OwnThread));
    let output = std::process::Command::new(ORDO)
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ordo bench failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let writes = &report["jobs"][0]["write"];
    assert!(
        writes["total_ios"].as_u64().unwrap_or(0) > 0,
        "no writes reported: {report}"
    );
    assert_eq!(report["config"]["backend"], "spdk:Malloc0", "{report}");
}

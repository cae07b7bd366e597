//! ordo's pollers as SPDK pollers on SPDK's reactors: the application framework started
//! once for this test binary (spdk#612) with reactors on cores 0 and 1 and a malloc bdev
//! per test (Malloc0..Malloc3, tests run at once), a poller per
//! reactor driving a malloc bdev opened on it, reads that wait for their completion from
//! inside the poller, and failures (a poller that cannot start, one that panics, a core
//! with no reactor) reported rather than crashing.

#![cfg(feature = "spdk")]

use std::io::Write;
use std::sync::OnceLock;

use ordo_core::storage::{read_blocking, Completion, Storage};
use ordo_runtime::idle::Round;
use ordo_spdk::{BdevStorage, Env, EnvOptions, SpdkError};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 64;

fn env() -> &'static Env {
    static CONFIG: OnceLock<tempfile::NamedTempFile> = OnceLock::new();
    let file = CONFIG.get_or_init(|| {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(
            file,
            r#"{{"subsystems": [{{"subsystem": "bdev", "config": [{}]}}]}}"#,
            (0..4)
                .map(|i| format!(r#"{{"method": "bdev_malloc_create", "params": {{"name": "Malloc{i}", "num_blocks": 1024, "block_size": 4096}}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        )
        .unwrap();
        file
    });
    ordo_spdk::init(EnvOptions {
        name: "ordo_spdk_reactor".into(),
        config: file.path().to_path_buf(),
        mem_size_mb: Some(1024),
        no_huge: true,
        no_pci: true,
        reactor_cores: Some(vec![0, 1]),
    })
    .expect("SPDK's framework starts with reactors on cores 0 and 1")
}

fn pattern(seed: u64) -> Vec<u8> {
    (0..BLOCK).map(|i| (i as u64 ^ seed) as u8).collect()
}

/// A poller's life on one bdev, a step per round: write every block, wait for the
/// completions, flush, then read each block back with a read that waits (inside the
/// poller) and compare.
enum Step {
    Write(u64),
    Settle,
    Flush,
    Verify,
}

fn write_flush_verify(bdev: &'static str, seed: u64) -> Result<(), String> {
    let (report, outcome) = std::sync::mpsc::channel::<Result<u32, String>>();
    let handle = env()
        .spawn_poller(if seed.is_multiple_of(2) { 0 } else { 1 }, move || {
            let mut storage = BdevStorage::open(ordo_spdk::env().unwrap(), bdev, 16, 64 << 10)
                .map_err(|e| e.to_string())?;
            let mut step = Step::Write(0);
            let mut done = Vec::<Completion>::new();
            let mut rounds = 0u32;
            Ok(move || {
                rounds += 1;
                match step {
                    Step::Write(block) if block < BLOCKS => {
                        match storage.submit_write(
                            block,
                            block * BLOCK as u64,
                            &pattern(seed + block),
                        ) {
                            Ok(()) => step = Step::Write(block + 1),
                            Err(_) => {
                                storage.poll(&mut done, 64);
                            }
                        }
                    }
                    Step::Write(_) | Step::Settle => {
                        step = Step::Settle;
                        storage.poll(&mut done, 64);
                        if done.len() as u64 == BLOCKS {
                            step = Step::Flush;
                        }
                    }
                    Step::Flush => {
                        let flushed = storage
                            .submit_flush(u64::MAX - 1)
                            .map_err(|e| e.to_string())
                            .and_then(|()| {
                                ordo_core::storage::wait_for(&mut storage, u64::MAX - 1, &mut done)
                                    .map_err(|e| e.to_string())
                            });
                        if let Err(why) = flushed {
                            let _ = report.send(Err(why));
                            return Round::Done;
                        }
                        step = Step::Verify;
                    }
                    Step::Verify => {
                        let errors = done.iter().filter(|c| c.result.is_err()).count();
                        let mut read = vec![0u8; BLOCK];
                        let mut result = Ok(rounds);
                        if errors > 0 {
                            result = Err(format!("{errors} writes failed"));
                        }
                        for block in 0..BLOCKS {
                            let at = block * BLOCK as u64;
                            if let Err(e) = read_blocking(&mut storage, at, &mut read, &mut done) {
                                result = Err(e.to_string());
                            } else if read != pattern(seed + block) {
                                result = Err(format!("block {block} reads back wrong"));
                            }
                        }
                        let _ = report.send(result);
                        return Round::Done;
                    }
                }
                Round::Busy
            })
        })
        .map_err(|e| e.to_string())?;
    handle.wait()?;
    let rounds = outcome.recv().map_err(|_| "no report".to_string())??;
    // Writes took a round each at least: the poller really ran round by round.
    assert!(rounds > BLOCKS as u32, "{rounds} rounds");
    Ok(())
}

#[test]
fn a_poller_on_a_reactor_writes_flushes_and_reads_back_its_bdev() {
    write_flush_verify("Malloc0", 2).unwrap();
}

#[test]
fn pollers_on_two_reactors_run_at_once() {
    let other = std::thread::spawn(|| write_flush_verify("Malloc2", 7));
    write_flush_verify("Malloc1", 4).unwrap();
    other.join().unwrap().unwrap();
}

#[test]
fn a_poller_that_cannot_start_or_panics_is_reported() {
    let missing = env()
        .spawn_poller(0, || {
            BdevStorage::open(ordo_spdk::env().unwrap(), "NoSuchBdev", 4, 4096)
                .map(|_| || Round::Done)
                .map_err(|e| e.to_string())
        })
        .unwrap();
    let why = missing.wait().unwrap_err();
    assert!(why.contains("NoSuchBdev"), "{why}");
    let mut rounds = 0;
    let panicking = env()
        .spawn_poller(1, move || {
            Ok(move || {
                rounds += 1;
                assert!(rounds < 3, "a bug in round {rounds}");
                Round::Idle
            })
        })
        .unwrap();
    assert_eq!(panicking.wait().unwrap_err(), "panicked");
    // The reactors carry on.
    write_flush_verify("Malloc3", 9).unwrap();
}

#[test]
fn a_core_without_a_reactor_is_refused() {
    let error = env().spawn_poller(5, || Ok(|| Round::Done)).unwrap_err();
    assert!(matches!(error, SpdkError::NotAReactor(5)), "{error}");
}

/// With reactors running, a bdev opened elsewhere would get an SPDK thread the framework
/// schedules on some reactor, polled by it and by its owner at once: refused.
#[test]
fn a_bdev_is_not_opened_off_the_reactors() {
    let error = BdevStorage::open(env(), "Malloc0", 4, 4096).unwrap_err();
    assert!(matches!(error, SpdkError::NotOnReactor), "{error}");
}

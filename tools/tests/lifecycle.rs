//! The lifecycle of a deployment, with real daemons and real clients: a primary that keeps
//! its state across a clean stop and across `kill -9`, an initial sync of a volume full of
//! data (with and without a seeded replica), a secondary away longer than the window lasts
//! (`--on-window-full track`), and a secondary of an unrelated history.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::model::{matching_prefix, replica_digest, MODEL_BLOCKS};
use common::nbd::NbdClient;
use common::{
    assert_file_equals, assert_verifies, free_port, number, ordo, random_bytes, run, tail,
    wait_or_explain, wait_until, write_data, Daemon, Pair, BLOCK, CATCH_UP,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// The primary's arguments for a pair on `dir` (as `Pair::start` gives them) plus a state
/// directory.
fn with_state(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--state-dir".to_string(),
        dir.join("primary-state").display().to_string(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Waits until the secondary's replica is consistent on the primary's history, the
/// primary's resync (if one ran) reached its end, and the secondary applied everything
/// closed; returns the primary's status then.
fn wait_resynced(pair: &Pair, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = pair.primary.status();
        let r = pair.secondary.status();
        let state = s["resync"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let caught_up =
            number(&s, &["data_sets", "applied"]) == number(&s, &["data_sets", "last_closed"]);
        let on_history = r["replica"]["state"] == "consistent"
            && r["replica"]["follows"] == s["history"]["generation"];
        if (state == "idle" || state == "done") && caught_up && on_history {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no resync end in {limit:?}: primary {s}\nsecondary {}\nprimary log:\n{}\nsecondary log:\n{}",
            pair.secondary.status(),
            pair.primary.log(),
            pair.secondary.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM drains and records a clean stop; started again on the same state directory the
/// primary resumes the same history at the next seq: nothing is resent, nothing compared.
#[test]
fn a_cleanly_stopped_primary_resumes_its_history_with_nothing_resent() {
    let dir = tempfile::tempdir().unwrap();
    let extra = with_state(dir.path(), &[]);
    let mut pair = Pair::start(dir.path(), "16M", &strs(&extra));
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    let image = random_bytes(16 << 20, 21);
    for at in (0..8 << 20).step_by(1 << 20) {
        assert_eq!(
            client.write(at as u64, &image[at..at + (1 << 20)]).unwrap(),
            0
        );
    }
    assert_eq!(client.flush().unwrap(), 0);
    client.disconnect();
    pair.wait_caught_up(CATCH_UP);
    let before = pair.primary.status();

    assert!(pair.primary.terminate().success(), "{}", pair.primary.log());
    assert!(pair.primary.log().contains("clean stop recorded"));
    pair.primary.restart();
    let after = pair.primary.status();
    assert_eq!(after["history"]["started"], "resumed", "{after}");
    assert_eq!(
        after["history"]["generation"],
        before["history"]["generation"]
    );
    assert_eq!(
        number(&after, &["data_sets", "last_closed"]),
        number(&before, &["data_sets", "last_closed"]),
        "the stream goes on where it stopped"
    );
    wait_until("the lanes are up again", Duration::from_secs(30), || {
        number(&pair.primary.status(), &["link", "lanes_up"]) == 4
    });
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    for at in (8 << 20..16 << 20).step_by(1 << 20) {
        assert_eq!(
            client.write(at as u64, &image[at..at + (1 << 20)]).unwrap(),
            0
        );
    }
    assert_eq!(client.flush().unwrap(), 0);
    client.disconnect();
    pair.wait_caught_up(CATCH_UP);
    let s = pair.primary.status();
    assert_eq!(
        number(&s, &["counters", "retransmits"]),
        0,
        "nothing resent: {s}"
    );
    assert_eq!(
        number(&s, &["resync", "bytes_compared"]),
        0,
        "nothing compared: {s}"
    );
    assert_eq!(
        number(&s, &["resync", "bytes_sent"]),
        0,
        "nothing resynchronised: {s}"
    );
    assert_eq!(s["resync"]["state"], "idle");
    assert_verifies(&pair);
    assert_file_equals(&pair.replica_image, &image);
}

/// What a writer that survives its primary's crashes did: every block it wrote, in order
/// (a write is logged before it is sent), and how many were acknowledged.
#[derive(Debug, Default)]
struct Writes {
    log: Mutex<Vec<(usize, u32)>>,
    acked: AtomicUsize,
    reconnects: AtomicUsize,
    stop: AtomicBool,
}

/// Queue-depth-1 writes of unique blocks at random places in the first `MODEL_BLOCKS`
/// blocks, a flush every 8; when the primary dies, the write that was in flight is sent
/// again to the restarted primary (so the final image is the log's, write for write).
fn resilient_writer(nbd: std::net::SocketAddr, writes: &Writes) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut client = None;
    let mut index = 0u64;
    while !writes.stop.load(Ordering::Relaxed) {
        let block = rng.random_range(0..MODEL_BLOCKS);
        let data = write_data(index);
        writes
            .log
            .lock()
            .unwrap()
            .push((block, crc32c::crc32c(&data)));
        loop {
            let c = match client.as_mut() {
                Some(c) => c,
                None => match NbdClient::connect(nbd, "data") {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
            };
            let done = c.write((block * BLOCK) as u64, &data).and_then(|error| {
                assert_eq!(error, 0, "write {index} refused");
                if (index + 1).is_multiple_of(8) {
                    c.flush().map(|e| assert_eq!(e, 0))
                } else {
                    Ok(())
                }
            });
            match done {
                Ok(()) => break,
                Err(_) => {
                    client = None;
                    writes.reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        index += 1;
        writes.acked.store(index as usize, Ordering::Relaxed);
    }
}

fn model_image(writes: &[(usize, u32)]) -> Vec<u8> {
    let mut image = vec![0u8; MODEL_BLOCKS * BLOCK];
    for (index, &(block, _)) in writes.iter().enumerate() {
        image[block * BLOCK..(block + 1) * BLOCK].copy_from_slice(&write_data(index as u64));
    }
    image
}

/// `kill -9` of the primary, ten times, while a client writes with flushes: each restart
/// begins a new generation by itself, the secondary keeps a prefix image of the client's
/// writes (held until the resync's end point), only what the write-intent record names is
/// compared (the writes touch 2 of the volume's 64 MiB), and at the end verify matches.
#[test]
fn a_primary_killed_ten_times_resyncs_only_what_its_write_intent_record_names() {
    let dir = tempfile::tempdir().unwrap();
    let extra = with_state(dir.path(), &["--data-set-interval-ms", "5"]);
    let mut pair = Pair::start(dir.path(), "64M", &strs(&extra));
    let writes = Arc::new(Writes::default());
    let writer = {
        let (writes, nbd) = (Arc::clone(&writes), pair.nbd);
        std::thread::spawn(move || resilient_writer(nbd, &writes))
    };
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut last_prefix = 0;
    let mut generations = Vec::new();
    for round in 0..10 {
        let acked = writes.acked.load(Ordering::Relaxed);
        let more = rng.random_range(30..150);
        wait_or_explain(
            "the client wrote some more",
            Duration::from_secs(60),
            || writes.acked.load(Ordering::Relaxed) >= acked + more,
            || {
                format!(
                    "round {round}, client reconnects {}\nprimary: {}\nsecondary: {}\nprimary log:\n{}\nsecondary log:\n{}",
                    writes.reconnects.load(Ordering::Relaxed),
                    pair.primary.status(),
                    pair.secondary.status(),
                    tail(&pair.primary.log(), 40),
                    tail(&pair.secondary.log(), 40)
                )
            },
        );
        pair.primary.kill9();
        pair.primary.restart();
        let s = pair.primary.status();
        assert_eq!(
            s["history"]["started"], "new_generation",
            "round {round}: {s}"
        );
        let out_of_sync = number(&s, &["history", "out_of_sync_bytes"]);
        assert!(
            out_of_sync <= 4 << 20,
            "round {round}: the record names {out_of_sync} bytes of a 64 MiB volume whose writes touch 2 MiB"
        );
        generations.push(s["history"]["generation"].as_str().unwrap().to_string());
        let resynced = wait_resynced(&pair, CATCH_UP);
        let compared = number(&resynced, &["resync", "bytes_compared"]);
        let sent = number(&resynced, &["resync", "bytes_sent"]);
        assert!(
            compared <= out_of_sync && sent <= compared,
            "round {round}: compared {compared} and sent {sent} of {out_of_sync} named: {resynced}"
        );
        assert_eq!(
            resynced["resync"]["room"], "kept",
            "round {round}: a held resync of {out_of_sync} bytes fits the 64 MiB window: {resynced}"
        );
        let waited = number(&resynced, &["resync", "room_waits"]);
        eprintln!("round {round}: resync compared {compared} bytes, sent {sent}; room kept, writes waited for it {waited} times");
        let (data_set, crcs) = replica_digest(&pair.secondary);
        let log = writes.log.lock().unwrap().clone();
        let prefix = matching_prefix(&crcs[..MODEL_BLOCKS], &log).unwrap_or_else(|| {
            panic!("round {round}: the replica at data set {data_set} is no prefix of the writes")
        });
        assert!(
            prefix >= last_prefix,
            "round {round}: the replica went back"
        );
        last_prefix = prefix;
    }
    writes.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    wait_resynced(&pair, CATCH_UP);
    assert_verifies(&pair);
    let log = writes.log.lock().unwrap().clone();
    let replica = std::fs::read(&pair.replica_image).unwrap();
    assert_eq!(&replica[..MODEL_BLOCKS * BLOCK], &model_image(&log)[..]);
    generations.dedup();
    assert_eq!(generations.len(), 10, "a new generation each time");
    assert!(writes.reconnects.load(Ordering::Relaxed) >= 10);
}

/// A secondary for a primary whose volume already holds data: its replica file is `replica`
/// in `dir` (made by the caller, or created empty by ordo).
fn secondary(dir: &Path, port: u16, replica: &Path, state: &Path) -> Daemon {
    let args: Vec<String> = [
        "secondary",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        &state.display().to_string(),
        "--volume",
        &format!("data=file:{}:1G", replica.display()),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    Daemon::start("secondary", dir, &args, &state.join("control.sock"))
}

fn primary(dir: &Path, port: u16, nbd: std::net::SocketAddr, image: &Path) -> Daemon {
    let control = dir.join("primary.sock");
    let args: Vec<String> = [
        "primary",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--volume",
        &format!("data=file:{}", image.display()),
        "--nbd",
        &nbd.to_string(),
        "--control",
        &control.display().to_string(),
        "--state-dir",
        &dir.join("primary-state").display().to_string(),
        "--resync-rate",
        "0",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    Daemon::start("primary", dir, &args, &control)
}

/// Fills `path` with `len` bytes of deterministic data.
fn fill(path: &Path, len: usize, seed: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chunk = vec![0u8; 8 << 20];
    for _ in 0..len / chunk.len() {
        rand::RngCore::fill_bytes(&mut rng, &mut chunk);
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
}

/// The initial sync of a 1 GiB volume full of data: to a fresh secondary while fio writes
/// through NBD (the replica is inconsistent until the end point, then verifies); to a
/// replica seeded with `dd` beforehand (under 1% of the volume sent); and to a secondary
/// whose state directory was made anew over its old replica (the same).
#[test]
fn an_initial_sync_of_a_volume_full_of_data_fresh_seeded_and_over_an_old_replica() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("primary.img");
    fill(&image, 1 << 30, 1);
    let replica = dir.path().join("replica.img");
    let state = dir.path().join("state");
    let port = free_port();
    let nbd: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    // Fresh: ordo creates the replica, all zeros.
    let secondary_daemon = secondary(dir.path(), port, &replica, &state);
    let primary_daemon = primary(dir.path(), port, nbd, &image);
    let mut pair = Pair {
        secondary: secondary_daemon,
        primary: primary_daemon,
        nbd,
        primary_image: image.clone(),
        replica_image: replica.clone(),
    };
    wait_until("the initial sync begins", Duration::from_secs(60), || {
        pair.secondary.status()["replica"]["state"] == "inconsistent"
    });
    let (ok, out) = pair.verify();
    assert!(
        !ok && out.contains("INCONSISTENT"),
        "verify says why it cannot compare: {out}"
    );
    let fio = run(
        "fio",
        &[
            "--name=during-sync",
            "--ioengine=nbd",
            &format!("--uri=nbd://{nbd}/data"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=1G",
            "--runtime=5",
            "--time_based",
        ],
    );
    assert!(fio.contains("write:"), "{fio}");
    let s = wait_resynced(&pair, Duration::from_secs(600));
    let total = number(&s, &["resync", "bytes_total"]);
    assert_eq!(total, 1 << 30, "an initial sync compares everything: {s}");
    eprintln!(
        "initial sync to a fresh secondary: compared {total} bytes, sent {}, at {} bytes/s",
        number(&s, &["resync", "bytes_sent"]),
        number(&s, &["resync", "rate_bytes_per_s"])
    );
    assert_eq!(pair.secondary.status()["replica"]["state"], "consistent");
    assert_verifies(&pair);

    // The state directory made anew over the old replica: everything is compared again,
    // almost nothing sent.
    pair.secondary.kill9();
    std::fs::remove_dir_all(&state).unwrap();
    pair.secondary.restart();
    let s = wait_resynced(&pair, Duration::from_secs(600));
    let sent = number(&s, &["resync", "bytes_sent"]);
    assert!(
        sent < (1 << 30) / 100,
        "{sent} bytes sent to a replica that was equal: {s}"
    );
    eprintln!("a new state directory over the old replica: sent {sent} bytes");
    assert_no_request_resent(&s);
    assert_verifies(&pair);

    // A replica seeded with dd, and a primary and secondary both new.
    pair.secondary.kill9();
    pair.primary.kill9();
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::remove_dir_all(dir.path().join("primary-state")).unwrap();
    run(
        "dd",
        &[
            &format!("if={}", image.display()),
            &format!("of={}", replica.display()),
            "bs=8M",
            "conv=fsync",
        ],
    );
    pair.secondary.restart();
    pair.primary.restart();
    let s = wait_resynced(&pair, Duration::from_secs(600));
    let sent = number(&s, &["resync", "bytes_sent"]);
    assert_eq!(number(&s, &["resync", "bytes_total"]), 1 << 30, "{s}");
    assert!(
        sent < (1 << 30) / 100,
        "{sent} bytes sent to a seeded replica: {s}"
    );
    eprintln!("a replica seeded with dd: sent {sent} bytes");
    assert_no_request_resent(&s);
    assert_verifies(&pair);
}

/// Nothing was lost on a quiet loopback, so no digest request waited to be asked again
/// (a receiver blocked in its read across the re-base once handed the first requests to
/// the inbox the re-base replaced: each resync then stalled 800 ms).
fn assert_no_request_resent(status: &Value) {
    assert_eq!(
        number(status, &["resync", "requests_resent"]),
        0,
        "digest requests were asked again: {status}"
    );
}

/// With `--on-window-full track`, a secondary away longer than the window lasts never
/// makes a write wait longer than the timeout; back, it is resynchronised (held: its
/// replica stays a prefix image of the client's writes even when killed mid-resync), and
/// verify matches at the end.
#[test]
fn a_secondary_away_longer_than_the_window_lasts_is_tracked_then_resynchronised() {
    let dir = tempfile::tempdir().unwrap();
    let extra = with_state(
        dir.path(),
        &[
            "--window-bytes",
            "4M",
            "--on-window-full",
            "track",
            "--window-full-timeout-ms",
            "300",
            "--resync-rate",
            "128K",
            "--data-set-interval-ms",
            "5",
        ],
    );
    let mut pair = Pair::start(dir.path(), "8M", &strs(&extra));
    let writes = Arc::new(Writes::default());
    let slowest_us = Arc::new(AtomicU64::new(0));
    let writer = {
        let (writes, slowest, nbd) = (Arc::clone(&writes), Arc::clone(&slowest_us), pair.nbd);
        std::thread::spawn(move || timed_writer(nbd, &writes, &slowest))
    };
    wait_until("a few writes", Duration::from_secs(60), || {
        writes.acked.load(Ordering::Relaxed) > 100
    });
    pair.secondary.kill9();
    // Far more than the 4 MiB window holds (a 4 KiB write costs 8 KiB of it).
    let acked = writes.acked.load(Ordering::Relaxed);
    wait_until("writes past the window", Duration::from_secs(120), || {
        writes.acked.load(Ordering::Relaxed) > acked + 3000
    });
    let s = pair.primary.status();
    assert!(
        number(&s, &["window_full", "drops"]) >= 1,
        "the window was dropped: {s}"
    );
    let slowest = slowest_us.load(Ordering::Relaxed);
    assert!(
        slowest < 2_000_000,
        "a write waited {slowest} us with a 300 ms timeout"
    );
    eprintln!("slowest write while the secondary was away: {slowest} us");

    pair.secondary.restart();
    wait_until("the resync begins", Duration::from_secs(60), || {
        pair.primary.status()["resync"]["state"] == "comparing"
    });
    pair.secondary.kill9();
    pair.secondary.restart();
    let (data_set, crcs) = replica_digest(&pair.secondary);
    let log = writes.log.lock().unwrap().clone();
    assert!(
        matching_prefix(&crcs[..MODEL_BLOCKS], &log).is_some(),
        "killed mid-resync, the replica at data set {data_set} is no prefix image of the writes"
    );
    writes.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    wait_resynced(&pair, CATCH_UP);
    assert_verifies(&pair);
    let log = writes.log.lock().unwrap().clone();
    let replica = std::fs::read(&pair.replica_image).unwrap();
    assert_eq!(&replica[..MODEL_BLOCKS * BLOCK], &model_image(&log)[..]);
}

/// After a `kill -9` of the primary, its held resync (2 MiB named, at most 6 MiB of stream)
/// keeps its room in the secondary's 64 MiB journal window while a client writes 96 MiB
/// through the export: the writes wait for it rather than fill the window, the secondary
/// never reports the resync stuck, and it ends (without the room it stayed stuck).
#[test]
fn a_held_resync_keeps_its_room_while_a_client_writes_more_than_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let extra = with_state(
        dir.path(),
        &["--resync-rate", "256K", "--data-set-interval-ms", "5"],
    );
    let mut pair = Pair::start(dir.path(), "64M", &strs(&extra));
    let chunk = random_bytes(1 << 20, 21);
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    for extent in 0..2u64 {
        assert_eq!(client.write(extent << 20, &chunk).unwrap(), 0);
    }
    assert_eq!(client.flush().unwrap(), 0);
    pair.primary.kill9();
    pair.primary.restart();
    wait_until("the held resync begins", Duration::from_secs(60), || {
        pair.primary.status()["resync"]["state"] == "comparing"
    });
    let s = pair.primary.status();
    assert_eq!(s["resync"]["room"], "kept", "{s}");

    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    for n in 0..96u64 {
        let offset = (8 + n % 48) << 20;
        assert_eq!(client.write(offset, &chunk).unwrap(), 0);
        if n % 8 == 7 {
            assert_eq!(client.flush().unwrap(), 0);
        }
        let r = pair.secondary.status();
        assert_eq!(r["replica"]["held_full"], false, "write {n}: {r}");
    }
    assert_eq!(client.flush().unwrap(), 0);
    client.disconnect();
    let resynced = wait_resynced(&pair, CATCH_UP);
    let waited = number(&resynced, &["resync", "room_waits"]);
    assert!(
        waited > 0,
        "96 MiB do not fit beside the resync: {resynced}"
    );
    eprintln!(
        "held resync: compared {} bytes, sent {}, room kept, writes waited for it {waited} times",
        number(&resynced, &["resync", "bytes_compared"]),
        number(&resynced, &["resync", "bytes_sent"])
    );
    assert_verifies(&pair);
}

/// `resilient_writer`'s loop without reconnecting, timing each write.
fn timed_writer(nbd: std::net::SocketAddr, writes: &Writes, slowest_us: &AtomicU64) {
    let mut client = NbdClient::connect(nbd, "data").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut index = 0u64;
    while !writes.stop.load(Ordering::Relaxed) {
        let block = rng.random_range(0..MODEL_BLOCKS);
        let data = write_data(index);
        writes
            .log
            .lock()
            .unwrap()
            .push((block, crc32c::crc32c(&data)));
        let started = Instant::now();
        assert_eq!(client.write((block * BLOCK) as u64, &data).unwrap(), 0);
        let waited = started.elapsed().as_micros() as u64;
        slowest_us.fetch_max(waited, Ordering::Relaxed);
        index += 1;
        writes.acked.store(index as usize, Ordering::Relaxed);
    }
    assert_eq!(client.flush().unwrap(), 0);
    client.disconnect();
}

/// A primary of another history pointed at a secondary: refused on both sides, naming
/// the histories, the replica unchanged; once the operator discards the secondary's data
/// (`ordo resync --discard-my-data`), it is resynchronised to the new primary.
#[test]
fn an_unrelated_history_is_refused_until_the_operator_discards_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let extra = with_state(dir.path(), &[]);
    let mut pair = Pair::start(dir.path(), "8M", &strs(&extra));
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    let image = random_bytes(8 << 20, 4);
    for at in (0..8 << 20).step_by(1 << 20) {
        assert_eq!(
            client.write(at as u64, &image[at..at + (1 << 20)]).unwrap(),
            0
        );
    }
    assert_eq!(client.flush().unwrap(), 0);
    client.disconnect();
    pair.wait_caught_up(CATCH_UP);
    let first = pair.primary.status()["history"]["generation"]
        .as_str()
        .unwrap()
        .to_string();

    // Another primary (another state directory, another volume) at the same secondary.
    pair.primary.kill9();
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let listen = secondary_port(&pair.secondary);
    let nbd: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let control = other.join("intruder.sock");
    let args: Vec<String> = [
        "primary",
        "--connect",
        &format!("127.0.0.1:{listen}"),
        "--volume",
        &format!("data=file:{}:8M", other.join("primary.img").display()),
        "--nbd",
        &nbd.to_string(),
        "--control",
        &control.display().to_string(),
        "--state-dir",
        &other.join("intruder-state").display().to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let intruder = Daemon::start("intruder", &other, &args, &control);
    wait_until(
        "the intruder names the other history",
        Duration::from_secs(30),
        || {
            intruder.status()["link"]["stalled"]
                .as_str()
                .is_some_and(|s| s.contains(&first) && s.contains("nor one it descends from"))
        },
    );
    wait_until(
        "the secondary names it too",
        Duration::from_secs(10),
        || pair.secondary.log().contains("nor one it descends from"),
    );
    assert_file_equals(&pair.replica_image, &image);
    assert_eq!(pair.secondary.status()["replica"]["state"], "consistent");

    let (ok, out) = ordo(&[
        "resync",
        "--control",
        &pair.secondary.control.display().to_string(),
        "--discard-my-data",
    ]);
    assert!(ok, "{out}");
    wait_until(
        "the intruder's history overwrites it",
        Duration::from_secs(120),
        || {
            let s = pair.secondary.status();
            s["replica"]["state"] == "consistent"
                && s["replica"]["follows"] == intruder.status()["history"]["generation"]
        },
    );
    let (ok, out) = ordo(&[
        "verify",
        "--primary",
        &control.display().to_string(),
        "--secondary",
        &pair.secondary.control.display().to_string(),
    ]);
    assert!(ok, "{out}");
}

/// The port a secondary listens on, from its effective configuration.
fn secondary_port(secondary: &Daemon) -> u16 {
    let output = secondary.output();
    let listen = output
        .lines()
        .find_map(|l| l.strip_prefix("listen = "))
        .expect("the banner names the listen address");
    listen
        .trim_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

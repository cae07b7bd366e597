//! Real processes serving real clients: `ordo secondary` and `ordo primary` on loopback,
//! written to by nbdcopy, nbdinfo, qemu-img and fio; verify finding a damaged block; a
//! full retention window; SIGTERM under writes and a restarted primary; the state
//! directory's lock. Faults (SIGKILL, link cuts, bad input) are in `faults.rs`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::nbd::NbdClient;
use common::{
    assert_file_equals, assert_verifies, control_request, digest_request, free_port, number,
    random_bytes, run, wait_until, write_data, Pair, BLOCK, CATCH_UP,
};

/// nbdcopy writes a random 64 MiB image; nbdinfo, qemu-img and fio's nbd engine talk to
/// the export; `ordo verify` and a byte comparison of the replica agree; SIGTERM ends
/// both daemons cleanly.
#[test]
fn real_clients_write_an_image_that_replicates_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // Pinned to core 0 (every machine has one), yielding when idle.
    let mut pair = Pair::start(dir.path(), "64M", &["--cores", "0", "--idle", "yield"]);
    assert!(pair.primary.output().contains("effective configuration"));
    assert!(pair.primary.output().contains("cores = [0]"));
    assert!(pair.secondary.output().contains("window_bytes = \"64M\""));
    let uri = format!("nbd://{}/data", pair.nbd);

    let info = run("nbdinfo", &[&uri]);
    assert!(info.contains("export-size: 67108864"), "{info}");
    let image = random_bytes(64 << 20, 64);
    let image_path = dir.path().join("image");
    std::fs::write(&image_path, &image).unwrap();
    run("nbdcopy", &[&image_path.display().to_string(), &uri]);
    pair.wait_caught_up(CATCH_UP);
    let first = assert_verifies(&pair);
    assert_file_equals(&pair.replica_image, &image);
    let same = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &image_path.display().to_string(),
            &uri,
        ],
    );
    assert!(same.contains("Images are identical"), "{same}");

    // fio writes over it with its nbd engine and checks what it wrote.
    let fio = run(
        "fio",
        &[
            "--name=ordo",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=8M",
            "--iodepth=8",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_state_save=0",
            "--end_fsync=1",
        ],
    );
    assert!(!fio.contains("verify: bad"), "{fio}");
    pair.wait_caught_up(CATCH_UP);
    let second = assert_verifies(&pair);
    assert!(
        second > first,
        "fio's writes closed more data sets ({first} then {second})"
    );
    let status = pair.primary.status();
    assert_eq!(number(&status, &["link", "lanes_up"]), 4);
    assert!(number(&status, &["writes", "accepted"]) >= 64 + 2048);
    assert_eq!(number(&status, &["data_sets", "lag_data_sets"]), 0);
    let human = common::ordo(&[
        "status",
        "--control",
        &pair.primary.control.display().to_string(),
    ]);
    assert!(human.0, "{}", human.1);
    for line in [
        "role        primary",
        "lanes       4 of 4 up",
        "data sets   closed",
        "retransmits",
    ] {
        assert!(
            human.1.contains(line),
            "{line:?} missing from:\n{}",
            human.1
        );
    }
    let secondary = pair.secondary.status();
    assert_eq!(secondary["role"], "secondary");
    assert_eq!(number(&secondary, &["data_sets", "applied"]), second);
    assert!(number(&secondary, &["counters", "records_staged"]) >= 64 + 2048);

    assert!(pair.primary.terminate().success(), "{}", pair.primary.log());
    assert!(
        pair.secondary.terminate().success(),
        "{}",
        pair.secondary.log()
    );
    let replica = std::fs::read(&pair.replica_image).unwrap();
    assert_file_equals(&pair.primary_image, &replica);
}

/// `ordo verify` can fail: a replica block changed behind the secondary's back is found,
/// and named by its byte range, with exit status 1.
#[test]
fn verify_names_the_first_block_range_that_differs() {
    let dir = tempfile::tempdir().unwrap();
    let mut pair = Pair::start(dir.path(), "8M", &[]);
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    let image = random_bytes(8 << 20, 9);
    for chunk in 0..8 {
        let at = chunk << 20;
        assert_eq!(
            client.write(at as u64, &image[at..at + (1 << 20)]).unwrap(),
            0
        );
    }
    assert_eq!(client.flush().unwrap(), 0);
    client.disconnect();
    pair.wait_caught_up(CATCH_UP);
    assert_verifies(&pair);

    assert!(pair.secondary.terminate().success());
    let damaged_at = (5 << 20) + 2 * BLOCK;
    let mut replica = std::fs::read(&pair.replica_image).unwrap();
    for byte in &mut replica[damaged_at..damaged_at + 2 * BLOCK] {
        *byte = !*byte;
    }
    std::fs::write(&pair.replica_image, &replica).unwrap();
    pair.secondary.restart();
    let (ok, out) = pair.verify();
    assert!(!ok, "verify passed over a damaged replica: {out}");
    let range = format!("bytes {damaged_at}..{}", damaged_at + 2 * BLOCK);
    assert!(
        out.contains("replica differs from primary") && out.contains(&range),
        "{out}"
    );
}

/// With the secondary gone and the retention window full, writes wait (the client is not
/// refused) and status says so; once the secondary is back they complete, and status
/// counts how many waited and for how long.
#[test]
fn a_full_retention_window_makes_writes_wait_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let mut pair = Pair::start(
        dir.path(),
        "16M",
        &["--window-bytes", "4M", "--max-write-bytes", "256K"],
    );
    pair.secondary.kill9();
    let image = random_bytes(12 << 20, 12);
    let writer = {
        let (image, nbd) = (image.clone(), pair.nbd);
        std::thread::spawn(move || {
            let mut client = NbdClient::connect(nbd, "data").unwrap();
            for (i, chunk) in image.chunks(256 << 10).enumerate() {
                assert_eq!(client.write((i * chunk.len()) as u64, chunk).unwrap(), 0);
            }
            assert_eq!(client.flush().unwrap(), 0);
            client.disconnect();
        })
    };
    wait_until(
        "status says writes are waiting",
        Duration::from_secs(30),
        || pair.primary.status()["writes"]["waiting_now"] == true,
    );
    let status = pair.primary.status();
    assert!(
        number(&status, &["retention", "used_bytes"]) <= 4 << 20,
        "{status}"
    );
    assert!(!writer.is_finished(), "the writes should be waiting");
    pair.secondary.restart();
    writer.join().unwrap();
    pair.wait_caught_up(CATCH_UP);
    let status = pair.primary.status();
    assert!(number(&status, &["writes", "waited"]) >= 1, "{status}");
    assert!(number(&status, &["writes", "wait_ms_max"]) > 0, "{status}");
    assert_eq!(status["writes"]["waiting_now"], false);
    assert_verifies(&pair);
    let mut expected = image;
    expected.resize(16 << 20, 0);
    assert_file_equals(&pair.replica_image, &expected);
}

/// SIGTERM while a client is writing: requests after it are refused, every write the
/// primary took is in the last data set, and the primary exits only once the secondary
/// applied it, so the two images are equal. Started again (it keeps no state), the
/// primary meets a secondary holding its earlier history and refuses to stream on top,
/// naming why, while it keeps serving its own writes.
#[test]
fn sigterm_drains_every_write_and_a_primary_without_state_is_refused_as_unrelated() {
    let dir = tempfile::tempdir().unwrap();
    let mut pair = Pair::start(dir.path(), "4M", &[]);
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (written, nbd) = (Arc::clone(&written), pair.nbd);
        std::thread::spawn(move || {
            let mut client = NbdClient::connect(nbd, "data").unwrap();
            let mut refused = 0;
            for i in 0.. {
                let data = write_data(i);
                match client.write((i as usize % 1024 * BLOCK) as u64, &data) {
                    Ok(0) => written.store(i as usize + 1, Ordering::Relaxed),
                    Ok(_) => refused += 1, // ESHUTDOWN once the primary is closing
                    Err(_) => break,       // the primary exited
                }
            }
            refused
        })
    };
    wait_until("the client wrote a while", Duration::from_secs(60), || {
        written.load(Ordering::Relaxed) >= 300
    });
    assert!(pair.primary.terminate().success(), "{}", pair.primary.log());
    let refused = writer.join().unwrap();
    assert!(pair
        .primary
        .log()
        .contains("drained: the secondary applied"));
    let primary_image = std::fs::read(&pair.primary_image).unwrap();
    // The secondary finished applying before the primary exited; wait until it is idle.
    wait_until(
        "the secondary is between data sets",
        Duration::from_secs(30),
        || {
            control_request(&pair.secondary.control, &digest_request(1 << 20))
                .is_some_and(|d| d["reply"] == "digest")
        },
    );
    assert_file_equals(&pair.replica_image, &primary_image);
    eprintln!(
        "{} writes acknowledged, {refused} refused while closing",
        written.load(Ordering::Relaxed)
    );

    // Without --state-dir the restarted primary begins a history of its own: the
    // secondary's is not one it descends from, so both refuse, overwriting nothing.
    pair.primary.restart();
    wait_until(
        "the restarted primary names the other history",
        Duration::from_secs(30),
        || {
            pair.primary.status()["link"]["stalled"]
                .as_str()
                .is_some_and(|s| {
                    s.contains("not this primary's") && s.contains("nor one it descends from")
                })
        },
    );
    wait_until(
        "the secondary names it too",
        Duration::from_secs(10),
        || pair.secondary.log().contains("nor one it descends from"),
    );
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    assert_eq!(
        client.write(0, &write_data(7)).unwrap(),
        0,
        "it serves while stalled"
    );
    assert_eq!(client.flush().unwrap(), 0);
    client.disconnect();
    assert_file_equals(&pair.replica_image, &primary_image);
}

/// The state directory belongs to one secondary at a time, and a journal from an earlier
/// run is not replayed onto a replica that is gone.
#[test]
fn a_state_directory_is_locked_and_needs_its_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut secondary = Pair::secondary(dir.path(), port, "4M");
    let state = dir.path().join("state");
    let replica = format!("data=file:{}:4M", dir.path().join("replica.img").display());
    let second = |listen: u16, volume: &str| {
        common::ordo(&[
            "secondary",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--state-dir",
            &state.display().to_string(),
            "--control",
            &dir.path().join("other.sock").display().to_string(),
            "--volume",
            volume,
        ])
    };
    let (ok, out) = second(free_port(), &replica);
    assert!(
        !ok && out.contains("another ordo secondary is running"),
        "{out}"
    );
    assert!(secondary.running());

    assert!(secondary.terminate().success());
    std::fs::remove_file(dir.path().join("replica.img")).unwrap();
    let (ok, out) = second(port, &replica);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, out) = second(port, "data=mem:4M");
    assert!(!ok && out.contains("is in memory"), "{out}");
}

/// The cores each thread of a process `pid` may run on, by thread name.
fn thread_cores(pid: u32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let cores = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default();
        threads.push((name.trim().to_string(), cores.trim().to_string()));
    }
    threads
}

/// `--cores 0,1`: the primary's poller runs on core 0 and its lane sender on core 1; the
/// secondary's poller on core 1 and its receivers on core 0. Replication works so placed.
#[test]
fn cores_place_each_role_of_both_daemons() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return; // Nothing to place on one core.
    }
    let dir = tempfile::tempdir().unwrap();
    let mut pair = Pair::start(dir.path(), "8M", &["--cores", "0,1"]);
    pair.secondary.restart_with(&["--cores", "1,0"]);
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    client.write(0, &write_data(1)).unwrap();
    client.flush().unwrap();
    pair.wait_caught_up(CATCH_UP);
    let primary = thread_cores(pair.primary.pid());
    let core = |threads: &[(String, String)], name: &str| {
        // A name ending in '*' is a prefix (one thread per lane).
        let found = match name.strip_suffix('*') {
            Some(prefix) => threads.iter().find(|(n, _)| n.starts_with(prefix)),
            None => threads.iter().find(|(n, _)| n == name),
        };
        found
            .unwrap_or_else(|| panic!("no {name} thread in {threads:?}"))
            .1
            .clone()
    };
    assert_eq!(
        core(&primary, "ordo"),
        "0",
        "the primary's poller: {primary:?}"
    );
    assert_eq!(core(&primary, "lane-send"), "1", "{primary:?}");
    let secondary = thread_cores(pair.secondary.pid());
    assert_eq!(
        core(&secondary, "ordo"),
        "1",
        "the secondary's poller: {secondary:?}"
    );
    assert_eq!(core(&secondary, "ordo-rx*"), "0", "{secondary:?}");
    assert_verifies(&pair);
}

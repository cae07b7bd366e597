//! Real processes: `ordo secondary` and `ordo primary` on loopback, written to by real NBD
//! clients (nbdcopy, nbdinfo, qemu-img, fio) and by a queue-depth-1 client that keeps its
//! own model; the secondary killed with SIGKILL again and again, the link cut, and garbage
//! sent to the secondary's port. The one invariant: the replica is always the primary's
//! image after some prefix of its writes, and equals it once the writes stop.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::nbd::NbdClient;
use common::{control_request, free_port, number, wait_until, Daemon, Pair};
use ordo_engine::protocol::{
    encode, Frame, GroupId, Hello, ResumeState, Role, VolumeInfo, HEADER_BYTES,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BLOCK: usize = 4096;
const CATCH_UP: Duration = Duration::from_secs(120);

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (CI installs it with apt-get): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{program} {args:?} failed: {text}");
    text
}

fn assert_verifies(pair: &Pair) -> u64 {
    let (ok, out) = pair.verify();
    assert!(ok, "ordo verify failed: {out}");
    let line = out.lines().last().unwrap_or_default();
    let n = line
        .strip_prefix("replica matches primary at data set ")
        .unwrap_or_else(|| panic!("unexpected verify output {out:?}"));
    n.trim().parse().unwrap()
}

fn assert_file_equals(path: &Path, image: &[u8]) {
    let replica = std::fs::read(path).unwrap();
    assert_eq!(replica.len(), image.len());
    if let Some(at) = replica.iter().zip(image).position(|(a, b)| a != b) {
        panic!("{} differs from the image at byte {at}", path.display());
    }
}

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

/// What a queue-depth-1 client wrote: block and crc of every write in submission order
/// (a write is logged before it is sent), and how many were acknowledged.
#[derive(Debug, Default)]
struct Model {
    writes: Mutex<Vec<(usize, u32)>>,
    acked: AtomicUsize,
    stop: AtomicBool,
}

const MODEL_BLOCKS: usize = 512;

fn write_data(index: u64) -> Vec<u8> {
    random_bytes(BLOCK, index + 1_000_000)
}

/// Writes unique blocks at random places, flushing every 8 writes, until told to stop.
fn model_writer(client: &mut NbdClient, model: &Model, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut index = 0u64;
    while !model.stop.load(Ordering::Relaxed) {
        let block = rng.random_range(0..MODEL_BLOCKS);
        let data = write_data(index);
        model
            .writes
            .lock()
            .unwrap()
            .push((block, crc32c::crc32c(&data)));
        let error = client.write((block * BLOCK) as u64, &data).unwrap();
        assert_eq!(error, 0, "write {index} refused");
        index += 1;
        model.acked.store(index as usize, Ordering::Relaxed);
        if index.is_multiple_of(8) {
            assert_eq!(client.flush().unwrap(), 0);
        }
    }
}

/// The largest prefix of `writes` whose image has exactly the crcs `replica` (one per
/// block), or `None` if no prefix does.
fn matching_prefix(replica: &[u32], writes: &[(usize, u32)]) -> Option<usize> {
    let zero = crc32c::crc32c(&[0u8; BLOCK]);
    let mut image = vec![zero; replica.len()];
    let mut mismatched = image.iter().zip(replica).filter(|(a, b)| a != b).count();
    let mut found = (mismatched == 0).then_some(0);
    for (i, &(block, crc)) in writes.iter().enumerate() {
        let before = image[block] == replica[block];
        image[block] = crc;
        let after = image[block] == replica[block];
        match (before, after) {
            (true, false) => mismatched += 1,
            (false, true) => mismatched -= 1,
            _ => {}
        }
        if mismatched == 0 {
            found = Some(i + 1);
        }
    }
    found
}

/// The secondary's replica, block by block, and the data set it is the image of.
fn replica_digest(secondary: &Daemon) -> (u64, Vec<u32>) {
    let digest = control_request(&secondary.control, "digest 4096").expect("a digest");
    assert!(digest.get("error").is_none(), "{digest}");
    let crcs = digest["volumes"][0]["crc32c"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (number(&digest, &["data_set"]), crcs)
}

/// SIGKILL the secondary ten times while a client writes at queue depth 1 with periodic
/// flushes; after each restart the recovered replica is the image after a prefix of the
/// writes (never going back), and at the end `ordo verify` passes and the replica file
/// equals the model.
#[test]
fn secondary_killed_ten_times_recovers_a_prefix_image_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let size = format!("{}K", MODEL_BLOCKS * BLOCK / 1024);
    let mut pair = Pair::start(dir.path(), &size, &["--data-set-interval-ms", "5"]);
    let model = Arc::new(Model::default());
    let writer = {
        let (model, nbd) = (Arc::clone(&model), pair.nbd);
        std::thread::spawn(move || {
            let mut client = NbdClient::connect(nbd, "data").unwrap();
            model_writer(&mut client, &model, 7);
            assert_eq!(client.flush().unwrap(), 0);
            client.disconnect();
        })
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut last_prefix, mut last_data_set) = (0, 0);
    for round in 0..10 {
        // Let the workload run a while, then pull the plug.
        let written = model.acked.load(Ordering::Relaxed);
        let more = rng.random_range(20..120);
        wait_until(
            "the client wrote some more",
            Duration::from_secs(60),
            || model.acked.load(Ordering::Relaxed) >= written + more,
        );
        pair.secondary.kill9();
        pair.secondary.restart();
        let (data_set, crcs) = replica_digest(&pair.secondary);
        let writes = model.writes.lock().unwrap().clone();
        let prefix = matching_prefix(&crcs, &writes).unwrap_or_else(|| {
            panic!(
                "round {round}: the replica at data set {data_set} is no prefix of the {} writes",
                writes.len()
            )
        });
        assert!(
            prefix >= last_prefix,
            "round {round}: the replica went back from {last_prefix} writes to {prefix}"
        );
        assert!(
            data_set >= last_data_set,
            "round {round}: applied went back"
        );
        (last_prefix, last_data_set) = (prefix, data_set);
    }
    assert!(last_prefix > 0, "the replica never received anything");
    model.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    pair.wait_caught_up(CATCH_UP);
    assert_verifies(&pair);
    let writes = model.writes.lock().unwrap().clone();
    let mut image = vec![0u8; MODEL_BLOCKS * BLOCK];
    for (index, &(block, _)) in writes.iter().enumerate() {
        image[block * BLOCK..(block + 1) * BLOCK].copy_from_slice(&write_data(index as u64));
    }
    assert_file_equals(&pair.replica_image, &image);
    let log = pair.secondary.log();
    assert!(log.matches("recovered from").count() >= 10, "{log}");
}

/// The secondary is down for a while: the primary keeps acknowledging writes and says the
/// lanes are down; once the secondary is back it catches up and verifies.
#[test]
fn link_cut_primary_keeps_serving_and_secondary_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut pair = Pair::start(dir.path(), "16M", &[]);
    let mut client = NbdClient::connect(pair.nbd, "data").unwrap();
    let image = random_bytes(16 << 20, 3);
    for chunk in 0..2 {
        let at = chunk << 20;
        assert_eq!(
            client.write(at as u64, &image[at..at + (1 << 20)]).unwrap(),
            0
        );
    }
    assert_eq!(client.flush().unwrap(), 0);
    pair.wait_caught_up(CATCH_UP);

    pair.secondary.kill9();
    for chunk in 2..10 {
        let at = chunk << 20;
        assert_eq!(
            client.write(at as u64, &image[at..at + (1 << 20)]).unwrap(),
            0
        );
    }
    assert_eq!(
        client.flush().unwrap(),
        0,
        "the primary serves with the link down"
    );
    wait_until(
        "the primary sees its lanes down",
        Duration::from_secs(30),
        || number(&pair.primary.status(), &["link", "lanes_up"]) == 0,
    );
    let status = pair.primary.status();
    assert!(
        number(&status, &["data_sets", "lag_data_sets"]) > 0,
        "{status}"
    );
    assert!(
        number(&status, &["data_sets", "lag_bytes"]) >= 8 << 20,
        "{status}"
    );

    pair.secondary.restart();
    pair.wait_caught_up(CATCH_UP);
    assert_verifies(&pair);
    let mut expected = image.clone();
    expected[10 << 20..].fill(0);
    assert_file_equals(&pair.replica_image, &expected);
    assert_eq!(client.read(0, 4096).unwrap(), expected[..4096]);
    client.disconnect();
}

fn hello_frame(group: u64) -> Vec<u8> {
    let hello = Hello {
        role: Role::Primary,
        group: GroupId(group),
        max_write_bytes: 1 << 20,
        volumes: vec![VolumeInfo {
            name: "data".into(),
            size_bytes: 8 << 20,
            block_size: 4096,
        }],
        resume: ResumeState::default(),
    };
    let mut frame = Vec::new();
    encode(&Frame::Hello(hello), &mut frame);
    frame
}

/// Sends `bytes` to the secondary and returns true if the secondary then closed the
/// connection (within a few seconds).
fn send_and_see_closed(port: u16, bytes: &[u8], close_ourselves: bool) -> bool {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(bytes).unwrap();
    if close_ourselves {
        return true;
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            // Still open after the timeout: the secondary kept it.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

/// Garbage, a truncated frame, a bad crc, a wrong version, an oversized frame and a
/// primary of another group: each is refused with a log line naming it, the daemon stays
/// up, and the replica is untouched. The mismatched primary names the field too and keeps
/// serving its own writes.
#[test]
fn bad_input_to_the_secondary_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut secondary = Pair::secondary(dir.path(), port, "8M");
    let before = control_request(&secondary.control, "digest 65536").unwrap();
    // A connection that never says Hello is dropped, so strays cannot hold the lanes.
    let idle = TcpStream::connect(("127.0.0.1", port)).unwrap();

    let good = hello_frame(1);
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 0xff;
    let mut bad_version = good.clone();
    bad_version[4] = 99;
    let mut huge = good[..HEADER_BYTES].to_vec();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let cases: [(&str, Vec<u8>, bool, &str); 5] = [
        ("garbage", vec![0x5a; 100], false, "bad magic"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            true,
            "truncated frame",
        ),
        ("bad crc", bad_crc, false, "crc mismatch"),
        (
            "wrong version",
            bad_version,
            false,
            "unsupported protocol version 99",
        ),
        ("oversized", huge, false, "body length"),
    ];
    for (what, bytes, close, expected) in &cases {
        assert!(
            send_and_see_closed(port, bytes, *close),
            "{what}: connection kept"
        );
        wait_until(
            &format!("the secondary logs the {what} input"),
            Duration::from_secs(10),
            || secondary.log().contains(expected),
        );
        assert!(secondary.running(), "{what} killed the secondary");
    }
    wait_until(
        "the status counts every dropped connection",
        Duration::from_secs(10),
        || number(&secondary.status(), &["link", "lanes_dropped"]) >= cases.len() as u64,
    );

    // A primary of group 2 against a group-1 secondary.
    let primary_control = dir.path().join("primary.sock");
    let nbd = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "primary",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--group",
        "2",
        "--volume",
        &format!("data=file:{}:8M", dir.path().join("primary.img").display()),
        "--nbd",
        &nbd,
        "--control",
        &primary_control.display().to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let primary = Daemon::start("primary", dir.path(), &args, &primary_control);
    wait_until(
        "the primary reports the mismatch",
        Duration::from_secs(30),
        || {
            primary.status()["link"]["stalled"]
                .as_str()
                .is_some_and(|s| s.contains("group id"))
        },
    );
    assert!(secondary.log().contains("handshake mismatch on group id"));
    let mut client = NbdClient::connect(nbd.parse().unwrap(), "data").unwrap();
    let data = random_bytes(8192, 5);
    assert_eq!(
        client.write(4096, &data).unwrap(),
        0,
        "the primary serves while stalled"
    );
    assert_eq!(client.flush().unwrap(), 0);
    assert_eq!(client.read(4096, 8192).unwrap(), data);
    client.disconnect();

    let after = control_request(&secondary.control, "digest 65536").unwrap();
    assert_eq!(before, after, "the replica was touched");
    wait_until(
        "the idle connection is dropped",
        Duration::from_secs(60),
        || secondary.log().contains("no handshake within"),
    );
    drop(idle);
    assert_eq!(number(&secondary.status(), &["data_sets", "applied"]), 0);
    assert!(secondary.running());
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
fn sigterm_drains_every_write_and_a_restarted_primary_refuses_the_old_history() {
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
            control_request(&pair.secondary.control, "digest 1048576")
                .is_some_and(|d| d.get("error").is_none())
        },
    );
    assert_file_equals(&pair.replica_image, &primary_image);
    eprintln!(
        "{} writes acknowledged, {refused} refused while closing",
        written.load(Ordering::Relaxed)
    );

    pair.primary.restart();
    wait_until(
        "the restarted primary names the other history",
        Duration::from_secs(30),
        || {
            pair.primary.status()["link"]["stalled"]
                .as_str()
                .is_some_and(|s| s.contains("history this primary did not write"))
        },
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

/// A secondary address that swallows connection attempts (a listener whose backlog is
/// full drops SYNs, as a host behind a dead link does) must not slow the primary: its
/// poller never waits on a connect, so writes and flushes go on at local speed.
#[test]
fn a_blackholed_secondary_does_not_stall_local_writes() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Fill the accept queue (std listens with a backlog of 128) so later SYNs are dropped.
    let mut held = Vec::new();
    for _ in 0..200 {
        let stream = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_millis(200),
        );
        match stream {
            Ok(stream) => held.push(stream),
            Err(_) => break, // the queue is full: connects now hang
        }
    }
    assert!(
        held.len() < 200,
        "the accept queue never filled: no blackhole to test"
    );
    let control = dir.path().join("primary.sock");
    let nbd = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "primary",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--volume",
        &format!("data=file:{}:4M", dir.path().join("primary.img").display()),
        "--nbd",
        &nbd,
        "--control",
        &control.display().to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let primary = Daemon::start("primary", dir.path(), &args, &control);
    let mut client = NbdClient::connect(nbd.parse().unwrap(), "data").unwrap();
    let started = std::time::Instant::now();
    for i in 0..100u64 {
        assert_eq!(client.write(i * BLOCK as u64, &write_data(i)).unwrap(), 0);
        if i % 10 == 9 {
            assert_eq!(client.flush().unwrap(), 0);
        }
    }
    // A poller blocked in connect (500 ms per lane and attempt) would take minutes here.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "100 local writes took {:?} with the secondary blackholed",
        started.elapsed()
    );
    assert_eq!(number(&primary.status(), &["link", "lanes_up"]), 0);
    client.disconnect();
    drop(held);
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

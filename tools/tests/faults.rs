//! Real processes under faults: the secondary killed with SIGKILL again and again while a
//! queue-depth-1 client keeps its own model, the link cut, garbage and a primary of another
//! group sent to the secondary's port, and a secondary host that swallows connections.
//! The one invariant: the replica is always the primary's image after some prefix of its
//! writes, and equals it once the writes stop.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::model::{kill_secondary_while_writing, MODEL_BLOCKS};
use common::nbd::NbdClient;
use common::{
    assert_file_equals, assert_verifies, control_line, free_port, number, random_bytes, wait_until,
    write_data, Daemon, Pair, BLOCK, CATCH_UP,
};
use ordo_core::protocol::{
    encode, Frame, GenerationId, GroupId, Hello, HistoryFlags, ResumeState, Role, VolumeInfo,
    HEADER_BYTES,
};

/// SIGKILL the secondary ten times while a client writes at queue depth 1 with periodic
/// flushes; after each restart the recovered replica is the image after a prefix of the
/// writes (never going back), and at the end `ordo verify` passes and the replica file
/// equals the model.
#[test]
fn secondary_killed_ten_times_recovers_a_prefix_image_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let size = format!("{}K", MODEL_BLOCKS * BLOCK / 1024);
    let mut pair = Pair::start(dir.path(), &size, &["--data-set-interval-ms", "5"]);
    let image = kill_secondary_while_writing(&mut pair, 10);
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
        generation: GenerationId(0x0dd),
        ancestors: Vec::new(),
        flags: HistoryFlags::default(),
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
/// serving its own writes. Bad control requests are answered with an error naming why.
#[test]
fn bad_input_to_the_secondary_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut secondary = Pair::secondary(dir.path(), port, "8M");
    let before = secondary.digest(65536);
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

    let after = secondary.digest(65536);
    assert_eq!(before, after, "the replica was touched");
    // Its control socket alike: a line that is not a request it can answer gets why.
    let bad = [
        ("status", "not JSON"),
        (
            r#"{"request":"digest","chunk_bytes":1000}"#,
            "not a positive multiple of 512",
        ),
        (
            r#"{"request":"digest","chunk_bytes":4096,"range":{"volume":"x","offset":0,"len":4096}}"#,
            r#"no volume "x""#,
        ),
    ];
    for (line, why) in bad {
        let reply = control_line(&secondary.control, line).expect("an answer");
        assert_eq!(reply["reply"], "error", "{line}: {reply}");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{line}: {reply}");
    }
    wait_until(
        "the idle connection is dropped",
        Duration::from_secs(60),
        || secondary.log().contains("no handshake within"),
    );
    drop(idle);
    assert_eq!(number(&secondary.status(), &["data_sets", "applied"]), 0);
    assert!(secondary.running());
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

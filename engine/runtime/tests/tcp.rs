//! The runtime nodes over loopback TCP: a secondary in its own thread, a primary writing in
//! this one, several lanes, and the replica checked byte for byte. Deadlines only keep a
//! broken test from hanging CI; nothing here is timed.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use ordo_core::primary::{
    format_record, record_geometry, DataSetPolicy, Primary, PrimaryConfig, SubmitError,
};
use ordo_core::protocol::{GenerationId, GroupId, VolumeId};
use ordo_core::secondary::journal::required_bytes;
use ordo_core::secondary::{Secondary, SecondaryConfig};
use ordo_core::storage::{describe, Geometry, MemStorage};
use ordo_runtime::idle::IdlePolicy;
use ordo_runtime::primary_node::PrimaryNode;
use ordo_runtime::secondary_node::{SecondaryNode, SecondaryThread};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const GROUP: GroupId = GroupId(11);
const VOLUME_BYTES: u64 = 4 << 20;
const MAX_WRITE: u32 = 64 << 10;
const LANES: usize = 4;
const IDLE: IdlePolicy = IdlePolicy::Park(Duration::from_micros(200));

fn mem(size: u64) -> MemStorage {
    MemStorage::new(Geometry::new(size.next_multiple_of(4096), 4096).unwrap()).unwrap()
}

fn names() -> Vec<String> {
    vec!["a".into(), "b".into()]
}

fn secondary_config() -> SecondaryConfig {
    SecondaryConfig {
        group: GROUP,
        volume_names: names(),
        window_bytes: 4 << 20,
        max_write_bytes: MAX_WRITE,
        lanes: LANES,
        applied_interval_ms: 20,
        bug: None,
    }
}

fn primary() -> Primary<MemStorage> {
    let config = PrimaryConfig {
        group: GROUP,
        volume_names: names(),
        policy: DataSetPolicy {
            interval_ms: 5,
            max_writes: 64,
            max_bytes: 1 << 20,
        },
        // More than everything the first phase of a test writes (500 writes of at most
        // 64 KiB), so writes never wait while the secondary is away.
        window_bytes: 40 << 20,
        max_write_bytes: MAX_WRITE,
        lanes: LANES,
        retransmit_ms: 200,
        max_pending_flushes: 8,
        ..PrimaryConfig::default()
    };
    let volumes = vec![mem(VOLUME_BYTES), mem(VOLUME_BYTES)];
    let infos = describe(&config.volume_names, &volumes);
    let record = MemStorage::new(record_geometry(&infos)).unwrap();
    let record = format_record(record, &infos, GenerationId(0x7c9), true).unwrap();
    Primary::new(config, volumes, record, 1).unwrap()
}

/// A secondary node polling on its own thread until stopped.
fn run_secondary(
    secondary: Secondary<MemStorage>,
    listener: TcpListener,
) -> SecondaryThread<MemStorage> {
    let node = SecondaryNode::new(secondary, listener, LANES, MAX_WRITE).unwrap();
    SecondaryThread::spawn(node, IDLE)
}

fn stop(running: SecondaryThread<MemStorage>) -> SecondaryNode<MemStorage> {
    running.stop().expect("the secondary thread does not panic")
}

/// Writes `count` random writes through the primary node, polling it as it goes.
fn write_random(
    node: &mut PrimaryNode<MemStorage>,
    rng: &mut ChaCha8Rng,
    count: usize,
    clock: Instant,
) {
    let mut data = vec![0u8; MAX_WRITE as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut written = 0;
    while written < count {
        if Instant::now() >= deadline {
            let lanes = node.lanes_up();
            let p = node.primary();
            panic!(
                "writes stopped being accepted after {written}: retention {} bytes, closed {}, peer applied {}, lanes up {lanes}, {:?}, last error {:?}",
                p.retention_bytes(),
                p.last_closed(),
                p.peer_applied(),
                p.stats(),
                node.last_error()
            );
        }
        let blocks = rng.random_range(1..=16u64);
        let offset = 4096 * rng.random_range(0..=VOLUME_BYTES / 4096 - blocks);
        let volume = VolumeId(rng.random_range(0..2));
        let data = &mut data[..(blocks * 4096) as usize];
        rng.fill_bytes(data);
        let now_ms = clock.elapsed().as_millis() as u64;
        match node.primary().submit_write(now_ms, volume, offset, data, 0) {
            Ok(_) => written += 1,
            Err(SubmitError::WindowFull) => {}
            Err(error) => panic!("write refused: {error}"),
        }
        let did = node.poll(now_ms);
        while node.primary().next_event().is_some() {}
        if !did {
            IDLE.after_round(ordo_runtime::idle::Round::Idle);
        }
    }
}

/// Flushes, then polls until the secondary reports the last closed data set applied.
fn wait_applied(node: &mut PrimaryNode<MemStorage>, clock: Instant) {
    node.primary().flush(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now_ms = clock.elapsed().as_millis() as u64;
        let did = node.poll(now_ms);
        while node.primary().next_event().is_some() {}
        let primary = node.primary();
        if primary.peer_applied() == primary.last_closed() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "secondary stuck at {}: {:?}",
            primary.peer_applied(),
            node.last_error()
        );
        IDLE.after_round(did.into());
    }
}

fn assert_replicas_match(node: &mut PrimaryNode<MemStorage>, secondary: &Secondary<MemStorage>) {
    for (index, (mine, theirs)) in node
        .primary()
        .volumes()
        .iter()
        .zip(secondary.replicas())
        .enumerate()
    {
        let at = mine
            .contents()
            .iter()
            .zip(theirs.contents())
            .position(|(a, b)| a != b);
        assert_eq!(at, None, "volume {index} differs at byte {at:?}");
    }
}

fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn fresh_secondary() -> Secondary<MemStorage> {
    let config = secondary_config();
    let journal = mem(required_bytes(config.window_bytes, MAX_WRITE, 4096));
    Secondary::create(
        config,
        0xabc,
        journal,
        vec![mem(VOLUME_BYTES), mem(VOLUME_BYTES)],
        true,
    )
    .unwrap()
}

#[test]
fn writes_replicate_over_several_tcp_lanes() {
    let (listener, addr) = listen();
    let running = run_secondary(fresh_secondary(), listener);
    let clock = Instant::now();
    let mut node = PrimaryNode::new(primary(), addr, LANES).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    write_random(&mut node, &mut rng, 2000, clock);
    wait_applied(&mut node, clock);
    assert_eq!(node.lanes_up(), LANES);
    let secondary_node = stop(running);
    assert_eq!(secondary_node.stats().lanes_accepted, LANES as u64);
    assert!(
        node.primary().last_closed().0 > 10,
        "many data sets: {}",
        node.primary().last_closed()
    );
    assert_replicas_match(&mut node, secondary_node.secondary());
}

#[test]
fn a_restarted_secondary_catches_up_over_tcp() {
    let (listener, addr) = listen();
    let running = run_secondary(fresh_secondary(), listener);
    let clock = Instant::now();
    let mut node = PrimaryNode::new(primary(), addr, LANES).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    write_random(&mut node, &mut rng, 500, clock);
    // The secondary stops mid-stream: its memory and connections are gone.
    let (journal, replicas) = stop(running).into_secondary().into_storages();
    // The primary keeps serving while the secondary is away.
    write_random(&mut node, &mut rng, 100, clock);
    let restarted = Secondary::open(secondary_config(), journal, replicas).unwrap();
    let listener = TcpListener::bind(addr).expect("the port is free again");
    let running = run_secondary(restarted, listener);
    write_random(&mut node, &mut rng, 500, clock);
    wait_applied(&mut node, clock);
    let secondary_node = stop(running);
    assert!(node.lanes_dropped() >= 1, "the primary saw its lanes go");
    assert_replicas_match(&mut node, secondary_node.secondary());
}

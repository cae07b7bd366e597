//! `ordo demo`: a primary and a secondary in one process, each on its own thread with its
//! own in-memory volumes (two in one replication group), joined by TCP lanes over
//! loopback. A random workload with flushes runs for a few seconds; half-way the
//! secondary is crashed (its thread, memory and connections are gone) and restarted from
//! its journal on the same port. Then the writes stop, the secondary catches up, and the
//! replica is compared with the primary byte for byte.

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use ordo_core::primary::{
    format_record, record_geometry, DataSetPolicy, Primary, PrimaryConfig, PrimaryEvent,
    SubmitError,
};
use ordo_core::protocol::{DataSetId, GenerationId, GroupId, VolumeId, MAX_LANES};
use ordo_core::secondary::journal::required_bytes;
use ordo_core::secondary::{Secondary, SecondaryConfig};
use ordo_core::storage::{describe, Geometry, MemStorage, Storage};

use crate::primary_state::random_u64;
use ordo_runtime::idle::IdlePolicy;
use ordo_runtime::primary_node::PrimaryNode;
use ordo_runtime::secondary_node::{SecondaryNode, SecondaryThread};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of writing (the crash comes half-way).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Size of each of the two volumes, in MiB.
    #[arg(long, default_value_t = 32)]
    volume_mib: u64,
    /// TCP lanes between primary and secondary.
    #[arg(long, default_value_t = 4)]
    lanes: usize,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const VOLUMES: [&str; 2] = ["data", "log"];
const GROUP: GroupId = GroupId(7);
const MAX_WRITE_BYTES: u32 = 256 << 10;
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
/// This machine may be a shared 2-core box: sleep briefly when a round found no work.
const IDLE: IdlePolicy = IdlePolicy::Park(Duration::from_micros(100));

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    ensure!(
        args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    ensure!(
        (1..=MAX_LANES).contains(&args.lanes),
        "--lanes must be 1 to {MAX_LANES}"
    );
    ensure!(
        (1..=4096).contains(&args.volume_mib),
        "--volume-mib must be 1 to 4096"
    );
    let mut out = std::io::stdout().lock();
    let geometry = Geometry::new(args.volume_mib << 20, 4096)?;
    let secondary_config = secondary_config(args.lanes);
    let listener = TcpListener::bind("127.0.0.1:0").context("listening on loopback")?;
    let addr = listener.local_addr()?;
    let secondary = new_secondary(&secondary_config, geometry)?;
    let mut running = RunningSecondary::start(secondary, listener, args.lanes)?;
    let mut node = PrimaryNode::new(new_primary(args.lanes, geometry)?, addr, args.lanes)
        .context("starting the lane connector")?;
    writeln!(
        out,
        "demo: 2 volumes of {} MiB, {} TCP lanes on {addr}, data sets closed every 10 ms or on flush, {} s of random writes",
        args.volume_mib, args.lanes, args.seconds
    )?;
    let clock = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut data = vec![0u8; MAX_WRITE_BYTES as usize];
    let mut counts = Counts::default();
    let writing = Duration::from_secs_f64(args.seconds);
    let (mut crashed, mut next_report, mut next_flush) = (false, 0.5, 0.1);
    while clock.elapsed() < writing {
        let now = clock.elapsed().as_secs_f64();
        for _ in 0..8 {
            random_write(&mut node, &mut rng, &mut data, clock)?;
        }
        if now >= next_flush {
            node.primary().flush(0)?;
            next_flush = now + 0.1;
        }
        turn(&mut node, &mut counts, clock)?;
        if !crashed && now >= args.seconds / 2.0 {
            crashed = true;
            let stopped = running.stop()?;
            let at = stopped.applied();
            let (journal, replicas) = stopped.into_storages();
            let restarted = Secondary::open(secondary_config.clone(), journal, replicas)
                .context("restarting the secondary")?;
            let recovered = restarted.stats().recovered_records;
            let listener = TcpListener::bind(addr).context("listening again on the same port")?;
            running = RunningSecondary::start(restarted, listener, args.lanes)?;
            writeln!(out, "{now:>5.1}s crashed the secondary at {at}; restarted from its journal ({recovered} records recovered)")?;
        }
        if now >= next_report {
            writeln!(out, "{}", progress(&mut node, &counts, clock))?;
            next_report = now + 0.5;
        }
    }
    node.primary().flush(1)?;
    writeln!(
        out,
        "{:>5.1}s writes stopped; waiting for the secondary to catch up",
        clock.elapsed().as_secs_f64()
    )?;
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    while node.primary().peer_applied() != node.primary().last_closed() {
        ensure!(
            Instant::now() < deadline,
            "the secondary did not catch up: {}",
            progress(&mut node, &counts, clock)
        );
        let did = turn(&mut node, &mut counts, clock)?;
        IDLE.after_round(did.into());
    }
    writeln!(out, "{}", progress(&mut node, &counts, clock))?;
    let secondary = running.stop()?;
    let data_set = verify(&mut node, &secondary)?;
    writeln!(out, "replica verified at {data_set}")?;
    Ok(ExitCode::SUCCESS)
}

fn secondary_config(lanes: usize) -> SecondaryConfig {
    SecondaryConfig {
        group: GROUP,
        volume_names: VOLUMES.iter().map(|n| n.to_string()).collect(),
        // Two data sets; the staging arena claims whole 512-byte granules.
        window_bytes: (2 * policy().max_stream_bytes(MAX_WRITE_BYTES)).next_multiple_of(512),
        max_write_bytes: MAX_WRITE_BYTES,
        lanes,
        ..SecondaryConfig::default()
    }
}

fn policy() -> DataSetPolicy {
    DataSetPolicy {
        interval_ms: 10,
        max_writes: 1024,
        max_bytes: 8 << 20,
    }
}

fn mem(geometry: Geometry) -> Result<MemStorage> {
    MemStorage::new(geometry).context("allocating an in-memory volume")
}

fn new_primary(lanes: usize, geometry: Geometry) -> Result<Primary<MemStorage>> {
    let config = PrimaryConfig {
        group: GROUP,
        volume_names: VOLUMES.iter().map(|n| n.to_string()).collect(),
        policy: policy(),
        window_bytes: 32 << 20,
        max_write_bytes: MAX_WRITE_BYTES,
        lanes,
        ..PrimaryConfig::default()
    };
    let volumes = vec![mem(geometry)?, mem(geometry)?];
    let infos = describe(&config.volume_names, &volumes);
    let record = mem(record_geometry(&infos))?;
    let record = format_record(record, &infos, GenerationId(random_u64()), true)?;
    Ok(Primary::new(config, volumes, record, random_u64())?)
}

fn new_secondary(config: &SecondaryConfig, geometry: Geometry) -> Result<Secondary<MemStorage>> {
    let journal_bytes =
        required_bytes(config.window_bytes, MAX_WRITE_BYTES, 4096).next_multiple_of(4096);
    let journal = mem(Geometry::new(journal_bytes, 4096)?)?;
    let journal_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    Ok(Secondary::create(
        config.clone(),
        journal_id,
        journal,
        vec![mem(geometry)?, mem(geometry)?],
        true,
    )?)
}

/// A secondary node polling on its own thread, until `stop` hands the secondary back.
struct RunningSecondary {
    thread: Option<SecondaryThread<MemStorage>>,
}

impl RunningSecondary {
    fn start(
        secondary: Secondary<MemStorage>,
        listener: TcpListener,
        lanes: usize,
    ) -> Result<RunningSecondary> {
        let node = SecondaryNode::new(secondary, listener, lanes, MAX_WRITE_BYTES)?;
        Ok(RunningSecondary {
            thread: Some(SecondaryThread::spawn(node, IDLE)),
        })
    }

    /// Stops the thread (dropping its connections) and hands back the secondary.
    fn stop(&mut self) -> Result<Secondary<MemStorage>> {
        let thread = self
            .thread
            .take()
            .context("the secondary was already stopped")?;
        let node = thread
            .stop()
            .map_err(|_| anyhow::anyhow!("the secondary thread panicked"))?;
        if let Some(why) = node.secondary().failure() {
            bail!("the secondary stopped: {why}");
        }
        Ok(node.into_secondary())
    }
}

#[derive(Debug, Default)]
struct Counts {
    writes_acked: u64,
    flushes_done: u64,
}

fn random_write(
    node: &mut PrimaryNode<MemStorage>,
    rng: &mut ChaCha8Rng,
    data: &mut [u8],
    clock: Instant,
) -> Result<()> {
    let primary = node.primary();
    let volume = rng.random_range(0..VOLUMES.len());
    let blocks_total = primary.volume_infos()[volume].size_bytes / 4096;
    let blocks = rng.random_range(1..=64u64.min(blocks_total));
    let offset = 4096 * rng.random_range(0..=blocks_total - blocks);
    let data = &mut data[..(blocks * 4096) as usize];
    rng.fill_bytes(data);
    let now_ms = clock.elapsed().as_millis() as u64;
    match primary.submit_write(now_ms, VolumeId(volume as u16), offset, data, 0) {
        Ok(_) | Err(SubmitError::WindowFull) => Ok(()),
        Err(error) => Err(error).context("submitting a write"),
    }
}

/// One round of the primary's event loop: link, storage, clock, application events.
fn turn(node: &mut PrimaryNode<MemStorage>, counts: &mut Counts, clock: Instant) -> Result<bool> {
    let did = node.poll(clock.elapsed().as_millis() as u64);
    while let Some(event) = node.primary().next_event() {
        match event {
            PrimaryEvent::WriteDone { result, .. } => {
                result.context("primary volume write")?;
                counts.writes_acked += 1;
            }
            PrimaryEvent::FlushDone { result, .. } => {
                result.context("primary volume flush")?;
                counts.flushes_done += 1;
            }
            PrimaryEvent::DataSetClosed { .. } => {}
        }
    }
    if let Some(stalled) = node.primary().stalled() {
        bail!("replication stalled: {stalled}");
    }
    Ok(did)
}

fn progress(node: &mut PrimaryNode<MemStorage>, counts: &Counts, clock: Instant) -> String {
    let lanes = node.lanes_up();
    let primary = node.primary();
    let (closed, applied) = (primary.last_closed(), primary.peer_applied());
    format!(
        "{:>5.1}s writes acked {} (waited for window {}), flushes {}, closed {closed}, applied {applied}, lag {} data sets, retention {:.1} MiB, lanes up {lanes}",
        clock.elapsed().as_secs_f64(),
        counts.writes_acked,
        primary.stats().window_full,
        counts.flushes_done,
        closed.0 - applied.0,
        primary.retention_bytes() as f64 / f64::from(1 << 20)
    )
}

/// Compares every replica volume with the primary's, byte for byte.
fn verify(
    node: &mut PrimaryNode<MemStorage>,
    secondary: &Secondary<MemStorage>,
) -> Result<DataSetId> {
    let data_set = secondary.applied();
    let primary = node.primary();
    ensure!(
        data_set == primary.last_closed(),
        "the secondary is at {data_set}, not {}",
        primary.last_closed()
    );
    ensure!(
        secondary.is_between_data_sets(),
        "the secondary is in the middle of applying"
    );
    for (index, (mine, theirs)) in primary
        .volumes()
        .iter()
        .zip(secondary.replicas())
        .enumerate()
    {
        if let Some(at) = mine
            .contents()
            .iter()
            .zip(theirs.contents())
            .position(|(a, b)| a != b)
        {
            bail!(
                "volume {} differs at byte {at} (block {})",
                VOLUMES[index],
                at / mine.geometry().block_size as usize
            );
        }
    }
    Ok(data_set)
}

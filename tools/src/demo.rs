//! `ordo demo`: a primary and a secondary in one process on in-memory volumes (two in one
//! replication group), joined by in-memory lanes. A random workload with flushes runs for a
//! few seconds; half-way the secondary is crashed (its in-memory state and everything in
//! flight on the lanes is lost) and restarted from its journal. Then the writes stop, the
//! secondary catches up, and the replica is compared with the primary byte for byte.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use ordo_engine::primary::{DataSetPolicy, Primary, PrimaryConfig, PrimaryEvent, SubmitError};
use ordo_engine::protocol::{decode, frame_len, DataSetId, GroupId, VolumeId};
use ordo_engine::secondary::journal::required_bytes;
use ordo_engine::secondary::{Secondary, SecondaryConfig};
use ordo_engine::storage::{Geometry, MemStorage, Storage};
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
    /// Lanes between primary and secondary.
    #[arg(long, default_value_t = 4)]
    lanes: usize,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const VOLUMES: [&str; 2] = ["data", "log"];
const TRANSMIT_BUDGET_BYTES: usize = 1 << 20;
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// In-memory lanes: a byte queue per lane and direction.
struct Lanes {
    to_secondary: Vec<Vec<u8>>,
    to_primary: Vec<Vec<u8>>,
}

struct Pair {
    primary: Primary<MemStorage>,
    secondary: Secondary<MemStorage>,
    secondary_config: SecondaryConfig,
    lanes: Lanes,
    started: Instant,
    writes_done: u64,
    window_waits: u64,
    flushes_done: u64,
}

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    ensure!(
        args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    ensure!((1..=64).contains(&args.lanes), "--lanes must be 1 to 64");
    ensure!(
        (1..=4096).contains(&args.volume_mib),
        "--volume-mib must be 1 to 4096"
    );
    let mut out = std::io::stdout().lock();
    let mut pair = Pair::new(args)?;
    writeln!(
        out,
        "demo: 2 volumes of {} MiB, {} lanes, data sets closed every 10 ms or on flush, {} s of random writes",
        args.volume_mib, args.lanes, args.seconds
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let writing = Duration::from_secs_f64(args.seconds);
    let mut crashed = false;
    let mut next_report = Duration::from_millis(500);
    let mut next_flush = Duration::from_millis(100);
    let mut data = vec![0u8; 256 << 10];
    while pair.started.elapsed() < writing {
        let now = pair.started.elapsed();
        for _ in 0..8 {
            pair.random_write(&mut rng, &mut data)?;
        }
        if now >= next_flush {
            pair.primary.flush(0)?;
            next_flush = now + Duration::from_millis(100);
        }
        pair.turn()?;
        if !crashed && now >= writing / 2 {
            crashed = true;
            let recovered;
            (pair, recovered) = pair.crash_secondary()?;
            writeln!(
                out,
                "{:>5.1}s crashed the secondary at {}; restarted from its journal ({recovered} records recovered)",
                now.as_secs_f64(),
                pair.secondary.applied()
            )?;
        }
        if now >= next_report {
            writeln!(out, "{}", pair.progress())?;
            next_report = now + Duration::from_millis(500);
        }
    }
    pair.primary.flush(1)?;
    writeln!(
        out,
        "{:>5.1}s writes stopped; waiting for the secondary to catch up",
        pair.started.elapsed().as_secs_f64()
    )?;
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    while !pair.caught_up() {
        ensure!(
            Instant::now() < deadline,
            "the secondary did not catch up: {}",
            pair.progress()
        );
        pair.turn()?;
    }
    writeln!(out, "{}", pair.progress())?;
    let data_set = pair.verify()?;
    writeln!(out, "replica verified at {data_set}")?;
    Ok(ExitCode::SUCCESS)
}

impl Pair {
    fn new(args: &DemoArgs) -> Result<Pair> {
        let geometry = Geometry::new(args.volume_mib << 20, 4096)?;
        let mem = |g: Geometry| MemStorage::new(g).context("allocating an in-memory volume");
        let names: Vec<String> = VOLUMES.iter().map(|n| n.to_string()).collect();
        let policy = DataSetPolicy {
            interval_ms: 10,
            max_writes: 1024,
            max_bytes: 8 << 20,
        };
        let max_write_bytes = 256 << 10;
        let primary_config = PrimaryConfig {
            group: GroupId(7),
            volume_names: names.clone(),
            policy,
            window_bytes: 32 << 20,
            max_write_bytes,
            lanes: args.lanes,
            ..PrimaryConfig::default()
        };
        let secondary_config = SecondaryConfig {
            group: GroupId(7),
            volume_names: names,
            window_bytes: 2 * policy.max_stream_bytes(max_write_bytes),
            max_write_bytes,
            lanes: args.lanes,
            ..SecondaryConfig::default()
        };
        let journal_bytes = required_bytes(secondary_config.window_bytes, max_write_bytes, 4096);
        let journal = mem(Geometry::new(journal_bytes.next_multiple_of(4096), 4096)?)?;
        let primary = Primary::new(primary_config, vec![mem(geometry)?, mem(geometry)?])?;
        let replicas = vec![mem(geometry)?, mem(geometry)?];
        let journal_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64;
        let mut secondary =
            Secondary::create(secondary_config.clone(), journal_id, journal, replicas)?;
        let mut primary = primary;
        for lane in 0..args.lanes {
            primary.lane_up(lane);
            secondary.lane_up(lane);
        }
        Ok(Pair {
            primary,
            secondary,
            secondary_config,
            lanes: Lanes {
                to_secondary: vec![Vec::new(); args.lanes],
                to_primary: vec![Vec::new(); args.lanes],
            },
            started: Instant::now(),
            writes_done: 0,
            window_waits: 0,
            flushes_done: 0,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn random_write(&mut self, rng: &mut ChaCha8Rng, data: &mut [u8]) -> Result<()> {
        let volume = rng.random_range(0..VOLUMES.len());
        let blocks_total = self.primary.volume_infos()[volume].size_bytes / 4096;
        let blocks = rng.random_range(1..=64u64.min(blocks_total));
        let offset = 4096 * rng.random_range(0..=blocks_total - blocks);
        let data = &mut data[..(blocks * 4096) as usize];
        rng.fill_bytes(data);
        match self
            .primary
            .submit_write(self.now_ms(), VolumeId(volume as u16), offset, data, 0)
        {
            Ok(_) | Err(SubmitError::WindowFull) => Ok(()),
            Err(error) => Err(error).context("submitting a write"),
        }
    }

    /// One round of the event loop: storage, clocks, lanes.
    fn turn(&mut self) -> Result<()> {
        let now_ms = self.now_ms();
        self.primary.tick(now_ms);
        self.primary.poll_storage();
        while let Some(event) = self.primary.next_event() {
            match event {
                PrimaryEvent::WriteDone { result, .. } => {
                    result.context("primary volume write")?;
                    self.writes_done += 1;
                }
                PrimaryEvent::FlushDone { result, .. } => {
                    result.context("primary volume flush")?;
                    self.flushes_done += 1;
                }
                PrimaryEvent::DataSetClosed { .. } => {}
            }
        }
        self.window_waits = self.primary.stats().window_full;
        for lane in 0..self.lanes.to_secondary.len() {
            self.primary.poll_transmit(
                now_ms,
                lane,
                &mut self.lanes.to_secondary[lane],
                TRANSMIT_BUDGET_BYTES,
            );
            self.secondary.poll_transmit(
                lane,
                &mut self.lanes.to_primary[lane],
                TRANSMIT_BUDGET_BYTES,
            );
        }
        for lane in 0..self.lanes.to_secondary.len() {
            deliver(&mut self.lanes.to_secondary[lane], |frame| {
                self.secondary.handle_frame(lane, frame)
            })?;
            deliver(&mut self.lanes.to_primary[lane], |frame| {
                self.primary.handle_frame(lane, frame)
            })?;
        }
        self.secondary.tick(now_ms);
        self.secondary.poll_storage();
        if let Some(why) = self.secondary.failure() {
            bail!("the secondary stopped: {why}");
        }
        Ok(())
    }

    /// Loses the secondary's memory and everything on the lanes, then restarts it on its
    /// journal and replicas. Returns the new pair and how many records the journal held.
    fn crash_secondary(mut self) -> Result<(Pair, u64)> {
        for lane in 0..self.lanes.to_secondary.len() {
            self.lanes.to_secondary[lane].clear();
            self.lanes.to_primary[lane].clear();
            self.primary.lane_down(lane);
        }
        let (journal, replicas) = self.secondary.into_storages();
        let secondary = Secondary::open(self.secondary_config.clone(), journal, replicas)
            .context("restarting the secondary")?;
        let mut pair = Pair { secondary, ..self };
        for lane in 0..pair.lanes.to_secondary.len() {
            pair.primary.lane_up(lane);
            pair.secondary.lane_up(lane);
        }
        let recovered = pair.secondary.stats().recovered_records;
        Ok((pair, recovered))
    }

    fn caught_up(&self) -> bool {
        self.secondary.applied() == self.primary.last_closed()
            && self.secondary.is_between_data_sets()
    }

    fn progress(&self) -> String {
        let closed = self.primary.last_closed();
        let applied = self.secondary.applied();
        format!(
            "{:>5.1}s writes acked {} (waited for window {}), flushes {}, closed {}, applied {}, lag {} data sets, retention {:.1} MiB",
            self.started.elapsed().as_secs_f64(),
            self.writes_done,
            self.window_waits,
            self.flushes_done,
            closed,
            applied,
            closed.0 - applied.0,
            self.primary.retention_bytes() as f64 / (1 << 20) as f64
        )
    }

    /// Compares every replica volume with the primary's, block by block.
    fn verify(&self) -> Result<DataSetId> {
        let data_set = self.secondary.applied();
        ensure!(
            data_set == self.primary.last_closed(),
            "the secondary is at {data_set}, not {}",
            self.primary.last_closed()
        );
        for (index, (primary, replica)) in self
            .primary
            .volumes()
            .iter()
            .zip(self.secondary.replicas())
            .enumerate()
        {
            let (a, b) = (primary.contents(), replica.contents());
            if let Some(at) = a.iter().zip(b).position(|(x, y)| x != y) {
                bail!(
                    "volume {} differs at byte {at} (block {})",
                    VOLUMES[index],
                    at / primary.geometry().block_size as usize
                );
            }
        }
        Ok(data_set)
    }
}

/// Hands every whole frame in `bytes` to `handle`, keeping a partial one.
fn deliver(
    bytes: &mut Vec<u8>,
    mut handle: impl FnMut(
        &ordo_engine::protocol::Frame<'_>,
    ) -> Result<(), ordo_engine::protocol::PeerError>,
) -> Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let len = match frame_len(&bytes[at..]) {
            Ok(len) if at + len <= bytes.len() => len,
            Ok(_) | Err(ordo_engine::protocol::DecodeError::Incomplete { .. }) => break,
            Err(error) => bail!("corrupt frame on an in-memory lane: {error}"),
        };
        let (frame, _) = decode(&bytes[at..at + len])?;
        handle(&frame).context("peer error")?;
        at += len;
    }
    bytes.drain(..at);
    Ok(())
}

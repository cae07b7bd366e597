//! One `ordo bench` run: sets up the pair, drives the primary's write path from this
//! thread (the primary's poller: it submits, polls the lanes and the volume, and takes the
//! events), and measures as it goes. Nothing is allocated per operation: slots, the lag
//! queue and the histograms are sized before the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ordo_core::primary::{format_record, record_geometry, Primary, PrimaryEvent, SubmitError};
use ordo_core::protocol::{GenerationId, VolumeId};
use ordo_core::storage::{Geometry, MemStorage, Storage, StorageError};
use ordo_runtime::idle::IdlePolicy;
use ordo_runtime::primary_node::PrimaryNode;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::header::header;
use super::lag::LagTracker;
use super::meter::Meter;
use super::peer::{peak_rss_bytes, PeerArgs, PeerProcess, JOURNAL_FILE, REPLICA_FILE};
use super::progress::{rates_line, Progress};
use super::relay::{LinkShape, Relay};
use super::results::{Cpu, Memory, Results};
use super::workload::{Job, Op, OpKind};
use crate::args::{Backend, BenchArgs, Mode, PRIMARY_FILE};
use crate::cpu;
use ordo_daemon::runner::pin;
use ordo_daemon::volume::{ByteSize, Volume};

const VOLUME: VolumeId = VolumeId(0);
const LANES_UP_LIMIT: Duration = Duration::from_secs(10);
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// The primary, with or without its lanes.
enum Engine {
    Node(Box<PrimaryNode<Volume>>),
    Local(Box<Primary<Volume>>),
}

impl Engine {
    fn primary(&mut self) -> &mut Primary<Volume> {
        match self {
            Engine::Node(node) => node.primary(),
            Engine::Local(primary) => primary,
        }
    }

    fn poll(&mut self, now_ms: u64) -> bool {
        match self {
            Engine::Node(node) => node.poll(now_ms),
            Engine::Local(primary) => {
                primary.tick(now_ms);
                primary.poll_storage() > 0
            }
        }
    }
}

/// The pair and what it runs on; files it created are removed when dropped.
struct Pair {
    engine: Engine,
    /// The engine's millisecond clock starts here, once for the whole run.
    epoch: Instant,
    peer: Option<PeerProcess>,
    /// Kept alive for the run: dropping it cuts the lanes.
    _relay: Option<Relay>,
    files: Vec<std::path::PathBuf>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for file in &self.files {
            std::fs::remove_file(file).ok();
        }
    }
}

fn start_pair(args: &BenchArgs) -> Result<Pair> {
    let block_size = if args.bs.0.is_multiple_of(4096) {
        4096
    } else {
        512
    };
    let mut files = Vec::new();
    let mut block_size = block_size;
    let volume = match &args.backend {
        Backend::Mem => Volume::Mem(MemStorage::new(Geometry::new(
            args.size_bytes(),
            block_size,
        )?)?),
        Backend::Dir(dir) => {
            let path = dir.join(PRIMARY_FILE);
            files.push(path.clone());
            if args.mode != Mode::LocalOnly {
                files.push(dir.join(REPLICA_FILE));
                files.push(dir.join(JOURNAL_FILE));
            }
            Volume::open_file(
                &path,
                Some(args.size_bytes()),
                block_size,
                args.max_write_bytes(),
            )
            .with_context(|| format!("creating {}", path.display()))?
        }
        Backend::Spdk(bdev) => {
            // The bench's loop drives the primary itself: SPDK on its own threads.
            args.spdk.start("ordo_bench", None)?;
            let volume = Volume::open_bdev(bdev, None, args.max_write_bytes())?;
            let geometry = volume.geometry();
            ensure!(
                args.size_bytes() <= geometry.size_bytes,
                "--size {} is larger than SPDK bdev {bdev} ({} bytes): give a smaller --size",
                ByteSize(args.size_bytes()),
                geometry.size_bytes
            );
            block_size = geometry.block_size;
            volume
        }
    };
    let volume_bytes = volume.geometry().size_bytes;
    let primary = new_primary(args, volume)?;
    if args.mode == Mode::LocalOnly {
        return Ok(Pair {
            engine: Engine::Local(Box::new(primary)),
            epoch: Instant::now(),
            peer: None,
            _relay: None,
            files,
        });
    }
    let peer = PeerProcess::spawn(&PeerArgs {
        lanes: args.lanes,
        volume_bytes,
        block_size,
        window_bytes: args.secondary_window_bytes(),
        max_write_bytes: args.max_write_bytes(),
        dir: match &args.backend {
            Backend::Mem | Backend::Spdk(_) => None,
            Backend::Dir(dir) => Some(dir.clone()),
        },
        core: args.cores.get(1).copied(),
        idle: args.idle,
    })?;
    let relay = if args.link_delay_ms > 0.0 || args.link_rate.is_some() {
        let shape = LinkShape {
            delay: args.link_delay(),
            rate_bytes_per_s: args.link_rate.map(|r| r.0),
        };
        Some(Relay::start(peer.addr(), shape).context("starting the link relay")?)
    } else {
        None
    };
    let addr = relay.as_ref().map_or(peer.addr(), |r| r.local_addr());
    let node = PrimaryNode::with_sender_core(primary, addr, args.lanes, args.cores.get(1).copied())
        .context("starting the lanes")?;
    let mut pair = Pair {
        engine: Engine::Node(Box::new(node)),
        epoch: Instant::now(),
        peer: Some(peer),
        _relay: relay,
        files,
    };
    wait_for_lanes(&mut pair, args.lanes)?;
    Ok(pair)
}

/// The bench's primary on `volume` (new for the run, all zeros) with a write-intent record
/// in memory: a new history the bench's secondary follows from its start.
fn new_primary(args: &BenchArgs, volume: Volume) -> Result<Primary<Volume>> {
    let config = args.engine_config();
    let infos = ordo_core::storage::describe(&config.volume_names, std::slice::from_ref(&volume));
    let record = Volume::Mem(MemStorage::new(record_geometry(&infos))?);
    let generation = GenerationId(u64::from(u32::MAX) + args.seed);
    let record = format_record(record, &infos, generation, true)?;
    Ok(Primary::new(config, vec![volume], record, args.seed)?)
}

/// Set by SIGINT or SIGTERM (handlers installed once, when the first pair starts): every
/// loop of a run checks it and stops with an error, so the pair is dropped and the files
/// it made are removed rather than left behind by a killed process.
fn interrupted() -> Result<&'static AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(flag);
    }
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .context("installing the signal handler")?;
    }
    Ok(FLAG.get_or_init(|| flag))
}

/// Stops the run if it was interrupted.
fn check_interrupted() -> Result<()> {
    // Relaxed: a flag set by the signal handler; it orders nothing else.
    ensure!(
        !interrupted()?.load(Ordering::Relaxed),
        "interrupted: the run stopped and removed the files it made"
    );
    Ok(())
}

/// Until every lane is up and answered the handshake.
fn wait_for_lanes(pair: &mut Pair, lanes: usize) -> Result<()> {
    let Engine::Node(node) = &mut pair.engine else {
        return Ok(());
    };
    let clock = Instant::now();
    loop {
        check_interrupted()?;
        node.poll(pair.epoch.elapsed().as_millis() as u64);
        let ready = (0..lanes).all(|lane| node.primary().lane_ready(lane));
        if ready {
            return Ok(());
        }
        if let Some(stalled) = node.primary().stalled() {
            bail!("the secondary refused the primary: {stalled}");
        }
        ensure!(
            clock.elapsed() < LANES_UP_LIMIT,
            "the lanes did not come up in {LANES_UP_LIMIT:?}: {}",
            node.last_error().unwrap_or("no error reported")
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn run(args: &BenchArgs, progress: bool) -> Result<Results> {
    let header = header(args.seed, args.describe())?;
    interrupted()?;
    let mut pair = start_pair(args)?;
    // Pinned only now: the lane connector, the relay and the secondary are not ours.
    pin(args.cores.first().copied())?;
    let mut run = Run::new(args, progress, pair.epoch);
    let secondary_pid = pair.peer.as_ref().map(PeerProcess::pid);
    run.measure(&mut pair.engine, secondary_pid)?;
    run.drain(&mut pair.engine)?;
    if let Engine::Node(node) = &mut pair.engine {
        if let Some(stalled) = node.primary().stalled() {
            bail!("replication stalled: {stalled}");
        }
    }
    let replicated = args.mode != Mode::LocalOnly;
    let memory = Memory {
        primary_peak_rss_bytes: Some(peak_rss_bytes("/proc/self/status")?),
        primary_window_bytes: Some(args.window.0),
        secondary_peak_rss_bytes: match &pair.peer {
            Some(peer) => Some(peer.peak_rss_bytes()?),
            None => None,
        },
        secondary_window_bytes: replicated.then(|| args.secondary_window_bytes()),
    };
    if let Some(peer) = pair.peer.take() {
        peer.stop()?;
    }
    let window_full_waits = run.window_full_waits;
    let cpu = run.cpu;
    let measured = run.meter.finish();
    Ok(Results {
        header,
        runtime_s: measured.runtime_s,
        counts: measured.counts,
        histograms: measured.histograms,
        intervals: measured.intervals,
        memory,
        cpu,
        replicated,
        window_full_waits,
    })
}

/// The state of a run, sized before it starts.
struct Run {
    block: usize,
    iodepth: usize,
    clock: Instant,
    /// Where the engine's millisecond clock starts (before the lanes came up).
    epoch: Instant,
    jobs: Vec<Job>,
    /// An operation refused for now (window full, device queue full), and its start.
    held: Vec<Option<(Op, u64)>>,
    /// Per in-flight write: its start (ns) and job; `free` lists unused slots.
    started_ns: Vec<u64>,
    slot_job: Vec<usize>,
    free: Vec<usize>,
    data: Vec<u8>,
    read_buf: Vec<u8>,
    /// `None` with replication off: nothing is ever applied, so it would only grow.
    lag: Option<LagTracker>,
    meter: Meter,
    progress: Progress,
    idle: IdlePolicy,
    /// The primary's count of window-full refusals when measuring began, then the
    /// refusals during the measured run.
    window_full_at_start: u64,
    window_full_waits: u64,
    /// What each side spent on the CPU during the measured run.
    cpu: Cpu,
}

impl Run {
    fn new(args: &BenchArgs, progress: bool, epoch: Instant) -> Run {
        let jobs = args.numjobs;
        let block = args.bs.0 as usize;
        let rate = args.rate.map(|r| r / jobs as f64);
        let slots = jobs * args.iodepth;
        let mut data = vec![0u8; block];
        ChaCha8Rng::seed_from_u64(args.seed).fill_bytes(&mut data);
        Run {
            block,
            iodepth: args.iodepth,
            clock: Instant::now(),
            epoch,
            jobs: (0..jobs)
                .map(|i| {
                    let pattern = args.rw;
                    let size = args.size_bytes();
                    Job::new(
                        pattern,
                        args.rwmixwrite,
                        block as u64,
                        size,
                        (i, jobs),
                        args.seed,
                        rate,
                    )
                })
                .collect(),
            held: vec![None; jobs],
            started_ns: vec![0; slots],
            slot_job: vec![0; slots],
            free: (0..slots).rev().collect(),
            data,
            read_buf: vec![0u8; block],
            lag: (args.mode != Mode::LocalOnly)
                .then(|| LagTracker::with_capacity(args.max_unapplied_writes().min(1 << 20))),
            meter: Meter::new(args),
            progress: Progress::new(progress, args.ramp + args.runtime),
            idle: args.idle.policy(),
            window_full_at_start: 0,
            window_full_waits: 0,
            cpu: Cpu::default(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// The engine's clock: one that never restarts, unlike the run's.
    fn engine_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The ramp, then the measured run; the CPU this process and the secondary's
    /// (`secondary_pid`) spend in it.
    fn measure(&mut self, engine: &mut Engine, secondary_pid: Option<u32>) -> Result<()> {
        self.clock = Instant::now();
        let sample = |pid| cpu::sample(pid).context("the CPU each side spent");
        let mut cpu_at_start = None;
        loop {
            check_interrupted()?;
            let now_ns = self.now_ns();
            if self.meter.start_if_due(now_ns) {
                self.window_full_at_start = engine.primary().stats().window_full;
                let secondary = secondary_pid.map(|pid| sample(Some(pid))).transpose()?;
                cpu_at_start = Some((sample(None)?, secondary));
            }
            if self.meter.ended(now_ns) {
                let total = engine.primary().stats().window_full;
                self.window_full_waits = total - self.window_full_at_start;
                if let Some((primary, secondary)) = cpu_at_start {
                    self.cpu = Cpu {
                        primary: Some(sample(None)?.since(&primary)),
                        secondary: match (secondary, secondary_pid) {
                            (Some(start), Some(pid)) => Some(sample(Some(pid))?.since(&start)),
                            _ => None,
                        },
                    };
                }
                break;
            }
            let issued = self.issue(engine, now_ns)?;
            let did = engine.poll(self.engine_ms());
            self.take_events(engine)?;
            if self.meter.interval_due(self.now_ns()) {
                self.close_interval(engine);
            }
            let now_ns = self.now_ns();
            if self.progress.due(now_ns) {
                let line = self.progress_line(engine);
                self.progress.show(now_ns, &line);
            }
            let due = self.next_due_in(self.now_ns());
            self.idle.after_round_before((issued || did).into(), due);
        }
        if self.meter.stop(self.now_ns()) {
            self.close_interval(engine);
        }
        self.progress.finish();
        Ok(())
    }

    /// After the run: every write acknowledged and, with a secondary, applied, so the
    /// last writes' latency and lag are in the histograms (not in the throughput).
    fn drain(&mut self, engine: &mut Engine) -> Result<()> {
        engine
            .primary()
            .flush(u64::MAX)
            .context("closing the last data set")?;
        let deadline = Instant::now() + DRAIN_LIMIT;
        let replicated = matches!(engine, Engine::Node(_));
        loop {
            check_interrupted()?;
            let did = engine.poll(self.engine_ms());
            self.take_events(engine)?;
            let primary = engine.primary();
            let acked = self.free.len() == self.started_ns.len();
            if acked && (!replicated || primary.peer_applied() >= primary.last_closed()) {
                return Ok(());
            }
            if let Some(stalled) = primary.stalled() {
                bail!("replication stalled: {stalled}");
            }
            ensure!(
                Instant::now() < deadline,
                "the secondary did not catch up within {DRAIN_LIMIT:?} of the end (applied {}, closed {})",
                primary.peer_applied(),
                primary.last_closed()
            );
            self.idle.after_round(did.into());
        }
    }

    /// In open loop, how long until the next operation is due.
    fn next_due_in(&self, now_ns: u64) -> Option<Duration> {
        let due = self.jobs.iter().filter_map(|j| j.next_due_ns()).min()?;
        Some(Duration::from_nanos(due.saturating_sub(now_ns)))
    }

    /// Starts what each job may start now; true if it started any.
    fn issue(&mut self, engine: &mut Engine, now_ns: u64) -> Result<bool> {
        let mut any = false;
        for j in 0..self.jobs.len() {
            let mut started = 0;
            while self.jobs[j].in_flight < self.iodepth && started < self.iodepth {
                let next = self.held[j].take();
                let Some((op, start_ns)) = next.or_else(|| self.jobs[j].next_due(now_ns)) else {
                    break;
                };
                let done = match op.kind {
                    OpKind::Write => self.write(engine, j, op, start_ns)?,
                    OpKind::Read => self.read(engine, op, start_ns)?,
                };
                if !done {
                    self.held[j] = Some((op, start_ns));
                    break;
                }
                started += 1;
                any = true;
            }
        }
        Ok(any)
    }

    /// Submits a write; false if the primary cannot take it yet.
    fn write(&mut self, engine: &mut Engine, job: usize, op: Op, start_ns: u64) -> Result<bool> {
        let slot = self.free.pop().context("a free slot below the iodepth")?;
        let data = &self.data[..self.block];
        match engine
            .primary()
            .submit_write(self.engine_ms(), VOLUME, op.offset, data, slot as u64)
        {
            Ok(seq) => {
                self.started_ns[slot] = start_ns;
                self.slot_job[slot] = job;
                self.jobs[job].in_flight += 1;
                if let Some(lag) = &mut self.lag {
                    lag.submitted(seq, self.block as u32);
                }
                Ok(true)
            }
            Err(SubmitError::WindowFull) => {
                self.free.push(slot);
                Ok(false)
            }
            Err(error) => Err(error).context("submitting a write"),
        }
    }

    /// Reads from the primary's volume (it answers at once); false if its queue is full.
    fn read(&mut self, engine: &mut Engine, op: Op, start_ns: u64) -> Result<bool> {
        let buf = &mut self.read_buf[..self.block];
        match engine.primary().read(VOLUME, op.offset, buf) {
            Ok(()) => {}
            Err(SubmitError::Invalid(StorageError::QueueFull(_))) => return Ok(false),
            Err(error) => return Err(error).context("reading"),
        }
        self.meter.record(OpKind::Read, start_ns, self.now_ns());
        Ok(true)
    }

    fn take_events(&mut self, engine: &mut Engine) -> Result<()> {
        let now_ns = self.now_ns();
        let primary = engine.primary();
        while let Some(event) = primary.next_event() {
            match event {
                PrimaryEvent::WriteDone { token, seq, result } => {
                    result.context("the primary's volume failed a write")?;
                    let slot = token as usize;
                    self.jobs[self.slot_job[slot]].in_flight -= 1;
                    self.free.push(slot);
                    if let Some(lag) = &mut self.lag {
                        lag.acked(seq, now_ns);
                    }
                    self.meter
                        .record(OpKind::Write, self.started_ns[slot], now_ns);
                }
                PrimaryEvent::FlushDone { result, .. } => {
                    result.context("the primary's volume failed a flush")?;
                }
                PrimaryEvent::DataSetClosed {
                    data_set, sync_seq, ..
                } => {
                    if let Some(lag) = &mut self.lag {
                        lag.closed(data_set, sync_seq);
                    }
                }
            }
        }
        let applied = primary.peer_applied();
        if let Some(lag) = &mut self.lag {
            self.meter.record_lag(now_ns, |histograms, counts| {
                lag.applied(applied, now_ns, histograms, counts)
            });
        }
        Ok(())
    }

    /// The last second's rates and the lag now, for the progress line.
    fn progress_line(&self, engine: &mut Engine) -> String {
        let primary = engine.primary();
        let lag = primary
            .last_closed()
            .0
            .saturating_sub(primary.peer_applied().0);
        format!(
            "{}, lag {lag} data sets",
            rates_line(self.meter.intervals())
        )
    }

    fn close_interval(&mut self, engine: &mut Engine) {
        let replicated = matches!(engine, Engine::Node(_));
        let primary = engine.primary();
        let (lag_data_sets, retention_bytes) = if replicated {
            let lag = primary
                .last_closed()
                .0
                .saturating_sub(primary.peer_applied().0);
            (lag, primary.retention_bytes())
        } else {
            (0, 0)
        };
        self.meter
            .close_interval(self.now_ns(), lag_data_sets, retention_bytes);
    }
}

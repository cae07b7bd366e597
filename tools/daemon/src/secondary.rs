//! `ordo secondary`: accepts the primary's lanes, stages every write in a journal in the
//! state directory, and applies complete data sets to the replica volumes in order. Started
//! again on the same state directory (after `kill -9`, a power loss or SIGTERM) it recovers
//! from the journal and resumes where the primary left off.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use ordo_core::protocol::{GenerationId, GroupId, VolumeId};
use ordo_core::secondary::journal::{record_bytes, required_bytes};
use ordo_core::secondary::{ReplicaState, Secondary, SecondaryConfig};
use ordo_core::storage::{read_blocking, Storage};
use ordo_runtime::secondary_node::SecondaryNode;

use crate::config::{print_banner, SecondaryOptions, SecondarySettings};
use crate::report::{
    Digest, Link, ReplicaImage, ReplicaReport, RoleStatus, SecondaryCounters, SecondaryDataSets,
    SecondaryReport, Status, Usage, VolumeReport,
};
use ordo_runtime::idle::Round;

use crate::control::{self, ControlReply, ControlRequest, DigestRequest};
use crate::primary_state::created_now;
use crate::runner::{self, Rounds, Runtime};
use crate::shared::{
    describe_volumes, digest, digest_plan, init_logging, lock_state_dir, status_channel,
    status_reply, sync_dir, termination_flag, StatusAsk,
};
use crate::volume::{Backend, Volume};

/// How often the poller looks for a failure to log.
const WATCH_EVERY_MS: u64 = 100;
/// A digest waits this long for the secondary to be between data sets.
const DIGEST_QUIET_TIMEOUT_MS: u64 = 10_000;
/// On SIGTERM, finish the data set being applied for at most this long.
const DRAIN_TIMEOUT_MS: u64 = 10_000;
const JOURNAL_FILE: &str = "journal";

type DigestJob = (DigestRequest, Sender<ControlReply>);

pub fn run(options: SecondaryOptions) -> Result<ExitCode> {
    init_logging();
    let spdk = options.spdk.clone();
    let settings = options.resolve()?;
    print_banner("secondary", &settings)?;
    // Locked before SPDK starts: a second secondary on this directory is told so, rather
    // than failing on SPDK's core locks or a device the first one holds.
    std::fs::create_dir_all(&settings.state_dir)
        .with_context(|| format!("creating state directory {}", settings.state_dir.display()))?;
    let lock = lock_state_dir(&settings.state_dir, "secondary")?;
    let runtime = Runtime::start(
        &spdk,
        "ordo_secondary",
        &settings.cores,
        settings.pin,
        settings.idle,
    )?;
    let terminate = termination_flag()?;
    let control = settings.control.clone();
    let receiver_core = runtime.second_core(&settings.cores);
    let code = runner::run(runtime, move || {
        Receiving::start(settings, receiver_core, terminate)
    })?;
    // The socket before the lock: a secondary restarting meanwhile must not find it.
    let _ = std::fs::remove_file(&control);
    drop(lock);
    Ok(code)
}

/// The secondary once up: its node, the control socket's side, and the phase (serving
/// until SIGTERM, then finishing the data set being applied).
struct Receiving {
    node: SecondaryNode<Volume>,
    control: Control,
    settings: SecondarySettings,
    terminate: Arc<AtomicBool>,
    started: Instant,
    next_watch: u64,
    reported_failure: bool,
    /// Terminating, until this time (ms).
    drain_deadline: Option<u64>,
}

impl Receiving {
    /// Opens (recovering) or creates the journal and replicas, then serves the control
    /// socket and accepts the primary's lanes.
    fn start(
        settings: SecondarySettings,
        receiver_core: Option<usize>,
        terminate: Arc<AtomicBool>,
    ) -> Result<Receiving> {
        let secondary = open_or_create(&settings)?;
        let control = Control::start(&settings, &secondary)?;
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("listening on {}", settings.listen))?;
        let max_write = u32::try_from(settings.max_write_bytes.0).unwrap_or(u32::MAX);
        let node = SecondaryNode::with_receiver_core(
            secondary,
            listener,
            settings.lanes,
            max_write,
            receiver_core,
        )?;
        tracing::info!(
            "secondary up: listening on {}, applied {}, control {}",
            node.local_addr()?,
            node.secondary().applied(),
            settings.control.display()
        );
        Ok(Receiving {
            node,
            control,
            settings,
            terminate,
            started: Instant::now(),
            next_watch: 0,
            reported_failure: false,
            drain_deadline: None,
        })
    }

    fn serve(&mut self, now: u64) -> bool {
        let mut did = self.node.poll(now);
        did |= self.control.round(&mut self.node, now, &self.settings);
        if now >= self.next_watch {
            if let (Some(failure), false) = (self.node.secondary().failure(), self.reported_failure)
            {
                tracing::error!("secondary failed: {failure}");
                self.reported_failure = true;
            }
            self.next_watch = now + WATCH_EVERY_MS;
        }
        // Relaxed: a flag set by the signal handler; it orders nothing else.
        if self.terminate.load(Ordering::Relaxed) {
            self.drain_deadline = Some(now.saturating_add(DRAIN_TIMEOUT_MS));
            self.control.close();
        }
        did
    }

    /// On SIGTERM: let the data set being applied finish (bounded), so the replica is
    /// left between data sets; the journal is durable either way.
    fn drain(&mut self, now: u64, deadline: u64) -> Round {
        let between = self.node.secondary().is_between_data_sets();
        if between || now >= deadline {
            tracing::info!(
                "terminating at applied {} (between data sets: {between})",
                self.node.secondary().applied(),
            );
            return Round::Done;
        }
        self.node.poll(now).into()
    }
}

impl Rounds for Receiving {
    fn round(&mut self) -> Round {
        let now = self.started.elapsed().as_millis() as u64;
        if let Some(deadline) = self.drain_deadline {
            return self.drain(now, deadline);
        }
        self.serve(now).into()
    }

    fn exit_code(&self) -> ExitCode {
        ExitCode::SUCCESS
    }
}

/// The control socket's side on the poller: status asks and digest jobs to answer.
struct Control {
    asks: Receiver<StatusAsk>,
    jobs: Receiver<DigestJob>,
    /// The operator's commands (`ordo resync`), answered by the poller.
    commands: Receiver<(ControlRequest, Sender<ControlReply>)>,
    /// The digest being taken, and since when (it waits for a pause between data sets).
    digest: Option<(DigestJob, u64)>,
    volumes: Vec<VolumeReport>,
    max_io: u32,
}

impl Control {
    /// Terminating: status and digest requests are answered at once that the secondary is
    /// shutting down (their senders see the receivers gone), not left to time out.
    fn close(&mut self) {
        self.asks = crossbeam_channel::never();
        self.jobs = crossbeam_channel::never();
        self.commands = crossbeam_channel::never();
        self.digest = None;
    }

    /// Serves the control socket; its requests reach the poller through `Control`.
    fn start(settings: &SecondarySettings, secondary: &Secondary<Volume>) -> Result<Control> {
        let (volumes, max_io) = describe_volumes(&settings.volume, secondary.replicas());
        let (ask_sender, asks) = status_channel();
        let (job_sender, jobs) = crossbeam_channel::bounded::<DigestJob>(4);
        let (command_sender, commands) = crossbeam_channel::bounded(4);
        let handler = move |request| match request {
            ControlRequest::Status => status_reply(&ask_sender),
            command @ (ControlRequest::AllowInconsistent | ControlRequest::DiscardMyData) => {
                let (reply, answer) = crossbeam_channel::bounded(1);
                match command_sender.try_send((command, reply)) {
                    Ok(()) => answer
                        .recv()
                        .unwrap_or_else(|_| ControlReply::error("the secondary is shutting down")),
                    Err(_) => ControlReply::error("too many commands at once, or shutting down"),
                }
            }
            ControlRequest::Digest(request) => {
                let (reply, answer) = crossbeam_channel::bounded(1);
                let shutting_down = || ControlReply::error("the secondary is shutting down");
                match job_sender.try_send((request, reply)) {
                    Ok(()) => answer.recv().unwrap_or_else(|_| shutting_down()),
                    Err(TrySendError::Full(_)) => ControlReply::error("too many digests at once"),
                    Err(TrySendError::Disconnected(_)) => shutting_down(),
                }
            }
        };
        control::serve(&settings.control, Arc::new(handler))?;
        Ok(Control {
            asks,
            jobs,
            commands,
            digest: None,
            volumes,
            max_io,
        })
    }

    /// Answers what can be answered this round; true if it did.
    fn round(
        &mut self,
        node: &mut SecondaryNode<Volume>,
        now: u64,
        settings: &SecondarySettings,
    ) -> bool {
        let mut did = false;
        if self.digest.is_none() {
            self.digest = self.jobs.try_recv().ok().map(|job| (job, now));
        }
        if let Some(((request, reply), since)) = self.digest.take() {
            match try_digest(node, &request, &self.volumes, self.max_io, now - since) {
                Some(answer) => {
                    let _ = reply
                        .try_send(answer.map_or_else(ControlReply::error, ControlReply::Digest));
                    did = true;
                }
                None => self.digest = Some(((request, reply), since)),
            }
        }
        while let Ok(reply) = self.asks.try_recv() {
            let _ = reply.try_send(status_report(node, now, settings, &self.volumes));
            did = true;
        }
        while let Ok((command, reply)) = self.commands.try_recv() {
            let _ = reply.try_send(operator_command(node.secondary_mut(), &command));
            did = true;
        }
        did
    }
}

/// What `ordo resync` asks of the secondary.
fn operator_command(secondary: &mut Secondary<Volume>, command: &ControlRequest) -> ControlReply {
    match command {
        ControlRequest::AllowInconsistent => match secondary.allow_inconsistent() {
            Ok(()) => {
                tracing::warn!("the operator lets the held resync go on without a consistent image: the replica is INCONSISTENT until its end point");
                ControlReply::Done {
                    message: "the held resync goes on without a consistent image: the replica is inconsistent until its end point is applied".into(),
                }
            }
            Err(why) => ControlReply::error(why),
        },
        ControlRequest::DiscardMyData => {
            secondary.discard_history();
            tracing::warn!(
                "the operator lets the next primary overwrite this replica whatever its history"
            );
            ControlReply::Done {
                message: "the next primary to connect overwrites this replica whatever its history (a full resync; the replica is inconsistent until it ends)".into(),
            }
        }
        ControlRequest::Status | ControlRequest::Digest(_) => {
            unreachable!("status and digests are not commands")
        }
    }
}

/// Polls until SIGTERM: the node, the control socket's requests, and a failure to log.
fn secondary_config(settings: &SecondarySettings) -> SecondaryConfig {
    SecondaryConfig {
        group: GroupId(settings.group),
        volume_names: settings.volume.iter().map(|v| v.name.clone()).collect(),
        window_bytes: settings.window_bytes.0,
        max_write_bytes: u32::try_from(settings.max_write_bytes.0).unwrap_or(u32::MAX),
        lanes: settings.lanes,
        applied_interval_ms: settings.applied_interval_ms,
        bug: None,
    }
}

/// Opens the journal in the state directory and recovers from it, or creates one (under a
/// temporary name, renamed once formatted, so a crash mid-creation leaves no half journal).
fn open_or_create(settings: &SecondarySettings) -> Result<Secondary<Volume>> {
    let config = secondary_config(settings);
    // Each journal record goes to the device in one request: header block and payload.
    let record_io = u32::try_from(record_bytes(config.max_write_bytes, settings.block_size))
        .context("--max-write-bytes is too large")?;
    if let Some(bdev) = &settings.journal_bdev {
        return open_or_create_on_bdev(settings, bdev, record_io);
    }
    let path = settings.state_dir.join(JOURNAL_FILE);
    let existing = path.exists();
    if existing {
        check_replicas_survived(settings)?;
    }
    let zeroed = settings.volume.iter().all(created_now);
    let replicas = open_replicas(settings)?;
    if existing {
        let journal = Volume::open_file(&path, None, settings.block_size, record_io)
            .with_context(|| format!("opening journal {}", path.display()))?;
        let secondary = Secondary::open(config, journal, replicas)
            .with_context(|| format!("recovering from journal {}", path.display()))?;
        tracing::info!(
            "recovered from {}: applied {}, {} records restaged",
            path.display(),
            secondary.applied(),
            secondary.stats().recovered_records
        );
        return Ok(secondary);
    }
    let needed = journal_bytes_needed(settings);
    let size = settings.journal_bytes.map_or(needed, |b| b.0);
    ensure!(
        size >= needed,
        "--journal-bytes {size} is smaller than the {needed} bytes a {}-byte window needs",
        config.window_bytes
    );
    let size = size.next_multiple_of(u64::from(settings.block_size));
    let fresh = settings.state_dir.join(format!("{JOURNAL_FILE}.new"));
    let _ = std::fs::remove_file(&fresh);
    let journal = Volume::open_file(&fresh, Some(size), settings.block_size, record_io)
        .with_context(|| format!("creating journal {}", fresh.display()))?;
    let journal_id = RandomState::new().build_hasher().finish() | 1;
    let secondary = Secondary::create(config, journal_id, journal, replicas, zeroed)
        .context("formatting the journal")?;
    std::fs::rename(&fresh, &path).context("naming the new journal")?;
    sync_dir(&settings.state_dir)?;
    tracing::info!(
        "created journal {} ({size} bytes, id {journal_id:#x})",
        path.display()
    );
    Ok(secondary)
}

fn open_replicas(settings: &SecondarySettings) -> Result<Vec<Volume>> {
    let mut replicas = Vec::with_capacity(settings.volume.len());
    for spec in &settings.volume {
        let replica = Volume::open(spec, settings.block_size)
            .with_context(|| format!("opening replica {spec}"))?;
        replicas.push(replica);
    }
    Ok(replicas)
}

fn journal_bytes_needed(settings: &SecondarySettings) -> u64 {
    let config = secondary_config(settings);
    required_bytes(
        config.window_bytes,
        config.max_write_bytes,
        settings.block_size,
    )
}

/// The journal on an SPDK bdev: recovered from if it holds one, formatted if its first
/// block is blank (a new bdev), refused otherwise (a bdev holding something else is never
/// overwritten). It takes the whole bdev.
fn open_or_create_on_bdev(
    settings: &SecondarySettings,
    bdev: &str,
    record_io: u32,
) -> Result<Secondary<Volume>> {
    let config = secondary_config(settings);
    let mut journal = Volume::open_bdev(bdev, Some(settings.block_size), record_io)
        .with_context(|| format!("opening journal bdev {bdev}"))?;
    let mut first = vec![0u8; settings.block_size as usize];
    read_blocking(&mut journal, 0, &mut first, &mut Vec::new())
        .with_context(|| format!("reading journal bdev {bdev}"))?;
    if first.iter().any(|&b| b != 0) {
        check_replicas_survived(settings)?;
        let replicas = open_replicas(settings)?;
        let secondary = Secondary::open(config, journal, replicas).with_context(|| {
            format!("recovering from journal bdev {bdev} (its first block is not blank)")
        })?;
        tracing::info!(
            "recovered from journal bdev {bdev}: applied {}, {} records restaged",
            secondary.applied(),
            secondary.stats().recovered_records
        );
        return Ok(secondary);
    }
    let needed = journal_bytes_needed(settings);
    let size = journal.geometry().size_bytes;
    ensure!(
        size >= needed,
        "journal bdev {bdev} has {size} bytes, fewer than the {needed} a {}-byte window needs",
        config.window_bytes
    );
    let zeroed = settings.volume.iter().all(created_now);
    let replicas = open_replicas(settings)?;
    let journal_id = RandomState::new().build_hasher().finish() | 1;
    let secondary = Secondary::create(config, journal_id, journal, replicas, zeroed)
        .with_context(|| format!("formatting journal bdev {bdev}"))?;
    tracing::info!("formatted journal bdev {bdev} ({size} bytes, id {journal_id:#x})");
    Ok(secondary)
}

/// A journal from an earlier run says what was applied to the replicas: they must still
/// be there. A `mem:` replica is gone with its process; a missing file would be created
/// empty. Either way the replica no longer holds what the journal says.
fn check_replicas_survived(settings: &SecondarySettings) -> Result<()> {
    for spec in &settings.volume {
        let lost = match &spec.backend {
            Backend::Mem { .. } => Some("is in memory"),
            Backend::File { path, .. } if !path.exists() => Some("does not exist"),
            Backend::File { .. } => None,
            // Whether a bdev keeps its data across a restart is SPDK's config (a malloc
            // bdev does not, an NVMe or aio bdev does): nothing to tell from here.
            Backend::Spdk { .. } => None,
        };
        if let Some(why) = lost {
            bail!(
                "{} holds a journal from an earlier run, but replica {spec} {why}: it lost \
                 what that journal says was applied; restore it, or remove the state \
                 directory to start over (the primary then needs a full resync)",
                settings.state_dir.display()
            );
        }
    }
    Ok(())
}

/// Digests the replicas if the secondary is between data sets with nothing in flight on
/// them; `None` to try again on a later round.
fn try_digest(
    node: &mut SecondaryNode<Volume>,
    request: &DigestRequest,
    volumes: &[VolumeReport],
    max_io: u32,
    waited_ms: u64,
) -> Option<Result<Digest, String>> {
    let secondary = node.secondary_mut();
    let idle = secondary.replicas().iter().all(|r| r.in_flight() == 0);
    if !secondary.is_between_data_sets() || !idle {
        if waited_ms > DIGEST_QUIET_TIMEOUT_MS {
            return Some(Err("the secondary never paused between data sets".into()));
        }
        return None;
    }
    let plan = match digest_plan(request, volumes) {
        Ok(plan) => plan,
        Err(why) => return Some(Err(why)),
    };
    let applied = secondary.applied().0;
    let result = digest(
        applied,
        request.chunk_bytes,
        u64::from(max_io),
        volumes,
        &plan,
        |i, at, buf| {
            // Quiet and idle (checked above, nothing polled since): every read is taken.
            match secondary.read_replica(VolumeId(i as u16), at, buf) {
                Ok(taken) => {
                    assert!(taken, "a quiet replica took the read");
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        },
    );
    Some(result)
}

fn replica_report(secondary: &Secondary<Volume>) -> ReplicaReport {
    let fresh = secondary.history() == GenerationId::NONE;
    let state = match secondary.replica_state() {
        _ if fresh => "fresh",
        ReplicaState::Consistent => "consistent",
        ReplicaState::Held => "held",
        ReplicaState::Inconsistent => "inconsistent",
    };
    let image = secondary
        .replica_point()
        .map(|(generation, data_set)| ReplicaImage {
            generation: if generation == GenerationId::NONE {
                String::new()
            } else {
                generation.to_string()
            },
            data_set: data_set.0,
        });
    ReplicaReport {
        state: state.into(),
        image,
        follows: if fresh {
            String::new()
        } else {
            secondary.history().to_string()
        },
        rebasing: secondary.rebasing(),
        discard_pending: secondary.discard_pending(),
        held_full: secondary.held_resync_full(),
    }
}

fn status_report(
    node: &SecondaryNode<Volume>,
    now_ms: u64,
    settings: &SecondarySettings,
    volumes: &[VolumeReport],
) -> Status {
    let secondary = node.secondary();
    let stats = secondary.stats();
    let (used, size) = secondary.journal_use();
    let applied = secondary.applied().0;
    let staged = stats.last_staged.0.max(applied);
    let node_stats = node.stats();
    let report = SecondaryReport {
        link: Link {
            lanes: node.lanes(),
            lanes_up: node.lanes_up(),
            lanes_dropped: node_stats.lanes_dropped,
            last_error: node.last_error().map(str::to_string),
        },
        replica: replica_report(secondary),
        data_sets: SecondaryDataSets {
            staged,
            applied,
            lag_data_sets: staged - applied,
        },
        journal: Usage {
            used_bytes: used,
            size_bytes: size,
        },
        failure: secondary.failure().map(str::to_string),
        counters: SecondaryCounters {
            records_received: stats.records_received,
            records_staged: stats.records_staged,
            duplicates: stats.duplicates,
            out_of_window: stats.out_of_window,
            reacks_dropped: stats.reacks_dropped,
            before_hello: stats.before_hello,
            journal_flushes: stats.journal_flushes,
            acks_sent: stats.acks_sent,
            data_sets_applied: stats.data_sets_applied,
            recovered_records: stats.recovered_records,
            digests_answered: stats.digests_answered,
            rebases: stats.rebases,
            lanes_accepted: node_stats.lanes_accepted,
            lanes_refused: node_stats.lanes_refused,
        },
    };
    Status {
        role: RoleStatus::Secondary(report),
        version: env!("CARGO_PKG_VERSION").into(),
        group: settings.group,
        pid: std::process::id(),
        uptime_ms: now_ms,
        volumes: volumes.to_vec(),
    }
}

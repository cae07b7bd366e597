//! `ordo primary`: serves the group's volumes over NBD, acknowledges writes as soon as they
//! are on the local volumes, and streams them to the secondary over several lanes. The
//! poller (one pinned thread) owns the primary and the NBD server: it reads clients'
//! requests off their sockets, writes locally, acknowledges, sequences and sends; a
//! control thread answers status and digest requests through the request ring.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ordo_core::primary::resync::EXTENT_BYTES;
use ordo_core::primary::{
    DataSetPolicy, Primary, PrimaryConfig, Replication, ResyncPhase, ResyncRoom, ResyncStats,
    Start, WindowFull,
};
use ordo_core::protocol::{DataSetId, GroupId, VolumeId};
use ordo_core::storage::Storage;
use ordo_runtime::primary_node::PrimaryNode;
use ordo_runtime::primary_service::{
    Frontend, Op, PrimaryService, PrimaryStatus, ReplyTo, Request,
};

use crate::config::{print_banner, OnWindowFull, PrimaryOptions, PrimarySettings};
use crate::nbd_export::{Exports, NbdVolume};
use crate::primary_state::{self, created_now, random_u64};
use crate::report::{
    Digest, Link, PrimaryCounters, PrimaryDataSets, PrimaryHistory, PrimaryLink, PrimaryReport,
    ResyncReport, RoleStatus, Status, Usage, VolumeReport, WindowFullReport, Writes,
};
use ordo_runtime::idle::{IdlePolicy, Round};

use crate::control::{self, ControlReply, ControlRequest, DigestRequest};
use crate::runner::{self, Rounds, Runtime};
use crate::shared::{
    ask_status, describe_volumes, digest, digest_plan, init_logging, status_channel, status_reply,
    termination_flag, StatusAsk,
};
use crate::volume::Volume;
use crossbeam_channel::{Receiver, Sender};

/// How often the poller looks at its status for the log.
const WATCH_EVERY_MS: u64 = 100;
/// How long a digest waits for the secondary to apply the data set it closes.
const DIGEST_APPLY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(options: PrimaryOptions) -> Result<ExitCode> {
    init_logging();
    let spdk = options.spdk.clone();
    let settings = options.resolve()?;
    print_banner("primary", &settings)?;
    let runtime = Runtime::start(
        &spdk,
        "ordo_primary",
        &settings.cores,
        settings.pin,
        settings.idle,
    )?;
    let terminate = termination_flag()?;
    let control = settings.control.clone();
    let sender_core = runtime.second_core(&settings.cores);
    let code = runner::run(runtime, move || {
        Serving::start(settings, sender_core, terminate)
    })?;
    let _ = std::fs::remove_file(&control);
    Ok(code)
}

/// The primary once up: the service, what the control thread asks, and the phase (serving
/// until SIGTERM, then draining).
struct Serving {
    service: PrimaryService<Volume>,
    nbd: Exports,
    asks: Receiver<StatusAsk>,
    settings: PrimarySettings,
    reports: Vec<VolumeReport>,
    terminate: Arc<AtomicBool>,
    started: Instant,
    watch: Watch,
    next_watch: u64,
    /// Draining, until this time (ms).
    drain_deadline: Option<u64>,
    /// Drained: the write-intent transaction that records the clean stop.
    clean_stop: Option<u64>,
    /// Holds the state directory while the primary runs.
    _lock: Option<std::fs::File>,
    /// What the process exits with once the poller is done: 3 if the drain timed out.
    exit_code: ExitCode,
}

impl Serving {
    /// Opens the volumes and starts the lanes, the control socket and the NBD server.
    fn start(
        settings: PrimarySettings,
        sender_core: Option<usize>,
        terminate: Arc<AtomicBool>,
    ) -> Result<Serving> {
        let created: Vec<bool> = settings.volume.iter().map(created_now).collect();
        let mut volumes = Vec::with_capacity(settings.volume.len());
        for spec in &settings.volume {
            let volume = Volume::open(spec, settings.block_size)
                .with_context(|| format!("opening volume {spec}"))?;
            tracing::info!("volume {spec}: {:?}", volume.geometry());
            volumes.push(volume);
        }
        let (reports, max_io) = describe_volumes(&settings.volume, &volumes);
        let config = primary_config(&settings);
        let infos = ordo_core::storage::describe(&config.volume_names, &volumes);
        let state = primary_state::open_or_create(
            settings.state_dir.as_deref(),
            &settings.volume,
            &created,
            &infos,
        )?;
        let primary = Primary::new(config.clone(), volumes, state.record, random_u64())
            .context("primary configuration")?;
        match primary.start() {
            _ if state.created => {
                tracing::info!("history {} begins", primary.generation());
            }
            Start::Resumed { data_set } => tracing::info!(
                "resuming history {} after a clean stop at {data_set}: nothing to resend or resynchronise",
                primary.generation()
            ),
            Start::NewGeneration { extents_to_resync } => tracing::info!(
                "history {} begins after a crash of {} (its last run did not stop cleanly): {} MiB may differ from the secondary, compared when it follows",
                primary.generation(),
                primary
                    .ancestors()
                    .first()
                    .map_or_else(|| "no history".to_string(), ToString::to_string),
                extents_to_resync
            ),
        }
        let node =
            PrimaryNode::with_sender_core(primary, settings.connect, settings.lanes, sender_core)
                .context("starting the lane connector and sender")?;
        let service = PrimaryService::new(node, settings.max_requests, settings.window_bytes.0);
        let max_request = config.max_write_bytes.min(max_io);
        let mut nbd = Exports::listen(settings.nbd, nbd_exports(&reports, max_request))?;
        service.set_waker(nbd.server().waker());
        let frontend = service.frontend();
        let (asks, ask_queue) = status_channel();
        let handler = {
            let (frontend, reports) = (frontend.clone(), reports.clone());
            move |request| control_reply(request, &asks, &frontend, &reports, max_io)
        };
        control::serve(&settings.control, Arc::new(handler))?;
        tracing::info!(
            "primary up: NBD on {}, replicating to {} over {} lanes, control {}",
            settings.nbd,
            settings.connect,
            settings.lanes,
            settings.control.display()
        );
        Ok(Serving {
            service,
            nbd,
            asks: ask_queue,
            settings,
            reports,
            terminate,
            started: Instant::now(),
            watch: Watch::default(),
            next_watch: 0,
            drain_deadline: None,
            clean_stop: None,
            _lock: state.lock,
            exit_code: ExitCode::SUCCESS,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Serving: the service, status asks, and state changes to log; SIGTERM starts the
    /// drain.
    fn serve(&mut self, now: u64) -> bool {
        let mut did = self.poll_io(now);
        while let Ok(reply) = self.asks.try_recv() {
            let status = status_report(
                &self.service.status(now),
                now,
                &self.settings,
                &self.reports,
            );
            let _ = reply.try_send(status);
            did = true;
        }
        if now >= self.next_watch {
            log_changes(&self.service.status(now), &mut self.watch);
            self.next_watch = now + WATCH_EVERY_MS;
        }
        // Relaxed: a flag set by the signal handler; it orders nothing else.
        if self.terminate.load(Ordering::Relaxed) {
            tracing::info!("terminating: refusing new requests, closing the open data set and draining to the secondary");
            self.nbd.server().stop_accepting();
            self.service.close();
            self.drain_deadline =
                Some(now.saturating_add(self.settings.drain_timeout_s.saturating_mul(1000)));
        }
        did
    }

    /// Draining: until the secondary applied the last data set (then the clean stop is
    /// recorded, so the next start resumes with nothing to resend), or the deadline.
    fn drain(&mut self, now: u64, deadline: u64) -> Round {
        let did = self.poll_io(now);
        let target = self.service.drained();
        let primary = self.service.node().primary();
        if let Some(txn) = self.clean_stop {
            if primary.intent_durable(txn) {
                tracing::info!("clean stop recorded; exiting");
                return Round::Done;
            }
            return did.into();
        }
        let applied = primary.peer_applied();
        if target.is_some_and(|target| applied >= target) {
            match primary.record_clean_stop() {
                Ok(txn) => {
                    tracing::info!(
                        "drained: the secondary applied {applied}; recording the clean stop"
                    );
                    self.clean_stop = Some(txn);
                    return Round::Busy;
                }
                Err(why) => tracing::debug!("not yet a clean stop: {why}"),
            }
        }
        if now >= deadline {
            tracing::warn!(
                "drain timed out after {} s: the secondary applied {applied}, {} left unreplicated",
                self.settings.drain_timeout_s,
                target.map_or("the open data set".into(), |t| format!("up to {t}"))
            );
            self.exit_code = ExitCode::from(3);
            return Round::Done;
        }
        did.into()
    }
}

impl Serving {
    /// The clients' requests in, the service's round, its replies out.
    fn poll_io(&mut self, now: u64) -> bool {
        let mut did = self.nbd.poll(Instant::now(), &mut self.service);
        did |= self.service.poll(now);
        did |= self.nbd.complete(&mut self.service);
        did
    }
}

impl Rounds for Serving {
    fn round(&mut self) -> Round {
        let now = self.now_ms();
        if let Some(deadline) = self.drain_deadline {
            return self.drain(now, deadline);
        }
        self.serve(now).into()
    }

    fn exit_code(&self) -> ExitCode {
        self.exit_code
    }

    /// Parks in epoll on the NBD sockets (and the control ring's waker), so a request
    /// wakes the poller at once; the park's length bounds the wait for everything else
    /// (lanes, device completions, timers).
    fn idle(&mut self, idle: IdlePolicy) {
        match idle {
            IdlePolicy::Park(timeout) => {
                if let Err(e) = self.nbd.server().wait(timeout) {
                    tracing::warn!("nbd: waiting for clients: {e}");
                    std::thread::park_timeout(timeout);
                }
            }
            other => other.after_round(Round::Idle),
        }
    }
}

fn nbd_exports(volumes: &[VolumeReport], max_request: u32) -> Vec<NbdVolume> {
    volumes
        .iter()
        .enumerate()
        .map(|(i, r)| NbdVolume {
            name: r.name.clone(),
            volume: VolumeId(i as u16),
            size_bytes: r.size_bytes,
            block_size: r.block_size,
            max_request_bytes: max_request,
        })
        .collect()
}

fn primary_config(settings: &PrimarySettings) -> PrimaryConfig {
    PrimaryConfig {
        group: GroupId(settings.group),
        volume_names: settings.volume.iter().map(|v| v.name.clone()).collect(),
        policy: DataSetPolicy {
            interval_ms: settings.data_set_interval_ms,
            max_writes: settings.data_set_max_writes,
            max_bytes: settings.data_set_max_bytes.0,
        },
        window_bytes: settings.window_bytes.0,
        max_write_bytes: u32::try_from(settings.max_write_bytes.0).unwrap_or(u32::MAX),
        lanes: settings.lanes,
        retransmit_ms: settings.retransmit_ms,
        max_pending_flushes: settings.max_requests,
        replication: Replication::Pipelined,
        on_window_full: match settings.on_window_full {
            OnWindowFull::Block => WindowFull::Block,
            OnWindowFull::Track => WindowFull::Track {
                timeout_ms: settings.window_full_timeout_ms,
            },
        },
        resync_rate_bytes: settings.resync_rate.0,
        bug: None,
    }
}

/// What the log has said, so it speaks only when something changes.
#[derive(Debug, Default)]
struct Watch {
    lanes_up: usize,
    stalled: Option<String>,
    waiting: bool,
}

fn log_changes(s: &PrimaryStatus, watch: &mut Watch) {
    if s.lanes_up != watch.lanes_up {
        tracing::info!("{} of {} lanes up", s.lanes_up, s.lanes);
        watch.lanes_up = s.lanes_up;
    }
    if s.stalled != watch.stalled {
        match &s.stalled {
            Some(why) => tracing::error!("replication stalled: {why}"),
            None => tracing::info!("replication resumed"),
        }
        watch.stalled = s.stalled.clone();
    }
    if s.window_full != watch.waiting {
        if s.window_full {
            tracing::warn!("retention window full: writes wait for the secondary");
        }
        watch.waiting = s.window_full;
    }
}

fn status_report(
    s: &PrimaryStatus,
    now_ms: u64,
    settings: &PrimarySettings,
    volumes: &[VolumeReport],
) -> Status {
    let report = PrimaryReport {
        link: PrimaryLink {
            lanes: Link {
                lanes: s.lanes,
                lanes_up: s.lanes_up,
                lanes_dropped: s.lanes_dropped,
                last_error: s.last_error.clone(),
            },
            stalled: s.stalled.clone(),
        },
        history: PrimaryHistory {
            generation: s.generation.to_string(),
            ancestors: s.ancestors.iter().map(ToString::to_string).collect(),
            started: match s.start {
                // A record formatted now (or stopped cleanly before any write): the
                // history begins here.
                Start::Resumed { data_set } if data_set == DataSetId::NONE => "new".into(),
                Start::Resumed { .. } => "resumed".into(),
                Start::NewGeneration { .. } => "new_generation".into(),
            },
            out_of_sync_bytes: s.out_of_sync_extents * EXTENT_BYTES,
        },
        window_full: WindowFullReport {
            mode: match settings.on_window_full {
                OnWindowFull::Block => "block".into(),
                OnWindowFull::Track => "track".into(),
            },
            timeout_ms: settings.window_full_timeout_ms,
            full_for_ms: s
                .window_full_since_ms
                .map_or(0, |since| now_ms.saturating_sub(since)),
            drops: s.primary.window_drops,
            for_resync_room: s.waiting_for_resync_room,
        },
        resync: resync_report(&s.resync, now_ms),
        data_sets: PrimaryDataSets {
            last_closed: s.last_closed.0,
            last_sent: s.last_sent.0,
            applied: s.applied.0,
            lag_data_sets: s.lag_data_sets,
            lag_bytes: s.lag_bytes,
            lag_ms: s.lag_ms,
        },
        retention: Usage {
            used_bytes: s.lag_bytes,
            size_bytes: s.retention_window_bytes,
        },
        writes: Writes {
            accepted: s.primary.writes_accepted,
            flushes: s.service.flushes,
            errors: s.service.errors,
            waited: s.service.writes_waited,
            wait_ms_total: s.service.wait_ms_total,
            wait_ms_max: s.service.wait_ms_max,
            waiting_now: s.window_full,
            in_flight: s.requests_in_flight,
        },
        counters: PrimaryCounters {
            data_sets_closed: s.primary.data_sets_closed,
            frames_sent: s.primary.frames_sent,
            bytes_sent: s.primary.bytes_sent,
            retransmits: s.primary.retransmits,
            credit_stalls: s.primary.credit_stalls,
            window_full: s.primary.window_full,
            reads: s.service.reads,
            writes_done: s.service.writes,
            sub_block_writes: s.primary.sub_block_writes,
            zeroes: s.primary.zeroes_accepted,
            lag_queue_full: s.service.lag_queue_full,
        },
    };
    Status {
        role: RoleStatus::Primary(report),
        version: env!("CARGO_PKG_VERSION").into(),
        group: settings.group,
        pid: std::process::id(),
        uptime_ms: now_ms,
        volumes: volumes.to_vec(),
    }
}

fn resync_report(r: &ResyncStats, now_ms: u64) -> ResyncReport {
    let (state, end) = match r.phase {
        ResyncPhase::Idle => ("idle", None),
        ResyncPhase::Scanning => ("comparing", None),
        ResyncPhase::Ending { end } => ("ending", Some(end.0)),
        ResyncPhase::Done { end } => ("done", Some(end.0)),
    };
    let to_go = r.bytes_total.saturating_sub(r.bytes_compared);
    let until = if r.ended_ms > 0 { r.ended_ms } else { now_ms };
    let elapsed_ms = until.saturating_sub(r.started_ms).max(1);
    let rate = r.bytes_compared.saturating_mul(1000) / elapsed_ms;
    let comparing = r.phase == ResyncPhase::Scanning;
    let (room, needed, free) = match r.room {
        ResyncRoom::NotHeld => ("not_held", None, None),
        ResyncRoom::Kept => ("kept", None, None),
        ResyncRoom::MayNotFit { needed, free } => ("may_not_fit", Some(needed), Some(free)),
    };
    ResyncReport {
        state: state.into(),
        bytes_total: r.bytes_total,
        bytes_compared: r.bytes_compared,
        bytes_to_go: to_go,
        bytes_sent: r.bytes_sent,
        percent: if r.bytes_total == 0 {
            100.0
        } else {
            100.0 * r.bytes_compared as f64 / r.bytes_total as f64
        },
        rate_bytes_per_s: rate,
        eta_s: (comparing && rate > 0).then(|| to_go / rate),
        end_data_set: end,
        reads_deferred: r.deferred,
        requests_resent: r.requests_resent,
        room: room.into(),
        room_needed_bytes: needed,
        room_free_bytes: free,
        room_waits: r.room_waits,
    }
}

fn control_reply(
    request: ControlRequest,
    asks: &Sender<StatusAsk>,
    frontend: &Frontend,
    volumes: &[VolumeReport],
    max_io: u32,
) -> ControlReply {
    match request {
        ControlRequest::Status => status_reply(asks),
        ControlRequest::AllowInconsistent | ControlRequest::DiscardMyData => ControlReply::error(
            "that is a command for the secondary (its replica): send it to the secondary's control socket",
        ),
        ControlRequest::Digest(request) => {
            match primary_digest(&request, asks, frontend, volumes, max_io) {
                Ok(digest) => ControlReply::Digest(digest),
                Err(why) => ControlReply::error(why),
            }
        }
    }
}

/// A digest of the primary's volumes at a consistency point: closes the open data set,
/// waits until the secondary applied it, reads, and refuses if writes came in meanwhile.
fn primary_digest(
    request: &DigestRequest,
    asks: &Sender<StatusAsk>,
    frontend: &Frontend,
    volumes: &[VolumeReport],
    max_io: u32,
) -> Result<Digest, String> {
    let plan = digest_plan(request, volumes)?;
    let (sender, receiver) = crossbeam_channel::bounded(1);
    let call = |op: Op, buf: Vec<u8>| {
        let request = Request {
            op,
            buf,
            user: 0,
            reply: ReplyTo::Channel(sender.clone()),
        };
        let reply = frontend
            .call_within(request, &receiver, DIGEST_APPLY_TIMEOUT)
            .ok_or_else(|| {
                "the primary did not answer (shutting down, or writes waiting for a full window)"
                    .to_string()
            })?;
        reply.result.as_ref().map_err(ToString::to_string)?;
        Ok::<_, String>(reply)
    };
    let current = || match ask_status(asks) {
        Some(Status {
            role: RoleStatus::Primary(report),
            ..
        }) => Ok(report),
        Some(other) => unreachable!("the primary's poller reported a {}", other.role_name()),
        None => Err("the primary's poller did not answer".to_string()),
    };
    // Counted before the flush: a write taken after it would be read into the digest
    // without belonging to the data set the digest names.
    let before = current()?;
    let data_set = call(Op::Flush, Vec::new())?.data_set.0;
    let deadline = Instant::now() + DIGEST_APPLY_TIMEOUT;
    loop {
        let status = current()?;
        if status.data_sets.applied >= data_set {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the secondary has not applied data set {data_set} (applied {}); is it connected?",
                status.data_sets.applied
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut buf = Vec::with_capacity(max_io as usize);
    let digest = digest(
        data_set,
        request.chunk_bytes,
        u64::from(max_io),
        volumes,
        &plan,
        |i, at, out| {
            buf.clear();
            buf.resize(out.len(), 0);
            let op = Op::Read {
                volume: VolumeId(i as u16),
                offset: at,
            };
            let reply = call(op, std::mem::take(&mut buf))?;
            out.copy_from_slice(&reply.buf);
            buf = reply.buf;
            Ok(())
        },
    )?;
    let after = current()?;
    if after.writes.accepted != before.writes.accepted || after.data_sets.last_closed != data_set {
        return Err(format!(
            "writes arrived while digesting data set {data_set}: verify needs a quiet primary"
        ));
    }
    Ok(digest)
}

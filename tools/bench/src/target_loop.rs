//! The load loop of `ordo bench --target`: every job's NBD connection driven from this
//! thread (requests queued, bytes moved without blocking, replies taken), the primary's
//! status samples taken as they come, and the measurements of a pair's run made from them.
//! Slots, buffers and the lag queue are sized before the run: nothing is allocated per
//! request.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::meter::Meter;
use super::progress::{rates_line, Progress};
use super::results::{Counts, Histograms, Interval};
use super::status_lag::{Sample, StatusLag, StatusPoller};
use super::workload::{Job, Op, OpKind};
use crate::args::BenchArgs;
use ordo_nbd::client::{ClientError, Connection};
use ordo_nbd::transmission::{CMD_FLUSH, CMD_READ, CMD_WRITE};
use ordo_nbd::{EINVAL, EIO, ENOSPC, ENOTSUP, EOVERFLOW, ESHUTDOWN};

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// Acknowledged writes waiting to be seen applied, beyond the primary's window's worth.
const LAG_MARGIN_WRITES: usize = 1 << 16;
const MAX_LAG_WRITES: usize = 1 << 21;

/// What a request slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    Write {
        start_ns: u64,
        offset: u64,
        lowest: u64,
    },
    Read {
        start_ns: u64,
        offset: u64,
    },
    Flush,
}

/// One job's connection: its slots (the requests' handles) and an operation that could
/// not go out yet.
struct Conn {
    link: Connection,
    slots: Vec<Slot>,
    free: Vec<usize>,
    held: Option<(Op, u64)>,
}

pub(super) struct Setup {
    /// The bytes of the export the jobs share, from its start.
    pub region: u64,
    pub clock: Instant,
    /// The export takes flushes: one after the run closes the last data set.
    pub can_flush: bool,
    /// With a control socket: what the primary said before the run.
    pub primary: Option<PrimaryStart>,
}

pub(super) struct PrimaryStart {
    pub window_bytes: u64,
    pub last_closed: u64,
    pub applied: u64,
    pub writes_waited: u64,
}

/// What a run measured, once its connections are closed.
pub(super) struct Finished {
    pub runtime_s: f64,
    pub counts: Counts,
    pub histograms: Histograms,
    pub intervals: Vec<Interval>,
    pub window_full_waits: u64,
    /// With lag measured: writes whose data set was exact, and those bounded.
    pub lag_exact: Option<(u64, u64)>,
}

/// Why an operation waits.
enum Blocked {
    /// The lag tracker has no room for another write.
    Lag,
    /// The connection's send buffer is full.
    Buffer,
}

/// The state of a run, sized before it starts.
pub(super) struct TargetRun {
    block: usize,
    iodepth: usize,
    clock: Instant,
    jobs: Vec<Job>,
    conns: Vec<Conn>,
    data: Vec<u8>,
    can_flush: bool,
    flushing: bool,
    wrote: bool,
    writes_in_flight: usize,
    lag: Option<StatusLag>,
    /// The last status sample (zeros before the first).
    latest: Sample,
    meter: Meter,
    progress: Progress,
    idle: ordo_runtime::idle::IdlePolicy,
    waited_at_start: u64,
    window_full_waits: u64,
    lag_full_waits: u64,
}

impl TargetRun {
    pub(super) fn new(
        args: &BenchArgs,
        setup: Setup,
        links: Vec<Connection>,
        progress: bool,
    ) -> Self {
        let jobs = args.numjobs;
        let block = args.bs.0 as usize;
        let rate = args.rate.map(|r| r / jobs as f64);
        let mut data = vec![0u8; block];
        ChaCha8Rng::seed_from_u64(args.seed).fill_bytes(&mut data);
        let lag = setup.primary.as_ref().map(|p| {
            let window_writes = usize::try_from(p.window_bytes / block as u64).unwrap_or(0);
            let capacity = (window_writes + jobs * args.iodepth + LAG_MARGIN_WRITES)
                .min(MAX_LAG_WRITES)
                .max(jobs * args.iodepth + 1);
            StatusLag::new(capacity, p.last_closed, p.applied)
        });
        let latest = setup
            .primary
            .as_ref()
            .map_or_else(Sample::default, |p| Sample {
                last_closed: p.last_closed,
                applied: p.applied,
                writes_waited: p.writes_waited,
                ..Sample::default()
            });
        TargetRun {
            block,
            iodepth: args.iodepth,
            clock: setup.clock,
            jobs: (0..jobs)
                .map(|i| {
                    let (rw, mix) = (args.rw, args.rwmixwrite);
                    Job::new(
                        rw,
                        mix,
                        block as u64,
                        setup.region,
                        (i, jobs),
                        args.seed,
                        rate,
                    )
                })
                .collect(),
            conns: links
                .into_iter()
                .map(|link| Conn {
                    link,
                    slots: vec![Slot::Free; args.iodepth],
                    free: (0..args.iodepth).rev().collect(),
                    held: None,
                })
                .collect(),
            data,
            can_flush: setup.can_flush,
            flushing: false,
            wrote: false,
            writes_in_flight: 0,
            lag,
            latest,
            meter: Meter::new(args),
            progress: Progress::new(progress, args.ramp + args.runtime),
            idle: args.idle.policy(),
            waited_at_start: 0,
            window_full_waits: 0,
            lag_full_waits: 0,
        }
    }

    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// The ramp, then the measured run.
    pub(super) fn measure(&mut self, poller: Option<&StatusPoller>) -> Result<()> {
        loop {
            let now_ns = self.now_ns();
            if self.meter.start_if_due(now_ns) {
                self.waited_at_start = self.latest.writes_waited;
            }
            if self.meter.ended(now_ns) {
                let waited = self.latest.writes_waited;
                self.window_full_waits = waited.saturating_sub(self.waited_at_start);
                break;
            }
            let did = self.round(poller, true)?;
            if self.meter.interval_due(self.now_ns()) {
                self.close_interval();
            }
            let now_ns = self.now_ns();
            if self.progress.due(now_ns) {
                let mut line = rates_line(self.meter.intervals());
                if self.lag.is_some() {
                    let behind = self.latest.last_closed.saturating_sub(self.latest.applied);
                    line += &format!(", lag {behind} data sets");
                }
                self.progress.show(now_ns, &line);
            }
            self.idle.after_round(did.into());
        }
        if self.meter.stop(self.now_ns()) {
            self.close_interval();
        }
        self.progress.finish();
        Ok(())
    }

    /// After the run: every request answered, a flush (which closes the last data set),
    /// and with a control socket every write seen applied, so the last writes' latency
    /// and lag are in the histograms (not in the throughput).
    pub(super) fn drain(&mut self, poller: Option<&StatusPoller>) -> Result<()> {
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut flush_due = self.wrote && self.can_flush;
        loop {
            let did = self.round(poller, false)?;
            let answered = self.jobs.iter().all(|j| j.in_flight == 0) && !self.flushing;
            if answered && flush_due {
                self.start_flush();
                flush_due = false;
            } else if answered && self.lag.as_ref().is_none_or(|l| l.len() == 0) {
                return Ok(());
            }
            if let Some(why) = &self.latest.stalled {
                bail!("replication stalled: {why}");
            }
            ensure!(
                Instant::now() < deadline,
                "the target did not finish within {DRAIN_LIMIT:?} of the end: {} requests unanswered, {} writes not seen applied (the primary reports closed {}, applied {})",
                self.jobs.iter().map(|j| j.in_flight).sum::<usize>() + usize::from(self.flushing),
                self.lag.as_ref().map_or(0, StatusLag::len),
                self.latest.last_closed,
                self.latest.applied
            );
            self.idle.after_round(did.into());
        }
    }

    fn start_flush(&mut self) {
        let conn = &mut self.conns[0];
        let handle = conn.free.pop().expect("nothing is in flight");
        let queued = conn.link.try_request(CMD_FLUSH, handle as u64, 0, 0, &[]);
        assert!(queued, "an idle connection has room for a flush");
        conn.slots[handle] = Slot::Flush;
        self.flushing = true;
    }

    /// One round: start what may start, move bytes on every connection, take replies and
    /// status samples. True if anything happened.
    fn round(&mut self, poller: Option<&StatusPoller>, issue: bool) -> Result<bool> {
        let mut did = issue && self.issue(self.now_ns());
        for c in 0..self.conns.len() {
            let link = &mut self.conns[c].link;
            let context = || format!("NBD connection {c}");
            did |= link.send().with_context(context)?;
            did |= link.receive().with_context(context)?;
            did |= self.take_replies(c)?;
        }
        if let Some(poller) = poller {
            did |= self.take_samples(poller)?;
        }
        Ok(did)
    }

    /// Starts what each job may start now; true if it started any.
    fn issue(&mut self, now_ns: u64) -> bool {
        let mut any = false;
        for j in 0..self.jobs.len() {
            while self.jobs[j].in_flight < self.iodepth {
                let held = self.conns[j].held.take();
                let was_held = held.is_some();
                let Some((op, start_ns)) = held.or_else(|| self.jobs[j].next_due(now_ns)) else {
                    break;
                };
                match self.start(j, op, start_ns) {
                    Ok(()) => any = true,
                    Err(blocked) => {
                        if matches!(blocked, Blocked::Lag) && !was_held {
                            self.lag_full_waits += 1;
                        }
                        self.conns[j].held = Some((op, start_ns));
                        break;
                    }
                }
            }
        }
        any
    }

    /// Queues one operation on job `j`'s connection.
    fn start(&mut self, j: usize, op: Op, start_ns: u64) -> Result<(), Blocked> {
        let write = op.kind == OpKind::Write;
        let lowest = match &self.lag {
            Some(lag) if write && lag.room() <= self.writes_in_flight => return Err(Blocked::Lag),
            Some(lag) => lag.lowest_now(),
            None => 0,
        };
        let conn = &mut self.conns[j];
        let handle = *conn.free.last().expect("a free slot below the iodepth");
        let (command, payload) = match op.kind {
            OpKind::Write => (CMD_WRITE, &self.data[..]),
            OpKind::Read => (CMD_READ, &[][..]),
        };
        let length = self.block as u32;
        if !conn
            .link
            .try_request(command, handle as u64, op.offset, length, payload)
        {
            return Err(Blocked::Buffer);
        }
        conn.free.pop();
        let offset = op.offset;
        conn.slots[handle] = match op.kind {
            OpKind::Write => Slot::Write {
                start_ns,
                offset,
                lowest,
            },
            OpKind::Read => Slot::Read { start_ns, offset },
        };
        self.jobs[j].in_flight += 1;
        if write {
            self.writes_in_flight += 1;
            self.wrote = true;
        }
        Ok(())
    }

    /// Takes the replies connection `c` has read; true if it took any.
    fn take_replies(&mut self, c: usize) -> Result<bool> {
        let now_ns = self.now_ns();
        let block = self.block;
        let mut any = false;
        loop {
            let Conn { link, slots, .. } = &mut self.conns[c];
            let data_len = |handle: u64| match slots.get(usize::try_from(handle).ok()?)? {
                Slot::Free => None,
                Slot::Read { .. } => Some(block),
                Slot::Write { .. } | Slot::Flush => Some(0),
            };
            let next = link.next_reply(data_len);
            let reply = match next {
                Ok(Some((reply, _data))) => reply,
                Ok(None) => return Ok(any),
                Err(error) => return Err(reply_error(error, c)),
            };
            any = true;
            let handle = reply.handle as usize;
            let slot = std::mem::replace(&mut slots[handle], Slot::Free);
            self.conns[c].free.push(handle);
            if reply.error != 0 {
                let what = match slot {
                    Slot::Write { offset, .. } => format!("a write at offset {offset}"),
                    Slot::Read { offset, .. } => format!("a read at offset {offset}"),
                    _ => "a flush".into(),
                };
                bail!("the target failed {what}: {}", errno_name(reply.error));
            }
            self.complete(c, slot, now_ns);
        }
    }

    fn complete(&mut self, c: usize, slot: Slot, now_ns: u64) {
        match slot {
            Slot::Write {
                start_ns, lowest, ..
            } => {
                self.jobs[c].in_flight -= 1;
                self.writes_in_flight -= 1;
                if let Some(lag) = &mut self.lag {
                    lag.acked(now_ns, lowest, self.block as u32);
                }
                self.meter.record(OpKind::Write, start_ns, now_ns);
            }
            Slot::Read { start_ns, .. } => {
                self.jobs[c].in_flight -= 1;
                self.meter.record(OpKind::Read, start_ns, now_ns);
            }
            Slot::Flush => {
                self.flushing = false;
                if let Some(lag) = &mut self.lag {
                    lag.flushed(now_ns);
                }
            }
            Slot::Free => unreachable!("a free slot has no reply: next_reply refused it"),
        }
    }

    /// Takes the status samples that came; true if any did.
    fn take_samples(&mut self, poller: &StatusPoller) -> Result<bool> {
        let mut any = false;
        while let Some(sample) = poller.try_next()? {
            any = true;
            let lag = self.lag.as_mut().expect("a poller only with a lag tracker");
            self.meter
                .record_lag(sample.received_ns, |histograms, counts| {
                    lag.sample(&sample, histograms, counts)
                })?;
            self.latest = sample;
        }
        Ok(any)
    }

    fn close_interval(&mut self) {
        let lag_data_sets = self.latest.last_closed.saturating_sub(self.latest.applied);
        self.meter
            .close_interval(self.now_ns(), lag_data_sets, self.latest.retention_bytes);
    }

    /// Says goodbye on every connection; returns what the run measured.
    pub(super) fn finish(self) -> Finished {
        for (c, conn) in self.conns.into_iter().enumerate() {
            if let Err(error) = conn.link.disconnect(CONNECT_TIMEOUT) {
                tracing::warn!("NBD connection {c}: disconnecting: {error}");
            }
        }
        if self.lag_full_waits > 0 {
            tracing::warn!(
                "{} writes waited for room in the lag tracker (its status polls fell behind)",
                self.lag_full_waits
            );
        }
        let measured = self.meter.finish();
        Finished {
            runtime_s: measured.runtime_s,
            counts: measured.counts,
            histograms: measured.histograms,
            intervals: measured.intervals,
            window_full_waits: self.window_full_waits,
            lag_exact: self.lag.map(|lag| (lag.exact, lag.bounded)),
        }
    }
}

fn reply_error(error: ClientError, connection: usize) -> anyhow::Error {
    anyhow::Error::new(error).context(format!("NBD connection {connection}"))
}

fn errno_name(errno: u32) -> String {
    let name = match errno {
        EIO => "EIO (I/O error)",
        EINVAL => "EINVAL (invalid request)",
        ENOSPC => "ENOSPC (no space)",
        EOVERFLOW => "EOVERFLOW (beyond the export's end)",
        ENOTSUP => "ENOTSUP (not supported)",
        ESHUTDOWN => "ESHUTDOWN (the server is shutting down)",
        other => return format!("errno {other}"),
    };
    name.to_string()
}

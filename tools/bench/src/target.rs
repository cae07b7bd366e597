//! `ordo bench --target`: the load, options and reports of a pair's run, against a running
//! `ordo primary` instead: through its NBD export (one connection per job, up to
//! `--iodepth` requests in flight on each, all driven from this thread on nonblocking
//! sockets) and, with `--target-control`, its control socket for replication lag
//! (`status_lag`) and its memory.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::header::header;
use super::peer::peak_rss_bytes;
use super::results::{Cpu, Memory, Results};
use super::status_lag::{status, StatusPoller};
use super::target_loop::{PrimaryStart, Setup, TargetRun, CONNECT_TIMEOUT};
use crate::args::BenchArgs;
use crate::workload::Pattern;
use ordo_daemon::runner::pin;
use ordo_daemon::volume::ByteSize;
use ordo_nbd::client::{Connection, ExportInfo};
use ordo_nbd::transmission::{REQUEST_HEADER_BYTES, SIMPLE_REPLY_BYTES};
use ordo_nbd::url::NbdUrl;
use ordo_nbd::{TFLAG_READ_ONLY, TFLAG_SEND_FLUSH};

/// How often the primary's status is polled for lag.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// Requests (or replies) one connection buffers beyond the first: the rest wait.
const CONNECTION_BUFFER_BYTES: usize = 4 << 20;

/// What the primary's control socket said before the run.
#[derive(Debug)]
struct PrimaryState {
    control: PathBuf,
    pid: u32,
    window_bytes: u64,
    /// The size of its volume named like the export.
    volume_bytes: u64,
    last_closed: u64,
    applied: u64,
    /// Writes that ever waited for room in its retention window.
    writes_waited: u64,
}

impl PrimaryState {
    fn ask(control: &Path, url: &NbdUrl) -> Result<PrimaryState> {
        let shown = control.display();
        let s = status(control).with_context(|| format!("--target-control {shown}"))?;
        let Some(primary) = s.primary() else {
            bail!(
                "--target-control {shown} is a {}'s control socket: lag needs the primary's",
                s.role_name()
            );
        };
        let volume = s
            .volumes
            .iter()
            .find(|v| v.name == url.export || (url.export.is_empty() && s.volumes.len() == 1))
            .with_context(|| {
                let names: Vec<&str> = s.volumes.iter().map(|v| v.name.as_str()).collect();
                format!(
                    "--target-control {shown}: that primary has no volume {:?} (it has {names:?}): is it the primary behind {url}?",
                    url.export
                )
            })?;
        Ok(PrimaryState {
            control: control.to_path_buf(),
            pid: s.pid,
            window_bytes: primary.retention.size_bytes,
            volume_bytes: volume.size_bytes,
            last_closed: primary.data_sets.last_closed,
            applied: primary.data_sets.applied,
            writes_waited: primary.writes.waited,
        })
    }

    /// Its peak RSS, if `pid` is an `ordo primary` here (from another host or PID
    /// namespace it may name another process, or none).
    fn peak_rss_bytes(&self) -> Option<u64> {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).ok()?;
        let primary = cmdline.split(|&b| b == 0).any(|arg| arg == b"primary");
        primary
            .then(|| peak_rss_bytes(&format!("/proc/{}/status", self.pid)).ok())
            .flatten()
    }
}

fn connect(args: &BenchArgs, url: &NbdUrl) -> Result<Vec<Connection>> {
    let addr: SocketAddr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {url}"))?
        .next()
        .with_context(|| format!("{url}: the host has no address"))?;
    let block = args.bs.0 as usize;
    let room = |unit: usize| (args.iodepth * unit).min(CONNECTION_BUFFER_BYTES.max(unit));
    (0..args.numjobs)
        .map(|job| {
            let (send, recv) = (
                room(REQUEST_HEADER_BYTES + block),
                room(SIMPLE_REPLY_BYTES + block),
            );
            Connection::open(addr, &url.export, CONNECT_TIMEOUT, send, recv, block)
                .with_context(|| format!("connecting to {url} (job {job})"))
        })
        .collect()
}

/// The region the jobs share, checked against what the server said of the export.
fn region(args: &BenchArgs, url: &NbdUrl, export: &ExportInfo) -> Result<u64> {
    let block = args.bs.0;
    ensure!(
        block.is_multiple_of(u64::from(export.min_block)),
        "--bs {} is not a multiple of the block size of {url} ({})",
        args.bs,
        export.min_block
    );
    ensure!(
        block <= u64::from(export.max_request_bytes),
        "--bs {} is over the largest request {url} takes ({})",
        args.bs,
        ByteSize(u64::from(export.max_request_bytes))
    );
    let writes = match args.rw {
        Pattern::Write | Pattern::Randwrite => true,
        Pattern::Randrw => args.rwmixwrite > 0,
        Pattern::Read | Pattern::Randread => false,
    };
    ensure!(
        !(writes && export.flags & TFLAG_READ_ONLY != 0),
        "{url} is read-only, and --rw {:?} writes",
        args.rw
    );
    let size = export.size_bytes;
    let region = match args.size {
        Some(asked) => {
            ensure!(
                asked.0 <= size,
                "--size {asked} is larger than the export {url} ({size} bytes): give at most that, or leave --size out to use all of it"
            );
            asked.0
        }
        None => size / block * block,
    };
    ensure!(
        region / block >= args.numjobs as u64,
        "{} of {url} hold fewer {} blocks than --numjobs {}",
        ByteSize(region),
        args.bs,
        args.numjobs
    );
    Ok(region)
}

/// The report's configuration: the load's, the target's and how lag is measured.
fn describe(
    args: &BenchArgs,
    url: &NbdUrl,
    region: u64,
    export: &ExportInfo,
) -> BTreeMap<String, String> {
    let mut config = args.describe_load(region);
    let (control, lag_source) = match &args.target_control {
        Some(path) => (
            path.display().to_string(),
            format!(
                "status poll every {} ms, upper bound",
                POLL_EVERY.as_millis()
            ),
        ),
        None => ("none".into(), "not measured (no --target-control)".into()),
    };
    for (key, value) in [
        ("target", url.to_string()),
        ("export_size", ByteSize(export.size_bytes).to_string()),
        ("target_control", control),
        ("lag_source", lag_source),
    ] {
        config.insert(key.into(), value);
    }
    config
}

pub fn run(args: &BenchArgs, progress: bool) -> Result<Results> {
    let url = args
        .target
        .as_ref()
        .context("a target run needs --target")?;
    let primary = match &args.target_control {
        Some(control) => Some(PrimaryState::ask(control, url)?),
        None => None,
    };
    let connections = connect(args, url)?;
    let export = connections[0].export;
    ensure!(
        connections.iter().all(|c| c.export == export),
        "{url} described the export differently on different connections"
    );
    let region = region(args, url, &export)?;
    if let Some(primary) = &primary {
        ensure!(
            primary.volume_bytes == export.size_bytes,
            "--target-control {}: its volume has {} bytes, the export {url} {}: is it the primary behind {url}?",
            primary.control.display(),
            primary.volume_bytes,
            export.size_bytes
        );
    }
    let mut header = header(args.seed, describe(args, url, region, &export))?;
    pin(args.cores.first().copied())?;
    let clock = Instant::now();
    let poller = match &primary {
        Some(p) => Some(StatusPoller::start(p.control.clone(), clock, POLL_EVERY)?),
        None => None,
    };
    let setup = Setup {
        region,
        clock,
        can_flush: export.flags & TFLAG_SEND_FLUSH != 0,
        primary: primary.as_ref().map(|p| PrimaryStart {
            window_bytes: p.window_bytes,
            last_closed: p.last_closed,
            applied: p.applied,
            writes_waited: p.writes_waited,
        }),
    };
    let mut run = TargetRun::new(args, setup, connections, progress);
    let outcome = run
        .measure(poller.as_ref())
        .and_then(|()| run.drain(poller.as_ref()));
    if let Some(poller) = poller {
        poller.stop();
    }
    outcome?;
    let done = run.finish();
    if let Some((exact, bounded)) = done.lag_exact {
        let share = 100.0 * exact as f64 / (exact + bounded).max(1) as f64;
        let value = format!("{share:.1}% of writes");
        header.config.insert("lag_data_set_exact".into(), value);
    }
    Ok(Results {
        header,
        runtime_s: done.runtime_s,
        counts: done.counts,
        histograms: done.histograms,
        intervals: done.intervals,
        memory: Memory {
            primary_peak_rss_bytes: primary.as_ref().and_then(PrimaryState::peak_rss_bytes),
            primary_window_bytes: primary.as_ref().map(|p| p.window_bytes),
            secondary_peak_rss_bytes: None,
            secondary_window_bytes: None,
        },
        // The daemons' CPU is theirs to report; the bench measures only its own pair.
        cpu: Cpu::default(),
        replicated: done.lag_exact.is_some(),
        window_full_waits: done.window_full_waits,
    })
}

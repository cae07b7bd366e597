//! `ordo bench --target`: the load, options and reports of a pair's run, against a running
//! `ordo primary` instead: through its NBD export (one connection per job, up to
//! `--iodepth` requests in flight on each, all driven from this thread on nonblocking
//! sockets) and, with `--target-control`, its control socket for replication lag
//! (`status_lag`) and its memory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::header::header;
use super::peer::peak_rss_bytes;
use super::results::{Memory, Results};
use super::status_lag::{status, StatusPoller};
use super::target_loop::{PrimaryStart, Setup, TargetRun, CONNECT_TIMEOUT};
use super::{BenchArgs, Pattern};
use crate::daemon::config::pin;
use crate::volume::ByteSize;
use ordo_nbd::client::{Connection, ExportInfo};
use ordo_nbd::transmission::{REQUEST_HEADER_BYTES, SIMPLE_REPLY_BYTES};
use ordo_nbd::{MAX_STRING_BYTES, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH};

const DEFAULT_PORT: u16 = 10809;
/// How often the primary's status is polled for lag.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// Requests (or replies) one connection buffers beyond the first: the rest wait.
const CONNECTION_BUFFER_BYTES: usize = 4 << 20;

/// `nbd://HOST[:PORT]/EXPORT` (port 10809 if not given; an empty export name asks for the
/// server's only export).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    pub host: String,
    pub port: u16,
    pub export: String,
}

impl FromStr for TargetUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} is not nbd://HOST[:PORT]/EXPORT: {why}");
        let rest = text
            .strip_prefix("nbd://")
            .ok_or_else(|| bad("it does not start with nbd://"))?;
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(|| bad("no ] after ["))?;
                match after {
                    "" => (host, None),
                    _ => (
                        host,
                        Some(after.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                    ),
                }
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        if export.len() > MAX_STRING_BYTES || export.contains(['\0', '?', '#']) {
            return Err(bad("the export name is too long or has ?, # or NUL"));
        }
        Ok(TargetUrl {
            host: host.to_string(),
            port,
            export: export.to_string(),
        })
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "nbd://[{}]:{}/{}", self.host, self.port, self.export),
            false => write!(f, "nbd://{}:{}/{}", self.host, self.port, self.export),
        }
    }
}

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
    fn ask(control: &Path, url: &TargetUrl) -> Result<PrimaryState> {
        let shown = control.display();
        let s = status(control).with_context(|| format!("--target-control {shown}"))?;
        ensure!(
            s.role == "primary",
            "--target-control {shown} is a {}'s control socket: lag needs the primary's",
            s.role
        );
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
            window_bytes: s.retention.map_or(0, |r| r.size_bytes),
            volume_bytes: volume.size_bytes,
            last_closed: s
                .data_sets
                .last_closed
                .context("its status has no last_closed")?,
            applied: s.data_sets.applied,
            writes_waited: s.writes.map_or(0, |w| w.waited),
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

fn connect(args: &BenchArgs, url: &TargetUrl) -> Result<Vec<Connection>> {
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
fn region(args: &BenchArgs, url: &TargetUrl, export: &ExportInfo) -> Result<u64> {
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
    url: &TargetUrl,
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
        replicated: done.lag_exact.is_some(),
        window_full_waits: done.window_full_waits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_and_export() {
        let url: TargetUrl = "nbd://127.0.0.1:10900/data".parse().unwrap();
        assert_eq!(
            url,
            TargetUrl {
                host: "127.0.0.1".into(),
                port: 10900,
                export: "data".into()
            }
        );
        assert_eq!(url.to_string(), "nbd://127.0.0.1:10900/data");
        let v6: TargetUrl = "nbd://[::1]/vol".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", DEFAULT_PORT));
        assert_eq!(v6.to_string(), "nbd://[::1]:10809/vol");
        let bare: TargetUrl = "nbd://example".parse().unwrap();
        assert_eq!((bare.port, bare.export.as_str()), (DEFAULT_PORT, ""));
        for bad in [
            "http://x/y",
            "nbd:///data",
            "nbd://h:0/d",
            "nbd://h:99999/d",
            "nbd://[::1/d",
            "nbd://h/d?tls=1",
        ] {
            assert!(bad.parse::<TargetUrl>().is_err(), "{bad} was accepted");
        }
    }
}

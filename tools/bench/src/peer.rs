//! The secondary side of `ordo bench`: a child process (this same binary, hidden
//! subcommand `bench-secondary`) running a secondary node on loopback, so each side's
//! memory is its own and the two sides share nothing but the lanes. It prints the address
//! it listens on, runs until its stdin closes (the bench ended or died), and exits.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use ordo_core::secondary::journal::{record_bytes, required_bytes};
use ordo_core::secondary::{Secondary, SecondaryConfig};
use ordo_core::storage::{Geometry, MemStorage};
use ordo_runtime::secondary_node::SecondaryNode;

use ordo_daemon::runner::{pin, Idle};
use ordo_daemon::volume::Volume;

use crate::args::{init_warnings, GROUP, VOLUME_NAME};

/// What the bench tells its secondary process (hidden: not for users).
#[derive(Clone, Debug, Args)]
pub struct PeerArgs {
    #[arg(long)]
    pub lanes: usize,
    #[arg(long)]
    pub volume_bytes: u64,
    #[arg(long)]
    pub block_size: u32,
    #[arg(long)]
    pub window_bytes: u64,
    #[arg(long)]
    pub max_write_bytes: u32,
    /// Replica and journal files go in this directory; in memory without it.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub core: Option<usize>,
    #[arg(long, value_enum)]
    pub idle: Idle,
}

pub const REPLICA_FILE: &str = "ordo-bench-replica.img";
pub const JOURNAL_FILE: &str = "ordo-bench-journal";
const JOURNAL_BLOCK_BYTES: u32 = 512;

/// `ordo bench-secondary`: the child's side.
pub fn serve(args: &PeerArgs) -> Result<ExitCode> {
    init_warnings();
    // Pinned before any thread starts, so the acceptor and receivers share the core.
    pin(args.core)?;
    let config = SecondaryConfig {
        group: GROUP,
        volume_names: vec![VOLUME_NAME.to_string()],
        window_bytes: args.window_bytes,
        max_write_bytes: args.max_write_bytes,
        lanes: args.lanes,
        ..SecondaryConfig::default()
    };
    // The journal's records are padded to its block size: 512-byte blocks keep a 4 KiB
    // write's record at 4.5 KiB rather than 8 KiB.
    let journal_block = JOURNAL_BLOCK_BYTES;
    let journal_bytes = required_bytes(args.window_bytes, args.max_write_bytes, journal_block)
        .next_multiple_of(u64::from(args.block_size));
    let geometry = Geometry::new(args.volume_bytes, args.block_size)?;
    // Each journal record goes to the device in one request: header and payload.
    let record_io = u32::try_from(record_bytes(args.max_write_bytes, journal_block))?;
    let (journal, replica) = match &args.dir {
        None => {
            let journal = Geometry {
                max_io_bytes: record_io.max(geometry.max_io_bytes),
                ..Geometry::new(journal_bytes, journal_block)?
            };
            (
                Volume::Mem(MemStorage::new(journal)?),
                Volume::Mem(MemStorage::new(geometry)?),
            )
        }
        Some(dir) => {
            let journal = Volume::open_file(
                &dir.join(JOURNAL_FILE),
                Some(journal_bytes),
                journal_block,
                record_io,
            )
            .context("creating the journal")?;
            let replica = Volume::open_file(
                &dir.join(REPLICA_FILE),
                Some(args.volume_bytes),
                args.block_size,
                args.max_write_bytes,
            )
            .context("creating the replica")?;
            (journal, replica)
        }
    };
    // The replica is new for the run (memory, or a file the bench created): all zeros, as
    // the primary's volume, so the pair starts with no initial sync.
    let secondary = Secondary::create(config, 1, journal, vec![replica], true)?;
    let listener = TcpListener::bind("127.0.0.1:0").context("listening on loopback")?;
    let addr = listener.local_addr()?;
    let mut node = SecondaryNode::new(secondary, listener, args.lanes, args.max_write_bytes)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening {addr}")?;
    stdout.flush()?;
    // Until the bench closes our stdin (or dies), watched by a thread of its own: this one
    // polls, since the volumes stay on the thread that opened them.
    let closed = Arc::new(AtomicBool::new(false));
    let poller = std::thread::current();
    let watcher = {
        let closed = Arc::clone(&closed);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            // Relaxed: the flag orders nothing else.
            closed.store(true, Ordering::Relaxed);
            poller.unpark();
        })
    };
    let idle = args.idle.policy();
    let started = Instant::now();
    while !closed.load(Ordering::Relaxed) {
        let did = node.poll(started.elapsed().as_millis() as u64);
        idle.after_round(did.into());
    }
    let _ = watcher.join();
    if let Some(why) = node.secondary().failure() {
        bail!("the secondary stopped: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The bench's handle on its secondary process; killed if dropped before `stop`.
#[derive(Debug)]
pub struct PeerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    /// What it printed on stderr (warnings, its last error): passed on to ours, and the
    /// last lines kept for the error if it fails.
    stderr: Option<JoinHandle<Vec<String>>>,
}

/// Lines of the secondary's stderr kept for an error message.
const STDERR_LINES_KEPT: usize = 20;

/// Passes the secondary's stderr on to ours, line by line, and returns its last lines.
fn forward_stderr(stderr: ChildStderr) -> Vec<String> {
    let mut kept = std::collections::VecDeque::with_capacity(STDERR_LINES_KEPT);
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        eprintln!("secondary: {line}");
        if kept.len() == STDERR_LINES_KEPT {
            kept.pop_front();
        }
        kept.push_back(line);
    }
    kept.into()
}

impl PeerProcess {
    pub fn spawn(args: &PeerArgs) -> Result<PeerProcess> {
        let exe = std::env::current_exe().context("finding the ordo binary")?;
        let mut command = Command::new(exe);
        command
            .arg("bench-secondary")
            .args(["--lanes", &args.lanes.to_string()])
            .args(["--volume-bytes", &args.volume_bytes.to_string()])
            .args(["--block-size", &args.block_size.to_string()])
            .args(["--window-bytes", &args.window_bytes.to_string()])
            .args(["--max-write-bytes", &args.max_write_bytes.to_string()])
            .args(["--idle", idle_name(args.idle)]);
        if let Some(dir) = &args.dir {
            command.arg("--dir").arg(dir);
        }
        if let Some(core) = args.core {
            command.args(["--core", &core.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the secondary process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the secondary's stdout")?;
        let stderr = child.stderr.take().context("the secondary's stderr")?;
        let mut peer = PeerProcess {
            child,
            stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: Some(std::thread::spawn(move || forward_stderr(stderr))),
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening ") else {
            peer.child.kill().ok();
            peer.child.wait().ok();
            bail!("the secondary process did not start: {}", peer.last_words());
        };
        peer.addr = addr.parse().context("the secondary's address")?;
        Ok(peer)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its peak resident memory so far.
    /// The secondary process's id, for reading what it spends.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn peak_rss_bytes(&self) -> Result<u64> {
        peak_rss_bytes(&format!("/proc/{}/status", self.child.id()))
    }

    /// Its last lines on stderr, once it has exited.
    fn last_words(&mut self) -> String {
        let lines = self.stderr.take().and_then(|t| t.join().ok());
        lines.unwrap_or_default().join("; ")
    }

    /// Closes its stdin and waits for it to exit; an error carries what it printed.
    pub fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let why = self.last_words();
                if status.success() {
                    return Ok(());
                }
                bail!("the secondary process failed ({status}): {why}");
            }
            ensure!(
                Instant::now() < deadline,
                "the secondary process did not exit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

fn idle_name(idle: Idle) -> &'static str {
    match idle {
        Idle::Spin => "spin",
        Idle::Yield => "yield",
        Idle::Park => "park",
    }
}

/// `VmHWM` (peak resident set) from a `/proc/PID/status` file.
pub fn peak_rss_bytes(status_path: &str) -> Result<u64> {
    let status =
        std::fs::read_to_string(status_path).with_context(|| format!("reading {status_path}"))?;
    parse_vm_hwm(&status).with_context(|| format!("no VmHWM in {status_path}"))
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_rss_is_read_from_vm_hwm() {
        let status = "Name:\tordo\nVmPeak:\t  900 kB\nVmHWM:\t   1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS:\t 1000 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t lots kB\n"), None);
        assert!(peak_rss_bytes("/proc/self/status").unwrap() > 0);
    }
}

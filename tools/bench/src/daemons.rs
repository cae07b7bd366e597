//! Servers `ordo bench compare` starts as child processes for its rows through real
//! daemons: an `ordo secondary` and an `ordo primary` replicating to it (this same binary,
//! on loopback, `mem` or `file:` volumes), and nbdkit's `memory` plugin. Each is killed
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ordo_daemon::control;
use ordo_daemon::report::{PrimaryReport, RoleStatus};
use ordo_daemon::volume::ByteSize;

use crate::rows::{free_port, not_installed};

/// Lanes from the primary to the secondary, as `ordo bench`'s default.
pub(crate) const LANES: usize = 4;
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// A child process killed (and reaped) when dropped.
pub(crate) struct Killed(Child);

impl Killed {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(program: &Path, args: &[String]) -> Result<Killed> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_installed(&program.display().to_string()),
            _ => anyhow::Error::new(e).context(format!("starting {}", program.display())),
        })?;
    Ok(Killed(child))
}

/// Until `ready` holds, the child still running; an error after `START_LIMIT`.
fn wait_until(what: &str, child: &mut Killed, mut ready: impl FnMut() -> bool) -> Result<()> {
    let begun = Instant::now();
    while !ready() {
        if let Some(status) = child.0.try_wait()? {
            bail!("{what}: exited ({status}) before it was ready");
        }
        if begun.elapsed() > START_LIMIT {
            bail!("{what}: not ready after {START_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// `/dev/shm` when it is a tmpfs this process can write to: where the `mem` pairs keep
/// their journal, so the rows on memory volumes measure no disk.
fn memory_dir() -> Option<&'static Path> {
    const SHM: &str = "/dev/shm";
    let path = std::ffi::CString::new(SHM).ok()?;
    // SAFETY: `statfs` is plain data, for which all zeros is a valid value.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `info` is a
    // valid, writable `statfs` the kernel fills.
    let found = unsafe { libc::statfs(path.as_ptr(), &mut info) } == 0;
    let tmpfs = found && info.f_type == libc::TMPFS_MAGIC;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let writable = unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0;
    (tmpfs && writable).then(|| Path::new(SHM))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// nbdkit's memory plugin of `size` on a free port; its URI.
pub(crate) fn nbdkit(size: ByteSize) -> Result<(Killed, String)> {
    let port = free_port()?;
    let args = strings(&["-f", "-i", "127.0.0.1", "-p", &port.to_string(), "memory"]);
    let args: Vec<String> = args.into_iter().chain([format!("size={size}")]).collect();
    let mut server = spawn(Path::new("nbdkit"), &args)?;
    wait_until("nbdkit", &mut server, || listening(port))?;
    Ok((server, format!("nbd://127.0.0.1:{port}/")))
}

/// Where one side of a pair keeps its volume `data`.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    /// `mem:SIZE`.
    Mem,
    /// `file:PATH:SIZE` in the pair's directory, created by the daemon (all zeros) and
    /// removed with the directory.
    NewFile,
    /// `file:PATH:SIZE` on a file already there (the caller's).
    File(PathBuf),
}

/// How `OrdoPair::launch` starts a pair.
#[derive(Clone, Debug)]
pub(crate) struct PairSpec {
    pub(crate) size: ByteSize,
    pub(crate) primary: Store,
    pub(crate) secondary: Store,
    /// The primary keeps its write-intent record on a file, in a state directory of its
    /// own (`--state-dir`); in memory without.
    pub(crate) primary_state_dir: bool,
    /// More flags for `ordo primary`.
    pub(crate) primary_flags: Vec<String>,
}

impl PairSpec {
    /// What the NBD rows replicate on: `mem` volumes, no state directory.
    pub(crate) fn mem(size: ByteSize) -> PairSpec {
        PairSpec {
            size,
            primary: Store::Mem,
            secondary: Store::Mem,
            primary_state_dir: false,
            primary_flags: Vec::new(),
        }
    }
}

/// An `ordo secondary` and an `ordo primary` replicating to it over `LANES` lanes, one
/// volume named `data` on each; their state in a directory of their own, removed when
/// dropped.
pub(crate) struct OrdoPair {
    primary: Killed,
    secondary: Killed,
    state: PathBuf,
    /// The primary's export of the volume.
    pub(crate) uri: String,
    /// The primary's control socket.
    pub(crate) control: PathBuf,
    /// Both daemons' commands, as started (`ordo secondary ...; ordo primary ...`).
    pub(crate) commands: String,
}

impl Drop for OrdoPair {
    fn drop(&mut self) {
        self.primary.stop();
        self.secondary.stop();
        std::fs::remove_dir_all(&self.state).ok();
    }
}

impl OrdoPair {
    /// Where the pair's state is (the secondary's journal), for a row's description.
    pub(crate) fn state(&self) -> &Path {
        &self.state
    }

    /// A pair on `mem` volumes of `size`, its state (the secondary's journal) in
    /// `/dev/shm/ordo-compare-NAME` where that is a memory file system, as the in-process
    /// bench's `mem` backend keeps its journal in memory and the rows' baselines (nbdkit's
    /// memory plugin, iperf3) touch no disk, else in `dir/ordo-compare-NAME`; returns once
    /// every lane is up.
    pub(crate) fn start(dir: &Path, name: &str, size: ByteSize) -> Result<OrdoPair> {
        let root = memory_dir().unwrap_or(dir);
        let mut pair = OrdoPair::launch(root, name, &PairSpec::mem(size))?;
        pair.wait_lanes_up()?;
        Ok(pair)
    }

    /// A pair as `spec` says, its state (and its `Store::NewFile` volumes) in
    /// `dir/ordo-compare-NAME`; returns as soon as the primary answers on its control
    /// socket, so a resync is watched from its start.
    pub(crate) fn launch(dir: &Path, name: &str, spec: &PairSpec) -> Result<OrdoPair> {
        let ordo = std::env::current_exe().context("finding the ordo binary")?;
        let (link, nbd) = (free_port()?, free_port()?);
        let state = dir.join(format!("ordo-compare-{name}"));
        std::fs::create_dir_all(&state)?;
        let volume = |store: &Store, file: &str| match store {
            Store::Mem => format!("data=mem:{}", spec.size),
            Store::NewFile => format!("data=file:{}:{}", state.join(file).display(), spec.size),
            Store::File(path) => format!("data=file:{}:{}", path.display(), spec.size),
        };
        let secondary_args = strings(&[
            "secondary",
            "--listen",
            &format!("127.0.0.1:{link}"),
            "--state-dir",
            &state.display().to_string(),
            "--volume",
            &volume(&spec.secondary, "replica.img"),
            "--window-bytes",
            "64M",
        ]);
        let control = state.join("primary.sock");
        let mut primary_args = strings(&[
            "primary",
            "--connect",
            &format!("127.0.0.1:{link}"),
            "--volume",
            &volume(&spec.primary, "primary.img"),
            "--nbd",
            &format!("127.0.0.1:{nbd}"),
            "--control",
            &control.display().to_string(),
            "--lanes",
            &LANES.to_string(),
        ]);
        if spec.primary_state_dir {
            let primary_state = state.join("primary-state");
            primary_args.extend(["--state-dir".into(), primary_state.display().to_string()]);
        }
        primary_args.extend(spec.primary_flags.iter().cloned());
        let mut secondary = spawn(&ordo, &secondary_args)?;
        wait_until("ordo secondary", &mut secondary, || listening(link))?;
        let mut primary = spawn(&ordo, &primary_args)?;
        wait_until("ordo primary", &mut primary, || {
            control::status(&control, STATUS_TIMEOUT).is_ok()
        })?;
        Ok(OrdoPair {
            primary,
            secondary,
            state,
            uri: format!("nbd://127.0.0.1:{nbd}/data"),
            control,
            commands: format!(
                "ordo {}; ordo {}",
                secondary_args.join(" "),
                primary_args.join(" ")
            ),
        })
    }

    /// Until the primary has every lane up; an error after `START_LIMIT` or if it stopped.
    pub(crate) fn wait_lanes_up(&mut self) -> Result<()> {
        let control = &self.control;
        wait_until("ordo primary", &mut self.primary, || {
            control::status(control, STATUS_TIMEOUT)
                .ok()
                .and_then(|s| s.primary().map(|p| p.link.lanes.lanes_up == LANES))
                .unwrap_or(false)
        })
    }

    /// The primary's status now.
    pub(crate) fn status(&self) -> Result<PrimaryReport> {
        let status = control::status(&self.control, STATUS_TIMEOUT)
            .with_context(|| format!("asking {} for its status", self.control.display()))?;
        match status.role {
            RoleStatus::Primary(report) => Ok(report),
            RoleStatus::Secondary(_) => bail!("the pair's primary answered as a secondary"),
        }
    }

    /// An error if either daemon exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        for (name, child) in [
            ("primary", &mut self.primary),
            ("secondary", &mut self.secondary),
        ] {
            if let Some(status) = child.0.try_wait()? {
                bail!("ordo {name} exited ({status})");
            }
        }
        Ok(())
    }

    /// The primary's (last closed, applied) data sets now.
    pub(crate) fn data_sets(&self) -> Result<(u64, u64)> {
        let primary = self.status()?;
        Ok((primary.data_sets.last_closed, primary.data_sets.applied))
    }

    /// Until the secondary has applied every data set the primary closed so far; an error
    /// after `limit` or if the primary stopped.
    pub(crate) fn wait_applied(&mut self, limit: Duration) -> Result<()> {
        let begun = Instant::now();
        let (last_closed, _) = self.data_sets()?;
        loop {
            let (_, applied) = self.data_sets()?;
            if applied >= last_closed {
                return Ok(());
            }
            if let Some(status) = self.primary.0.try_wait()? {
                bail!("ordo primary exited ({status}) before data set {last_closed} was applied");
            }
            if begun.elapsed() > limit {
                bail!("data set {last_closed} not applied after {limit:?} (applied: {applied})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

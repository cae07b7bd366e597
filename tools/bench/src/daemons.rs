//! Servers `ordo bench compare` starts as child processes for its rows through NBD: an
//! `ordo secondary` and an `ordo primary` replicating to it (this same binary, `mem`
//! volumes, on loopback), and nbdkit's `memory` plugin. Each is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ordo_daemon::control;
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

/// An `ordo secondary` and an `ordo primary` replicating to it over `LANES` lanes, one
/// `mem` volume named `data` on each; their state in a directory of their own, removed
/// when dropped.
pub(crate) struct OrdoPair {
    primary: Killed,
    secondary: Killed,
    state: PathBuf,
    /// The primary's export of the volume.
    pub(crate) uri: String,
    /// The primary's control socket.
    pub(crate) control: PathBuf,
}

impl Drop for OrdoPair {
    fn drop(&mut self) {
        self.primary.stop();
        self.secondary.stop();
        std::fs::remove_dir_all(&self.state).ok();
    }
}

impl OrdoPair {
    /// Started with their state in `dir/ordo-compare-NAME`; returns once every lane is up.
    pub(crate) fn start(dir: &Path, name: &str, size: ByteSize) -> Result<OrdoPair> {
        let ordo = std::env::current_exe().context("finding the ordo binary")?;
        let (link, nbd) = (free_port()?, free_port()?);
        let state = dir.join(format!("ordo-compare-{name}"));
        std::fs::create_dir_all(&state)?;
        let volume = format!("data=mem:{size}");
        let state_dir = state.display().to_string();
        let mut secondary = spawn(
            &ordo,
            &strings(&[
                "secondary",
                "--listen",
                &format!("127.0.0.1:{link}"),
                "--state-dir",
                &state_dir,
                "--volume",
                &volume,
                "--window-bytes",
                "64M",
            ]),
        )?;
        wait_until("ordo secondary", &mut secondary, || listening(link))?;
        let control = state.join("primary.sock");
        let mut primary = spawn(
            &ordo,
            &strings(&[
                "primary",
                "--connect",
                &format!("127.0.0.1:{link}"),
                "--volume",
                &volume,
                "--nbd",
                &format!("127.0.0.1:{nbd}"),
                "--control",
                &control.display().to_string(),
                "--lanes",
                &LANES.to_string(),
            ]),
        )?;
        wait_until("ordo primary", &mut primary, || {
            control::status(&control, STATUS_TIMEOUT)
                .ok()
                .and_then(|s| s.primary().map(|p| p.link.lanes.lanes_up == LANES))
                .unwrap_or(false)
        })?;
        Ok(OrdoPair {
            primary,
            secondary,
            state,
            uri: format!("nbd://127.0.0.1:{nbd}/data"),
            control,
        })
    }

    /// The primary's (last closed, applied) data sets now.
    pub(crate) fn data_sets(&self) -> Result<(u64, u64)> {
        let status = control::status(&self.control, STATUS_TIMEOUT)
            .with_context(|| format!("asking {} for its status", self.control.display()))?;
        let primary = status
            .primary()
            .context("the pair's primary answered as a secondary")?;
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

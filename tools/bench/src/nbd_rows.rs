//! P10 of `ordo bench compare`: 4 KiB random writes at queue depth 32 through NBD, with
//! fio's nbd engine as the client, against `ordo primary` replicating to an `ordo
//! secondary` (both started here, `mem` volumes, on loopback) and against nbdkit's
//! `memory` plugin, a plain NBD server that replicates nothing, through the same client:
//! one connection, then four.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ordo_daemon::control;
use serde_json::Value;

use crate::rows::{free_port, output, row, Goal, Row, Settings};

/// The export's size on both servers: what fio writes over, at random.
const EXPORT: &str = "256M";
const LANES: usize = 4;
const START_LIMIT: Duration = Duration::from_secs(30);

/// A child process killed (and reaped) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("not installed (apt-get install {})", program.display())
            }
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

/// nbdkit's memory plugin on a free port; its URI.
fn nbdkit() -> Result<(Killed, String)> {
    let port = free_port()?;
    let args: Vec<String> = ["-f", "-i", "127.0.0.1", "-p", &port.to_string(), "memory"]
        .iter()
        .map(ToString::to_string)
        .chain([format!("size={EXPORT}")])
        .collect();
    let mut server = spawn(Path::new("nbdkit"), &args)?;
    wait_until("nbdkit", &mut server, || listening(port))?;
    Ok((server, format!("nbd://127.0.0.1:{port}/")))
}

/// An `ordo secondary` and an `ordo primary` replicating to it over `LANES` lanes, with
/// their state in `dir`; the export's URI once every lane is up.
fn ordo_pair(dir: &Path) -> Result<(Killed, Killed, String)> {
    let ordo = std::env::current_exe().context("finding the ordo binary")?;
    let (link, nbd) = (free_port()?, free_port()?);
    let state = dir.join("ordo-compare-p10");
    std::fs::create_dir_all(&state)?;
    let volume = format!("data=mem:{EXPORT}");
    let secondary_args: Vec<String> = [
        "secondary",
        "--listen",
        &format!("127.0.0.1:{link}"),
        "--state-dir",
        &state.display().to_string(),
        "--volume",
        &volume,
        "--window-bytes",
        "64M",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut secondary = spawn(&ordo, &secondary_args)?;
    wait_until("ordo secondary", &mut secondary, || listening(link))?;
    let socket: PathBuf = state.join("primary.sock");
    let primary_args: Vec<String> = [
        "primary",
        "--connect",
        &format!("127.0.0.1:{link}"),
        "--volume",
        &volume,
        "--nbd",
        &format!("127.0.0.1:{nbd}"),
        "--control",
        &socket.display().to_string(),
        "--lanes",
        &LANES.to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut primary = spawn(&ordo, &primary_args)?;
    wait_until("ordo primary", &mut primary, || {
        control::status(&socket, Duration::from_secs(1))
            .ok()
            .and_then(|s| s.primary().map(|p| p.link.lanes.lanes_up == LANES))
            .unwrap_or(false)
    })?;
    Ok((primary, secondary, format!("nbd://127.0.0.1:{nbd}/data")))
}

/// fio's nbd engine: 4 KiB random writes at depth 32 on `jobs` connections for `seconds`;
/// write IOPS of all of them, and the command.
fn fio_nbd(uri: &str, jobs: usize, seconds: f64) -> Result<(f64, String)> {
    let args: Vec<String> = vec![
        "--name=p10".into(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--iodepth=32".into(),
        format!("--numjobs={jobs}"),
        "--group_reporting".into(),
        format!("--size={EXPORT}"),
        "--time_based".into(),
        format!("--runtime={}", seconds.ceil().max(1.0)),
        "--output-format=json".into(),
    ];
    let text = output("fio", &args)?;
    // The nbd engine says "fio: connected to NBD server" on stdout before the JSON.
    let json = text.find('{').map_or("", |at| &text[at..]);
    let json: Value = serde_json::from_str(json).context("fio's JSON")?;
    let iops = json["jobs"][0]["write"]["iops"]
        .as_f64()
        .context("no jobs[0].write.iops in fio's JSON")?;
    Ok((iops, format!("fio {}", args.join(" ").replace(uri, "URI"))))
}

/// P10, one connection and four: each run measures nbdkit, then a fresh ordo pair.
pub(crate) fn p10(settings: &Settings) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (id, what, jobs) in [
        (
            "P10",
            "4K randwrite qd32 via NBD (fio), 1 conn: ordo replicating / nbdkit memory",
            1,
        ),
        (
            "P10c4",
            "4K randwrite qd32 via NBD (fio), 4 conns: ordo replicating / nbdkit memory",
            4,
        ),
    ] {
        let mut runs = Vec::new();
        let mut how = (String::new(), String::new());
        let mut note = None;
        for _ in 0..settings.runs {
            let baseline = match nbdkit().and_then(|(server, uri)| {
                let measured = fio_nbd(&uri, jobs, settings.runtime);
                drop(server);
                measured
            }) {
                Ok(found) => found,
                Err(why) => {
                    note = Some(format!("nbdkit or fio: {why:#}"));
                    break;
                }
            };
            let (primary, secondary, uri) = ordo_pair(&settings.dir)?;
            let ours = fio_nbd(&uri, jobs, settings.runtime);
            drop((primary, secondary));
            std::fs::remove_dir_all(settings.dir.join("ordo-compare-p10")).ok();
            let ours = ours?;
            runs.push((ours.0, baseline.0));
            how = (
                format!(
                    "ordo primary --lanes {LANES} (mem {EXPORT}), then {}",
                    ours.1
                ),
                format!("nbdkit memory size={EXPORT}, then {}", baseline.1),
            );
        }
        rows.push(row(
            id,
            what,
            Goal::AtLeast,
            (0.8, 1.0),
            "IOPS",
            &runs,
            how,
            note,
        ));
    }
    Ok(rows)
}

//! The resync rows of `ordo bench compare`: an `ordo primary` with a fresh `--state-dir`
//! on a `file:` volume full of random data begins a history its fresh secondary has to be
//! brought to, so the secondary re-bases and the primary compares every extent (digests of
//! both sides) and sends what differs, at no rate limit (`--resync-rate 0`). P13: the
//! replica is created new (zeros), so the whole volume is sent: bytes sent per second of
//! the resync against iperf3's one stream on the same loopback (as P1). P14: the replica
//! is a copy of the image, so nothing is sent: bytes compared per second against fio
//! reading the same two files whole, at once, the way ordo reads them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ordo_daemon::volume::ByteSize;
use serde_json::Value;

use crate::baselines::iperf3_noted;
use crate::daemons::{OrdoPair, PairSpec, Store};
use crate::rows::{mb, output, row, Goal, Row, Settings};
use crate::seed_row::{image, Image};

const VOLUME_BYTES: ByteSize = ByteSize(1 << 30);
const QUICK_VOLUME_BYTES: ByteSize = ByteSize(256 << 20);
/// How often the primary's resync state is looked at: the timing's resolution.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// How long a resync may take to begin (the secondary re-bases first), then to end.
const BEGIN_LIMIT: Duration = Duration::from_secs(30);
const RESYNC_LIMIT: Duration = Duration::from_secs(600);
/// The primary's flags besides its volume and its fresh `--state-dir` (which begin a new
/// history whose volume holds data, so a secondary gets an initial sync): no limit on the
/// resync's rate.
const PRIMARY_FLAGS: [&str; 2] = ["--resync-rate", "0"];

/// What one resync did, timed from outside.
#[derive(Clone, Copy, Debug)]
struct Timed {
    bytes_compared: u64,
    bytes_sent: u64,
    /// Digest requests asked again (lost with a lane, or unanswered for 4 retransmit
    /// intervals: the resync waited that long).
    requests_resent: u64,
    /// From the first status saying `comparing` to the first saying `done` (the secondary
    /// applied the data set that ends it).
    seconds: f64,
}

fn volume_bytes(settings: &Settings) -> ByteSize {
    if settings.quick {
        QUICK_VOLUME_BYTES
    } else {
        VOLUME_BYTES
    }
}

/// A fresh pair on `image` (the primary's) and `replica` (a new file when `None`), timed
/// from the resync's start to its end; the volume must have been compared whole.
fn resync(
    settings: &Settings,
    name: &str,
    image: &Path,
    replica: Option<&Path>,
    size: ByteSize,
) -> Result<(Timed, String)> {
    let spec = PairSpec {
        size,
        primary: Store::File(image.to_path_buf()),
        secondary: replica.map_or(Store::NewFile, |path| Store::File(path.to_path_buf())),
        primary_state_dir: true,
        primary_flags: PRIMARY_FLAGS.iter().map(ToString::to_string).collect(),
    };
    let mut pair = OrdoPair::launch(&settings.dir, name, &spec)?;
    let timed = watch(&mut pair).with_context(|| format!("the resync of {}", pair.commands))?;
    if timed.bytes_compared != size.0 {
        bail!(
            "the resync compared {} bytes of a {size} volume ({})",
            timed.bytes_compared,
            pair.commands
        );
    }
    Ok((timed, pair.commands.clone()))
}

/// Polls the primary's resync from before it begins until it is done.
fn watch(pair: &mut OrdoPair) -> Result<Timed> {
    let begun = Instant::now();
    let mut started = None;
    loop {
        pair.check_running()?;
        let resync = pair.status()?.resync;
        let now = Instant::now();
        match (resync.state.as_str(), started) {
            ("idle", None) if now - begun > BEGIN_LIMIT => {
                bail!("no resync began within {BEGIN_LIMIT:?}")
            }
            ("idle", None) => {}
            ("comparing", None) => started = Some(now),
            ("comparing" | "ending", Some(_)) => {}
            ("done", Some(at)) => {
                return Ok(Timed {
                    bytes_compared: resync.bytes_compared,
                    bytes_sent: resync.bytes_sent,
                    requests_resent: resync.requests_resent,
                    seconds: (now - at).as_secs_f64(),
                })
            }
            (state, None) => bail!("the resync was first seen {state}: it began unseen"),
            (state, Some(_)) => bail!("the resync went {state} before it was done"),
        }
        if now - begun > BEGIN_LIMIT + RESYNC_LIMIT {
            bail!("the resync is not done after {RESYNC_LIMIT:?}: {resync:?}");
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Runs whose resync asked for digests again: each such request had waited 4
/// retransmit intervals (or was lost with a lane), which the timing includes.
#[derive(Debug, Default)]
struct Resent {
    runs: usize,
    of: usize,
    requests: u64,
}

impl Resent {
    fn add(&mut self, timed: &Timed) {
        self.of += 1;
        if timed.requests_resent > 0 {
            self.runs += 1;
            self.requests += timed.requests_resent;
        }
    }

    fn note(&self) -> Option<String> {
        (self.runs > 0).then(|| {
            format!(
                "{} of {} runs resent digest requests ({} in all; a request unanswered is \
                 asked again after 4 retransmit intervals)",
                self.runs, self.of, self.requests
            )
        })
    }
}

/// P13: each run, iperf3, then a fresh pair whose replica is created new: the image's
/// bytes sent per second of the resync. With both daemons on one disk, the disk may bound
/// it before the link does: a full resync reads the volume once and writes it twice (the
/// secondary's journal, then its replica).
pub(crate) fn p13(settings: &Settings) -> Result<Vec<Row>> {
    let size = volume_bytes(settings);
    let made = image(&settings.dir.join("ordo-compare-resync.img"), size)?;
    let mut runs = Vec::new();
    let mut how = (String::new(), String::new());
    let (mut note, mut resent) = (None, Resent::default());
    for _ in 0..settings.runs {
        let Some(link) = iperf3_noted(settings.runtime, &mut note) else {
            break;
        };
        let (timed, commands) = resync(settings, "p13", &made.0, None, size)?;
        resent.add(&timed);
        runs.push((
            mb(timed.bytes_sent as f64 / timed.seconds),
            mb(link.bytes_per_s),
        ));
        how = (
            format!(
                "{commands} (volume: {size} of random data; replica: created new, zeros), \
                 then resync.bytes_sent ÷ seconds from resync.state comparing to done \
                 (ordo status --json, every {} ms)",
                POLL_EVERY.as_millis()
            ),
            link.how,
        );
    }
    let note = note.or(resent.note());
    Ok(vec![row(
        "P13",
        "full resync 1 GiB (256 MiB --quick), fresh replica: MB/s sent / iperf3 loopback",
        Goal::AtLeast,
        (0.6, 0.8),
        "MB/s",
        &runs,
        how,
        note,
    )])
}

/// P14: each run, fio reading the image and its copy at once, then a fresh pair on the
/// two: the volume's bytes compared per second of the resync, against the volume's bytes
/// per second of fio (both files read whole: the time until both were).
pub(crate) fn p14(settings: &Settings) -> Result<Vec<Row>> {
    let size = volume_bytes(settings);
    let made = image(&settings.dir.join("ordo-compare-scan.img"), size)?;
    // The replica: a copy (`cp`), on disk before it is read.
    let copy = Image(settings.dir.join("ordo-compare-scan-replica.img"));
    std::fs::copy(&made.0, &copy.0).with_context(|| format!("copying {}", made.0.display()))?;
    File::open(&copy.0)?.sync_all()?;
    let direct = takes_direct_io(&copy.0)?;
    let mut runs = Vec::new();
    let mut how = (String::new(), String::new());
    let (mut note, mut sent, mut resent) = (None, 0, Resent::default());
    for _ in 0..settings.runs {
        let read = match fio_read_both([&made.0, &copy.0], size, direct) {
            Ok(found) => found,
            Err(why) => {
                note = Some(format!("fio: {why:#}"));
                break;
            }
        };
        let (timed, commands) = resync(settings, "p14", &made.0, Some(&copy.0), size)?;
        sent += timed.bytes_sent;
        resent.add(&timed);
        runs.push((mb(timed.bytes_compared as f64 / timed.seconds), mb(read.0)));
        how = (
            format!(
                "{commands} (volume: {size} of random data; replica: a copy of it), then \
                 resync.bytes_compared ÷ seconds from resync.state comparing to done \
                 (ordo status --json, every {} ms)",
                POLL_EVERY.as_millis()
            ),
            read.1,
        );
    }
    if note.is_none() {
        let said: Vec<String> = (sent > 0)
            .then(|| format!("the resyncs sent {sent} bytes of a replica identical to the image"))
            .into_iter()
            .chain(resent.note())
            .collect();
        note = (!said.is_empty()).then(|| said.join("; "));
    }
    Ok(vec![row(
        "P14",
        "resync by digests of an identical copy: volume MB/s / fio reading both at once",
        Goal::AtLeast,
        (0.7, 0.9),
        "MB/s",
        &runs,
        how,
        note,
    )])
}

/// Whether the file system under `path` takes O_DIRECT, as ordo's `file:` volumes are
/// opened with it where it does (buffered where open(2) refuses it with EINVAL).
fn takes_direct_io(path: &Path) -> Result<bool> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

/// fio reading `files` whole at once, one job each, the way a resync reads a volume and
/// its replica: 1 MiB synchronous reads (pread, one at a time), O_DIRECT where ordo's
/// volumes have it (then the page cache plays no part on either side; buffered, both read
/// files that were just written or read, so cached alike). The volume's bytes per second
/// (each file's bytes over the time until both were read), and the command.
fn fio_read_both(files: [&Path; 2], size: ByteSize, direct: bool) -> Result<(f64, String)> {
    let mut args: Vec<String> = vec![
        "--rw=read".into(),
        "--bs=1M".into(),
        "--ioengine=psync".into(),
        format!("--direct={}", u8::from(direct)),
        format!("--size={size}"),
        "--group_reporting".into(),
        "--output-format=json".into(),
    ];
    for (job, file) in ["p14-image", "p14-replica"].iter().zip(files) {
        args.push(format!("--name={job}"));
        args.push(format!("--filename={}", file.display()));
    }
    let json: Value = serde_json::from_str(&output("fio", &args)?).context("fio's JSON")?;
    Ok((
        volume_rate(&json, size)?,
        format!("fio {} (io_bytes ÷ 2 ÷ runtime)", args.join(" ")),
    ))
}

/// From the JSON of fio reading two files of `size` whole at once (`--group_reporting`):
/// the volume's bytes per second, `size` over the group's runtime (its longest job's).
fn volume_rate(json: &Value, size: ByteSize) -> Result<f64> {
    let read = &json["jobs"][0]["read"];
    let (Some(bytes), Some(ms)) = (read["io_bytes"].as_f64(), read["runtime"].as_f64()) else {
        bail!("no jobs[0].read.io_bytes and runtime in fio's JSON");
    };
    if bytes != 2.0 * size.0 as f64 || ms <= 0.0 {
        bail!("fio read {bytes} bytes in {ms} ms, not both files whole");
    }
    Ok(size.0 as f64 / (ms / 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_is_one_files_bytes_over_the_time_both_took() {
        // Two 1 GiB files, the slower read in 2.5 s: the volume at 1 GiB / 2.5 s.
        let json =
            serde_json::json!({"jobs": [{"read": {"io_bytes": 2u64 << 30, "runtime": 2500}}]});
        let rate = volume_rate(&json, VOLUME_BYTES).unwrap();
        assert_eq!(rate, (1u64 << 30) as f64 / 2.5);
        // fio stopped early (a file shorter than the volume): not a whole read.
        let short =
            serde_json::json!({"jobs": [{"read": {"io_bytes": 1u64 << 30, "runtime": 2500}}]});
        let error = volume_rate(&short, VOLUME_BYTES).unwrap_err().to_string();
        assert!(error.contains("not both files whole"), "{error}");
        let missing = volume_rate(&serde_json::json!({"jobs": []}), VOLUME_BYTES).unwrap_err();
        assert!(missing.to_string().contains("io_bytes"), "{missing}");
    }
}

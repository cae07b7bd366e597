//! The baseline tools `ordo bench compare` runs next to ordo on the same machine: iperf3
//! over loopback (the link's throughput and what moving a byte costs its two ends in CPU),
//! and fio writing files on the file system measured (one stream, or several at once).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::rows::{free_port, not_installed, output};

/// What iperf3 measured of one stream over loopback.
#[derive(Clone, Debug)]
pub(crate) struct Iperf3 {
    /// Received, per second.
    pub(crate) bytes_per_s: f64,
    /// CPU seconds both ends (sender and receiver) spent per byte received.
    pub(crate) cpu_s_per_byte: f64,
    /// The client's command.
    pub(crate) how: String,
}

/// `iperf3(seconds)`, or `None` with why in `note` (a row then reports the runs it has).
pub(crate) fn iperf3_noted(seconds: f64, note: &mut Option<String>) -> Option<Iperf3> {
    iperf3(seconds)
        .map_err(|why| *note = Some(format!("iperf3: {why:#}")))
        .ok()
}

/// iperf3, one stream over loopback for `seconds`.
pub(crate) fn iperf3(seconds: f64) -> Result<Iperf3> {
    let port = free_port()?.to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_installed("iperf3"),
            _ => anyhow::Error::new(e).context("starting the iperf3 server"),
        })?;
    let args: Vec<String> = ["-c", "127.0.0.1", "-p", &port, "-J", "-t"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("{}", seconds.ceil().max(1.0))])
        .collect();
    // The server needs a moment to listen: until then the client reports an error.
    let mut result = Err(anyhow::anyhow!("not run"));
    for _ in 0..50 {
        result = output("iperf3", &args).and_then(|text| {
            let json: Value = serde_json::from_str(&text).context("iperf3's JSON")?;
            parse_iperf3(&json)
        });
        if result.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill().ok();
    server.wait().ok();
    let (bytes_per_s, cpu_s_per_byte) = result?;
    Ok(Iperf3 {
        bytes_per_s,
        cpu_s_per_byte,
        how: format!("iperf3 {}", args.join(" ")),
    })
}

/// Bytes received per second and both ends' CPU seconds per byte from iperf3's `-J`
/// report. `end.cpu_utilization_percent.host_total` (the client, here the sender) and
/// `remote_total` (the server) are each process's user and system time over the test's
/// wall time, in percent of one core (iperf's `cpu_util`: getrusage(RUSAGE_SELF) against
/// the clock; measured here: 99 % for a client that `time` showed 2.97 s of CPU in 3 s).
fn parse_iperf3(json: &Value) -> Result<(f64, f64)> {
    if let Some(error) = json["error"].as_str() {
        bail!("{error}");
    }
    let number = |path: &[&str]| {
        path.iter()
            .fold(json, |v, key| &v[key])
            .as_f64()
            .with_context(|| format!("no {} in iperf3's JSON", path.join(".")))
    };
    let bytes = number(&["end", "sum_received", "bytes"])?;
    let seconds = number(&["end", "sum_received", "seconds"])?;
    let host = number(&["end", "cpu_utilization_percent", "host_total"])?;
    let remote = number(&["end", "cpu_utilization_percent", "remote_total"])?;
    if bytes <= 0.0 || seconds <= 0.0 {
        bail!("iperf3 moved {bytes} bytes in {seconds} s");
    }
    let cpu_s = (host + remote) / 100.0 * seconds;
    Ok((bytes / seconds, cpu_s / bytes))
}

/// fio with io_uring and O_DIRECT, 1 MiB sequential writes at depth 8, `streams` jobs at
/// once, each on its own 1 GiB file in `dir`: bytes per second of all of them together,
/// and the command.
pub(crate) fn fio(dir: &Path, streams: usize, seconds: f64) -> Result<(f64, String)> {
    assert!(streams >= 1);
    let args: Vec<String> = [
        "--name=p6".to_string(),
        format!("--directory={}", dir.display()),
        // fio fills in $jobnum itself (no shell runs this).
        "--filename_format=ordo-compare-fio.$jobnum.img".into(),
        format!("--numjobs={streams}"),
        "--group_reporting".into(),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        "--rw=write".into(),
        "--bs=1M".into(),
        "--iodepth=8".into(),
        "--size=1G".into(),
        "--time_based".into(),
        format!("--runtime={}", seconds.ceil().max(1.0)),
        "--output-format=json".into(),
    ]
    .into();
    let result = output("fio", &args);
    for job in 0..streams {
        std::fs::remove_file(dir.join(format!("ordo-compare-fio.{job}.img"))).ok();
    }
    let json: Value = serde_json::from_str(&result?).context("fio's JSON")?;
    // With --group_reporting, jobs[0] is the group: all the streams' bytes.
    let bytes = json["jobs"][0]["write"]["bw_bytes"]
        .as_f64()
        .context("no jobs[0].write.bw_bytes in fio's JSON")?;
    Ok((bytes, format!("fio {}", args.join(" "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_cpu_is_both_ends_share_of_a_core_over_the_test_per_byte() {
        // Figures from a 3 s run on this machine's loopback.
        let json = serde_json::json!({"end": {
            "sum_received": {"bytes": 6e9, "seconds": 3.0},
            "cpu_utilization_percent": {"host_total": 100.0, "remote_total": 50.0},
        }});
        let (bytes_per_s, cpu_s_per_byte) = parse_iperf3(&json).unwrap();
        assert_eq!(bytes_per_s, 2e9);
        // 1.5 cores for 3 s: 4.5 CPU seconds for 6e9 bytes.
        assert!(
            (cpu_s_per_byte - 4.5 / 6e9).abs() < 1e-18,
            "{cpu_s_per_byte}"
        );
    }

    #[test]
    fn iperf3_errors_and_missing_fields_are_said() {
        let error = parse_iperf3(&serde_json::json!({"error": "unable to connect"}));
        assert!(format!("{:#}", error.unwrap_err()).contains("unable to connect"));
        let partial = serde_json::json!({"end": {"sum_received": {"bytes": 1.0, "seconds": 1.0}}});
        let missing = parse_iperf3(&partial).unwrap_err().to_string();
        assert!(
            missing.contains("cpu_utilization_percent.host_total"),
            "{missing}"
        );
    }
}

//! The baseline tools `ordo bench compare` runs next to ordo on the same machine: iperf3
//! over loopback, and fio writing files on the file system measured.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::rows::{free_port, output};

/// What iperf3 measured of one stream over loopback.
#[derive(Clone, Debug)]
pub(crate) struct Iperf3 {
    /// Received, per second.
    pub(crate) bytes_per_s: f64,
    /// The client's command.
    pub(crate) how: String,
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
            std::io::ErrorKind::NotFound => {
                anyhow::anyhow!("not installed (apt-get install iperf3)")
            }
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
    Ok(Iperf3 {
        bytes_per_s: result?,
        how: format!("iperf3 {}", args.join(" ")),
    })
}

/// Bytes received per second from iperf3's `-J` report.
fn parse_iperf3(json: &Value) -> Result<f64> {
    if let Some(error) = json["error"].as_str() {
        bail!("{error}");
    }
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bits| bits / 8.0)
        .context("no end.sum_received.bits_per_second in iperf3's JSON")
}

/// fio with io_uring and O_DIRECT, 1 MiB sequential writes at depth 8, on a file in `dir`:
/// bytes per second, and the command.
pub(crate) fn fio(dir: &Path, seconds: f64) -> Result<(f64, String)> {
    let file = dir.join("ordo-compare-fio.img");
    let args: Vec<String> = [
        "--name=p6".to_string(),
        format!("--filename={}", file.display()),
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
    std::fs::remove_file(&file).ok();
    let json: Value = serde_json::from_str(&result?).context("fio's JSON")?;
    let bytes = json["jobs"][0]["write"]["bw_bytes"]
        .as_f64()
        .context("no jobs[0].write.bw_bytes in fio's JSON")?;
    Ok((bytes, format!("fio {}", args.join(" "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_errors_and_missing_fields_are_said() {
        let error = parse_iperf3(&serde_json::json!({"error": "unable to connect"}));
        assert!(format!("{:#}", error.unwrap_err()).contains("unable to connect"));
        let missing = parse_iperf3(&serde_json::json!({"end": {}})).unwrap_err();
        assert!(missing.to_string().contains("sum_received"), "{missing}");
        let found = serde_json::json!({"end": {"sum_received": {"bits_per_second": 8e9}}});
        assert_eq!(parse_iperf3(&found).unwrap(), 1e9);
    }
}

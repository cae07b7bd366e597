//! `ordo bench` as a user runs it: each mode end to end on small volumes (its own pair, the
//! secondary a child process, the relay for a delayed link), against a running pair through
//! its NBD export (`--target`), its JSON report, its files, and the input it refuses.

mod common;

use common::{assert_verifies, ordo, Pair, CATCH_UP};
use serde_json::Value;

/// A short run with `extra` options; returns the JSON report.
fn bench(extra: &[&str]) -> Value {
    let mut args = vec!["--size", "64M", "--runtime", "0.5", "--ramp", "0.1"];
    args.extend_from_slice(extra);
    bench_report(&args)
}

/// `ordo bench ARGS`, quiet, with its JSON report in a file; returns the report.
fn bench_report(extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut args = vec![
        "bench",
        "--quiet",
        "--output-format",
        "json",
        "--output",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, output) = ordo(&args);
    assert!(ok, "ordo {args:?} failed: {output}");
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

fn number(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {report}"))
}

#[test]
fn a_replicated_run_measures_acks_lag_throughput_and_both_sides_memory() {
    let report = bench(&["--rw", "randwrite", "--bs", "4K", "--iodepth", "8"]);
    assert!(number(&report, "/jobs/0/write/total_ios") > 0.0);
    assert!(number(&report, "/jobs/0/write/lat_ns/percentile/99.000000") > 0.0);
    assert!(number(&report, "/jobs/0/replication/lag_ns/N") > 0.0);
    assert!(number(&report, "/jobs/0/replication/applied_bytes") > 0.0);
    assert!(number(&report, "/memory/secondary_peak_rss_bytes") > 0.0);
    assert!(!report["intervals"].as_array().unwrap().is_empty());
    assert_eq!(report["config"]["mode"], "replicated");
    assert_eq!(report["seed"], 1);
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
}

#[test]
fn local_only_runs_without_a_secondary_and_measures_no_lag() {
    let report = bench(&["--mode", "local-only", "--rw", "randrw"]);
    assert!(number(&report, "/jobs/0/write/total_ios") > 0.0);
    assert!(number(&report, "/jobs/0/read/total_ios") > 0.0);
    assert_eq!(number(&report, "/jobs/0/replication/lag_ns/N"), 0.0);
    assert_eq!(report["jobs"][0]["replication"]["enabled"], false);
    assert!(report["memory"]["secondary_peak_rss_bytes"].is_null());
}

#[test]
fn group_ordered_over_a_delayed_link_still_applies_everything() {
    let report = bench(&[
        "--mode",
        "group-ordered",
        "--rw",
        "write",
        "--bs",
        "64K",
        "--link-delay-ms",
        "2",
        "--data-set-interval-ms",
        "1",
        "--window",
        "16M",
    ]);
    assert!(number(&report, "/jobs/0/replication/lag_ns/N") > 0.0);
    // Every write was applied before the bench ended, at least 4 ms (one RTT) after it
    // was acknowledged.
    assert!(number(&report, "/jobs/0/replication/lag_ns/min") >= 4e6);
}

#[test]
fn open_loop_runs_at_the_rate_asked_and_writes_the_log_and_the_plot() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.hlog");
    let plot = dir.path().join("run.svg");
    let report = bench(&[
        "--rate",
        "2000",
        "--hdr-log",
        log.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let writes = number(&report, "/jobs/0/write/total_ios");
    // 2000 a second for half a second, give or take the schedule's edges.
    assert!((800.0..=1100.0).contains(&writes), "{writes} writes");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("#[StartTime:") && log.contains("Tag=ack,"),
        "{log}"
    );
    assert!(std::fs::read_to_string(plot).unwrap().starts_with("<svg"));
}

/// A running pair driven through its NBD export: acknowledgements, lag from the primary's
/// control socket and its memory; without the socket no lag; the pair stays consistent;
/// a region larger than the export is refused.
#[test]
fn a_target_run_drives_a_running_primary_over_nbd_and_the_pair_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let pair = Pair::start(dir.path(), "64M", &[]);
    let target = format!("nbd://{}/data", pair.nbd);
    let control = pair.primary.control.display().to_string();
    let report = bench_report(&[
        "--target",
        &target,
        "--target-control",
        &control,
        "--rw",
        "randwrite",
        "--bs",
        "4K",
        "--iodepth",
        "8",
        "--runtime",
        "1",
        "--ramp",
        "0",
    ]);
    assert!(number(&report, "/jobs/0/write/total_ios") > 0.0);
    for p in ["50.000000", "99.000000"] {
        assert!(number(&report, &format!("/jobs/0/write/lat_ns/percentile/{p}")) > 0.0);
    }
    assert!(number(&report, "/jobs/0/replication/lag_ns/N") > 0.0);
    assert!(number(&report, "/jobs/0/replication/lag_ns/percentile/50.000000") > 0.0);
    assert_eq!(report["jobs"][0]["replication"]["enabled"], true);
    assert!(number(&report, "/memory/primary_peak_rss_bytes") > 0.0);
    assert!(report["memory"]["secondary_peak_rss_bytes"].is_null());
    assert_eq!(
        report["config"]["size"], "64M",
        "all of the export by default"
    );
    assert!(report["config"]["lag_source"]
        .as_str()
        .unwrap()
        .contains("upper bound"));
    assert!(!report["intervals"].as_array().unwrap().is_empty());

    let unwatched = bench_report(&["--target", &target, "--runtime", "0.3", "--ramp", "0"]);
    assert!(number(&unwatched, "/jobs/0/write/total_ios") > 0.0);
    assert_eq!(unwatched["jobs"][0]["replication"]["enabled"], false);
    assert_eq!(number(&unwatched, "/jobs/0/replication/lag_ns/N"), 0.0);
    assert!(unwatched["memory"]["primary_peak_rss_bytes"].is_null());

    pair.wait_caught_up(CATCH_UP);
    assert_verifies(&pair);

    let (ok, output) = ordo(&["bench", "--target", &target, "--size", "128M"]);
    assert!(!ok, "a region larger than the export was accepted");
    assert!(
        output.contains("--size 128M is larger than the export"),
        "{output}"
    );
}

#[test]
fn bad_options_are_refused_with_the_option_named() {
    for (args, expected) in [
        (&["--bs", "1000"][..], "--bs"),
        (
            &["--mode", "local-only", "--link-delay-ms", "2"][..],
            "--link-delay-ms",
        ),
        (&["--size", "8K", "--numjobs", "4"][..], "--numjobs"),
        (&["--backend", "file:/no/such/dir"][..], "not a directory"),
        (&["--rate", "0"][..], "--rate"),
        (&["--secondary-window", "1M"][..], "--secondary-window"),
        (
            &["--target", "nbd://127.0.0.1:9/d", "--lanes", "2"][..],
            "--lanes",
        ),
        (
            &["--target", "nbd://127.0.0.1:9/d", "--mode", "local-only"][..],
            "--mode",
        ),
        (
            &["--target", "nbd://127.0.0.1:9/d", "--cores", "0,0"][..],
            "--cores",
        ),
        (&["--target-control", "/tmp/x.sock"][..], "--target"),
        (&["--target", "http://host/d"][..], "nbd://"),
    ] {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        let (ok, output) = ordo(&all);
        assert!(!ok, "{args:?} was accepted");
        assert!(output.contains(expected), "{args:?}: {output}");
    }
}

/// Ctrl-C during a run on files: the run stops with an error and removes the primary's
/// volume, the replica and the journal it created, instead of dying and leaving them.
#[test]
fn an_interrupted_run_on_files_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let backend = format!("file:{}", dir.path().display());
    let child = std::process::Command::new(common::ORDO)
        .args(["bench", "--quiet", "--size", "16M", "--runtime", "60"])
        .args(["--backend", &backend])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let files = || std::fs::read_dir(dir.path()).unwrap().count();
    common::wait_until(
        "the bench created its three files",
        std::time::Duration::from_secs(30),
        || files() == 3,
    );
    common::run("kill", &["-INT", &child.id().to_string()]);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(files(), 0, "files left behind: {stderr}");
}

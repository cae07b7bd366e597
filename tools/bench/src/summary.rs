//! The human summary (fio's layout) and the JSON report (fio's structure, plus the
//! histograms' bins) of a run.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::results::{per_second, Metric, Results, PERCENTILES};
use crate::cpu::ProcessCpu;

/// Everything the report says about one histogram, in nanoseconds.
fn stats(histogram: &Histogram<u64>) -> Value {
    let mut percentiles = Map::new();
    for p in PERCENTILES {
        percentiles.insert(format!("{p:.6}"), json!(histogram.value_at_percentile(p)));
    }
    percentiles.insert("100.000000".into(), json!(histogram.max()));
    let bins: Vec<Value> = histogram
        .iter_recorded()
        .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
        .collect();
    json!({
        "N": histogram.len(),
        "min": if histogram.is_empty() { 0 } else { histogram.min() },
        "max": histogram.max(),
        "mean": histogram.mean(),
        "stddev": histogram.stdev(),
        "percentile": percentiles,
        "bins": bins,
    })
}

/// fio-like JSON: the header, one job with `write`, `read` and `replication` sections,
/// the per-second intervals and the memory figures.
pub fn json(results: &Results) -> Value {
    let h = &results.histograms;
    let c = &results.counts;
    let runtime_ms = (results.runtime_s * 1000.0).round() as u64;
    let intervals: Vec<Value> = results
        .intervals
        .iter()
        .map(|i| {
            let rate = |n: u64| per_second(n, i.length_s);
            json!({
                "start_s": i.start_s,
                "length_s": i.length_s,
                "write_iops": rate(i.counts.writes),
                "write_bw_bytes": rate(i.counts.write_bytes),
                "read_iops": rate(i.counts.reads),
                "read_bw_bytes": rate(i.counts.read_bytes),
                "applied_bw_bytes": rate(i.counts.applied_bytes),
                "lag_data_sets": i.lag_data_sets,
                "retention_bytes": i.retention_bytes,
                "ack_lat_p99_ns": i.histograms.ack.value_at_percentile(99.0),
                "lag_p99_ns": i.histograms.lag.value_at_percentile(99.0),
            })
        })
        .collect();
    json!({
        "ordo_version": results.header.ordo_version,
        "time": results.header.started,
        "seed": results.header.seed,
        "machine": results.header.machine,
        "config": results.header.config,
        "jobs": [{
            "jobname": "ordo-bench",
            "runtime_ms": runtime_ms,
            "write": {
                "io_bytes": c.write_bytes,
                "total_ios": c.writes,
                "bw_bytes": results.write_bytes_per_s(),
                "iops": results.write_iops(),
                "lat_ns": stats(&h.ack),
                "window_full_waits": results.window_full_waits,
            },
            "read": {
                "io_bytes": c.read_bytes,
                "total_ios": c.reads,
                "bw_bytes": results.read_bytes_per_s(),
                "iops": results.read_iops(),
                "lat_ns": stats(&h.read),
            },
            "replication": {
                "enabled": results.replicated,
                "applied_bytes": c.applied_bytes,
                "applied_ios": c.applied_writes,
                "applied_bw_bytes": results.applied_bytes_per_s(),
                "lag_ns": stats(&h.lag),
            },
        }],
        "intervals": intervals,
        "memory": results.memory,
        "cpu": {
            "primary": results.cpu.primary.map(|cpu| cpu_json(&cpu, results)),
            "secondary": results.cpu.secondary.map(|cpu| cpu_json(&cpu, results)),
        },
    })
}

/// CPU seconds per write and per MB acknowledged on the primary in the measured run
/// (none if nothing was written).
pub(crate) fn cpu_per_write_and_mb(cpu: &ProcessCpu, results: &Results) -> Option<(f64, f64)> {
    let c = &results.counts;
    (c.writes > 0 && c.write_bytes > 0).then(|| {
        (
            cpu.total_s() / c.writes as f64,
            cpu.total_s() / (c.write_bytes as f64 / 1e6),
        )
    })
}

fn cpu_json(cpu: &ProcessCpu, results: &Results) -> Value {
    let per = cpu_per_write_and_mb(cpu, results);
    json!({
        "user_s": cpu.user_s,
        "system_s": cpu.system_s,
        "voluntary_switches": cpu.voluntary_switches,
        "involuntary_switches": cpu.involuntary_switches,
        "cpu_us_per_write": per.map(|(w, _)| w * 1e6),
        "cpu_ms_per_mb": per.map(|(_, mb)| mb * 1e3),
    })
}

/// One side's CPU as fio's `cpu` line gives it, with the cost per write and per MB.
fn cpu_text(side: &str, cpu: &ProcessCpu, results: &Results) -> String {
    let runtime = results.runtime_s.max(f64::MIN_POSITIVE);
    let mut text = format!(
        "{side} usr={:.2}s sys={:.2}s ({:.0}% of a core), ctx={} (voluntary {}, involuntary {})",
        cpu.user_s,
        cpu.system_s,
        100.0 * cpu.total_s() / runtime,
        cpu.voluntary_switches + cpu.involuntary_switches,
        cpu.voluntary_switches,
        cpu.involuntary_switches
    );
    if let Some((per_write, per_mb)) = cpu_per_write_and_mb(cpu, results) {
        text += &format!(
            ", {:.2} us per write, {:.2} ms per MB",
            per_write * 1e6,
            per_mb * 1e3
        );
    }
    text
}

/// Bytes in fio's style: binary and decimal.
fn bandwidth(bytes_per_s: f64) -> String {
    format!(
        "{:.1}MiB/s ({:.1}MB/s)",
        bytes_per_s / f64::from(1 << 20),
        bytes_per_s / 1e6
    )
}

fn iops(n: f64) -> String {
    match n {
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e4 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// Latency lines for one histogram, in µs.
fn latency(out: &mut String, label: &str, histogram: &Histogram<u64>) {
    if histogram.is_empty() {
        let _ = writeln!(out, "    {label} (usec): none recorded");
        return;
    }
    let us = |ns: f64| ns / 1e3;
    let _ = writeln!(
        out,
        "    {label} (usec): min={:.1}, max={:.1}, avg={:.1}, stdev={:.1}, N={}",
        us(histogram.min() as f64),
        us(histogram.max() as f64),
        us(histogram.mean()),
        us(histogram.stdev()),
        histogram.len()
    );
    let mut line = format!("    {label} percentiles (usec):");
    for p in PERCENTILES {
        let _ = write!(
            line,
            " {p:.2}th=[{:.1}],",
            us(histogram.value_at_percentile(p) as f64)
        );
    }
    let _ = writeln!(out, "{line} max=[{:.1}]", us(histogram.max() as f64));
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

pub fn human(results: &Results) -> String {
    let mut out = String::new();
    let header = &results.header;
    let m = &header.machine;
    let _ = writeln!(
        out,
        "ordo bench {} (seed {}, started {})",
        header.ordo_version, header.seed, header.started
    );
    let _ = writeln!(
        out,
        "machine: {}, {} cores, {}, {}",
        m.hostname, m.cores, m.kernel, m.cpu
    );
    let config: Vec<String> = header
        .config
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "config: {}", config.join(" "));
    let c = &results.counts;
    let _ = writeln!(out, "run: {:.2} s measured", results.runtime_s);
    if c.writes > 0 || !results.histograms.ack.is_empty() {
        let _ = writeln!(
            out,
            "  write: IOPS={}, BW={} ({} in {:.0} ms)",
            iops(results.write_iops()),
            bandwidth(results.write_bytes_per_s()),
            mib(c.write_bytes),
            results.runtime_s * 1000.0
        );
        latency(&mut out, "ack lat", results.histograms.get(Metric::Ack));
        let _ = writeln!(
            out,
            "    waits for the retention window: {}",
            results.window_full_waits
        );
    }
    if c.reads > 0 {
        let _ = writeln!(
            out,
            "  read: IOPS={}, BW={} ({} in {:.0} ms)",
            iops(results.read_iops()),
            bandwidth(results.read_bytes_per_s()),
            mib(c.read_bytes),
            results.runtime_s * 1000.0
        );
        latency(&mut out, "read lat", results.histograms.get(Metric::Read));
    }
    if results.replicated {
        let _ = writeln!(
            out,
            "  replicated: applied BW={} ({} writes applied during the run)",
            bandwidth(results.applied_bytes_per_s()),
            c.applied_writes
        );
        latency(&mut out, "lag", results.histograms.get(Metric::Lag));
    } else {
        // A target's run says why it did not measure lag; a pair's had replication off.
        let _ = match header.config.get("lag_source") {
            Some(why) => writeln!(out, "  replicated: lag {why}"),
            None => writeln!(out, "  replicated: no (replication off)"),
        };
    }
    let memory = &results.memory;
    let _ = write!(
        out,
        "  memory: primary peak RSS {}",
        memory.primary_peak_rss_bytes.map_or(
            "unknown (not on this host, or no --target-control)".into(),
            mib
        )
    );
    if let Some(window) = memory.primary_window_bytes {
        let _ = write!(out, " (retention window {})", mib(window));
    }
    match (
        memory.secondary_peak_rss_bytes,
        memory.secondary_window_bytes,
    ) {
        (Some(rss), Some(window)) => {
            let _ = writeln!(
                out,
                ", secondary peak RSS {} (journal window {})",
                mib(rss),
                mib(window)
            );
        }
        _ => out.push('\n'),
    }
    let sides = [
        ("primary", results.cpu.primary),
        ("secondary", results.cpu.secondary),
    ];
    let cpu: Vec<String> = sides
        .iter()
        .filter_map(|(side, cpu)| cpu.map(|cpu| cpu_text(side, &cpu, results)))
        .collect();
    if !cpu.is_empty() {
        let _ = writeln!(out, "  cpu: {}", cpu.join("; "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::sample;

    #[test]
    fn the_json_report_has_fio_sections_percentiles_and_bins() {
        let results = sample();
        let report = json(&results);
        let job = &report["jobs"][0];
        let lat = &job["write"]["lat_ns"];
        assert_eq!(lat["N"], results.histograms.ack.len());
        let p99 = lat["percentile"]["99.000000"].as_u64().unwrap();
        assert_eq!(p99, results.histograms.ack.value_at_percentile(99.0));
        let bins = lat["bins"].as_array().unwrap();
        let counted: u64 = bins.iter().map(|b| b[1].as_u64().unwrap()).sum();
        assert_eq!(counted, results.histograms.ack.len());
        assert_eq!(
            job["write"]["total_ios"].as_u64(),
            Some(results.counts.writes)
        );
        assert_eq!(
            report["intervals"].as_array().unwrap().len(),
            results.intervals.len()
        );
        assert!(report["memory"]["primary_peak_rss_bytes"]
            .as_u64()
            .is_some());
        assert_eq!(job["write"]["window_full_waits"], 3);
        assert_eq!(report["config"]["rw"], "randwrite");
        let cpu = &report["cpu"]["secondary"];
        assert_eq!(cpu["system_s"], 2.5);
        assert_eq!(cpu["voluntary_switches"], 4_000);
        let per_write = 4.5e6 / results.counts.writes as f64;
        let us = cpu["cpu_us_per_write"].as_f64().unwrap();
        assert!((us - per_write).abs() < 1e-6, "{us} against {per_write}");
    }

    #[test]
    fn the_human_summary_names_the_config_machine_and_every_percentile() {
        let text = human(&sample());
        for needle in [
            "seed 42",
            "cores",
            "config: ",
            "rw=randwrite",
            "ack lat (usec): min=",
            "99.99th=[",
            "lag percentiles",
            "memory: primary peak RSS",
            "cpu: primary usr=3.00s sys=1.50s",
            "; secondary usr=2.00s sys=2.50s",
            "ctx=1000 (voluntary 900, involuntary 100)",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }
}

//! What one `ordo bench` run measured: the histograms, the per-second intervals and the
//! memory figures, plus the header every report starts with. The reports (human summary,
//! JSON, HdrHistogram log, SVG plot) are all drawn from a `Results`.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::ProcessCpu;

/// Latencies are recorded in nanoseconds, 1 ns to an hour, to 3 significant digits.
pub const HIGHEST_NS: u64 = 3_600_000_000_000;
pub const SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

/// The three latency distributions a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Primary ack latency: a write's (intended) start to its acknowledgement.
    Ack,
    /// Replication lag: a write's acknowledgement to the primary learning that the
    /// secondary applied its data set.
    Lag,
    /// Read latency (reads are served by the primary's volume).
    Read,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Ack, Metric::Lag, Metric::Read];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Ack => "ack",
            Metric::Lag => "lag",
            Metric::Read => "read",
        }
    }
}

/// One histogram per metric.
#[derive(Clone, Debug)]
pub struct Histograms {
    pub ack: Histogram<u64>,
    pub lag: Histogram<u64>,
    pub read: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            ack: new_histogram(),
            lag: new_histogram(),
            read: new_histogram(),
        }
    }
}

impl Histograms {
    pub fn get(&self, metric: Metric) -> &Histogram<u64> {
        match metric {
            Metric::Ack => &self.ack,
            Metric::Lag => &self.lag,
            Metric::Read => &self.read,
        }
    }

    pub fn reset(&mut self) {
        self.ack.reset();
        self.lag.reset();
        self.read.reset();
    }
}

/// Operation counts over some span of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub writes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub read_bytes: u64,
    /// Writes the primary learned were applied on the secondary, and their bytes.
    pub applied_writes: u64,
    pub applied_bytes: u64,
}

impl Counts {
    #[cfg(test)]
    pub fn add(&mut self, other: &Counts) {
        self.writes += other.writes;
        self.write_bytes += other.write_bytes;
        self.reads += other.reads;
        self.read_bytes += other.read_bytes;
        self.applied_writes += other.applied_writes;
        self.applied_bytes += other.applied_bytes;
    }
}

/// One second (the last may be shorter) of the measured run.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Seconds since the measured run began (after the ramp), at the interval's start.
    pub start_s: f64,
    pub length_s: f64,
    pub counts: Counts,
    /// Data sets closed on the primary and not yet reported applied, at the end.
    pub lag_data_sets: u64,
    /// Bytes held in the primary's retention window, at the end.
    pub retention_bytes: u64,
    /// What was recorded during this interval only.
    pub histograms: Histograms,
}

/// Peak resident memory of each side, next to the windows configured for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// The bench process: the primary, its retention window and the load generator. With
    /// `--target`, the running primary's process over its lifetime, if it is on this
    /// host (none without `--target-control` or elsewhere).
    pub primary_peak_rss_bytes: Option<u64>,
    pub primary_window_bytes: Option<u64>,
    /// The secondary's process (none with replication off).
    pub secondary_peak_rss_bytes: Option<u64>,
    pub secondary_window_bytes: Option<u64>,
}

/// What each side spent on the CPU during the measured run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Cpu {
    /// The bench's process: the primary and the load generator (none with `--target`).
    pub primary: Option<ProcessCpu>,
    /// The secondary's process (none with replication off, or with `--target`).
    pub secondary: Option<ProcessCpu>,
}

/// The machine a run was measured on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu: String,
    pub hostname: String,
}

/// What every report starts with.
#[derive(Clone, Debug, Serialize)]
pub struct Header {
    pub ordo_version: String,
    /// When the run started (RFC 3339, UTC, in the JSON report).
    pub started: jiff::Timestamp,
    pub seed: u64,
    pub machine: Machine,
    /// The full effective configuration, option name to value.
    pub config: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Results {
    pub header: Header,
    /// Length of the measured run (the ramp excluded), seconds.
    pub runtime_s: f64,
    pub counts: Counts,
    pub histograms: Histograms,
    pub intervals: Vec<Interval>,
    pub memory: Memory,
    pub cpu: Cpu,
    /// Whether replication lag was measured (not with replication off, nor with
    /// `--target` without `--target-control`).
    pub replicated: bool,
    /// Times a write found the retention window full and waited (during the measured
    /// run): the secondary, or the link, set the pace.
    pub window_full_waits: u64,
}

impl Results {
    /// Write IOPS over the measured run.
    pub fn write_iops(&self) -> f64 {
        per_second(self.counts.writes, self.runtime_s)
    }

    /// Write throughput acknowledged on the primary, bytes per second.
    pub fn write_bytes_per_s(&self) -> f64 {
        per_second(self.counts.write_bytes, self.runtime_s)
    }

    pub fn read_iops(&self) -> f64 {
        per_second(self.counts.reads, self.runtime_s)
    }

    pub fn read_bytes_per_s(&self) -> f64 {
        per_second(self.counts.read_bytes, self.runtime_s)
    }

    /// Bytes applied on the secondary per second, as the primary learned of them.
    pub fn applied_bytes_per_s(&self) -> f64 {
        per_second(self.counts.applied_bytes, self.runtime_s)
    }
}

pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The percentiles every summary prints.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 99.99];

/// A synthetic run for the reports' tests: five intervals (the last half a second long),
/// a few thousand latencies per metric on heavy (Pareto) tails over three decades, and no
/// reads in the first interval.
#[cfg(test)]
pub(crate) fn sample() -> Results {
    let header = Header {
        ordo_version: "0.1.0-test".into(),
        started: "2024-02-29T23:59:30Z".parse().unwrap(),
        seed: 42,
        machine: Machine {
            cores: 2,
            kernel: "Linux test".into(),
            cpu: "test cpu".into(),
            hostname: "test".into(),
        },
        config: BTreeMap::from([
            ("ramp_s".to_string(), "1".to_string()),
            ("rw".to_string(), "randwrite".to_string()),
        ]),
    };
    let mut results = Results {
        header,
        runtime_s: 4.5,
        counts: Counts::default(),
        histograms: Histograms::default(),
        intervals: Vec::new(),
        memory: Memory {
            primary_peak_rss_bytes: Some(300 << 20),
            primary_window_bytes: Some(256 << 20),
            secondary_peak_rss_bytes: Some(200 << 20),
            secondary_window_bytes: Some(64 << 20),
        },
        cpu: Cpu {
            primary: Some(ProcessCpu {
                user_s: 3.0,
                system_s: 1.5,
                voluntary_switches: 900,
                involuntary_switches: 100,
            }),
            secondary: Some(ProcessCpu {
                user_s: 2.0,
                system_s: 2.5,
                voluntary_switches: 4_000,
                involuntary_switches: 500,
            }),
        },
        replicated: true,
        window_full_waits: 3,
    };
    // xorshift64: deterministic and independent of the code under test.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut spread = |base_ns: f64, count: usize| {
        let mut histogram = new_histogram();
        for _ in 0..count {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let uniform = (state >> 11) as f64 / (1u64 << 53) as f64;
            let ns = base_ns * (1.0 - uniform).powf(-1.0 / 1.5);
            let ns = (ns as u64).clamp(1, HIGHEST_NS);
            histogram.record(ns).expect("clamped to the bounds");
        }
        histogram
    };
    for i in 0..5u64 {
        let writes = 1000 + 200 * i;
        let reads = if i == 0 { 0 } else { 300 };
        let histograms = Histograms {
            ack: spread(20_000.0, 700),
            lag: spread(500_000.0, 700),
            read: spread(8_000.0, 2 * reads as usize),
        };
        results
            .histograms
            .ack
            .add(&histograms.ack)
            .expect("same bounds");
        results
            .histograms
            .lag
            .add(&histograms.lag)
            .expect("same bounds");
        results
            .histograms
            .read
            .add(&histograms.read)
            .expect("same bounds");
        let counts = Counts {
            writes,
            write_bytes: writes * 4096,
            reads,
            read_bytes: reads * 4096,
            applied_writes: writes - 100,
            applied_bytes: (writes - 100) * 4096,
        };
        results.counts.add(&counts);
        results.intervals.push(Interval {
            start_s: i as f64,
            length_s: if i == 4 { 0.5 } else { 1.0 },
            counts,
            lag_data_sets: 2 + i % 3,
            retention_bytes: (i + 1) << 20,
            histograms,
        });
    }
    results
}

//! What both bench loops (the in-process pair's and `--target`'s) measure, and when: the
//! ramp, the measured run, the run's and the current second's counts and histograms, and
//! the seconds closed so far. The loops drive the load; this decides what counts.

use hdrhistogram::Histogram;

use super::results::{Counts, Histograms, Interval};
use super::workload::OpKind;
use crate::args::BenchArgs;

/// One progress line and one interval of the report per second.
pub(super) const INTERVAL_NS: u64 = 1_000_000_000;

pub(super) struct Meter {
    ramp_ns: u64,
    end_ns: u64,
    block_bytes: u64,
    measuring: bool,
    start_ns: u64,
    runtime_s: f64,
    counts: Counts,
    total: Histograms,
    interval_counts: Counts,
    interval: Histograms,
    interval_start_ns: u64,
    intervals: Vec<Interval>,
}

/// What a run measured.
pub(super) struct Measured {
    pub runtime_s: f64,
    pub counts: Counts,
    pub histograms: Histograms,
    pub intervals: Vec<Interval>,
}

impl Meter {
    /// `--ramp`, `--runtime` and `--bs` of `args`; sized before the run (one interval per
    /// second of the runtime).
    pub(super) fn new(args: &BenchArgs) -> Meter {
        Meter::with(args.ramp, args.runtime, args.bs.0)
    }

    fn with(ramp_s: f64, runtime_s: f64, block_bytes: u64) -> Meter {
        let ramp_ns = (ramp_s * 1e9) as u64;
        Meter {
            ramp_ns,
            end_ns: ramp_ns + (runtime_s * 1e9) as u64,
            block_bytes,
            measuring: false,
            start_ns: 0,
            runtime_s: 0.0,
            counts: Counts::default(),
            total: Histograms::default(),
            interval_counts: Counts::default(),
            interval: Histograms::default(),
            interval_start_ns: 0,
            intervals: Vec::with_capacity((runtime_s.ceil() as usize).min(1 << 16) + 1),
        }
    }

    /// Starts measuring once the ramp is over; true at the moment it does.
    pub(super) fn start_if_due(&mut self, now_ns: u64) -> bool {
        if self.measuring || now_ns < self.ramp_ns {
            return false;
        }
        self.measuring = true;
        self.start_ns = now_ns;
        self.interval_start_ns = now_ns;
        self.counts = Counts::default();
        self.interval_counts = Counts::default();
        self.total.reset();
        self.interval.reset();
        true
    }

    pub(super) fn ended(&self, now_ns: u64) -> bool {
        now_ns >= self.end_ns
    }

    /// The current second is over.
    pub(super) fn interval_due(&self, now_ns: u64) -> bool {
        self.measuring && now_ns >= self.interval_start_ns + INTERVAL_NS
    }

    /// A write's or read's latency (if it started in the measured run) and count (if it
    /// ended in it).
    pub(super) fn record(&mut self, kind: OpKind, start_ns: u64, now_ns: u64) {
        if !self.measuring {
            return;
        }
        let write = kind == OpKind::Write;
        if start_ns >= self.start_ns {
            let latency = now_ns.saturating_sub(start_ns).max(1);
            for histograms in [&mut self.total, &mut self.interval] {
                let histogram = if write {
                    &mut histograms.ack
                } else {
                    &mut histograms.read
                };
                histogram.saturating_record(latency);
            }
        }
        if now_ns < self.end_ns {
            for counts in [&mut self.counts, &mut self.interval_counts] {
                if write {
                    counts.writes += 1;
                    counts.write_bytes += self.block_bytes;
                } else {
                    counts.reads += 1;
                    counts.read_bytes += self.block_bytes;
                }
            }
        }
    }

    /// Replication lag observed at `at_ns`: `observe` gets the lag histograms to record
    /// into (none before measuring) and the counts of writes found applied, which count
    /// toward the run only if observed before its end.
    pub(super) fn record_lag<R>(
        &mut self,
        at_ns: u64,
        observe: impl FnOnce(Option<&mut [&mut Histogram<u64>]>, &mut Counts) -> R,
    ) -> R {
        if !self.measuring {
            return observe(None, &mut Counts::default());
        }
        let counting = at_ns < self.end_ns;
        let mut scratch = Counts::default();
        let counts = if counting {
            &mut self.interval_counts
        } else {
            &mut scratch
        };
        let before = *counts;
        let histograms = &mut [&mut self.total.lag, &mut self.interval.lag];
        let result = observe(Some(histograms), counts);
        if counting {
            self.counts.applied_writes += counts.applied_writes - before.applied_writes;
            self.counts.applied_bytes += counts.applied_bytes - before.applied_bytes;
        }
        result
    }

    /// Closes the current second at `now_ns` (at most the run's end), with the lag in
    /// data sets and the retention used then.
    pub(super) fn close_interval(&mut self, now_ns: u64, lag_data_sets: u64, retention_bytes: u64) {
        let now_ns = now_ns.min(self.end_ns);
        self.intervals.push(Interval {
            start_s: (self.interval_start_ns - self.start_ns) as f64 / 1e9,
            length_s: now_ns.saturating_sub(self.interval_start_ns) as f64 / 1e9,
            counts: std::mem::take(&mut self.interval_counts),
            lag_data_sets,
            retention_bytes,
            histograms: self.interval.clone(),
        });
        self.interval.reset();
        self.interval_start_ns = now_ns;
    }

    /// The run ended at `now_ns`: its length; true if the last, partial second is long
    /// enough to close as an interval of its own.
    pub(super) fn stop(&mut self, now_ns: u64) -> bool {
        self.runtime_s = (now_ns.min(self.end_ns) - self.start_ns) as f64 / 1e9;
        now_ns > self.interval_start_ns + INTERVAL_NS / 20
    }

    pub(super) fn intervals(&self) -> &[Interval] {
        &self.intervals
    }

    pub(super) fn finish(self) -> Measured {
        Measured {
            runtime_s: self.runtime_s,
            counts: self.counts,
            histograms: self.total,
            intervals: self.intervals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn only_the_measured_run_counts() {
        // 1 s ramp, 2 s run, 4 KiB operations.
        let mut meter = Meter::with(1.0, 2.0, 4096);
        meter.record(OpKind::Write, 0, S / 2);
        assert!(!meter.start_if_due(S / 2), "still ramping");
        assert!(meter.start_if_due(S));
        assert!(!meter.start_if_due(S + 1), "starts once");
        // Started during the ramp, ended in the run: counted, latency not recorded.
        meter.record(OpKind::Write, S - 10, S + 10);
        // In the run: both.
        meter.record(OpKind::Write, S + 100, S + 300);
        meter.record(OpKind::Read, S + 100, S + 150);
        assert!(!meter.interval_due(S + S / 2));
        assert!(meter.interval_due(2 * S));
        meter.close_interval(2 * S, 3, 4096);
        // Ended after the run: latency recorded, not counted.
        assert!(meter.ended(3 * S));
        meter.record(OpKind::Write, 3 * S - 100, 3 * S + 100);
        meter.record_lag(3 * S - 1, |histograms, counts| {
            histograms.expect("measuring")[0].saturating_record(7);
            counts.applied_writes += 2;
            counts.applied_bytes += 8192;
        });
        meter.record_lag(3 * S + 1, |_, counts| counts.applied_writes += 5);
        assert!(
            meter.stop(3 * S + S / 2),
            "the last half second is an interval"
        );
        let measured = meter.finish();
        assert_eq!(measured.runtime_s, 2.0, "capped at the run's end");
        assert_eq!(measured.counts.writes, 2);
        assert_eq!(measured.counts.write_bytes, 8192);
        assert_eq!(measured.counts.reads, 1);
        assert_eq!(
            measured.counts.applied_writes, 2,
            "lag seen after the end not counted"
        );
        assert_eq!(measured.histograms.ack.len(), 2);
        assert_eq!(measured.histograms.ack.max(), 200);
        assert_eq!(measured.histograms.read.len(), 1);
        assert_eq!(measured.histograms.lag.len(), 1);
        assert_eq!(measured.intervals.len(), 1);
        let first = &measured.intervals[0];
        assert_eq!((first.start_s, first.length_s), (0.0, 1.0));
        assert_eq!((first.counts.writes, first.counts.reads), (2, 1));
        assert_eq!((first.lag_data_sets, first.retention_bytes), (3, 4096));
    }
}

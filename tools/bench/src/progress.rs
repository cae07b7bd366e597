//! What a run shows while it runs: a bar with an ETA on a terminal, a plain line a second
//! otherwise, each with the last second's rates.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use super::meter::INTERVAL_NS;
use super::results::Interval;

/// The last second's rates, for the progress line.
pub(super) fn rates_line(intervals: &[Interval]) -> String {
    intervals.last().map_or(String::from("ramping up"), |i| {
        let per_s = |n: u64| n as f64 / i.length_s.max(1e-9);
        format!(
            "write {:.0} IOPS {:.1} MB/s, read {:.0} IOPS, applied {:.1} MB/s",
            per_s(i.counts.writes),
            per_s(i.counts.write_bytes) / 1e6,
            per_s(i.counts.reads),
            per_s(i.counts.applied_bytes) / 1e6,
        )
    })
}

/// A bar with an ETA on a terminal; a plain line a second otherwise.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total_s: f64,
    next_ns: u64,
}

impl Progress {
    pub(super) fn new(enabled: bool, total_s: f64) -> Progress {
        let terminal = enabled && std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = ProgressBar::new((total_s * 1000.0) as u64);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Progress {
            bar,
            plain: enabled && !terminal,
            total_s,
            next_ns: INTERVAL_NS,
        }
    }

    pub(super) fn due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_ns && (self.bar.is_some() || self.plain)
    }

    pub(super) fn show(&mut self, now_ns: u64, message: &str) {
        let step = if self.bar.is_some() {
            200_000_000
        } else {
            INTERVAL_NS
        };
        self.next_ns = now_ns + step;
        match &self.bar {
            Some(bar) => {
                bar.set_position(now_ns / 1_000_000);
                bar.set_message(message.to_string());
            }
            None => eprintln!(
                "bench: {:>5.1}/{:.0} s  {message}",
                now_ns as f64 / 1e9,
                self.total_s
            ),
        }
    }

    pub(super) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

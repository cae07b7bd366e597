//! What a process spent on the CPU during the measured run: user and system time and
//! context switches (voluntary: it waited; involuntary: it was preempted), read from
//! /proc at the run's start and end, for the bench's process and its secondary's, so a
//! report can say what each side costs per write and per MB, as fio's `cpu` line does.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

/// One process's CPU over the measured run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProcessCpu {
    pub user_s: f64,
    pub system_s: f64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

impl ProcessCpu {
    pub fn total_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

/// A process's counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    user_ticks: u64,
    system_ticks: u64,
    voluntary: u64,
    involuntary: u64,
}

/// The counters of process `pid` (this process with `None`) now: CPU time from
/// `/proc/PID/stat` (every thread's, the exited ones' included), context switches summed
/// over its threads' `status` (threads that exited meanwhile drop out: the bench's live
/// for the whole run).
pub(crate) fn sample(pid: Option<u32>) -> Result<Sample> {
    let dir = PathBuf::from(match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".into(),
    });
    let stat = std::fs::read_to_string(dir.join("stat"))
        .with_context(|| format!("reading {}", dir.join("stat").display()))?;
    let (user_ticks, system_ticks) = parse_stat(&stat)
        .with_context(|| format!("{} has no CPU times", dir.join("stat").display()))?;
    let (mut voluntary, mut involuntary) = (0, 0);
    let tasks = std::fs::read_dir(dir.join("task"))
        .with_context(|| format!("listing {}", dir.join("task").display()))?;
    for task in tasks.flatten() {
        // A thread may exit between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let (v, i) = parse_switches(&status);
        voluntary += v;
        involuntary += i;
    }
    Ok(Sample {
        user_ticks,
        system_ticks,
        voluntary,
        involuntary,
    })
}

impl Sample {
    /// What was spent from `start` to this sample.
    pub(crate) fn since(&self, start: &Sample) -> ProcessCpu {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        ProcessCpu {
            user_s: self.user_ticks.saturating_sub(start.user_ticks) as f64 / ticks,
            system_s: self.system_ticks.saturating_sub(start.system_ticks) as f64 / ticks,
            voluntary_switches: self.voluntary.saturating_sub(start.voluntary),
            involuntary_switches: self.involuntary.saturating_sub(start.involuntary),
        }
    }
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name
/// before them is in parentheses and may hold spaces and parentheses itself.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn parse_switches(status: &str) -> (u64, u64) {
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        value("voluntary_ctxt_switches:"),
        value("nonvoluntary_ctxt_switches:"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(stat), Some((1234, 567)));
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn switches_are_read_from_status() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_switches(status), (17, 3));
        assert_eq!(parse_switches("Name:\tx\n"), (0, 0));
    }

    #[test]
    fn this_process_spends_cpu_on_a_busy_loop() {
        let start = sample(None).unwrap();
        let begun = std::time::Instant::now();
        let mut x = 0u64;
        while begun.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let spent = sample(None).unwrap().since(&start);
        assert!(spent.total_s() >= 0.05, "{spent:?}");
        assert!(spent.total_s() < 5.0, "{spent:?}");
    }
}

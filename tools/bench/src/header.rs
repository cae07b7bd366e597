//! The header every report starts with: ordo's version, the time, the seed, the machine
//! and the run's full configuration.

use std::collections::BTreeMap;

use anyhow::Result;

use super::results::{Header, Machine};

/// The report's header: this machine, the time now, the seed and `config`.
pub(super) fn header(seed: u64, config: BTreeMap<String, String>) -> Result<Header> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Ok(Header {
        ordo_version: env!("CARGO_PKG_VERSION").to_string(),
        // To the second: a report says when it started, not how long setup took.
        started: jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())?,
        seed,
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: format!("Linux {}", read("/proc/sys/kernel/osrelease")),
            cpu,
            hostname: read("/proc/sys/kernel/hostname"),
        },
        config,
    })
}

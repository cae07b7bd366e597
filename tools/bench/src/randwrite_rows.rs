//! The rows of `ordo bench compare` made of in-process 4 KiB random writes at queue depth
//! 32 (`mem` volumes), replicated against replication off, from the same runs: P5 (IOPS,
//! closed loop), P2c (ack p99, closed loop), P2 (ack p99 in open loop at half the
//! replicated IOPS that run reached, where the window filling does not set the latency),
//! and P9 (CPU per replicated write, both sides, against the floor of writing locally and
//! moving the record over loopback, iperf3 measuring the link's CPU per byte).

use anyhow::{Context, Result};
use ordo_core::protocol::RECORD_FRAME_OVERHEAD_BYTES;

use crate::baselines::{iperf3, Iperf3};
use crate::cpu::ProcessCpu;
use crate::results::Results;
use crate::rows::{bench, row, Goal, Row, Settings};
use crate::summary::cpu_per_write_and_mb;

pub(crate) const LOAD: &str = "--rw randwrite --bs 4K --iodepth 32 --size 1G --backend mem";
/// P2's placement: the poller on the first core, everything else on the second (left out
/// on a machine of one core).
const OPEN_LOOP_CORES: &str = "0,1";
/// The payload of each write of `LOAD`.
const WRITE_BYTES: usize = 4096;
/// What a replicated write moves over the link: its record's frame, header and payload.
const RECORD_BYTES: usize = WRITE_BYTES + RECORD_FRAME_OVERHEAD_BYTES;

/// One iteration's measurements: (ours, baseline) of each row, and the commands.
struct Iteration {
    p2: ((f64, f64), (String, String)),
    p2c: (f64, f64),
    p5: (f64, f64),
    p9: Result<(f64, f64)>,
    closed_how: (String, String),
    floor_how: String,
}

fn p99_us(results: &Results) -> f64 {
    results.histograms.ack.value_at_percentile(99.0) as f64 / 1e3
}

/// Each iteration: closed loop replicated and local-only, then both in open loop at half
/// the replicated IOPS, then iperf3 for the link's CPU.
pub(crate) fn p2_p5_p9(settings: &Settings) -> Result<Vec<Row>> {
    let (mut p2, mut p2c, mut p5, mut p9) = (vec![], vec![], vec![], vec![]);
    let (mut p2_how, mut closed_how, mut p9_how) = Default::default();
    let mut p9_note = None;
    for _ in 0..settings.runs {
        let it = iteration(settings)?;
        p2.push(it.p2.0);
        p2c.push(it.p2c);
        p5.push(it.p5);
        match it.p9 {
            Ok(pair) => p9.push(pair),
            Err(why) => p9_note = Some(format!("iperf3: {why:#}")),
        }
        p2_how = it.p2.1;
        p9_how = (
            format!("{} (cpu.primary + cpu.secondary)", it.closed_how.0),
            it.floor_how,
        );
        closed_how = it.closed_how;
    }
    if p9_note.is_some() {
        // A floor measured in only some runs would be a median of fewer runs than the rest.
        p9.clear();
    }
    Ok(vec![
        row(
            "P2",
            "4K randwrite qd32, open loop at 1/2 replicated IOPS, --cores 0,1: ack p99, replicated / local-only",
            Goal::AtMost,
            (1.5, 1.1),
            "us",
            &p2,
            p2_how,
            None,
        ),
        row(
            "P2c",
            "4K randwrite qd32, closed loop: ack p99, replicated / local-only",
            Goal::AtMost,
            (1.15, 1.05),
            "us",
            &p2c,
            closed_how.clone(),
            None,
        ),
        row(
            "P5",
            "4K randwrite qd32: IOPS, replicated / local-only",
            Goal::AtLeast,
            (0.6, 0.8),
            "IOPS",
            &p5,
            closed_how,
            None,
        ),
        p9_row(&p9, p9_how, p9_note),
    ])
}

fn p9_row(runs: &[(f64, f64)], how: (String, String), note: Option<String>) -> Row {
    row(
        "P9",
        "4K randwrite qd32: CPU per write, both sides / local-only + link's CPU per record",
        Goal::AtMost,
        (1.5, 1.2),
        "us/write",
        runs,
        how,
        note,
    )
}

fn iteration(settings: &Settings) -> Result<Iteration> {
    let (ours, ours_how) = bench(settings, &format!("{LOAD} --mode replicated"))?;
    let (base, base_how) = bench(settings, &format!("{LOAD} --mode local-only"))?;
    // Whole operations per second: the rate shows in the command as typed. Pinned as the
    // design card places the roles: the acknowledging poller alone on core 0, its lane
    // sender and the secondary on core 1, so what P2 measures is the ack path, not which
    // thread the scheduler ran on the poller's core.
    let rate = (ours.write_iops() / 2.0).round().max(1.0);
    let machine_cores = core_affinity::get_core_ids().map_or(0, |ids| ids.len());
    let open = if machine_cores >= 2 {
        format!("{LOAD} --rate {rate} --cores {OPEN_LOOP_CORES}")
    } else {
        format!("{LOAD} --rate {rate}")
    };
    let (ours_open, ours_open_how) = bench(settings, &format!("{open} --mode replicated"))?;
    let (base_open, base_open_how) = bench(settings, &format!("{open} --mode local-only"))?;
    let link = iperf3(settings.runtime);
    let floor_how = match &link {
        Ok(link) => format!(
            "{base_how} (cpu.primary) + {RECORD_BYTES} bytes × CPU per byte of {}",
            link.how
        ),
        Err(_) => String::new(),
    };
    Ok(Iteration {
        p2: (
            (p99_us(&ours_open), p99_us(&base_open)),
            (ours_open_how, base_open_how),
        ),
        p2c: (p99_us(&ours), p99_us(&base)),
        p5: (ours.write_iops(), base.write_iops()),
        p9: link.and_then(|link| cpu_us_per_write(&ours, &base, &link)),
        closed_how: (ours_how, base_how),
        floor_how,
    })
}

/// P9's (ours, floor) in microseconds of CPU per write. Ours: what the primary's process
/// (with the load generator) and the secondary's spent per write acknowledged in the
/// replicated run. The floor: what the local-only run's process spent per write, plus
/// what the link's two ends spend moving one record's frame over loopback (the
/// secondary's acknowledgements back are left out: a few bytes per data set).
fn cpu_us_per_write(ours: &Results, base: &Results, link: &Iperf3) -> Result<(f64, f64)> {
    let per_write = |results: &Results, side: &str, cpu: Option<ProcessCpu>| {
        cpu.and_then(|cpu| cpu_per_write_and_mb(&cpu, results))
            .map(|(seconds, _)| seconds * 1e6)
            .with_context(|| format!("no {side} CPU per write in the run's results"))
    };
    let primary = per_write(ours, "primary", ours.cpu.primary)?;
    let secondary = per_write(ours, "secondary", ours.cpu.secondary)?;
    let local = per_write(base, "local-only", base.cpu.primary)?;
    let link_us = link.cpu_s_per_byte * RECORD_BYTES as f64 * 1e6;
    Ok((primary + secondary, local + link_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p9_adds_both_sides_and_the_floor_adds_one_records_link_cpu_to_local_cpu() {
        let ours = crate::results::sample();
        let mut base = crate::results::sample();
        base.cpu.secondary = None;
        let link = Iperf3 {
            bytes_per_s: 1e9,
            cpu_s_per_byte: 1e-9,
            how: String::new(),
        };
        // The sample: 7000 writes; 4.5 s of CPU on each side.
        let writes = (0..5).map(|i| 1000.0 + 200.0 * i as f64).sum::<f64>();
        let (both, floor) = cpu_us_per_write(&ours, &base, &link).unwrap();
        assert!((both - 9.0 / writes * 1e6).abs() < 1e-9, "{both}");
        let record_us = (4096.0 + 56.0) * 1e-9 * 1e6;
        assert!(
            (floor - (4.5 / writes * 1e6 + record_us)).abs() < 1e-9,
            "{floor}"
        );
        let error = cpu_us_per_write(&base, &base, &link).unwrap_err();
        assert!(error.to_string().contains("secondary"), "{error}");
    }
}

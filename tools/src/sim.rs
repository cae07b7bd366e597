//! `ordo sim`: runs seeds of the deterministic simulation and reports violations.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use ordo_core::secondary::InjectedBug;
use ordo_core::sim::{run_seed, SimStats};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Run seeds FIRST..FIRST+N (see --first).
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// First seed of the range; `random` draws one from the OS and prints it.
    #[arg(long, default_value = "0")]
    first: String,
    /// Replay exactly one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run with a deliberately broken applier (persists its watermark before the
    /// replicas are durable), to see the checker catch it.
    #[arg(long, conflicts_with_all = ["broken_resync", "broken_room"])]
    broken_applier: bool,
    /// Run with a deliberately broken resync (a secondary that applies a held resync's
    /// data sets before its end point is durable), to see the checker catch it.
    #[arg(long, conflicts_with = "broken_room")]
    broken_resync: bool,
    /// Run with a primary that keeps no room for a held resync in the secondary's window
    /// (the application's writes may fill it before the end point), to see the checker
    /// catch it.
    #[arg(long)]
    broken_room: bool,
    /// Print every seed's result, not only failures.
    #[arg(long)]
    verbose: bool,
}

pub fn run(args: &SimArgs) -> Result<ExitCode> {
    let (first, count) = match args.seed {
        Some(seed) => (seed, 1),
        None if args.first == "random" => {
            let first = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64;
            (first, args.seeds)
        }
        None => (args.first.parse()?, args.seeds),
    };
    let bug = if args.broken_applier {
        Some(InjectedBug::UnflushedWatermark)
    } else if args.broken_resync {
        Some(InjectedBug::EagerResync)
    } else if args.broken_room {
        Some(InjectedBug::ResyncWithoutRoom)
    } else {
        None
    };
    let started = Instant::now();
    let mut total = SimStats::default();
    let mut violations = 0u64;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "sim: seeds {first}..{} (broken applier: {}, broken resync: {}, broken room: {})",
        first.wrapping_add(count),
        args.broken_applier,
        args.broken_resync,
        args.broken_room
    )?;
    for seed in (0..count).map(|i| first.wrapping_add(i)) {
        let (stats, result) = run_seed(seed, bug);
        total.add(&stats);
        match result {
            Ok(()) if args.verbose => writeln!(
                out,
                "seed {seed}: ok ({} steps, {} data sets)",
                stats.steps, stats.data_sets
            )?,
            Ok(()) => {}
            Err(violation) => {
                violations += 1;
                writeln!(out, "VIOLATION {violation}")?;
            }
        }
    }
    writeln!(out, "sim: exercised {total}")?;
    writeln!(out, "sim: {:.1} s", started.elapsed().as_secs_f64())?;
    writeln!(out, "sim: {count} seeds, {violations} violations")?;
    Ok(if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

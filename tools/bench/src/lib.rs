//! ordo-bench: `ordo bench`, the latency-histogram benchmark of ordo's write path. It starts its own
//! pair (the primary in this process, driven directly, not through NBD; the secondary in a
//! child process over loopback lanes, optionally through a delaying relay), runs a fio-like
//! load and reports primary ack latency, replication lag, throughput per second and each
//! side's peak memory. With `--target` it drives a running primary through its NBD export
//! instead (`target`). `ordo bench compare` runs the baselines next to it.

mod args;
mod baselines;
pub mod compare;
pub mod cpu;
mod daemons;
mod driver;
mod hdrlog;
mod header;
mod intent_row;
mod lag;
mod meter;
mod nbd_rows;
pub mod peer;
mod plot;
mod progress;
mod randwrite_rows;
pub mod relay;
pub mod results;
mod resync_rows;
mod rows;
mod seed_row;
mod status_lag;
mod summary;
mod target;
mod target_loop;
mod workload;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use clap::{Args, Subcommand};

use args::init_warnings;
pub use args::{
    mode_name, Backend, BenchArgs, Mode, OutputFormat, GROUP, PRIMARY_FILE, VOLUME_NAME,
};
pub use results::Results;
pub use workload::Pattern;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchCommand {
    #[command(subcommand)]
    pub compare: Option<BenchSub>,
    #[command(flatten)]
    pub args: BenchArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchSub {
    /// Run the fixed suite of measurements, each next to its baseline measured in the
    /// same run (iperf3, fio, nbdkit, replication off, one data set at a time, the
    /// in-process bench, the write-intent record in memory).
    Compare(compare::CompareArgs),
}

/// What replication does during the run.
pub fn run(command: &BenchCommand) -> Result<ExitCode> {
    init_warnings();
    if let Some(BenchSub::Compare(args)) = &command.compare {
        return compare::run(args);
    }
    let args = &command.args;
    args.validate()?;
    let results = if args.target.is_some() {
        target::run(args, !args.quiet)?
    } else {
        driver::run(args, !args.quiet)?
    };
    let report = match args.output_format {
        OutputFormat::Normal => summary::human(&results),
        OutputFormat::Json => serde_json::to_string_pretty(&summary::json(&results))? + "\n",
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, report).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(report.as_bytes())?,
    }
    if let Some(path) = &args.hdr_log {
        hdrlog::write_log(&results, path).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot::write_svg(&results, path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

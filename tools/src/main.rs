//! `ordo`: the command-line front of ordo's asynchronous block replication, a thin dispatch
//! over the daemons (`ordo-daemon`), the benchmark (`ordo-bench`) and the simulator
//! (`ordo-core`).
#![forbid(unsafe_code)]

mod sim;

use clap::{Parser, Subcommand};
use ordo_daemon::{config, demo, inspect, operate};

#[derive(Debug, Parser)]
#[command(
    name = "ordo",
    version,
    about = "Asynchronous, crash-consistent block replication"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replicate two in-memory volumes in one process, crash the secondary part-way, verify.
    Demo(demo::DemoArgs),
    /// Run the deterministic simulation over many seeds and check the invariant.
    Sim(sim::SimArgs),
    /// Serve volumes over NBD and replicate every write to a secondary.
    Primary(config::PrimaryOptions),
    /// Receive a primary's writes, journal them and apply them in data-set order.
    Secondary(config::SecondaryOptions),
    /// Show a running daemon's replication state.
    Status(inspect::StatusArgs),
    /// Compare a quiet primary's volumes with the secondary's replicas.
    Verify(inspect::VerifyArgs),
    /// Decide about a secondary's replica: let a resync that does not fit go on
    /// inconsistent, or let the next primary overwrite an unrelated history.
    Resync(operate::ResyncArgs),
    /// Benchmark the write path: ack latency, replication lag, throughput, memory.
    Bench(ordo_bench::BenchCommand),
    /// The secondary process `ordo bench` starts (not for direct use).
    #[command(hide = true)]
    BenchSecondary(ordo_bench::peer::PeerArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Sim(args) => sim::run(&args),
        Command::Primary(options) => ordo_daemon::primary::run(options),
        Command::Secondary(options) => ordo_daemon::secondary::run(options),
        Command::Status(args) => inspect::status(&args),
        Command::Verify(args) => inspect::verify(&args),
        Command::Resync(args) => operate::resync(&args),
        Command::Bench(command) => ordo_bench::run(&command),
        Command::BenchSecondary(args) => ordo_bench::peer::serve(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ordo: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

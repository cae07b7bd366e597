//! `ordo`: the command-line front of ordo's asynchronous block replication.
#![forbid(unsafe_code)]

mod bench;
mod daemon;
mod demo;
mod inspect;
mod sim;
mod spdk;
mod volume;

use clap::{Parser, Subcommand};

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
    Primary(daemon::config::PrimaryOptions),
    /// Receive a primary's writes, journal them and apply them in data-set order.
    Secondary(daemon::config::SecondaryOptions),
    /// Show a running daemon's replication state.
    Status(inspect::StatusArgs),
    /// Compare a quiet primary's volumes with the secondary's replicas.
    Verify(inspect::VerifyArgs),
    /// Benchmark the write path: ack latency, replication lag, throughput, memory.
    Bench(bench::BenchCommand),
    /// The secondary process `ordo bench` starts (not for direct use).
    #[command(hide = true)]
    BenchSecondary(bench::peer::PeerArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Sim(args) => sim::run(&args),
        Command::Primary(options) => daemon::primary::run(options),
        Command::Secondary(options) => daemon::secondary::run(options),
        Command::Status(args) => inspect::status(&args),
        Command::Verify(args) => inspect::verify(&args),
        Command::Bench(command) => bench::run(&command),
        Command::BenchSecondary(args) => bench::peer::serve(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ordo: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

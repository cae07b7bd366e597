//! `ordo`: the command-line front of ordo's asynchronous block replication.
#![forbid(unsafe_code)]

mod demo;
#[expect(
    dead_code,
    reason = "`ordo primary`, which serves its volumes with it, comes next (issue 4)"
)]
mod nbd;
mod sim;

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Sim(args) => sim::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ordo: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

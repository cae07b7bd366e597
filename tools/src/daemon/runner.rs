//! A daemon's poller, wherever it runs: on this thread (pinned, idling between rounds as
//! its policy says) or, with SPDK, as an SPDK poller on a reactor. Either way the daemon
//! is one value whose `round` does a bounded amount of work.

use std::process::ExitCode;

use anyhow::Result;
use ordo_runtime::idle::{IdlePolicy, Round};

use super::config::{pin, Idle};
use crate::spdk::SpdkArgs;

/// A daemon as its poller sees it.
pub trait Rounds {
    /// Does a bounded amount of work; `Round::Done` once terminated and drained.
    fn round(&mut self) -> Round;
    /// What the process exits with, asked once `round` returned `Round::Done`.
    fn exit_code(&self) -> ExitCode;
}

/// Where the poller runs.
#[derive(Debug)]
pub enum Runtime {
    /// This thread, pinned to the core if any, idling as the policy says.
    Thread {
        pin: Option<usize>,
        idle: IdlePolicy,
    },
    /// An SPDK poller on the reactor of this core.
    Reactor { core: u32 },
}

impl Runtime {
    /// Where a daemon's poller runs, SPDK (named `name`) started first if it has a config:
    /// on a reactor of `cores` or, without SPDK or with --spdk-own-threads, on this
    /// thread pinned to `pin` and idling as `idle` says.
    pub fn start(
        spdk: &SpdkArgs,
        name: &str,
        cores: &[usize],
        pin: Option<usize>,
        idle: Idle,
    ) -> Result<Runtime> {
        let reactors = spdk.reactor_cores(cores)?;
        spdk.start(name, reactors.clone())?;
        Ok(match reactors {
            Some(cores) => Runtime::Reactor {
                core: SpdkArgs::poller_core(&cores),
            },
            None => Runtime::Thread {
                pin,
                idle: idle.policy(),
            },
        })
    }
}

/// Builds the daemon where its poller runs, then runs it until it exits.
pub fn run<B, D>(runtime: Runtime, build: B) -> Result<ExitCode>
where
    B: FnOnce() -> Result<D> + Send + 'static,
    D: Rounds + 'static,
{
    match runtime {
        Runtime::Thread { pin: core, idle } => {
            let mut daemon = build()?;
            pin(core)?;
            loop {
                match daemon.round() {
                    Round::Done => return Ok(daemon.exit_code()),
                    round => idle.after_round(round),
                }
            }
        }
        Runtime::Reactor { core } => crate::spdk::run_on_reactor(core, build),
    }
}

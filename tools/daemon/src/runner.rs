//! A daemon's poller, wherever it runs: on this thread (pinned, idling between rounds as
//! its policy says) or, with SPDK, as an SPDK poller on a reactor. Either way the daemon
//! is one value whose `round` does a bounded amount of work.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Result};
use clap::ValueEnum;
use ordo_runtime::idle::{IdlePolicy, Round};
use serde::{Deserialize, Serialize};

use crate::spdk::SpdkArgs;

/// A daemon as its poller sees it.
pub trait Rounds {
    /// Does a bounded amount of work; `Round::Done` once terminated and drained.
    fn round(&mut self) -> Round;
    /// What the process exits with, asked once `round` returned `Round::Done`.
    fn exit_code(&self) -> ExitCode;
    /// After a round that found nothing to do: waits as `idle` says. A daemon with
    /// sockets of its own to watch waits on them, so new work wakes it at once.
    fn idle(&mut self, idle: IdlePolicy) {
        idle.after_round(Round::Idle);
    }
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

impl Runtime {
    /// Where a daemon's helper threads go (the primary's lane sender, the secondary's
    /// receivers): the second of `--cores` when the poller runs on a thread; none with
    /// SPDK reactors, which keep every core given busy.
    pub fn second_core(&self, cores: &[usize]) -> Option<usize> {
        match self {
            Runtime::Thread { .. } => cores.get(1).copied(),
            Runtime::Reactor { .. } => None,
        }
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
                    Round::Idle => daemon.idle(idle),
                    Round::Busy => {}
                }
            }
        }
        Runtime::Reactor { core } => run_on_reactor(core, build),
    }
}

/// Runs a daemon's poller as an SPDK poller on the reactor of `core`: `build` makes it
/// there, then each reactor round runs one of its rounds until it exits.
#[cfg(feature = "spdk")]
fn run_on_reactor<B, D>(core: u32, build: B) -> Result<std::process::ExitCode>
where
    B: FnOnce() -> Result<D> + Send + 'static,
    D: Rounds + 'static,
{
    use anyhow::Context;
    let env = ordo_spdk::env().context("SPDK is not started")?;
    let (exit, code) = std::sync::mpsc::sync_channel(1);
    let handle = env.spawn_poller(core, move || {
        let mut daemon = build().map_err(|e| format!("{e:#}"))?;
        Ok(move || {
            let round = daemon.round();
            if round == Round::Done {
                let _ = exit.try_send(daemon.exit_code());
            }
            round
        })
    })?;
    handle.wait().map_err(anyhow::Error::msg)?;
    code.recv()
        .context("the daemon's poller ended without an exit code")
}

#[cfg(not(feature = "spdk"))]
fn run_on_reactor<B, D>(_core: u32, _build: B) -> Result<std::process::ExitCode>
where
    B: FnOnce() -> Result<D> + Send + 'static,
    D: Rounds + 'static,
{
    anyhow::bail!("{}", crate::spdk::NOT_BUILT)
}

/// What a poller does when a round found nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Idle {
    /// Poll again at once: a dedicated core.
    Spin,
    /// Yield the core, then poll again.
    Yield,
    /// Sleep 100 µs: a shared machine.
    Park,
}

impl Idle {
    pub fn policy(self) -> IdlePolicy {
        match self {
            Idle::Spin => IdlePolicy::Spin,
            Idle::Yield => IdlePolicy::Yield,
            Idle::Park => IdlePolicy::Park(Duration::from_micros(100)),
        }
    }
}

/// Pins the calling thread to `core`, if one was configured.
pub fn pin(core: Option<usize>) -> Result<()> {
    if let Some(id) = core {
        ensure!(
            core_affinity::set_for_current(core_affinity::CoreId { id }),
            "could not pin the poller to core {id}"
        );
    }
    Ok(())
}

//! The `--spdk-*` options every command that can put volumes on SPDK bdevs takes, and
//! starting SPDK's environment from them (once per process). Without the `spdk` feature
//! the options still parse, and using them says how to get a build with SPDK.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Clone, Debug, Default, Args)]
pub struct SpdkArgs {
    /// SPDK JSON config creating the bdevs that `spdk:BDEV` volumes name (the format of
    /// `spdk_tgt --json`: bdev_malloc_create, bdev_nvme_attach_controller, ...).
    #[arg(long, value_name = "FILE")]
    pub spdk_config: Option<PathBuf>,
    /// Memory SPDK reserves for DMA buffers and malloc bdevs, in MiB (default: every
    /// hugepage reserved; required with --spdk-no-huge).
    #[arg(long, value_name = "MIB")]
    pub spdk_mem_mb: Option<u32>,
    /// Plain memory instead of hugepages (tests, small machines; no NVMe then).
    #[arg(long)]
    pub spdk_no_huge: bool,
    /// Do not probe PCI devices (software bdevs only: malloc, aio, ...).
    #[arg(long)]
    pub spdk_no_pci: bool,
    /// Drive SPDK from ordo's own poller thread (pinned by --cores, idling as --idle)
    /// instead of running the poller on SPDK reactors, which spin on their cores.
    #[arg(long)]
    pub spdk_own_threads: bool,
}

impl SpdkArgs {
    /// Starts SPDK if a config was given (`name` names the process to it), with reactors
    /// on `reactor_cores` if any; an `spdk:` volume without a config fails later, when
    /// it is opened, saying so.
    pub fn start(&self, name: &str, reactor_cores: Option<Vec<u32>>) -> Result<()> {
        let Some(config) = &self.spdk_config else {
            anyhow::ensure!(
                self.spdk_mem_mb.is_none()
                    && !self.spdk_no_huge
                    && !self.spdk_no_pci
                    && !self.spdk_own_threads,
                "--spdk-mem-mb, --spdk-no-huge, --spdk-no-pci and --spdk-own-threads need --spdk-config"
            );
            return Ok(());
        };
        start(name, config.clone(), self, reactor_cores)
    }

    /// The reactor cores a daemon with `--cores CORES` runs SPDK on: those cores, each
    /// one this process may use, no core twice; `None` without SPDK or with
    /// --spdk-own-threads. A daemon on reactors must name its cores: each spins, and SPDK
    /// locks it, so two daemons on one host cannot share one by default.
    pub fn reactor_cores(&self, cores: &[usize]) -> Result<Option<Vec<u32>>> {
        if self.spdk_config.is_none() || self.spdk_own_threads {
            return Ok(None);
        }
        anyhow::ensure!(
            !cores.is_empty(),
            "--spdk-config runs SPDK reactors: give --cores (each core given runs one and is busy all the time), or --spdk-own-threads"
        );
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|id| id.id).collect())
            .unwrap_or_default();
        let mut reactors = Vec::with_capacity(cores.len());
        for &core in cores {
            anyhow::ensure!(
                allowed.contains(&core),
                "--cores: core {core} is not one this process may run on ({allowed:?})"
            );
            let core = u32::try_from(core).context("a core number beyond u32")?;
            anyhow::ensure!(
                !reactors.contains(&core),
                "--cores: core {core} given twice"
            );
            reactors.push(core);
        }
        Ok(Some(reactors))
    }

    /// The reactor a daemon's poller runs on: the last of its cores. The first is SPDK's
    /// main reactor, where its application thread runs (NVMe admin queues, hot remove):
    /// with two cores or more the poller leaves it to that.
    pub fn poller_core(cores: &[u32]) -> u32 {
        *cores.last().expect("reactor_cores gives at least one core")
    }
}

#[cfg(feature = "spdk")]
fn start(
    name: &str,
    config: PathBuf,
    args: &SpdkArgs,
    reactor_cores: Option<Vec<u32>>,
) -> Result<()> {
    ordo_spdk::init(ordo_spdk::EnvOptions {
        name: name.to_string(),
        config: config.clone(),
        mem_size_mb: args.spdk_mem_mb,
        no_huge: args.spdk_no_huge,
        no_pci: args.spdk_no_pci,
        reactor_cores: reactor_cores.clone(),
    })
    .with_context(|| format!("starting SPDK with {}", config.display()))?;
    match reactor_cores {
        Some(cores) => tracing::info!(
            "SPDK started with {}, reactors on cores {cores:?}",
            config.display()
        ),
        None => tracing::info!("SPDK started with {}", config.display()),
    }
    Ok(())
}

#[cfg(not(feature = "spdk"))]
fn start(
    _name: &str,
    _config: PathBuf,
    _args: &SpdkArgs,
    _reactor_cores: Option<Vec<u32>>,
) -> Result<()> {
    anyhow::bail!("{NOT_BUILT}")
}

/// What a build without SPDK says when asked for it.
#[cfg(not(feature = "spdk"))]
pub const NOT_BUILT: &str = "this ordo was built without SPDK: build it with `SPDK_DIR=/path/to/spdk cargo build --release --features spdk` (README, section SPDK)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdk_memory_options_without_a_config_are_refused() {
        let args = SpdkArgs {
            spdk_no_huge: true,
            ..SpdkArgs::default()
        };
        let error = args.start("test", None).unwrap_err().to_string();
        assert!(error.contains("need --spdk-config"), "{error}");
        assert!(
            SpdkArgs::default().start("test", None).is_ok(),
            "no SPDK asked for"
        );
    }

    #[test]
    fn reactor_cores_are_named_available_and_distinct() {
        let spdk = SpdkArgs {
            spdk_config: Some("bdevs.json".into()),
            ..SpdkArgs::default()
        };
        let error = |cores: &[usize]| spdk.reactor_cores(cores).unwrap_err().to_string();
        assert!(error(&[]).contains("give --cores"));
        assert!(error(&[100_000]).contains("not one this process may run on"));
        let first = core_affinity::get_core_ids().unwrap()[0].id;
        assert!(error(&[first, first]).contains("given twice"));
        assert_eq!(
            spdk.reactor_cores(&[first]).unwrap(),
            Some(vec![first as u32])
        );
        let own = SpdkArgs {
            spdk_own_threads: true,
            ..spdk.clone()
        };
        assert_eq!(
            own.reactor_cores(&[]).unwrap(),
            None,
            "own threads: no reactors"
        );
        assert_eq!(SpdkArgs::default().reactor_cores(&[first]).unwrap(), None);
        assert_eq!(SpdkArgs::poller_core(&[2, 3]), 3, "off the main reactor");
        assert_eq!(SpdkArgs::poller_core(&[2]), 2);
    }

    #[cfg(not(feature = "spdk"))]
    #[test]
    fn a_build_without_spdk_says_how_to_get_one() {
        let args = SpdkArgs {
            spdk_config: Some("bdevs.json".into()),
            ..SpdkArgs::default()
        };
        let error = args.start("test", None).unwrap_err().to_string();
        assert!(error.contains("--features spdk"), "{error}");
    }
}

//! The `--spdk-*` options every command that can put volumes on SPDK bdevs takes, and
//! starting SPDK's environment from them (once per process). Without the `spdk` feature
//! the options still parse, and using them says how to get a build with SPDK.

use std::path::PathBuf;

use anyhow::Result;
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
}

impl SpdkArgs {
    /// Starts SPDK if a config was given (`name` names the process to it); an `spdk:`
    /// volume without one fails later, when it is opened, saying so.
    pub fn start(&self, name: &str) -> Result<()> {
        let Some(config) = &self.spdk_config else {
            anyhow::ensure!(
                self.spdk_mem_mb.is_none() && !self.spdk_no_huge && !self.spdk_no_pci,
                "--spdk-mem-mb, --spdk-no-huge and --spdk-no-pci need --spdk-config"
            );
            return Ok(());
        };
        start(name, config.clone(), self)
    }
}

#[cfg(feature = "spdk")]
fn start(name: &str, config: PathBuf, args: &SpdkArgs) -> Result<()> {
    use anyhow::Context;
    ordo_spdk::init(ordo_spdk::EnvOptions {
        name: name.to_string(),
        config: config.clone(),
        mem_size_mb: args.spdk_mem_mb,
        no_huge: args.spdk_no_huge,
        no_pci: args.spdk_no_pci,
        reactor_cores: None,
    })
    .with_context(|| format!("starting SPDK with {}", config.display()))?;
    tracing::info!("SPDK started with {}", config.display());
    Ok(())
}

#[cfg(not(feature = "spdk"))]
fn start(_name: &str, _config: PathBuf, _args: &SpdkArgs) -> Result<()> {
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
        let error = args.start("test").unwrap_err().to_string();
        assert!(error.contains("need --spdk-config"), "{error}");
        assert!(
            SpdkArgs::default().start("test").is_ok(),
            "no SPDK asked for"
        );
    }

    #[cfg(not(feature = "spdk"))]
    #[test]
    fn a_build_without_spdk_says_how_to_get_one() {
        let args = SpdkArgs {
            spdk_config: Some("bdevs.json".into()),
            ..SpdkArgs::default()
        };
        let error = args.start("test").unwrap_err().to_string();
        assert!(error.contains("--features spdk"), "{error}");
        let volume = "data=spdk:Malloc0".parse().unwrap();
        let error = crate::volume::Volume::open(&volume, 4096)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--features spdk"), "{error}");
    }
}

//! `ordo bench`'s options (`BenchArgs`, the subcommand), what they resolve to (the
//! engine's and the secondary's configuration, the mode), and its constants.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::{Args, ValueEnum};
use ordo_core::primary::{DataSetPolicy, Replication};
use ordo_core::protocol::{stream_cost, GroupId, MAX_LANES};
use ordo_core::secondary::SecondaryConfig;
use ordo_daemon::runner::Idle;
use ordo_daemon::spdk::SpdkArgs;
use ordo_daemon::volume::ByteSize;
use ordo_nbd::url::NbdUrl;

use crate::workload::Pattern;

pub const GROUP: GroupId = GroupId(1);
pub const VOLUME_NAME: &str = "bench";
pub const PRIMARY_FILE: &str = "ordo-bench-primary.img";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// ordo: every write streamed at once, many data sets in flight.
    Replicated,
    /// Replication off on the same write path: no secondary.
    LocalOnly,
    /// Data set k+1 sent only once k is applied (the baseline pipelining must beat).
    GroupOrdered,
}

impl Mode {
    pub fn replication(self) -> Replication {
        match self {
            Mode::Replicated => Replication::Pipelined,
            Mode::LocalOnly => Replication::Off,
            Mode::GroupOrdered => Replication::GroupOrdered,
        }
    }
}

/// Where the volumes live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// In memory on both sides (journal included): the analogue of SPDK malloc bdevs.
    Mem,
    /// Files in this directory (io_uring, O_DIRECT where allowed): the primary's volume,
    /// the secondary's replica and its journal. Created for the run and removed after.
    Dir(PathBuf),
    /// The primary's volume on this SPDK bdev (`--spdk-config` creates it; a build with
    /// the `spdk` feature); the secondary's replica and journal in memory.
    Spdk(String),
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "mem" => Ok(Backend::Mem),
            Some(("file", path)) if !path.is_empty() => Ok(Backend::Dir(PathBuf::from(path))),
            Some(("spdk", bdev)) if !bdev.is_empty() => Ok(Backend::Spdk(bdev.to_string())),
            _ => Err(format!("{text:?} is not mem, file:DIRECTORY or spdk:BDEV")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Mem => write!(f, "mem"),
            Backend::Dir(path) => write!(f, "file:{}", path.display()),
            Backend::Spdk(bdev) => write!(f, "spdk:{bdev}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Normal,
    Json,
}

/// fio's options where fio has them; ordo's own after.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// I/O pattern.
    #[arg(long, value_enum, default_value = "randwrite")]
    pub rw: Pattern,
    /// Percent of writes in `--rw randrw`.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixwrite: u8,
    /// Block size of each operation.
    #[arg(long, default_value = "4K")]
    pub bs: ByteSize,
    /// Size of the volume (split evenly between the jobs) [default: 1G; with --target,
    /// the region of the export used from its start, by default all of it].
    #[arg(long)]
    pub size: Option<ByteSize>,
    /// Operations in flight per job.
    #[arg(long, default_value_t = 32)]
    pub iodepth: usize,
    /// Jobs, each with its own slice of the volume and its own iodepth; they share the
    /// primary's one poller, as NBD clients do.
    #[arg(long, default_value_t = 1)]
    pub numjobs: usize,
    /// Seconds measured (after the ramp).
    #[arg(long, default_value_t = 10.0)]
    pub runtime: f64,
    /// Seconds run first and left out of the results.
    #[arg(long, default_value_t = 1.0)]
    pub ramp: f64,
    /// Open loop: start this many operations per second in all (latency counts from each
    /// operation's intended start, so a stall is not hidden). Closed loop without it.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seed of the offsets and the read/write mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// TCP lanes between primary and secondary.
    #[arg(long, default_value_t = 4)]
    pub lanes: usize,
    /// Cores to pin to: the primary's poller on the first, its lane sender and the
    /// secondary process on the second (if given). With --target, one core: this
    /// process's loop.
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// What the pollers (with --target, this process's loop) do when a round found nothing
    /// to do.
    #[arg(long, value_enum, default_value = "yield")]
    pub idle: Idle,
    /// mem, file:DIRECTORY (volumes and journal as files there, io_uring + O_DIRECT), or
    /// spdk:BDEV (the primary's volume on an SPDK bdev of --spdk-config; --size at most
    /// the bdev's).
    #[arg(long, default_value = "mem")]
    pub backend: Backend,
    /// Replication during the run: on (pipelined), off, or one data set at a time.
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: Mode,
    /// Close a data set this long after its first write.
    #[arg(long, default_value_t = 10)]
    pub data_set_interval_ms: u64,
    /// Close a data set after this many writes.
    #[arg(long, default_value_t = 4096)]
    pub data_set_max_writes: u64,
    /// Close a data set after this many bytes.
    #[arg(long, default_value = "16M")]
    pub data_set_max_bytes: ByteSize,
    /// The primary's retention window.
    #[arg(long, default_value = "256M")]
    pub window: ByteSize,
    /// The secondary's journal window, at least the largest data set the data-set policy
    /// and --bs allow [default: twice that].
    #[arg(long)]
    pub secondary_window: Option<ByteSize>,
    /// Delay every frame on the lanes by this many milliseconds each way (a userspace
    /// relay: RTT = 2 × this).
    #[arg(long, default_value_t = 0.0)]
    pub link_delay_ms: f64,
    /// Cap each direction of the relayed link at this many bytes per second (e.g. 1G).
    /// Unlimited without it.
    #[arg(long)]
    pub link_rate: Option<ByteSize>,
    /// The report's format: fio-like text, or fio-like JSON.
    #[arg(long, value_enum, default_value = "normal")]
    pub output_format: OutputFormat,
    /// Write the report here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write every second's histograms here, in the HdrHistogram log format.
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// Draw latency spectra and throughput and lag over time to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Drive a running `ordo primary` through its NBD export, nbd://HOST[:PORT]/EXPORT,
    /// instead of starting a pair: one connection per job, up to --iodepth requests in
    /// flight on each (ordo's NBD server serves 8 at a time per connection; more wait in
    /// its socket), the same load and reports. Ack latency is then the NBD request's send
    /// (or intended start) to its reply. The pair's own options (mode, backend, lanes,
    /// link, windows, data-set policy) belong to the daemons and are refused with it.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with_all = [
            "mode", "backend", "lanes", "link_delay_ms", "link_rate", "window",
            "secondary_window", "data_set_interval_ms", "data_set_max_writes",
            "data_set_max_bytes",
        ]
    )]
    pub target: Option<NbdUrl>,
    /// With --target: the primary's control socket, polled every 5 ms from a helper thread
    /// for replication lag. A write's data set is taken as the one open at the first poll
    /// sent after its acknowledgement (last_closed + 1, an upper bound: NBD does not say),
    /// and its lag runs from its acknowledgement to the first poll showing that data set
    /// applied: an upper bound of the true lag (the report gives the share of writes whose
    /// data set was exact). A flush after the run closes the last data set. Also gives the
    /// primary's peak RSS if it runs on this host. Without it lag is not measured.
    #[arg(long, value_name = "SOCKET", requires = "target")]
    pub target_control: Option<PathBuf>,
    #[command(flatten)]
    pub spdk: SpdkArgs,
}

/// Most operations in flight in all, and the largest block: bounds what the bench holds.
const MAX_IN_FLIGHT: usize = 1 << 16;
const MAX_BLOCK: u64 = 1 << 20;
/// The volume's size when --size is left out (with --target: all of the export). Its help
/// says so in words; a test checks they agree.
const DEFAULT_SIZE: u64 = 1 << 30;

impl BenchArgs {
    /// The volume's size (the pair's own runs).
    pub fn size_bytes(&self) -> u64 {
        self.size.map_or(DEFAULT_SIZE, |s| s.0)
    }

    /// Refuses what cannot run, with the option named.
    pub fn validate(&self) -> Result<()> {
        self.validate_load()?;
        if self.target.is_some() {
            // The rest is the pair's; clap refused those options given with --target.
            ensure!(
                self.cores.len() <= 1,
                "--cores takes one core with --target (this loop's): the second is for the secondary of a pair ordo bench starts itself"
            );
            return Ok(());
        }
        self.validate_pair()
    }

    /// The load's options, which every run shares.
    fn validate_load(&self) -> Result<()> {
        let block = self.bs.0;
        ensure!(
            (512..=MAX_BLOCK).contains(&block) && block.is_multiple_of(512),
            "--bs must be a multiple of 512 from 512 to 1M, not {}",
            self.bs
        );
        ensure!(
            (1..=256).contains(&self.numjobs),
            "--numjobs must be 1 to 256"
        );
        ensure!(
            self.iodepth >= 1 && self.iodepth * self.numjobs <= MAX_IN_FLIGHT,
            "--iodepth must be at least 1, and iodepth × numjobs at most {MAX_IN_FLIGHT}"
        );
        if let Some(size) = self.size {
            ensure!(
                size.0.is_multiple_of(4096) && size.0 <= 1 << 40,
                "--size must be a multiple of 4K up to 1T"
            );
        }
        ensure!(
            self.size_bytes() / block >= self.numjobs as u64,
            "--size {} holds fewer {} blocks than --numjobs {}",
            ByteSize(self.size_bytes()),
            self.bs,
            self.numjobs
        );
        ensure!(
            self.runtime > 0.0 && self.runtime <= 86_400.0,
            "--runtime must be in (0, 86400] seconds"
        );
        ensure!(
            (0.0..=3600.0).contains(&self.ramp),
            "--ramp must be in [0, 3600] seconds"
        );
        if let Some(rate) = self.rate {
            ensure!(
                rate.is_finite() && (1.0..=1e9).contains(&rate),
                "--rate must be 1 to 1e9 operations per second"
            );
        }
        let cores = core_affinity::get_core_ids().map_or(0, |ids| ids.len());
        for &core in &self.cores {
            ensure!(
                core < cores.max(1),
                "--cores {core}: this machine has {cores}"
            );
        }
        ensure!(self.cores.len() <= 2, "--cores takes at most two cores");
        Ok(())
    }

    /// The pair's options (not with --target).
    fn validate_pair(&self) -> Result<()> {
        ensure!(
            (1..=MAX_LANES).contains(&self.lanes),
            "--lanes must be 1 to {MAX_LANES}"
        );
        ensure!(
            self.link_delay_ms.is_finite() && (0.0..=10_000.0).contains(&self.link_delay_ms),
            "--link-delay-ms must be 0 to 10000"
        );
        if let Some(rate) = self.link_rate {
            ensure!(rate.0 >= 1024, "--link-rate must be at least 1K per second");
        }
        let linked = self.link_delay_ms > 0.0 || self.link_rate.is_some();
        ensure!(
            !(linked && self.mode == Mode::LocalOnly),
            "--link-delay-ms and --link-rate need a secondary: not with --mode local-only"
        );
        if let Backend::Dir(dir) = &self.backend {
            ensure!(
                dir.is_dir(),
                "--backend file:{}: not a directory",
                dir.display()
            );
        }
        ensure!(
            matches!(self.backend, Backend::Spdk(_)) == self.spdk.spdk_config.is_some(),
            "--backend spdk:BDEV and --spdk-config go together"
        );
        self.engine_config()
            .validate()
            .context("the primary's settings")?;
        if self.mode != Mode::LocalOnly {
            let secondary = SecondaryConfig {
                group: GROUP,
                volume_names: vec![VOLUME_NAME.to_string()],
                window_bytes: self.secondary_window_bytes(),
                max_write_bytes: self.max_write_bytes(),
                lanes: self.lanes,
                ..SecondaryConfig::default()
            };
            secondary.validate().context("the secondary's settings")?;
            let needed = self.policy().max_stream_bytes(self.max_write_bytes());
            ensure!(
                self.secondary_window_bytes() >= needed,
                "--secondary-window must hold the largest data set the policy allows: {needed} bytes"
            );
        }
        Ok(())
    }

    pub fn policy(&self) -> DataSetPolicy {
        DataSetPolicy {
            interval_ms: self.data_set_interval_ms,
            max_writes: self.data_set_max_writes,
            max_bytes: self.data_set_max_bytes.0,
        }
    }

    /// Largest write the pair accepts: the block size.
    pub fn max_write_bytes(&self) -> u32 {
        u32::try_from(self.bs.0).unwrap_or(u32::MAX)
    }

    pub fn secondary_window_bytes(&self) -> u64 {
        self.secondary_window.map_or_else(
            || (2 * self.policy().max_stream_bytes(self.max_write_bytes())).next_multiple_of(512),
            |w| w.0,
        )
    }

    pub fn engine_config(&self) -> ordo_core::primary::PrimaryConfig {
        ordo_core::primary::PrimaryConfig {
            group: GROUP,
            volume_names: vec![VOLUME_NAME.to_string()],
            policy: self.policy(),
            window_bytes: self.window.0,
            max_write_bytes: self.max_write_bytes(),
            lanes: self.lanes,
            replication: self.mode.replication(),
            max_pending_flushes: 64,
            ..ordo_core::primary::PrimaryConfig::default()
        }
    }

    /// Unapplied writes the windows allow at most: what the lag tracker may hold.
    pub fn max_unapplied_writes(&self) -> usize {
        let bytes = self.window.0 + self.secondary_window_bytes();
        usize::try_from(bytes / stream_cost(self.max_write_bytes()) + 1)
            .unwrap_or(usize::MAX)
            .min(1 << 24)
    }

    /// The load's configuration (every run's), for the report's header; `size_bytes` is
    /// the region the jobs share.
    pub fn describe_load(&self, size_bytes: u64) -> BTreeMap<String, String> {
        let mut c = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            c.insert(k.to_string(), v);
        };
        put("rw", format!("{:?}", self.rw).to_lowercase());
        if self.rw == Pattern::Randrw {
            put("rwmixwrite", self.rwmixwrite.to_string());
        }
        put("bs", self.bs.to_string());
        put("size", ByteSize(size_bytes).to_string());
        put("iodepth", self.iodepth.to_string());
        put("numjobs", self.numjobs.to_string());
        put("runtime_s", self.runtime.to_string());
        put("ramp_s", self.ramp.to_string());
        put(
            "rate",
            self.rate
                .map_or("closed loop".into(), |r| format!("{r} ops/s")),
        );
        put(
            "cores",
            if self.cores.is_empty() {
                "unpinned".into()
            } else {
                format!("{:?}", self.cores)
            },
        );
        put("idle", format!("{:?}", self.idle).to_lowercase());
        c
    }

    /// The effective configuration of a pair's run, for the report's header.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let mut c = self.describe_load(self.size_bytes());
        let mut put = |k: &str, v: String| {
            c.insert(k.to_string(), v);
        };
        put("mode", mode_name(self.mode).into());
        put("backend", self.backend.to_string());
        put("lanes", self.lanes.to_string());
        put(
            "data_set_interval_ms",
            self.data_set_interval_ms.to_string(),
        );
        put("data_set_max_writes", self.data_set_max_writes.to_string());
        put("data_set_max_bytes", self.data_set_max_bytes.to_string());
        put("window", self.window.to_string());
        put(
            "secondary_window",
            ByteSize(self.secondary_window_bytes()).to_string(),
        );
        put("link_delay_ms", self.link_delay_ms.to_string());
        put(
            "link_rate",
            self.link_rate
                .map_or("unlimited".into(), |r| format!("{r}/s")),
        );
        c
    }

    pub(crate) fn link_delay(&self) -> Duration {
        Duration::from_secs_f64(self.link_delay_ms / 1000.0)
    }
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Replicated => "replicated",
        Mode::LocalOnly => "local-only",
        Mode::GroupOrdered => "group-ordered",
    }
}

#[cfg(test)]
mod tests;

/// Warnings (a lane dropped, a relay connection failed) go to stderr; the lanes' routine
/// comings and goings do not.
pub(crate) fn init_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

//! The daemons' settings: command-line flags and a TOML file with the same keys (flags
//! override the file, the file overrides the defaults), resolved into one effective
//! configuration that each daemon prints when it starts. Each default is declared once, on
//! its flag, so `--help` shows it; `layers` stacks the file between the two.

mod layers;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use ordo_core::protocol::MAX_LANES;
use serde::{Deserialize, Serialize};

use crate::runner::Idle;
use crate::spdk::SpdkArgs;
use crate::volume::{ByteSize, VolumeSpec};
use layers::GivenFlags;

/// `ordo primary`'s flags, also the keys of its `--config` file (a key the file lacks takes
/// the flag's default).
#[derive(Clone, Debug, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrimaryOptions {
    /// First: see `GivenFlags`.
    #[command(flatten)]
    #[serde(skip)]
    given: GivenFlags,
    /// A TOML file with any of these settings (snake_case keys); flags given override it,
    /// it overrides the defaults.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The secondary's replication address (HOST:PORT). Required.
    #[arg(long)]
    pub connect: Option<String>,
    /// A volume of the group, NAME=mem:SIZE or NAME=file:PATH[:SIZE]; repeat for more (at
    /// least one).
    #[arg(long = "volume", value_name = "NAME=SPEC")]
    pub volume: Vec<VolumeSpec>,
    /// Where applications connect over NBD (export name = volume name).
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd: String,
    /// TCP connections (lanes) to the secondary.
    #[arg(long, default_value_t = 4)]
    pub lanes: usize,
    /// Replication group id; the secondary's must match.
    #[arg(long, default_value_t = 1)]
    pub group: u64,
    /// Control socket for `ordo status` and `ordo verify`.
    #[arg(long, default_value = "/tmp/ordo-primary.sock")]
    pub control: PathBuf,
    /// Close a data set this long after its first write.
    #[arg(long, default_value_t = 10)]
    pub data_set_interval_ms: u64,
    /// Close a data set after this many writes.
    #[arg(long, default_value_t = 4096)]
    pub data_set_max_writes: u64,
    /// Close a data set after this many bytes written.
    #[arg(long, default_value = "16M")]
    pub data_set_max_bytes: ByteSize,
    /// Retention window: bytes written here and not yet staged by the secondary.
    #[arg(long, default_value = "256M")]
    pub window_bytes: ByteSize,
    /// Largest single write (NBD requests are capped to it).
    #[arg(long, default_value = "1M")]
    pub max_write_bytes: ByteSize,
    /// Block size of every volume (512 or 4096).
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Resend a record not acknowledged this long after it was sent.
    #[arg(long, default_value_t = 200)]
    pub retransmit_ms: u64,
    /// CPU cores (comma-separated): the poller (NBD clients, local writes,
    /// acknowledgements, sequencing) on the first, the lane sender (every lane's socket) on
    /// the second if given. Unpinned without it.
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// What the poller does when idle.
    #[arg(long, value_enum, default_value_t = Idle::Park)]
    pub idle: Idle,
    /// Requests in flight at once from all NBD clients (the request ring's size).
    #[arg(long, default_value_t = 256)]
    pub max_requests: usize,
    /// On SIGTERM, wait this long for the secondary to apply what was written.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Directory for the primary's state (its write-intent record and history), so a
    /// restart resumes replication: after a clean stop with nothing resent, after a crash by
    /// resynchronising only what may differ. Without it a restart cannot resume.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// When the retention window is full (the secondary is behind or away): `block` makes
    /// writes wait as long as it takes; `track` makes them wait at most
    /// --window-full-timeout-ms, then frees the window and records the regions written in
    /// the write-intent record, resynchronised once the secondary can take them.
    #[arg(long, value_enum, default_value_t = OnWindowFull::Track)]
    pub on_window_full: OnWindowFull,
    /// With --on-window-full track: how long a write may wait for a full window.
    #[arg(long, default_value_t = 2000)]
    pub window_full_timeout_ms: u64,
    /// Bytes per second a resync compares at most (0: no limit).
    #[arg(long, default_value = "200M")]
    pub resync_rate: ByteSize,
    #[command(flatten)]
    #[serde(skip)]
    pub spdk: SpdkArgs,
}

/// What writes do when the primary's retention window is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnWindowFull {
    /// Wait until the secondary frees room.
    Block,
    /// Wait at most the timeout, then track the regions written and resync them later.
    Track,
}

/// `ordo secondary`'s flags, also the keys of its `--config` file (a key the file lacks
/// takes the flag's default).
#[derive(Clone, Debug, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecondaryOptions {
    /// First: see `GivenFlags`.
    #[command(flatten)]
    #[serde(skip)]
    given: GivenFlags,
    /// A TOML file with any of these settings (snake_case keys); flags given override it,
    /// it overrides the defaults.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to accept the primary's lanes on (HOST:PORT).
    #[arg(long, default_value = "0.0.0.0:7410")]
    pub listen: String,
    /// Directory for the journal (and the control socket by default). Required.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// A replica volume, NAME=mem:SIZE or NAME=file:PATH[:SIZE]; repeat for more (at least
    /// one).
    #[arg(long = "volume", value_name = "NAME=SPEC")]
    pub volume: Vec<VolumeSpec>,
    /// Lanes accepted at once.
    #[arg(long, default_value_t = 4)]
    pub lanes: usize,
    /// Replication group id; the primary's must match.
    #[arg(long, default_value_t = 1)]
    pub group: u64,
    /// Control socket [default: STATE_DIR/control.sock].
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Journal window granted to the primary (fixed when the journal is created).
    #[arg(long, default_value = "128M")]
    pub window_bytes: ByteSize,
    /// Journal size [default: the least the window needs].
    #[arg(long)]
    pub journal_bytes: Option<ByteSize>,
    /// Largest write accepted (fixed when the journal is created).
    #[arg(long, default_value = "1M")]
    pub max_write_bytes: ByteSize,
    /// Block size of every volume and of the journal (512 or 4096).
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Re-announce the applied watermark this often.
    #[arg(long, default_value_t = 50)]
    pub applied_interval_ms: u64,
    /// CPU cores (comma-separated): the poller (journal, apply, acknowledgements) on the
    /// first, the lanes' receiver threads on the second if given. Unpinned without it.
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// What the poller does when idle.
    #[arg(long, value_enum, default_value_t = Idle::Park)]
    pub idle: Idle,
    /// Keep the journal on this SPDK bdev instead of STATE_DIR/journal (formatted when its
    /// first block is blank, recovered from when it holds a journal).
    #[arg(long, value_name = "BDEV")]
    pub journal_bdev: Option<String>,
    #[command(flatten)]
    #[serde(skip)]
    pub spdk: SpdkArgs,
}

/// Every flag's default: what a config file's missing key takes.
impl Default for PrimaryOptions {
    fn default() -> Self {
        layers::defaults()
    }
}

/// Every flag's default: what a config file's missing key takes.
impl Default for SecondaryOptions {
    fn default() -> Self {
        layers::defaults()
    }
}

fn address(text: &str, what: &str) -> Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("{what} {text:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("{what} {text:?} resolves to no address"))
}

fn block_size(block: u32) -> Result<u32> {
    ensure!(
        block == 512 || block == 4096,
        "--block-size must be 512 or 4096, not {block}"
    );
    Ok(block)
}

fn volumes(volumes: Vec<VolumeSpec>) -> Result<Vec<VolumeSpec>> {
    ensure!(
        !volumes.is_empty(),
        "at least one --volume NAME=SPEC is needed"
    );
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].iter().any(|w| w.name == v.name) {
            bail!("volume name {:?} appears twice", v.name);
        }
    }
    Ok(volumes)
}

fn bounded(flag: &str, value: u64, max: u64) -> Result<u64> {
    ensure!(value <= max, "{flag} must be at most {max}, not {value}");
    Ok(value)
}

fn lanes(lanes: usize) -> Result<usize> {
    ensure!(
        (1..=MAX_LANES).contains(&lanes),
        "--lanes must be 1 to {MAX_LANES}, not {lanes}"
    );
    Ok(lanes)
}

/// The first core of `--cores` (the poller's), each given checked to be one this process
/// may run on.
fn core(cores: &[usize]) -> Result<Option<usize>> {
    let available = core_affinity::get_core_ids().unwrap_or_default();
    for core in cores {
        ensure!(
            available.iter().any(|c| c.id == *core),
            "--cores: core {core} is not available here (cores: {:?})",
            available.iter().map(|c| c.id).collect::<Vec<_>>()
        );
    }
    Ok(cores.first().copied())
}

/// A primary's effective configuration.
#[derive(Clone, Debug, Serialize)]
pub struct PrimarySettings {
    pub connect: SocketAddr,
    pub volume: Vec<VolumeSpec>,
    pub nbd: SocketAddr,
    pub lanes: usize,
    pub group: u64,
    pub control: PathBuf,
    pub data_set_interval_ms: u64,
    pub data_set_max_writes: u64,
    pub data_set_max_bytes: ByteSize,
    pub window_bytes: ByteSize,
    pub max_write_bytes: ByteSize,
    pub block_size: u32,
    pub retransmit_ms: u64,
    pub cores: Vec<usize>,
    pub idle: Idle,
    pub max_requests: usize,
    pub drain_timeout_s: u64,
    pub state_dir: Option<PathBuf>,
    pub on_window_full: OnWindowFull,
    pub window_full_timeout_ms: u64,
    pub resync_rate: ByteSize,
    #[serde(skip)]
    pub pin: Option<usize>,
}

impl PrimaryOptions {
    /// The flags over the `--config` file over the defaults, checked.
    pub fn resolve(self) -> Result<PrimarySettings> {
        let o = match &self.config {
            Some(path) => layers::overlay(&self, &self.given, path)?,
            None => self,
        };
        let connect = o
            .connect
            .context("--connect HOST:PORT (the secondary) is needed")?;
        ensure!(
            (1..=65536).contains(&o.max_requests),
            "--max-requests must be 1 to 65536"
        );
        Ok(PrimarySettings {
            connect: address(&connect, "--connect")?,
            volume: volumes(o.volume)?,
            nbd: address(&o.nbd, "--nbd")?,
            lanes: lanes(o.lanes)?,
            group: o.group,
            control: o.control,
            data_set_interval_ms: o.data_set_interval_ms,
            data_set_max_writes: o.data_set_max_writes,
            data_set_max_bytes: o.data_set_max_bytes,
            window_bytes: o.window_bytes,
            max_write_bytes: o.max_write_bytes,
            block_size: block_size(o.block_size)?,
            retransmit_ms: o.retransmit_ms,
            pin: core(&o.cores)?,
            cores: o.cores,
            idle: o.idle,
            max_requests: o.max_requests,
            drain_timeout_s: bounded("--drain-timeout-s", o.drain_timeout_s, 86_400)?,
            state_dir: o.state_dir,
            on_window_full: o.on_window_full,
            window_full_timeout_ms: bounded(
                "--window-full-timeout-ms",
                o.window_full_timeout_ms,
                86_400_000,
            )?,
            resync_rate: o.resync_rate,
        })
    }
}

/// A secondary's effective configuration.
#[derive(Clone, Debug, Serialize)]
pub struct SecondarySettings {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub volume: Vec<VolumeSpec>,
    pub lanes: usize,
    pub group: u64,
    pub control: PathBuf,
    pub window_bytes: ByteSize,
    /// `None`: the least the window needs.
    pub journal_bytes: Option<ByteSize>,
    pub max_write_bytes: ByteSize,
    pub block_size: u32,
    pub applied_interval_ms: u64,
    pub cores: Vec<usize>,
    pub idle: Idle,
    /// `None`: the journal is STATE_DIR/journal.
    pub journal_bdev: Option<String>,
    #[serde(skip)]
    pub pin: Option<usize>,
}

impl SecondaryOptions {
    /// The flags over the `--config` file over the defaults, checked.
    pub fn resolve(self) -> Result<SecondarySettings> {
        let o = match &self.config {
            Some(path) => layers::overlay(&self, &self.given, path)?,
            None => self,
        };
        let state_dir = o
            .state_dir
            .context("--state-dir DIR (for the journal) is needed")?;
        Ok(SecondarySettings {
            listen: address(&o.listen, "--listen")?,
            control: o.control.unwrap_or_else(|| state_dir.join("control.sock")),
            state_dir,
            volume: volumes(o.volume)?,
            lanes: lanes(o.lanes)?,
            group: o.group,
            window_bytes: o.window_bytes,
            journal_bytes: o.journal_bytes,
            max_write_bytes: o.max_write_bytes,
            block_size: block_size(o.block_size)?,
            applied_interval_ms: o.applied_interval_ms,
            pin: core(&o.cores)?,
            cores: o.cores,
            idle: o.idle,
            journal_bdev: o.journal_bdev,
        })
    }
}

/// The effective configuration as TOML, for the start-up banner.
pub fn render<T: Serialize>(settings: &T) -> String {
    toml::to_string(settings).unwrap_or_else(|e| format!("(cannot render: {e})"))
}

/// Prints the effective configuration on stdout (the log goes to stderr).
pub fn print_banner<T: Serialize>(role: &str, settings: &T) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "# ordo {role} {}: effective configuration\n{}",
        env!("CARGO_PKG_VERSION"),
        render(settings)
    )?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests;

//! The daemons' settings: command-line flags and a TOML file with the same keys (flags
//! override the file, the file overrides the defaults), resolved into one effective
//! configuration that each daemon prints when it starts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::runner::Idle;
use crate::spdk::SpdkArgs;
use crate::volume::{ByteSize, VolumeSpec};

#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimaryOptions {
    /// A TOML file with any of these settings (snake_case keys); flags override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The secondary's replication address (HOST:PORT).
    #[arg(long)]
    pub connect: Option<String>,
    /// A volume of the group, NAME=mem:SIZE or NAME=file:PATH[:SIZE]; repeat for more.
    #[arg(long = "volume", value_name = "NAME=SPEC")]
    #[serde(default)]
    pub volume: Vec<VolumeSpec>,
    /// Where applications connect over NBD (export name = volume name).
    #[arg(long)]
    pub nbd: Option<String>,
    /// TCP connections (lanes) to the secondary.
    #[arg(long)]
    pub lanes: Option<usize>,
    /// Replication group id; the secondary's must match.
    #[arg(long)]
    pub group: Option<u64>,
    /// Control socket for `ordo status` and `ordo verify`.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Close a data set this long after its first write.
    #[arg(long)]
    pub data_set_interval_ms: Option<u64>,
    /// Close a data set after this many writes.
    #[arg(long)]
    pub data_set_max_writes: Option<u64>,
    /// Close a data set after this many bytes written.
    #[arg(long)]
    pub data_set_max_bytes: Option<ByteSize>,
    /// Retention window: bytes written here and not yet staged by the secondary.
    #[arg(long)]
    pub window_bytes: Option<ByteSize>,
    /// Largest single write (NBD requests are capped to it).
    #[arg(long)]
    pub max_write_bytes: Option<ByteSize>,
    /// Block size of every volume (512 or 4096).
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Resend a record not acknowledged this long after it was sent.
    #[arg(long)]
    pub retransmit_ms: Option<u64>,
    /// CPU cores to pin the poller to (comma-separated; the first is used).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub cores: Vec<usize>,
    /// What the poller does when idle.
    #[arg(long, value_enum)]
    pub idle: Option<Idle>,
    /// Requests in flight at once from all NBD clients (the request ring's size).
    #[arg(long)]
    pub max_requests: Option<usize>,
    /// On SIGTERM, wait this long for the secondary to apply what was written.
    #[arg(long)]
    pub drain_timeout_s: Option<u64>,
    #[command(flatten)]
    #[serde(skip)]
    pub spdk: SpdkArgs,
}

#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondaryOptions {
    /// A TOML file with any of these settings (snake_case keys); flags override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to accept the primary's lanes on (HOST:PORT).
    #[arg(long)]
    pub listen: Option<String>,
    /// Directory for the journal (and the control socket by default).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// A replica volume, NAME=mem:SIZE or NAME=file:PATH[:SIZE]; repeat for more.
    #[arg(long = "volume", value_name = "NAME=SPEC")]
    #[serde(default)]
    pub volume: Vec<VolumeSpec>,
    /// Lanes accepted at once.
    #[arg(long)]
    pub lanes: Option<usize>,
    /// Replication group id; the primary's must match.
    #[arg(long)]
    pub group: Option<u64>,
    /// Control socket (default: STATE_DIR/control.sock).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Journal window granted to the primary (fixed when the journal is created).
    #[arg(long)]
    pub window_bytes: Option<ByteSize>,
    /// Journal size (default: the least the window needs).
    #[arg(long)]
    pub journal_bytes: Option<ByteSize>,
    /// Largest write accepted (fixed when the journal is created).
    #[arg(long)]
    pub max_write_bytes: Option<ByteSize>,
    /// Block size of every volume and of the journal (512 or 4096).
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Re-announce the applied watermark this often.
    #[arg(long)]
    pub applied_interval_ms: Option<u64>,
    /// CPU cores to pin the poller to (comma-separated; the first is used).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub cores: Vec<usize>,
    /// What the poller does when idle.
    #[arg(long, value_enum)]
    pub idle: Option<Idle>,
    /// Keep the journal on this SPDK bdev instead of STATE_DIR/journal (formatted when its
    /// first block is blank, recovered from when it holds a journal).
    #[arg(long, value_name = "BDEV")]
    pub journal_bdev: Option<String>,
    #[command(flatten)]
    #[serde(skip)]
    pub spdk: SpdkArgs,
}

/// Reads `path` as TOML into `T`, naming the file in every error.
fn read_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

fn address(text: &str, what: &str) -> Result<SocketAddr> {
    text.to_socket_addrs()
        .with_context(|| format!("{what} {text:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("{what} {text:?} resolves to no address"))
}

fn block_size(value: Option<u32>) -> Result<u32> {
    let block = value.unwrap_or(4096);
    ensure!(
        block == 512 || block == 4096,
        "--block-size must be 512 or 4096, not {block}"
    );
    Ok(block)
}

fn volumes(flags: Vec<VolumeSpec>, file: Vec<VolumeSpec>) -> Result<Vec<VolumeSpec>> {
    let volumes = if flags.is_empty() { file } else { flags };
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

fn lanes(value: Option<usize>) -> Result<usize> {
    let lanes = value.unwrap_or(4);
    ensure!(
        (1..=64).contains(&lanes),
        "--lanes must be 1 to 64, not {lanes}"
    );
    Ok(lanes)
}

fn core(cores: &[usize]) -> Result<Option<usize>> {
    let Some(&first) = cores.first() else {
        return Ok(None);
    };
    let available = core_affinity::get_core_ids().unwrap_or_default();
    ensure!(
        available.iter().any(|c| c.id == first),
        "core {first} is not available here (cores: {:?})",
        available.iter().map(|c| c.id).collect::<Vec<_>>()
    );
    Ok(Some(first))
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
    #[serde(skip)]
    pub pin: Option<usize>,
}

impl PrimaryOptions {
    pub fn resolve(self) -> Result<PrimarySettings> {
        let file: PrimaryOptions = match &self.config {
            Some(path) => read_file(path)?,
            None => PrimaryOptions::default(),
        };
        let connect = self
            .connect
            .or(file.connect)
            .context("--connect HOST:PORT (the secondary) is needed")?;
        let cores = if self.cores.is_empty() {
            file.cores
        } else {
            self.cores
        };
        let max_requests = self.max_requests.or(file.max_requests).unwrap_or(256);
        ensure!(
            (1..=65536).contains(&max_requests),
            "--max-requests must be 1 to 65536"
        );
        Ok(PrimarySettings {
            connect: address(&connect, "--connect")?,
            volume: volumes(self.volume, file.volume)?,
            nbd: address(
                &self.nbd.or(file.nbd).unwrap_or("127.0.0.1:10809".into()),
                "--nbd",
            )?,
            lanes: lanes(self.lanes.or(file.lanes))?,
            group: self.group.or(file.group).unwrap_or(1),
            control: self
                .control
                .or(file.control)
                .unwrap_or("/tmp/ordo-primary.sock".into()),
            data_set_interval_ms: self
                .data_set_interval_ms
                .or(file.data_set_interval_ms)
                .unwrap_or(10),
            data_set_max_writes: self
                .data_set_max_writes
                .or(file.data_set_max_writes)
                .unwrap_or(4096),
            data_set_max_bytes: self
                .data_set_max_bytes
                .or(file.data_set_max_bytes)
                .unwrap_or(ByteSize(16 << 20)),
            window_bytes: self
                .window_bytes
                .or(file.window_bytes)
                .unwrap_or(ByteSize(256 << 20)),
            max_write_bytes: self
                .max_write_bytes
                .or(file.max_write_bytes)
                .unwrap_or(ByteSize(1 << 20)),
            block_size: block_size(self.block_size.or(file.block_size))?,
            retransmit_ms: self.retransmit_ms.or(file.retransmit_ms).unwrap_or(200),
            pin: core(&cores)?,
            cores,
            idle: self.idle.or(file.idle).unwrap_or(Idle::Park),
            max_requests,
            drain_timeout_s: bounded(
                "--drain-timeout-s",
                self.drain_timeout_s.or(file.drain_timeout_s).unwrap_or(30),
                86_400,
            )?,
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
    pub fn resolve(self) -> Result<SecondarySettings> {
        let file: SecondaryOptions = match &self.config {
            Some(path) => read_file(path)?,
            None => SecondaryOptions::default(),
        };
        let state_dir = self
            .state_dir
            .or(file.state_dir)
            .context("--state-dir DIR (for the journal) is needed")?;
        let cores = if self.cores.is_empty() {
            file.cores
        } else {
            self.cores
        };
        Ok(SecondarySettings {
            listen: address(
                &self.listen.or(file.listen).unwrap_or("0.0.0.0:7410".into()),
                "--listen",
            )?,
            control: self
                .control
                .or(file.control)
                .unwrap_or_else(|| state_dir.join("control.sock")),
            state_dir,
            volume: volumes(self.volume, file.volume)?,
            lanes: lanes(self.lanes.or(file.lanes))?,
            group: self.group.or(file.group).unwrap_or(1),
            window_bytes: self
                .window_bytes
                .or(file.window_bytes)
                .unwrap_or(ByteSize(128 << 20)),
            journal_bytes: self.journal_bytes.or(file.journal_bytes),
            max_write_bytes: self
                .max_write_bytes
                .or(file.max_write_bytes)
                .unwrap_or(ByteSize(1 << 20)),
            block_size: block_size(self.block_size.or(file.block_size))?,
            applied_interval_ms: self
                .applied_interval_ms
                .or(file.applied_interval_ms)
                .unwrap_or(50),
            pin: core(&cores)?,
            cores,
            idle: self.idle.or(file.idle).unwrap_or(Idle::Park),
            journal_bdev: self.journal_bdev.or(file.journal_bdev),
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
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary.toml");
        std::fs::write(
            &path,
            "connect = \"127.0.0.1:7410\"\nvolume = [\"data=mem:64M\"]\nlanes = 8\nwindow_bytes = \"64M\"\ndata_set_interval_ms = 5\n",
        )
        .unwrap();
        let options = PrimaryOptions {
            config: Some(path),
            lanes: Some(2),
            ..PrimaryOptions::default()
        };
        let settings = options.resolve().unwrap();
        assert_eq!(settings.lanes, 2, "the flag wins");
        assert_eq!(settings.window_bytes, ByteSize(64 << 20), "the file wins");
        assert_eq!(settings.data_set_interval_ms, 5);
        assert_eq!(settings.max_write_bytes, ByteSize(1 << 20), "the default");
        assert_eq!(settings.volume[0].name, "data");
        let rendered = render(&settings);
        assert!(rendered.contains("lanes = 2"), "{rendered}");
        assert!(rendered.contains("window_bytes = \"64M\""), "{rendered}");
    }

    /// The README's example configurations stay valid.
    #[test]
    fn the_example_configurations_parse() {
        let primary: PrimaryOptions =
            toml::from_str(include_str!("../../../examples/primary.toml")).unwrap();
        assert_eq!(primary.volume.len(), 2);
        assert_eq!(primary.idle, Some(Idle::Spin));
        let secondary: SecondaryOptions =
            toml::from_str(include_str!("../../../examples/secondary.toml")).unwrap();
        assert_eq!(secondary.window_bytes, Some(ByteSize(512 << 20)));
        assert_eq!(secondary.group, primary.group);
        let names = |v: &[VolumeSpec]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&primary.volume), names(&secondary.volume));
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secondary.toml");
        std::fs::write(&path, "state_dir = \"/tmp/x\"\nlanez = 3\n").unwrap();
        let options = SecondaryOptions {
            config: Some(path),
            ..SecondaryOptions::default()
        };
        let error = format!("{:#}", options.resolve().unwrap_err());
        assert!(error.contains("lanez"), "{error}");
        let missing = PrimaryOptions::default().resolve().unwrap_err().to_string();
        assert!(missing.contains("--connect"), "{missing}");
        let options = SecondaryOptions {
            state_dir: Some("/tmp/x".into()),
            volume: vec!["a=mem:1M".parse().unwrap(), "a=mem:2M".parse().unwrap()],
            ..SecondaryOptions::default()
        };
        let error = options.resolve().unwrap_err().to_string();
        assert!(error.contains("twice"), "{error}");
        let options = SecondaryOptions {
            state_dir: Some("/tmp/x".into()),
            volume: vec!["a=mem:1M".parse().unwrap()],
            cores: vec![100_000],
            ..SecondaryOptions::default()
        };
        let error = options.resolve().unwrap_err().to_string();
        assert!(error.contains("core 100000 is not available"), "{error}");
        let options = PrimaryOptions {
            connect: Some("127.0.0.1:1".into()),
            volume: vec!["a=mem:1M".parse().unwrap()],
            drain_timeout_s: Some(u64::MAX),
            ..PrimaryOptions::default()
        };
        let error = options.resolve().unwrap_err().to_string();
        assert!(
            error.contains("--drain-timeout-s must be at most"),
            "{error}"
        );
    }
}

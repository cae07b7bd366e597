//! The primary's configuration: what closes a data set, and the bounds of its windows.

use thiserror::Error;

use crate::injected::InjectedBug;

use crate::protocol::{
    stream_cost, GroupId, MAX_LANES, MAX_VOLUMES, MAX_VOLUME_NAME_BYTES, MAX_WRITE_PAYLOAD_BYTES,
    RECORD_OVERHEAD_BYTES,
};

/// What closes a data set. A flush (consistency point) always does; whichever of these
/// limits is reached first does too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataSetPolicy {
    /// Close a data set this long after its first write (0 = never by time).
    pub interval_ms: u64,
    /// Close after this many writes.
    pub max_writes: u64,
    /// Close once this many payload bytes were written.
    pub max_bytes: u64,
}

impl Default for DataSetPolicy {
    fn default() -> Self {
        DataSetPolicy {
            interval_ms: 10,
            max_writes: 4096,
            max_bytes: 16 << 20,
        }
    }
}

impl DataSetPolicy {
    /// Most stream bytes one data set (its writes and its sync) can take, given the
    /// largest write: a secondary's journal window must be at least this.
    pub fn max_stream_bytes(&self, max_write_bytes: u32) -> u64 {
        let payload = self.max_bytes - 1 + u64::from(max_write_bytes);
        payload + self.max_writes * RECORD_OVERHEAD_BYTES + RECORD_OVERHEAD_BYTES
    }
}

/// How records reach the secondary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replication {
    /// ordo's design: every record is sent as soon as it is accepted, so many data sets
    /// are in flight at once.
    #[default]
    Pipelined,
    /// One cycle at a time: a data set's records are sent only once the secondary reported
    /// the data set before it applied. What products that ship one data set per round
    /// trip do; kept as the baseline pipelining is measured against (`ordo bench`).
    GroupOrdered,
    /// No secondary: a record is released as soon as it is on the local volume. The same
    /// write path with replication turned off, for measuring what replication costs.
    Off,
}

/// What writes do when the retention window is full (the secondary is behind or away).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WindowFull {
    /// Wait until the secondary frees room, however long that takes.
    #[default]
    Block,
    /// Wait at most `timeout_ms`; then cut the stream: the window is freed, the extents it
    /// held stay marked in the write-intent record, and a new generation begins; the
    /// secondary is resynchronised from the record when it can take it again.
    Track { timeout_ms: u64 },
}

/// Largest retention or journal window: the arenas are preallocated, so configuration
/// must not be able to ask for more memory than a machine has.
pub const MAX_WINDOW_BYTES: u64 = 64 << 30;
/// Longest interval any timer may be set to (a day): keeps clock arithmetic far from
/// overflow.
pub const MAX_INTERVAL_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryConfig {
    pub group: GroupId,
    /// One name per volume, in `VolumeId` order.
    pub volume_names: Vec<String>,
    pub policy: DataSetPolicy,
    /// Retention window: stream bytes of records kept until the secondary stages them.
    pub window_bytes: u64,
    /// Largest single write accepted.
    pub max_write_bytes: u32,
    /// Number of lanes (connections) to the secondary.
    pub lanes: usize,
    /// Resend a record not acknowledged this long after it was sent.
    pub retransmit_ms: u64,
    /// Most flushes waiting at once.
    pub max_pending_flushes: usize,
    pub replication: Replication,
    pub on_window_full: WindowFull,
    /// Bytes per second a resync compares at most (0: no limit).
    pub resync_rate_bytes: u64,
    /// A fault built in on purpose (the simulation only; `None` everywhere else).
    pub bug: Option<InjectedBug>,
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        PrimaryConfig {
            group: GroupId(1),
            volume_names: vec!["vol0".to_string()],
            policy: DataSetPolicy::default(),
            window_bytes: 256 << 20,
            max_write_bytes: 1 << 20,
            lanes: 4,
            retransmit_ms: 200,
            max_pending_flushes: 64,
            replication: Replication::Pipelined,
            on_window_full: WindowFull::Block,
            resync_rate_bytes: 0,
            bug: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

impl PrimaryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let names = &self.volume_names;
        if names.is_empty() || names.len() > MAX_VOLUMES {
            return Err(invalid(format!(
                "a group holds 1 to {MAX_VOLUMES} volumes, not {}",
                names.len()
            )));
        }
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_VOLUME_NAME_BYTES {
                return Err(invalid(format!(
                    "volume name {name:?} must be 1 to {MAX_VOLUME_NAME_BYTES} bytes"
                )));
            }
            if names[..i].contains(name) {
                return Err(invalid(format!("volume name {name:?} appears twice")));
            }
        }
        if self.max_write_bytes < 512
            || !self.max_write_bytes.is_multiple_of(512)
            || self.max_write_bytes > MAX_WRITE_PAYLOAD_BYTES
        {
            return Err(invalid(format!(
                "max write {} must be a multiple of 512 up to {MAX_WRITE_PAYLOAD_BYTES}",
                self.max_write_bytes
            )));
        }
        let policy = &self.policy;
        if policy.max_writes == 0 || policy.max_bytes == 0 {
            return Err(invalid(
                "data-set policy: max writes and max bytes must be positive",
            ));
        }
        let floor = 2 * (stream_cost(self.max_write_bytes) + RECORD_OVERHEAD_BYTES);
        if self.window_bytes < floor {
            return Err(invalid(format!(
                "retention window {} bytes is below {floor}, two largest writes with their syncs",
                self.window_bytes
            )));
        }
        if !(1..=MAX_LANES).contains(&self.lanes) {
            return Err(invalid(format!(
                "lanes must be 1 to {MAX_LANES}, not {}",
                self.lanes
            )));
        }
        if self.retransmit_ms == 0 || self.max_pending_flushes == 0 {
            return Err(invalid(
                "retransmit interval and pending flushes must be positive",
            ));
        }
        if self.window_bytes > MAX_WINDOW_BYTES {
            return Err(invalid(format!(
                "retention window {} bytes is over the {MAX_WINDOW_BYTES}-byte limit",
                self.window_bytes
            )));
        }
        if self.policy.interval_ms > MAX_INTERVAL_MS || self.retransmit_ms > MAX_INTERVAL_MS {
            return Err(invalid(format!(
                "data-set interval and retransmit interval must be at most {MAX_INTERVAL_MS} ms"
            )));
        }
        if self.max_pending_flushes > 1 << 16 {
            return Err(invalid("at most 65536 pending flushes"));
        }
        if let WindowFull::Track { timeout_ms } = self.on_window_full {
            if timeout_ms > MAX_INTERVAL_MS {
                return Err(invalid(format!(
                    "the window-full timeout must be at most {MAX_INTERVAL_MS} ms"
                )));
            }
        }
        Ok(())
    }
}

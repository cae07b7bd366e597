//! The secondary's configuration.

use crate::primary::config::{MAX_INTERVAL_MS, MAX_WINDOW_BYTES};
use crate::primary::ConfigError;
use crate::protocol::{
    stream_cost, GroupId, MAX_LANES, MAX_VOLUMES, MAX_VOLUME_NAME_BYTES, MAX_WRITE_PAYLOAD_BYTES,
    RECORD_OVERHEAD_BYTES,
};

pub use crate::injected::InjectedBug;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecondaryConfig {
    pub group: GroupId,
    /// One name per replica volume, in `VolumeId` order; must match the primary's.
    pub volume_names: Vec<String>,
    /// Journal window offered to the primary when the journal is formatted: stream bytes
    /// past the applied point it may send. The journal needs about twice this.
    pub window_bytes: u64,
    pub max_write_bytes: u32,
    pub lanes: usize,
    /// Announce the applied watermark at least this often, even when it has not moved,
    /// so a lost `Applied` frame never leaves the primary waiting for credit.
    pub applied_interval_ms: u64,
    pub bug: Option<InjectedBug>,
}

impl Default for SecondaryConfig {
    fn default() -> Self {
        SecondaryConfig {
            group: GroupId(1),
            volume_names: vec!["vol0".to_string()],
            window_bytes: 128 << 20,
            max_write_bytes: 1 << 20,
            lanes: 4,
            applied_interval_ms: 50,
            bug: None,
        }
    }
}

impl SecondaryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let names = &self.volume_names;
        if names.is_empty() || names.len() > MAX_VOLUMES {
            return invalid(format!(
                "a group holds 1 to {MAX_VOLUMES} volumes, not {}",
                names.len()
            ));
        }
        if names
            .iter()
            .any(|n| n.is_empty() || n.len() > MAX_VOLUME_NAME_BYTES)
        {
            return invalid(format!(
                "volume names must be 1 to {MAX_VOLUME_NAME_BYTES} bytes"
            ));
        }
        if self.max_write_bytes < 512
            || !self.max_write_bytes.is_multiple_of(512)
            || self.max_write_bytes > MAX_WRITE_PAYLOAD_BYTES
        {
            return invalid(format!(
                "max write {} must be a multiple of 512 up to {MAX_WRITE_PAYLOAD_BYTES}",
                self.max_write_bytes
            ));
        }
        let floor = stream_cost(self.max_write_bytes) + RECORD_OVERHEAD_BYTES;
        if self.window_bytes < floor {
            return invalid(format!(
                "journal window {} is below {floor}, one largest write and its sync",
                self.window_bytes
            ));
        }
        if !self.window_bytes.is_multiple_of(512) {
            return invalid(format!(
                "journal window {} must be a multiple of 512",
                self.window_bytes
            ));
        }
        if self.window_bytes > MAX_WINDOW_BYTES {
            return invalid(format!(
                "journal window {} is over the {MAX_WINDOW_BYTES}-byte limit",
                self.window_bytes
            ));
        }
        if self.applied_interval_ms == 0 || self.applied_interval_ms > MAX_INTERVAL_MS {
            return invalid(format!(
                "applied interval must be 1 to {MAX_INTERVAL_MS} ms"
            ));
        }
        if !(1..=MAX_LANES).contains(&self.lanes) {
            return invalid(format!(
                "lanes must be 1 to {MAX_LANES}, not {}",
                self.lanes
            ));
        }
        Ok(())
    }
}

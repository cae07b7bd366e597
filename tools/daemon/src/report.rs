//! What the control socket says: a daemon's status and a digest of its volumes, as JSON
//! that `ordo status` and `ordo verify` read back.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub role: String,
    pub version: String,
    pub group: u64,
    pub pid: u32,
    pub uptime_ms: u64,
    pub link: Link,
    pub data_sets: DataSets,
    /// The primary's retention window (bytes held for the secondary).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retention: Option<Usage>,
    /// The secondary's journal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub journal: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub writes: Option<Writes>,
    /// Why the daemon stopped making progress (a failed volume or journal).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure: Option<String>,
    pub volumes: Vec<VolumeReport>,
    /// Every other counter, by name (frames, retransmits, stalls, duplicates, ...).
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub lanes: usize,
    pub lanes_up: usize,
    pub lanes_dropped: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
    /// Replication is stalled: why (a handshake mismatch, a secondary that lost its state).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stalled: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataSets {
    /// Primary: the newest closed data set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_closed: Option<u64>,
    /// Primary: the newest data set sent in full.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_sent: Option<u64>,
    /// Secondary: the newest data set whose sync is durable in the journal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub staged: Option<u64>,
    /// The newest data set applied to the replica (as the primary last heard, on it).
    pub applied: u64,
    pub lag_data_sets: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lag_bytes: Option<u64>,
    /// Age of the oldest closed data set not yet applied.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lag_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Writes {
    pub accepted: u64,
    pub flushes: u64,
    pub errors: u64,
    /// Writes that waited for room in the retention window, and for how long.
    pub waited: u64,
    pub wait_ms_total: u64,
    pub wait_ms_max: u64,
    /// A write is waiting for room right now.
    pub waiting_now: bool,
    pub in_flight: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeReport {
    pub name: String,
    pub spec: String,
    pub size_bytes: u64,
    pub block_size: u32,
}

/// Per-chunk checksums of each volume at one data set.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Digest {
    pub data_set: u64,
    pub chunk_bytes: u64,
    pub volumes: Vec<VolumeDigest>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeDigest {
    pub name: String,
    /// Where the digested range starts.
    pub offset: u64,
    /// crc32c of each chunk from `offset` (the last may be shorter).
    pub crc32c: Vec<u32>,
}

/// A request to the control socket: `status`, or `digest CHUNK [VOLUME OFFSET LEN]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    Status,
    Digest {
        chunk_bytes: u64,
        range: Option<(String, u64, u64)>,
    },
}

/// Largest chunk a digest may use: bounds the read buffer.
pub const MAX_DIGEST_CHUNK_BYTES: u64 = 16 << 20;
/// Most chunks one digest may have: bounds the reply (about 11 bytes of JSON each).
pub const MAX_DIGEST_CHUNKS: u64 = 1 << 20;

impl ControlRequest {
    pub fn parse(line: &str) -> Result<ControlRequest, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |w: &str| {
            w.parse::<u64>()
                .map_err(|_| format!("{w:?} is not a number"))
        };
        match words.as_slice() {
            ["status"] => Ok(ControlRequest::Status),
            ["digest", chunk, rest @ ..] => {
                let chunk_bytes = number(chunk)?;
                if chunk_bytes == 0
                    || chunk_bytes > MAX_DIGEST_CHUNK_BYTES
                    || chunk_bytes % 512 != 0
                {
                    return Err(format!(
                        "chunk must be a multiple of 512 up to {MAX_DIGEST_CHUNK_BYTES}"
                    ));
                }
                let range = match rest {
                    [] => None,
                    [volume, offset, len] => {
                        Some((volume.to_string(), number(offset)?, number(len)?))
                    }
                    _ => return Err("digest CHUNK [VOLUME OFFSET LEN]".into()),
                };
                Ok(ControlRequest::Digest { chunk_bytes, range })
            }
            _ => Err(format!(
                "unknown request {line:?}: status | digest CHUNK [VOLUME OFFSET LEN]"
            )),
        }
    }
}

/// An error reply.
pub fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

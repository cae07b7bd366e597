//! What the control socket says: a daemon's status and a digest of its volumes, as JSON
//! that `ordo status` and `ordo verify` read back.

use serde::{Deserialize, Serialize};

/// A daemon's status: its role's part (tagged `"role"`), then what both roles say.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    #[serde(flatten)]
    pub role: RoleStatus,
    /// The daemon's ordo version.
    pub version: String,
    pub group: u64,
    pub pid: u32,
    pub uptime_ms: u64,
    pub volumes: Vec<VolumeReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "role", rename_all = "snake_case")]
// A status is made once per request and boxed in the reply (`ControlReply::Status`): the
// variants' sizes do not matter, and unboxed they read as plain fields.
#[allow(clippy::large_enum_variant)]
pub enum RoleStatus {
    Primary(PrimaryReport),
    Secondary(SecondaryReport),
}

impl Status {
    /// The role's name, as the JSON's `"role"` says it.
    pub fn role_name(&self) -> &'static str {
        match self.role {
            RoleStatus::Primary(_) => "primary",
            RoleStatus::Secondary(_) => "secondary",
        }
    }

    pub fn primary(&self) -> Option<&PrimaryReport> {
        match &self.role {
            RoleStatus::Primary(p) => Some(p),
            RoleStatus::Secondary(_) => None,
        }
    }
}

/// What a primary says of itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PrimaryReport {
    pub link: PrimaryLink,
    pub history: PrimaryHistory,
    pub data_sets: PrimaryDataSets,
    /// The retention window: stream bytes held for the secondary.
    pub retention: Usage,
    pub window_full: WindowFullReport,
    pub resync: ResyncReport,
    pub writes: Writes,
    pub counters: PrimaryCounters,
}

/// The history a primary writes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrimaryHistory {
    /// Its generation id (16 hex digits), and those it descends from, newest first.
    pub generation: String,
    pub ancestors: Vec<String>,
    /// How this primary started: `new` (its history begins: the record was made now),
    /// `resumed` (a clean stop before: the same history goes on) or `new_generation` (a
    /// crash or an undrained stop before: what may differ is resynchronised).
    pub started: String,
    /// Bytes the write-intent record marks as possibly differing from the secondary (1 MiB
    /// extents).
    pub out_of_sync_bytes: u64,
}

/// What writes do when the retention window is full, and whether they do now.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WindowFullReport {
    /// `block` or `track`.
    pub mode: String,
    /// With `track`: how long a write may wait before the window is dropped.
    pub timeout_ms: u64,
    /// How long writes have found the window full now (0: not full).
    pub full_for_ms: u64,
    /// What they wait for is not the retention window but the room a held resync keeps
    /// in the secondary's journal window (see `ResyncReport::room`).
    #[serde(default)]
    pub for_resync_room: bool,
    /// Times the window was dropped (what it held is resynchronised from the write-intent
    /// record once the secondary can take it).
    pub drops: u64,
}

/// Where the resync of the current history stands (see `ordo-core`'s `primary::resync`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ResyncReport {
    /// `idle` (none needed, or no secondary re-based yet), `comparing`, `ending` (every
    /// extent compared; the secondary applies up to `end_data_set`), or `done`.
    pub state: String,
    /// Bytes that may differ when it began, compared so far, still to compare, and sent
    /// because they differed.
    pub bytes_total: u64,
    pub bytes_compared: u64,
    pub bytes_to_go: u64,
    pub bytes_sent: u64,
    pub percent: f64,
    /// Bytes compared per second since it began, and the time left at that rate.
    pub rate_bytes_per_s: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eta_s: Option<u64>,
    /// The data set that ends it: once the secondary applied it, its replica is the
    /// primary's image again.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_data_set: Option<u64>,
    /// Extents whose read was put off (a write to them in flight, or no room in the
    /// window), and digest requests asked again (lost with a lane, or unanswered).
    pub reads_deferred: u64,
    pub requests_resent: u64,
    /// For a secondary that holds its image until the end point: `kept` (the resync's
    /// worst case fit the secondary's journal window as it began, and the application's
    /// writes leave it that room, waiting when they must) or `may_not_fit` (it did not:
    /// `room_needed_bytes` against `room_free_bytes`); `not_held` otherwise.
    #[serde(default)]
    pub room: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub room_needed_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub room_free_bytes: Option<u64>,
    /// Times the application's writes waited for the room a held resync keeps (each wait
    /// ends when a write is admitted again).
    #[serde(default)]
    pub room_waits: u64,
}

/// What a secondary says of itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecondaryReport {
    pub link: Link,
    pub replica: ReplicaReport,
    pub data_sets: SecondaryDataSets,
    pub journal: Usage,
    /// Why the secondary stopped making progress (a failed replica or journal).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure: Option<String>,
    pub counters: SecondaryCounters,
}

/// What the secondary's replica holds, and the history it follows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaReport {
    /// `consistent` (the image of `image`), `held` (a resync is staged and held back: the
    /// replica stays the image of `image` until its end point is complete), `inconsistent`
    /// (the image of no data set until the resync's end point: an initial sync, or one the
    /// operator allowed), or `fresh` (no history yet).
    pub state: String,
    /// The history and data set the replica is the image of, when it is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image: Option<ReplicaImage>,
    /// The history whose stream it follows (16 hex digits; empty when fresh).
    pub follows: String,
    /// A re-base onto the primary's history is under way (lanes wait for it).
    pub rebasing: bool,
    /// The operator allowed any history to overwrite it at the next handshake.
    pub discard_pending: bool,
    /// A held resync filled the journal window before its end point: it waits for the
    /// operator (`ordo resync --allow-inconsistent`).
    #[serde(default)]
    pub held_full: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaImage {
    /// The history (16 hex digits, or empty for the all-zero image) and its data set.
    pub generation: String,
    pub data_set: u64,
}

/// The lanes between the two daemons.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub lanes: usize,
    pub lanes_up: usize,
    pub lanes_dropped: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
}

/// The primary's lanes, and whether replication is stalled.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrimaryLink {
    #[serde(flatten)]
    pub lanes: Link,
    /// Replication is stalled: why (a handshake mismatch, a secondary that lost its state).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stalled: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrimaryDataSets {
    /// The newest closed data set.
    pub last_closed: u64,
    /// The newest data set sent in full.
    pub last_sent: u64,
    /// The newest data set the secondary applied, as the primary last heard.
    pub applied: u64,
    pub lag_data_sets: u64,
    /// Stream bytes written here and not yet applied there.
    pub lag_bytes: u64,
    /// Age of the oldest closed data set not yet applied.
    pub lag_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecondaryDataSets {
    /// The newest data set whose sync is durable in the journal.
    pub staged: u64,
    /// The newest data set applied to the replica.
    pub applied: u64,
    /// Staged and not yet applied.
    pub lag_data_sets: u64,
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

/// The primary's counters since it started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrimaryCounters {
    pub data_sets_closed: u64,
    /// Frames sent on the lanes, and their bytes (headers included).
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Records sent again: not acknowledged in time, or sent on a lane that dropped.
    pub retransmits: u64,
    /// Times sending stopped because the secondary's journal window was used up.
    pub credit_stalls: u64,
    /// Writes refused by a full retention window (each was retried).
    pub window_full: u64,
    /// Reads served (NBD's and verify's), and writes completed.
    pub reads: u64,
    pub writes_done: u64,
    /// Writes that started or ended inside a block, merged with the rest of it.
    pub sub_block_writes: u64,
    /// Ranges zeroed (NBD's WRITE_ZEROES and TRIM), each one record whatever its length.
    pub zeroes: u64,
    /// Closed data sets the lag queue had no room to time (they replicate as usual):
    /// while one is unapplied, `lag_ms` understates the lag.
    pub lag_queue_full: u64,
}

/// The secondary's counters since it started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecondaryCounters {
    /// Records received into the reorder buffer.
    pub records_received: u64,
    /// Records taken in sequence order and journaled.
    pub records_staged: u64,
    /// Records received again (resent by the primary), and ones outside the window.
    pub duplicates: u64,
    pub out_of_window: u64,
    /// Resends not acknowledged again because the queue for that was full.
    pub reacks_dropped: u64,
    /// Records dropped because they arrived on a lane before its handshake.
    pub before_hello: u64,
    pub journal_flushes: u64,
    pub acks_sent: u64,
    pub data_sets_applied: u64,
    /// Records found in the journal at the last start.
    pub recovered_records: u64,
    /// A resync's digest requests answered, and re-bases onto a primary's history.
    pub digests_answered: u64,
    pub rebases: u64,
    /// Lanes accepted, and connections refused because every lane slot was taken.
    pub lanes_accepted: u64,
    pub lanes_refused: u64,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn volumes() -> Vec<VolumeReport> {
        vec![VolumeReport {
            name: "data".into(),
            spec: "data=mem:64M".into(),
            size_bytes: 64 << 20,
            block_size: 4096,
        }]
    }

    /// A primary's status with no two counters alike, so a field read from the wrong
    /// place shows.
    pub(crate) fn primary_status() -> Status {
        Status {
            role: RoleStatus::Primary(PrimaryReport {
                link: PrimaryLink {
                    lanes: Link {
                        lanes: 4,
                        lanes_up: 3,
                        lanes_dropped: 1,
                        last_error: Some("connection refused".into()),
                    },
                    stalled: Some("handshake mismatch on group id".into()),
                },
                history: PrimaryHistory {
                    generation: "00000000000000a1".into(),
                    ancestors: vec!["00000000000000a0".into()],
                    started: "new_generation".into(),
                    out_of_sync_bytes: 3 << 20,
                },
                window_full: WindowFullReport {
                    mode: "track".into(),
                    timeout_ms: 2000,
                    full_for_ms: 17,
                    for_resync_room: true,
                    drops: 1,
                },
                resync: ResyncReport {
                    state: "comparing".into(),
                    bytes_total: 3 << 20,
                    bytes_compared: 1 << 20,
                    bytes_to_go: 2 << 20,
                    bytes_sent: 4096,
                    percent: 100.0 / 3.0,
                    rate_bytes_per_s: 1 << 20,
                    eta_s: Some(2),
                    end_data_set: None,
                    reads_deferred: 19,
                    requests_resent: 21,
                    room: "may_not_fit".into(),
                    room_needed_bytes: Some(9 << 20),
                    room_free_bytes: Some(8 << 20),
                    room_waits: 22,
                },
                data_sets: PrimaryDataSets {
                    last_closed: 12,
                    last_sent: 11,
                    applied: 10,
                    lag_data_sets: 2,
                    lag_bytes: 8192,
                    lag_ms: 35,
                },
                retention: Usage {
                    used_bytes: 8192,
                    size_bytes: 1 << 30,
                },
                writes: Writes {
                    accepted: 100,
                    flushes: 7,
                    errors: 0,
                    waited: 3,
                    wait_ms_total: 40,
                    wait_ms_max: 20,
                    waiting_now: true,
                    in_flight: 5,
                },
                counters: PrimaryCounters {
                    data_sets_closed: 12,
                    frames_sent: 210,
                    bytes_sent: 880_000,
                    retransmits: 6,
                    credit_stalls: 2,
                    window_full: 9,
                    reads: 13,
                    writes_done: 99,
                    sub_block_writes: 11,
                    zeroes: 12,
                    lag_queue_full: 4,
                },
            }),
            version: "0.1.0".into(),
            group: 7,
            pid: 4242,
            uptime_ms: 1500,
            volumes: volumes(),
        }
    }

    pub(crate) fn secondary_status() -> Status {
        Status {
            role: RoleStatus::Secondary(SecondaryReport {
                link: Link {
                    lanes: 4,
                    lanes_up: 4,
                    lanes_dropped: 0,
                    last_error: None,
                },
                replica: ReplicaReport {
                    state: "held".into(),
                    image: Some(ReplicaImage {
                        generation: "00000000000000a0".into(),
                        data_set: 9,
                    }),
                    follows: "00000000000000a1".into(),
                    rebasing: false,
                    discard_pending: false,
                    held_full: true,
                },
                data_sets: SecondaryDataSets {
                    staged: 12,
                    applied: 10,
                    lag_data_sets: 2,
                },
                journal: Usage {
                    used_bytes: 4096,
                    size_bytes: 1 << 28,
                },
                failure: None,
                counters: SecondaryCounters {
                    records_received: 120,
                    records_staged: 110,
                    duplicates: 3,
                    out_of_window: 1,
                    reacks_dropped: 2,
                    before_hello: 4,
                    journal_flushes: 14,
                    acks_sent: 15,
                    data_sets_applied: 10,
                    recovered_records: 5,
                    digests_answered: 16,
                    rebases: 17,
                    lanes_accepted: 6,
                    lanes_refused: 8,
                },
            }),
            version: "0.1.0".into(),
            group: 7,
            pid: 4343,
            uptime_ms: 900,
            volumes: volumes(),
        }
    }

    fn round_trip(status: &Status) -> Value {
        let line = serde_json::to_string(status).unwrap();
        assert!(!line.contains('\n'), "one line: {line}");
        let back: Status = serde_json::from_str(&line).unwrap();
        assert_eq!(&back, status);
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn a_primary_status_round_trips_with_the_fields_scripts_read() {
        let json = round_trip(&primary_status());
        assert_eq!(json["role"], "primary");
        assert_eq!(json["link"]["lanes_up"], 3);
        assert_eq!(json["link"]["lanes_dropped"], 1);
        assert_eq!(json["link"]["stalled"], "handshake mismatch on group id");
        assert_eq!(json["data_sets"]["last_closed"], 12);
        assert_eq!(json["data_sets"]["applied"], 10);
        assert_eq!(json["data_sets"]["lag_bytes"], 8192);
        assert_eq!(json["retention"]["used_bytes"], 8192);
        assert_eq!(json["writes"]["waiting_now"], true);
        assert_eq!(json["writes"]["wait_ms_max"], 20);
        assert_eq!(json["counters"]["retransmits"], 6);
        assert_eq!(json["counters"]["lag_queue_full"], 4);
        assert_eq!(json["counters"]["sub_block_writes"], 11);
        assert_eq!(json["counters"]["zeroes"], 12);
        assert_eq!(json["resync"]["room"], "may_not_fit");
        assert_eq!(json["window_full"]["for_resync_room"], true);
        assert_eq!(json["resync"]["room_needed_bytes"], 9 << 20);
        assert_eq!(json["resync"]["room_waits"], 22);
        assert_eq!(json["volumes"][0]["name"], "data");
        assert_eq!(json["pid"], 4242);
        // Nothing of the other role.
        for absent in ["journal", "failure"] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
        assert!(json["data_sets"].get("staged").is_none(), "{json}");
    }

    #[test]
    fn a_secondary_status_round_trips_with_the_fields_scripts_read() {
        let json = round_trip(&secondary_status());
        assert_eq!(json["role"], "secondary");
        assert_eq!(json["link"]["lanes_up"], 4);
        assert_eq!(json["data_sets"]["staged"], 12);
        assert_eq!(json["data_sets"]["applied"], 10);
        assert_eq!(json["journal"]["size_bytes"], 1 << 28);
        assert_eq!(json["counters"]["records_staged"], 110);
        assert_eq!(json["counters"]["lanes_refused"], 8);
        assert_eq!(json["replica"]["state"], "held");
        assert_eq!(json["replica"]["image"]["data_set"], 9);
        assert_eq!(json["replica"]["follows"], "00000000000000a1");
        assert_eq!(json["replica"]["held_full"], true);
        for absent in ["retention", "writes", "failure"] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
        for absent in ["stalled", "last_error"] {
            assert!(json["link"].get(absent).is_none(), "{absent} in {json}");
        }
        assert!(json["data_sets"].get("last_closed").is_none(), "{json}");
    }

    #[test]
    fn a_status_of_an_unknown_role_or_missing_a_field_is_refused() {
        let mut json = serde_json::to_value(primary_status()).unwrap();
        json["role"] = json!("witness");
        assert!(serde_json::from_value::<Status>(json).is_err());
        let mut json = serde_json::to_value(secondary_status()).unwrap();
        json.as_object_mut().unwrap().remove("journal");
        let error = serde_json::from_value::<Status>(json).unwrap_err();
        assert!(error.to_string().contains("journal"), "{error}");
    }
}

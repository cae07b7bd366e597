//! The frames of the wire protocol, as typed values. `codec` turns them into bytes and back.
//!
//! Every record that occupies a place in the replication stream (`Write`, `Zero` and
//! `Sync`) has
//! a `seq` and a `stream_offset`: the byte position of the record in the stream, where a
//! record costs `stream_cost(payload_len)` bytes. A data set `d` is the seq range
//! `[first_seq, first_seq + write_count)` of writes, closed by the sync record whose own
//! seq is `first_seq + write_count`; a `Zero` (a range to read back as zeros, with no
//! payload) counts among its writes.

use super::ids::{DataSetId, GenerationId, GroupId, Seq, VolumeId};

/// What a record of the replication stream is: a write (where it goes, how long it is), a
/// range zeroed, or the sync that closes a data set. Retention, staging and the journal
/// all keep this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Write {
        volume: VolumeId,
        offset: u64,
        len: u32,
    },
    /// `len` bytes at `offset` read back as zeros from now on; with `unmap` the storage
    /// may deallocate them (NBD's TRIM, or WRITE_ZEROES without NO_HOLE) instead of
    /// writing zeros. No payload.
    Zero {
        volume: VolumeId,
        offset: u64,
        len: u32,
        unmap: bool,
    },
    Sync {
        first_seq: Seq,
        write_count: u64,
        /// This data set is the end point of the resync that began its generation: once
        /// it is applied the replica is the primary's image again (see `primary::resync`).
        ends_resync: bool,
    },
}

impl RecordKind {
    pub fn payload_len(&self) -> u32 {
        match self {
            RecordKind::Write { len, .. } => *len,
            RecordKind::Zero { .. } | RecordKind::Sync { .. } => 0,
        }
    }
}

/// Most volumes one replication group may hold.
pub const MAX_VOLUMES: usize = 64;
/// Most lanes (TCP connections) one primary opens to its secondary: each lane has its
/// own receiver thread on the secondary, and one data set spreads over all of them.
pub const MAX_LANES: usize = 64;
/// Longest volume name, in bytes (UTF-8).
pub const MAX_VOLUME_NAME_BYTES: usize = 32;
/// Most seq ranges one `Ack` frame (or the resume list of a `Hello`) carries.
pub const MAX_ACK_RANGES: usize = 128;
/// Largest payload a `Write` frame may carry; engine configs use smaller bounds.
pub const MAX_WRITE_PAYLOAD_BYTES: u32 = 16 << 20;
/// Most ancestors a primary's `Hello` names (its history, newest first).
pub const MAX_ANCESTORS: usize = 16;
/// A resync compares volumes in units of this many bytes (or the block size, if larger),
/// one digest each.
pub const DIGEST_UNIT_BYTES: u32 = 4096;
/// Most digests one `Digests` frame carries, so one request spans at most 1 MiB of 4 KiB
/// units.
pub const MAX_DIGESTS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary = 1,
    Secondary = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// UTF-8, at most `MAX_VOLUME_NAME_BYTES` bytes.
    pub name: String,
    pub size_bytes: u64,
    pub block_size: u32,
}

/// An inclusive seq range `[first, last]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    pub first: Seq,
    pub last: Seq,
}

/// Adds `seq` (ascending, after every seq already in `ranges`) to `ranges`, extending the
/// last range or starting a new one; false if that would need more than `max` ranges.
pub fn push_seq(ranges: &mut Vec<SeqRange>, seq: Seq, max: usize) -> bool {
    if let Some(range) = ranges.last_mut() {
        debug_assert!(seq > range.last, "seqs are pushed in ascending order");
        if range.last.0 + 1 == seq.0 {
            range.last = seq;
            return true;
        }
    }
    if ranges.len() == max {
        return false;
    }
    ranges.push(SeqRange {
        first: seq,
        last: seq,
    });
    true
}

/// What the secondary has, sent in its `Hello` so the primary can resume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResumeState {
    /// Last data set applied to the replica (0 = none).
    pub applied_data_set: DataSetId,
    /// Seq of the sync record that closed `applied_data_set` (0 = none).
    pub applied_seq: Seq,
    /// Stream offset just past that sync record.
    pub applied_stream_end: u64,
    /// How far past `applied_stream_end` the primary may send (journal window).
    pub window_bytes: u64,
    /// Random id of the secondary's journal, chosen when it was formatted: a different id
    /// with less applied means the secondary lost its state, not that a frame was late.
    pub journal_id: u64,
    /// Seq ranges above `applied_seq` already staged durably (at most `MAX_ACK_RANGES`).
    pub staged: Vec<SeqRange>,
}

/// What a side says of its history in its `Hello`, besides the generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryFlags {
    /// Primary: its history began as an all-zero image (volumes it created) and it still
    /// retains every record since seq 1, so a zeroed secondary can follow the stream from
    /// its start with no resync.
    pub genesis_stream: bool,
    /// Primary: its history began as an all-zero image and its write-intent bitmap covers
    /// every write since, so a zeroed secondary is resynchronised from the bitmap alone.
    pub genesis_bits: bool,
    /// Secondary: it holds no history yet and its replica is all zeros (volumes it created).
    pub replica_zeroed: bool,
    /// Secondary: the operator allowed any history to overwrite its replica.
    pub discard: bool,
    /// Secondary: its replica is the image of no data set (an initial sync, or a resync the
    /// operator let run without keeping a consistent image) until the resync's end point.
    pub inconsistent: bool,
    /// Secondary: a resync of this history is under way and held back: the replica stays
    /// the image of a data set of an earlier history until the resync's end point.
    pub held: bool,
    /// Secondary: it re-based onto this history from a replica whose contents no history
    /// accounts for (an initial sync, or one the operator discarded): everything is
    /// compared, not only what the primary's write-intent record names.
    pub resync_all: bool,
    /// Secondary: it re-based onto this history from an all-zero replica, so what the
    /// primary's bitmap has covered since its all-zero genesis is what may differ.
    pub resync_from_zero: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub role: Role,
    pub group: GroupId,
    /// Largest write this side sends (primary) or accepts (secondary).
    pub max_write_bytes: u32,
    /// At most `MAX_VOLUMES`.
    pub volumes: Vec<VolumeInfo>,
    /// The primary's history, or the one whose stream the secondary follows (`NONE`: a
    /// secondary that holds no history).
    pub generation: GenerationId,
    /// The primary's earlier generations, newest first, at most `MAX_ANCESTORS`; empty from
    /// a secondary.
    pub ancestors: Vec<GenerationId>,
    pub flags: HistoryFlags,
    /// Meaningful when `role == Secondary`; zeroed by a primary.
    pub resume: ResumeState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteFrame<'a> {
    pub volume: VolumeId,
    pub seq: Seq,
    pub data_set: DataSetId,
    /// Byte offset on the volume.
    pub offset: u64,
    pub stream_offset: u64,
    pub payload: &'a [u8],
}

/// A range of a volume zeroed, in a data set like a write (see `RecordKind::Zero`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroFrame {
    pub volume: VolumeId,
    pub seq: Seq,
    pub data_set: DataSetId,
    /// Byte offset on the volume.
    pub offset: u64,
    /// Bytes zeroed; never 0.
    pub len: u32,
    pub unmap: bool,
    pub stream_offset: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncFrame {
    /// The sync record's own seq: `first_seq + write_count`.
    pub seq: Seq,
    pub data_set: DataSetId,
    pub first_seq: Seq,
    pub write_count: u64,
    pub stream_offset: u64,
    /// This data set is the end point of its generation's resync.
    pub ends_resync: bool,
}

/// The primary asks for the digests of `len` bytes of a volume at `offset` (a resync
/// comparing before it sends; whole digest units, at most `MAX_DIGESTS` of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestRequestFrame {
    /// Echoed in the answer.
    pub id: u64,
    pub volume: VolumeId,
    pub offset: u64,
    pub len: u32,
}

/// The secondary's answer: one digest (xxh3-64) per unit of the range asked for, of its
/// replica as it stood when it read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestsFrame {
    pub id: u64,
    pub volume: VolumeId,
    pub offset: u64,
    pub len: u32,
    /// At most `MAX_DIGESTS`.
    pub digests: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckFrame {
    /// At most `MAX_ACK_RANGES` ranges, each staged durably on the secondary.
    pub ranges: Vec<SeqRange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedFrame {
    pub data_set: DataSetId,
    /// Seq of the sync record that closed `data_set`.
    pub applied_seq: Seq,
    pub stream_end: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello(Hello),
    Write(WriteFrame<'a>),
    Zero(ZeroFrame),
    Sync(SyncFrame),
    Ack(AckFrame),
    Applied(AppliedFrame),
    DigestRequest(DigestRequestFrame),
    Digests(DigestsFrame),
}

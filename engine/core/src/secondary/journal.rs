//! The staging journal: a circular log of self-describing records on its own Storage, and
//! two alternating superblocks that hold the applied watermark.
//!
//! Layout: superblock copies at byte 0 and 4096 (one block each), the log from byte 8192.
//! A record is a 72-byte header and its payload, padded to the journal's block size. It
//! carries its log position (`lsn`, bytes since the log began), the incarnation (how many
//! times the journal was opened) that wrote it, and a crc32c seeded with the journal's
//! random id over header and payload. The scan from the head stops at the first record
//! that is torn, from an earlier lap, from an earlier journal on the device, or from an
//! earlier life than the record before it. A record never straddles the end of the log:
//! when it would, the writer skips to the next lap, a gap shorter than one record.
//!
//! Why the log can never fill up: the secondary journals a record only if its stream end
//! is at most `applied_stream_end + window_bytes` and its seq is neither applied nor already
//! held. The live log, from the first record of an unapplied data set to the tail, then
//! holds distinct records whose stream ranges lie in an interval of at most twice the
//! window (the records of the next data sets, plus at most a window's worth of records of
//! data sets applied after that first record arrived). A record's size on disk is at most
//! its stream cost, so `log_bytes >= 2 * window_bytes + max_record_bytes` suffices, and
//! `append` asserts it.

use std::collections::VecDeque;

use thiserror::Error;

use crate::protocol::{DataSetId, GenerationId, GroupId, RecordKind, Seq, VolumeId};
use crate::storage::{read_blocking, wait_for, Completion, Geometry, IoTag, Storage, StorageError};

pub const RECORD_HEADER_BYTES: usize = 72;
const SUPERBLOCK_BYTES: usize = 136;
const SUPERBLOCK_COPY_OFFSETS: [u64; 2] = [0, 4096];
pub const LOG_START: u64 = 8192;
const RECORD_MAGIC: u32 = 0x524A_524F; // "ORJR"
const SUPER_MAGIC: u64 = 0x4C4E_524A_4F44_524F; // "ORDOJRNL"
/// 2: the superblock names the replica volumes (`volumes_digest`).
/// 3: records are appended in seq order, which the recovery scan relies on.
/// 4: the history (generation) the journal follows and what the replica holds; syncs may
/// end a resync.
const JOURNAL_VERSION: u32 = 4;

const _: () = assert!(RECORD_HEADER_BYTES == 4 + 1 + 1 + 2 + 4 + 4 + 7 * 8);
const _: () = assert!(SUPERBLOCK_BYTES <= 512);

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum JournalError {
    #[error("journal storage: {0}")]
    Storage(#[from] StorageError),
    #[error("journal is not formatted (no valid superblock)")]
    NotFormatted,
    #[error("journal has format version {found}, this ordo reads only version {supported}: it was written by another ordo release; start this secondary on a fresh state directory")]
    OtherVersion { found: u32, supported: u32 },
    #[error("journal belongs to group {found}, not {expected}")]
    WrongGroup { expected: u64, found: u64 },
    #[error("journal of {size} bytes is too small: it needs {needed}")]
    TooSmall { size: u64, needed: u64 },
    #[error("the journal device takes requests of up to {max_io} bytes, but a record of the largest write is {record} bytes")]
    RequestsTooSmall { max_io: u32, record: u64 },
}

/// The journal writes each record, header and payload, in one request.
fn check_requests(geometry: &Geometry, max_write_bytes: u32) -> Result<(), JournalError> {
    let record = record_bytes(max_write_bytes, geometry.block_size);
    if u64::from(geometry.max_io_bytes) < record {
        return Err(JournalError::RequestsTooSmall {
            max_io: geometry.max_io_bytes,
            record,
        });
    }
    Ok(())
}

/// What the replica holds, as the superblock records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicaState {
    /// The image of `applied_data_set` of `history` (a fresh journal: of no history yet,
    /// see `Superblock::replica_point`).
    #[default]
    Consistent,
    /// A resync of `history` is under way and held back: the replica is still the image of
    /// `base_data_set` of `base_history` (`GenerationId::NONE`: the all-zero image), and
    /// the data sets of `history` are applied together once its end point is durable.
    Held,
    /// The image of no data set (an initial sync, or a resync the operator let go on
    /// without a consistent image) until the end point of `history`'s resync is applied.
    Inconsistent,
}

impl ReplicaState {
    fn code(self) -> u8 {
        match self {
            ReplicaState::Consistent => 0,
            ReplicaState::Held => 1,
            ReplicaState::Inconsistent => 2,
        }
    }

    fn from_code(code: u8) -> Option<ReplicaState> {
        match code {
            0 => Some(ReplicaState::Consistent),
            1 => Some(ReplicaState::Held),
            2 => Some(ReplicaState::Inconsistent),
            _ => None,
        }
    }
}

/// The persistent applied state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub group: GroupId,
    /// Chosen (at random, by the caller) when the journal is formatted; mixed into every
    /// record's crc, so records of an earlier journal on the same device never count.
    pub journal_id: u64,
    /// Raised at every open and stamped on every record written in that life: a scan never
    /// goes from a record to one of an earlier life, so records a crash left behind a hole
    /// stay dead even when a later life's records line up with them again.
    pub incarnation: u64,
    pub applied_data_set: DataSetId,
    pub applied_seq: Seq,
    pub applied_stream_end: u64,
    /// First log position still needed.
    pub head_lsn: u64,
    pub log_bytes: u64,
    pub window_bytes: u64,
    pub max_write_bytes: u32,
    /// crc32c of the replica volumes' names, sizes and block sizes, in order, when the
    /// journal was formatted: its records name volumes by index, so a journal must never be
    /// replayed onto other volumes, or the same ones in another order.
    pub volumes_digest: u32,
    /// The history whose stream the journal follows: seqs, data sets and stream offsets
    /// above count in it (`NONE`: a fresh journal that met no primary yet).
    pub history: GenerationId,
    pub replica: ReplicaState,
    /// With `ReplicaState::Held`, the data set (of `base_history`) the replica is the
    /// image of.
    pub base_history: GenerationId,
    pub base_data_set: DataSetId,
    /// A fresh journal whose replicas were all zeros when it was formatted (and nothing
    /// was applied since).
    pub replica_zeroed: bool,
    /// The operator allowed any primary's history to overwrite the replica.
    pub discard: bool,
    /// Why the resync of `history` runs (held or inconsistent): what the primary must
    /// compare.
    pub basis: ResyncBasis,
}

/// What the primary compares in the resync a secondary re-based for (reported in its
/// `Hello` until the resync's end point is applied).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResyncBasis {
    /// The replica follows an ancestor of `history`: what the primary's write-intent
    /// record names (if it tracked this journal; everything otherwise).
    #[default]
    Ancestor,
    /// The replica was all zeros: what the primary's bitmap covers since its all-zero
    /// genesis.
    Zero,
    /// The replica's contents are not those of any history: everything.
    All,
}

impl Superblock {
    /// The history and data set the replica is the image of, if it is one: `None` while
    /// inconsistent, or fresh with unknown contents. `(NONE, 0)` is the all-zero image.
    pub fn replica_point(&self) -> Option<(GenerationId, DataSetId)> {
        match self.replica {
            ReplicaState::Inconsistent => None,
            ReplicaState::Held => Some((self.base_history, self.base_data_set)),
            ReplicaState::Consistent if self.history == GenerationId::NONE => self
                .replica_zeroed
                .then_some((GenerationId::NONE, DataSetId::NONE)),
            ReplicaState::Consistent => Some((self.history, self.applied_data_set)),
        }
    }
}

impl Superblock {
    fn encode(&self, out: &mut [u8]) {
        out.fill(0);
        put_u64(out, 0, SUPER_MAGIC);
        put_u32(out, 8, JOURNAL_VERSION);
        put_u64(out, 16, self.generation);
        put_u64(out, 24, self.group.0);
        put_u64(out, 32, self.applied_data_set.0);
        put_u64(out, 40, self.applied_seq.0);
        put_u64(out, 48, self.applied_stream_end);
        put_u64(out, 56, self.head_lsn);
        put_u64(out, 64, self.log_bytes);
        put_u64(out, 72, self.window_bytes);
        put_u32(out, 80, self.max_write_bytes);
        put_u32(out, 84, self.volumes_digest);
        put_u64(out, 88, self.journal_id);
        put_u64(out, 96, self.incarnation);
        put_u64(out, 104, self.history.0);
        out[112] = self.replica.code();
        let basis = match self.basis {
            ResyncBasis::Ancestor => 0,
            ResyncBasis::Zero => 1,
            ResyncBasis::All => 2,
        };
        out[113] = u8::from(self.replica_zeroed) | (u8::from(self.discard) << 1) | (basis << 2);
        put_u64(out, 120, self.base_history.0);
        put_u64(out, 128, self.base_data_set.0);
        let crc = crc32c::crc32c(&out[..SUPERBLOCK_BYTES]);
        put_u32(out, 12, crc);
    }

    fn decode(block: &[u8]) -> Option<Superblock> {
        if get_u64(block, 0) != SUPER_MAGIC || get_u32(block, 8) != JOURNAL_VERSION {
            return None;
        }
        let mut copy = [0u8; SUPERBLOCK_BYTES];
        copy.copy_from_slice(&block[..SUPERBLOCK_BYTES]);
        put_u32(&mut copy, 12, 0);
        if crc32c::crc32c(&copy) != get_u32(block, 12) {
            return None;
        }
        let replica = ReplicaState::from_code(block[112])?;
        if block[113] & !15 != 0 {
            return None;
        }
        let basis = match block[113] >> 2 {
            0 => ResyncBasis::Ancestor,
            1 => ResyncBasis::Zero,
            2 => ResyncBasis::All,
            _ => return None,
        };
        Some(Superblock {
            generation: get_u64(block, 16),
            group: GroupId(get_u64(block, 24)),
            applied_data_set: DataSetId(get_u64(block, 32)),
            applied_seq: Seq(get_u64(block, 40)),
            applied_stream_end: get_u64(block, 48),
            head_lsn: get_u64(block, 56),
            log_bytes: get_u64(block, 64),
            window_bytes: get_u64(block, 72),
            max_write_bytes: get_u32(block, 80),
            volumes_digest: get_u32(block, 84),
            journal_id: get_u64(block, 88),
            incarnation: get_u64(block, 96),
            history: GenerationId(get_u64(block, 104)),
            replica,
            base_history: GenerationId(get_u64(block, 120)),
            base_data_set: DataSetId(get_u64(block, 128)),
            replica_zeroed: block[113] & 1 != 0,
            discard: block[113] & 2 != 0,
            basis,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Set by `append`, like `incarnation`.
    pub lsn: u64,
    pub incarnation: u64,
    pub seq: Seq,
    pub data_set: DataSetId,
    pub stream_offset: u64,
    pub kind: RecordKind,
}

impl RecordHeader {
    /// Writes header and payload into `out` (sized to the record) with the crc set; the
    /// crc covers the journal id, then header and payload.
    fn encode(&self, journal_id: u64, payload: &[u8], out: &mut [u8]) {
        // Zeroes only what the payload does not cover: the header and the padding.
        let end = RECORD_HEADER_BYTES + payload.len();
        out[..RECORD_HEADER_BYTES].fill(0);
        out[end..].fill(0);
        put_u32(out, 0, RECORD_MAGIC);
        let (kind, flags, volume, a, b) = match self.kind {
            RecordKind::Write { volume, offset, .. } => (1u8, 0, volume.0, offset, 0),
            RecordKind::Sync {
                first_seq,
                write_count,
                ends_resync,
            } => (2u8, u8::from(ends_resync), 0, first_seq.0, write_count),
            RecordKind::Zero {
                volume,
                offset,
                len,
                unmap,
            } => (3u8, u8::from(unmap), volume.0, offset, u64::from(len)),
        };
        out[4] = kind;
        out[5] = flags;
        out[6..8].copy_from_slice(&volume.to_le_bytes());
        put_u32(out, 8, self.kind.payload_len());
        put_u64(out, 16, self.lsn);
        put_u64(out, 24, self.seq.0);
        put_u64(out, 32, self.data_set.0);
        put_u64(out, 40, a);
        put_u64(out, 48, self.stream_offset);
        put_u64(out, 56, b);
        put_u64(out, 64, self.incarnation);
        out[RECORD_HEADER_BYTES..end].copy_from_slice(payload);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&journal_id.to_le_bytes()), &out[..end]);
        put_u32(out, 12, crc);
    }

    /// Parses a header; the crc is checked separately once the payload is read.
    fn decode(block: &[u8], max_payload: u32) -> Option<RecordHeader> {
        if get_u32(block, 0) != RECORD_MAGIC {
            return None;
        }
        let payload_len = get_u32(block, 8);
        let (a, b) = (get_u64(block, 40), get_u64(block, 56));
        let kind = match block[4] {
            1 if payload_len > 0 && payload_len <= max_payload => RecordKind::Write {
                volume: VolumeId(u16::from_le_bytes([block[6], block[7]])),
                offset: a,
                len: payload_len,
            },
            2 if payload_len == 0 && block[5] <= 1 => RecordKind::Sync {
                first_seq: Seq(a),
                write_count: b,
                ends_resync: block[5] == 1,
            },
            3 if payload_len == 0 && block[5] <= 1 => RecordKind::Zero {
                volume: VolumeId(u16::from_le_bytes([block[6], block[7]])),
                offset: a,
                len: u32::try_from(b).ok().filter(|&len| len > 0)?,
                unmap: block[5] == 1,
            },
            _ => return None,
        };
        Some(RecordHeader {
            lsn: get_u64(block, 16),
            incarnation: get_u64(block, 64),
            seq: Seq(get_u64(block, 24)),
            data_set: DataSetId(get_u64(block, 32)),
            stream_offset: get_u64(block, 48),
            kind,
        })
    }

    fn crc_ok(record: &[u8], payload_len: u32, journal_id: u64) -> bool {
        let end = RECORD_HEADER_BYTES + payload_len as usize;
        let stored = get_u32(record, 12);
        let mut crc = crc32c::crc32c(&journal_id.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &record[..12]);
        crc = crc32c::crc32c_append(crc, &[0; 4]);
        crc = crc32c::crc32c_append(crc, &record[16..end]);
        crc == stored
    }
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut [u8], at: usize, value: u64) {
    out[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// Size of a record on disk.
pub fn record_bytes(payload_len: u32, block_size: u32) -> u64 {
    round_up(
        RECORD_HEADER_BYTES as u64 + u64::from(payload_len),
        u64::from(block_size),
    )
}

/// Journal size needed for a window and largest write.
pub fn required_bytes(window_bytes: u64, max_write_bytes: u32, block_size: u32) -> u64 {
    LOG_START + 2 * window_bytes + record_bytes(max_write_bytes, block_size)
}

/// The valid superblock copy with the highest generation, if any.
fn newest_superblock<S: Storage>(storage: &mut S) -> Result<Option<Superblock>, JournalError> {
    let mut buf = vec![0u8; storage.geometry().block_size as usize];
    let mut others = Vec::new();
    let mut best: Option<Superblock> = None;
    let mut other_version = None;
    for at in SUPERBLOCK_COPY_OFFSETS {
        read_blocking(storage, at, &mut buf, &mut others)?;
        if get_u64(&buf, 0) == SUPER_MAGIC && get_u32(&buf, 8) != JOURNAL_VERSION {
            other_version = Some(get_u32(&buf, 8));
        }
        if let Some(sb) = Superblock::decode(&buf) {
            if best.is_none_or(|b| sb.generation > b.generation) {
                best = Some(sb);
            }
        }
    }
    assert!(
        others.is_empty(),
        "nothing else in flight while reading superblocks"
    );
    match (best, other_version) {
        (None, Some(found)) => Err(JournalError::OtherVersion {
            found,
            supported: JOURNAL_VERSION,
        }),
        (best, _) => Ok(best),
    }
}

/// A record found by the recovery scan, with its payload.
#[derive(Debug)]
pub struct ScannedRecord<'a> {
    pub header: RecordHeader,
    pub payload: &'a [u8],
}

#[derive(Debug)]
pub struct Journal<S: Storage> {
    storage: S,
    block_size: u32,
    superblock: Superblock,
    /// Next log position to write.
    tail_lsn: u64,
    /// (lsn, data set) of every record from the head on, in log order.
    index: VecDeque<(u64, DataSetId)>,
    /// Scratch for building one record (and for superblocks).
    scratch: Vec<u8>,
}

impl<S: Storage> Journal<S> {
    /// Formats `storage` as an empty journal for `group` and waits until it is durable.
    /// `journal_id` should be random: it is what tells this journal's records from those
    /// of an earlier one on the same device.
    pub fn format(
        mut storage: S,
        group: GroupId,
        journal_id: u64,
        window_bytes: u64,
        max_write_bytes: u32,
        volumes_digest: u32,
        replica_zeroed: bool,
    ) -> Result<Journal<S>, JournalError> {
        let geometry = storage.geometry();
        check_requests(&geometry, max_write_bytes)?;
        let needed = required_bytes(window_bytes, max_write_bytes, geometry.block_size);
        if geometry.size_bytes < needed {
            return Err(JournalError::TooSmall {
                size: geometry.size_bytes,
                needed,
            });
        }
        let log_bytes = (geometry.size_bytes - LOG_START) / u64::from(geometry.block_size)
            * u64::from(geometry.block_size);
        // Generations above any superblock already on the device, so that a crash between
        // the two writes below still leaves the new journal the newest.
        let previous = newest_superblock(&mut storage)?.map_or(0, |sb| sb.generation);
        let superblock = Superblock {
            generation: previous + 1,
            group,
            journal_id,
            incarnation: 1,
            log_bytes,
            window_bytes,
            max_write_bytes,
            volumes_digest,
            replica_zeroed,
            ..Superblock::default()
        };
        let mut journal = Journal::with_superblock(storage, superblock);
        // Both copies, so no stale superblock of an earlier journal can win later.
        journal.write_superblock_blocking()?;
        journal.superblock.generation += 1;
        journal.write_superblock_blocking()?;
        Ok(journal)
    }

    fn with_superblock(storage: S, superblock: Superblock) -> Journal<S> {
        let block_size = storage.geometry().block_size;
        let max_record = record_bytes(superblock.max_write_bytes, block_size) as usize;
        let max_records =
            (2 * superblock.window_bytes / crate::protocol::RECORD_OVERHEAD_BYTES + 2) as usize;
        Journal {
            storage,
            block_size,
            tail_lsn: superblock.head_lsn,
            superblock,
            index: VecDeque::with_capacity(max_records),
            scratch: vec![0; max_record.max(4096)],
        }
    }

    fn write_superblock_blocking(&mut self) -> Result<(), JournalError> {
        let mut others = Vec::new();
        let at = SUPERBLOCK_COPY_OFFSETS[(self.superblock.generation % 2) as usize];
        let block = self.block_size as usize;
        self.superblock.encode(&mut self.scratch[..block]);
        self.storage
            .submit_write(u64::MAX - 1, at, &self.scratch[..block])?;
        wait_for(&mut self.storage, u64::MAX - 1, &mut others)?;
        self.storage.submit_flush(u64::MAX - 1)?;
        wait_for(&mut self.storage, u64::MAX - 1, &mut others)?;
        assert!(others.is_empty(), "nothing else in flight while formatting");
        Ok(())
    }

    /// Opens a formatted journal: reads the newer valid superblock. Call `scan` next.
    pub fn open(mut storage: S, group: GroupId) -> Result<Journal<S>, JournalError> {
        let best = newest_superblock(&mut storage)?;
        let superblock = best.ok_or(JournalError::NotFormatted)?;
        if superblock.group != group {
            return Err(JournalError::WrongGroup {
                expected: group.0,
                found: superblock.group.0,
            });
        }
        check_requests(&storage.geometry(), superblock.max_write_bytes)?;
        let mut journal = Journal::with_superblock(storage, superblock);
        // A new life. Writing its superblock also flushes the device, so what a process
        // that died wrote without flushing (records, the newer superblock) is durable
        // before anything relies on it.
        journal.superblock.generation += 1;
        journal.superblock.incarnation += 1;
        journal.write_superblock_blocking()?;
        Ok(journal)
    }

    /// Scans the log from the head, calling `found` with each valid record in log order
    /// until the first missing, stale or torn one, where the tail is set.
    pub fn scan(&mut self, mut found: impl FnMut(&ScannedRecord<'_>)) -> Result<(), JournalError> {
        assert!(
            self.index.is_empty() && self.tail_lsn == self.superblock.head_lsn,
            "scan once, at open"
        );
        let mut others = Vec::new();
        let mut lsn = self.superblock.head_lsn;
        let mut life = 0;
        // Records are appended in seq order from the one after the watermark: the record
        // at the head is that one, and each next one follows the last.
        let mut next_seq = self.superblock.applied_seq.next();
        loop {
            let header = match self.read_record(lsn, &mut others)? {
                Some(header) => header,
                None => {
                    // The writer skips to the next lap only when a record does not fit
                    // before the end, so a legitimate skip is shorter than the largest
                    // record; a longer one would jump over a hole.
                    let next_lap = round_up(lsn, self.superblock.log_bytes);
                    let largest = record_bytes(self.superblock.max_write_bytes, self.block_size);
                    if next_lap == lsn || next_lap - lsn >= largest {
                        break;
                    }
                    // A skip and a lost record ending at the lap's end look alike here;
                    // only the record after a skip is the next seq (regression: a lost
                    // record that ended the lap exactly was jumped over).
                    match self.read_record(next_lap, &mut others)? {
                        Some(header) if header.seq == next_seq => header,
                        _ => break,
                    }
                }
            };
            // Lives only go forward along the log; this one (the current) wrote nothing yet.
            if header.incarnation < life || header.incarnation >= self.superblock.incarnation {
                break;
            }
            life = header.incarnation;
            next_seq = header.seq.next();
            let payload = &self.scratch
                [RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + header.kind.payload_len() as usize];
            found(&ScannedRecord { header, payload });
            self.index.push_back((header.lsn, header.data_set));
            lsn = header.lsn + record_bytes(header.kind.payload_len(), self.block_size);
        }
        self.tail_lsn = lsn;
        assert!(others.is_empty(), "nothing else in flight while scanning");
        Ok(())
    }

    /// Reads the record at `lsn` into scratch if a valid one of that lsn is there.
    fn read_record(
        &mut self,
        lsn: u64,
        others: &mut Vec<Completion>,
    ) -> Result<Option<RecordHeader>, JournalError> {
        let log_bytes = self.superblock.log_bytes;
        let block = self.block_size as usize;
        let at = lsn % log_bytes;
        if at + block as u64 > log_bytes {
            return Ok(None);
        }
        read_blocking(
            &mut self.storage,
            LOG_START + at,
            &mut self.scratch[..block],
            others,
        )?;
        let max_payload = self.superblock.max_write_bytes;
        let Some(header) = RecordHeader::decode(&self.scratch[..block], max_payload) else {
            return Ok(None);
        };
        let size = record_bytes(header.kind.payload_len(), self.block_size);
        if header.lsn != lsn || at + size > log_bytes {
            return Ok(None);
        }
        if size as usize > block {
            let rest = LOG_START + at + block as u64;
            read_blocking(
                &mut self.storage,
                rest,
                &mut self.scratch[block..size as usize],
                others,
            )?;
        }
        let journal_id = self.superblock.journal_id;
        Ok(
            RecordHeader::crc_ok(&self.scratch, header.kind.payload_len(), journal_id)
                .then_some(header),
        )
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn into_storage(self) -> S {
        self.storage
    }

    /// The next log position to write: a superblock whose head is this drops every record
    /// written so far (a re-base onto another history).
    pub fn tail_lsn(&self) -> u64 {
        self.tail_lsn
    }

    /// Log bytes in use, head to tail.
    pub fn used_bytes(&self) -> u64 {
        self.tail_lsn - self.superblock.head_lsn
    }

    pub fn log_bytes(&self) -> u64 {
        self.superblock.log_bytes
    }

    /// Starts writing a record at the tail (tagged `tag`); returns its lsn. The caller
    /// checked the storage queue has room.
    pub fn append(
        &mut self,
        tag: IoTag,
        mut header: RecordHeader,
        payload: &[u8],
    ) -> Result<u64, StorageError> {
        let log_bytes = self.superblock.log_bytes;
        let size = record_bytes(header.kind.payload_len(), self.block_size);
        assert_eq!(payload.len(), header.kind.payload_len() as usize);
        let mut lsn = self.tail_lsn;
        if lsn % log_bytes + size > log_bytes {
            lsn = round_up(lsn, log_bytes);
        }
        assert!(
            lsn + size - self.superblock.head_lsn <= log_bytes,
            "journal full: the window admission rule must make this impossible"
        );
        header.lsn = lsn;
        header.incarnation = self.superblock.incarnation;
        let journal_id = self.superblock.journal_id;
        // Encoded straight into the device's buffer: the payload is copied once.
        self.storage.submit_write_with(
            tag,
            LOG_START + lsn % log_bytes,
            size as usize,
            &mut |out| header.encode(journal_id, payload, out),
        )?;
        self.tail_lsn = lsn + size;
        self.index.push_back((lsn, header.data_set));
        Ok(lsn)
    }

    /// The head the log would have once `applied` is the watermark: the first record
    /// belonging to a later data set (or the tail).
    pub fn head_after(&self, applied: DataSetId) -> u64 {
        self.index
            .iter()
            .find(|(_, data_set)| *data_set > applied)
            .map_or(self.tail_lsn, |(lsn, _)| *lsn)
    }

    /// Starts writing the next superblock generation (tagged `tag`): the caller flushes
    /// after it completes, then calls `superblock_durable`.
    pub fn submit_superblock(&mut self, tag: IoTag, next: Superblock) -> Result<(), StorageError> {
        assert_eq!(next.generation, self.superblock.generation + 1);
        assert!(next.head_lsn >= self.superblock.head_lsn && next.head_lsn <= self.tail_lsn);
        let block = self.block_size as usize;
        next.encode(&mut self.scratch[..block]);
        let at = SUPERBLOCK_COPY_OFFSETS[(next.generation % 2) as usize];
        self.storage.submit_write(tag, at, &self.scratch[..block])
    }

    /// The superblock `next` is durable: its head takes effect and log space is freed.
    pub fn superblock_durable(&mut self, next: Superblock) {
        while self
            .index
            .front()
            .is_some_and(|(lsn, _)| *lsn < next.head_lsn)
        {
            self.index.pop_front();
        }
        self.superblock = next;
    }
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;

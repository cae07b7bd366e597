//! The write-intent record: the primary's persistent state (history, shutdown, peer) and a
//! bitmap of the extents that may differ from the secondary's replica, on its own Storage.
//!
//! Layout: superblock copies at byte 0 and 4096, the bitmap from byte 8192 in 4096-byte
//! blocks (crc32c over the block index and the rest of the block, 4 reserved bytes, 4088
//! bytes of bits, volume 0's extents first). Updates go out in transactions, one in flight:
//! its superblock (into the copy not holding the newest valid one) is written and flushed
//! before its bitmap blocks, so a cleared bit never lands under an older superblock (one
//! that still says `bits_complete`), then the blocks and a flush.

use thiserror::Error;

use crate::protocol::{DataSetId, GenerationId, Seq, VolumeId, VolumeInfo, MAX_VOLUMES};
use crate::storage::{read_blocking, wait_for, Completion, Geometry, IoTag, Storage, StorageError};

/// Bytes of the disk one bit stands for.
pub const EXTENT_BYTES: u64 = 1 << 20;
pub use crate::protocol::MAX_ANCESTORS;
const BLOCK_BYTES: usize = 4096;
const SUPERBLOCK_COPY_OFFSETS: [u64; 2] = [0, 4096];
pub const BITMAP_START: u64 = 8192;
const BLOCK_HEADER_BYTES: usize = 8;
const BITS_BYTES_PER_BLOCK: usize = BLOCK_BYTES - BLOCK_HEADER_BYTES;
/// Extents one bitmap block covers (32704: a volume over 32704 MiB takes two blocks).
pub const EXTENTS_PER_BLOCK: u64 = BITS_BYTES_PER_BLOCK as u64 * 8;
const SUPER_MAGIC: u64 = 0x544E_4954_4E4F_4452; // "RDONTINT"
const INTENT_VERSION: u32 = 1;
const ANCESTORS_AT: usize = 96;
const EXTENT_COUNTS_AT: usize = ANCESTORS_AT + MAX_ANCESTORS * 8;
const SUPERBLOCK_BYTES: usize = EXTENT_COUNTS_AT + MAX_VOLUMES * 8;
const FLAG_GENESIS_ZERO: u32 = 1;
const FLAG_BITS_COMPLETE: u32 = 2;
/// Request tags; a bitmap block's write is tagged with its index.
const FLUSH_TAG: IoTag = u64::MAX - 1;
const SUPER_TAG: IoTag = u64::MAX - 2;

const _: () = assert!(SUPERBLOCK_BYTES == 736 && SUPERBLOCK_BYTES <= BLOCK_BYTES);
const _: () = assert!(BITMAP_START == SUPERBLOCK_COPY_OFFSETS[1] + BLOCK_BYTES as u64);
const _: () = assert!(EXTENTS_PER_BLOCK == 32704);

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IntentError {
    #[error("write-intent storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the write-intent area is not formatted (no valid superblock)")]
    NotFormatted,
    #[error("the write-intent area has format version {found}, this ordo reads only version {supported}: it was written by another ordo release; start this primary on a fresh state directory")]
    OtherVersion { found: u32, supported: u32 },
    #[error("the write-intent area belongs to other volumes: {0}")]
    OtherVolumes(String),
    #[error("write-intent storage of {size} bytes is too small: these volumes need {needed}")]
    TooSmall { size: u64, needed: u64 },
    #[error("{count} volumes; a replication group holds at most {max}")]
    TooManyVolumes { count: usize, max: usize },
    #[error("write-intent storage has {block_size}-byte blocks; it needs a block size that divides 4096")]
    BlockSize { block_size: u32 },
    #[error("write-intent storage takes requests of up to {max_io} bytes; it needs 4096")]
    RequestsTooSmall { max_io: u32 },
}

/// How the primary last stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Started and not cleanly stopped since: after a crash, the stream cannot resume.
    Running,
    /// Stopped cleanly: where the stream stood, so the next start resumes it.
    Clean {
        last_data_set: DataSetId,
        last_seq: Seq,
        stream_end: u64,
    },
}

/// The persistent state besides the bitmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub generation: GenerationId,
    /// The generations this one descends from, newest first, at most `MAX_ANCESTORS`.
    pub ancestors: Vec<GenerationId>,
    /// The history's first image was all zeros (volumes ordo created itself).
    pub genesis_zero: bool,
    /// No bit was cleared since genesis: with `genesis_zero`, the set bits cover every
    /// write since an all-zero image.
    pub bits_complete: bool,
    pub shutdown: Shutdown,
    /// The secondary (its journal id) whose applied writes cleared bits; 0 = none yet.
    pub peer_journal_id: u64,
    /// `volumes_digest` of the volumes: a state area is never used with other volumes.
    pub volumes_digest: u32,
    pub extent_bytes: u64,
    /// Extents of each volume, in order.
    pub extent_counts: Vec<u64>,
}

impl Superblock {
    /// Makes `generation` the newest ancestor, dropping the oldest beyond `MAX_ANCESTORS`
    /// (no allocation: the list is allocated at its bound).
    pub fn push_ancestor(&mut self, generation: GenerationId) {
        if self.ancestors.len() == MAX_ANCESTORS {
            self.ancestors.pop();
        }
        self.ancestors.insert(0, generation);
        assert!(self.ancestors.len() <= MAX_ANCESTORS);
    }

    fn encode(&self, sequence: u64, out: &mut [u8]) {
        assert!(self.ancestors.len() <= MAX_ANCESTORS);
        assert!(self.extent_counts.len() <= MAX_VOLUMES);
        assert_eq!(out.len(), BLOCK_BYTES);
        out.fill(0);
        put_u64(out, 0, SUPER_MAGIC);
        put_u32(out, 8, INTENT_VERSION);
        put_u64(out, 16, sequence);
        put_u64(out, 24, self.generation.0);
        let flags = u32::from(self.genesis_zero) * FLAG_GENESIS_ZERO
            + u32::from(self.bits_complete) * FLAG_BITS_COMPLETE;
        put_u32(out, 32, flags);
        if let Shutdown::Clean {
            last_data_set,
            last_seq,
            stream_end,
        } = self.shutdown
        {
            put_u32(out, 36, 1);
            put_u64(out, 40, last_data_set.0);
            put_u64(out, 48, last_seq.0);
            put_u64(out, 56, stream_end);
        }
        put_u64(out, 64, self.peer_journal_id);
        put_u32(out, 72, self.volumes_digest);
        put_u32(out, 76, self.extent_counts.len() as u32);
        put_u64(out, 80, self.extent_bytes);
        put_u32(out, 88, self.ancestors.len() as u32);
        for (i, ancestor) in self.ancestors.iter().enumerate() {
            put_u64(out, ANCESTORS_AT + 8 * i, ancestor.0);
        }
        for (i, count) in self.extent_counts.iter().enumerate() {
            put_u64(out, EXTENT_COUNTS_AT + 8 * i, *count);
        }
        put_u32(out, 12, superblock_crc(out));
    }

    /// The superblock and its sequence, if `block` is a valid copy of this version.
    fn decode(block: &[u8]) -> Option<(Superblock, u64)> {
        let valid = block.len() == BLOCK_BYTES
            && get_u64(block, 0) == SUPER_MAGIC
            && get_u32(block, 8) == INTENT_VERSION
            && get_u32(block, 12) == superblock_crc(block);
        let flags = get_u32(block, 32);
        let volume_count = get_u32(block, 76) as usize;
        let ancestor_count = get_u32(block, 88) as usize;
        if !valid
            || flags & !(FLAG_GENESIS_ZERO | FLAG_BITS_COMPLETE) != 0
            || volume_count > MAX_VOLUMES
            || ancestor_count > MAX_ANCESTORS
        {
            return None;
        }
        let shutdown = match get_u32(block, 36) {
            0 => Shutdown::Running,
            1 => Shutdown::Clean {
                last_data_set: DataSetId(get_u64(block, 40)),
                last_seq: Seq(get_u64(block, 48)),
                stream_end: get_u64(block, 56),
            },
            _ => return None,
        };
        let mut ancestors = Vec::with_capacity(MAX_ANCESTORS);
        ancestors.extend(
            (0..ancestor_count).map(|i| GenerationId(get_u64(block, ANCESTORS_AT + 8 * i))),
        );
        let superblock = Superblock {
            generation: GenerationId(get_u64(block, 24)),
            ancestors,
            genesis_zero: flags & FLAG_GENESIS_ZERO != 0,
            bits_complete: flags & FLAG_BITS_COMPLETE != 0,
            shutdown,
            peer_journal_id: get_u64(block, 64),
            volumes_digest: get_u32(block, 72),
            extent_bytes: get_u64(block, 80),
            extent_counts: (0..volume_count)
                .map(|i| get_u64(block, EXTENT_COUNTS_AT + 8 * i))
                .collect(),
        };
        Some((superblock, get_u64(block, 16)))
    }
}

/// crc32c of a whole superblock copy, its crc field counted as zeros.
fn superblock_crc(block: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&block[..12]), &[0; 4]);
    crc32c::crc32c_append(crc, &block[16..])
}

/// crc32c of a bitmap block: its index, then everything after the crc field, so a block
/// written at another index does not pass.
fn bitmap_block_crc(index: usize, block: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&(index as u64).to_le_bytes()), &block[4..])
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

/// crc32c over each volume's name length (u32), name, size (u64) and block size (u32),
/// little-endian, in order: the same digest the secondary's journal keeps.
pub fn volumes_digest(volumes: &[VolumeInfo]) -> u32 {
    volumes.iter().fold(0, |crc, volume| {
        let crc = crc32c::crc32c_append(crc, &(volume.name.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc, volume.name.as_bytes());
        let crc = crc32c::crc32c_append(crc, &volume.size_bytes.to_le_bytes());
        crc32c::crc32c_append(crc, &volume.block_size.to_le_bytes())
    })
}

/// Extents (bits) a volume of `size_bytes` takes.
pub fn volume_extents(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(EXTENT_BYTES)
}

fn bitmap_blocks(volumes: &[VolumeInfo]) -> u64 {
    let extents: u64 = volumes.iter().map(|v| volume_extents(v.size_bytes)).sum();
    extents.div_ceil(EXTENTS_PER_BLOCK)
}

/// Storage bytes the write-intent area of `volumes` needs.
pub fn required_bytes(volumes: &[VolumeInfo]) -> u64 {
    BITMAP_START + bitmap_blocks(volumes) * BLOCK_BYTES as u64
}

/// Where bitmap block `block` lies: on the storage, in `write_bufs`, in `bits`.
fn block_offset(block: usize) -> u64 {
    BITMAP_START + (block * BLOCK_BYTES) as u64
}

fn buf_range(block: usize) -> std::ops::Range<usize> {
    block * BLOCK_BYTES..(block + 1) * BLOCK_BYTES
}

fn bits_range(block: usize) -> std::ops::Range<usize> {
    block * BITS_BYTES_PER_BLOCK..(block + 1) * BITS_BYTES_PER_BLOCK
}

/// Every request is one 4096-byte block, and the volume list is bounded.
fn check_device(geometry: &Geometry, volumes: &[VolumeInfo]) -> Result<(), IntentError> {
    let (block_size, max_io) = (geometry.block_size, geometry.max_io_bytes);
    if block_size == 0 || !(BLOCK_BYTES as u32).is_multiple_of(block_size) {
        return Err(IntentError::BlockSize { block_size });
    }
    if (max_io as usize) < BLOCK_BYTES {
        return Err(IntentError::RequestsTooSmall { max_io });
    }
    if volumes.len() > MAX_VOLUMES {
        let (count, max) = (volumes.len(), MAX_VOLUMES);
        return Err(IntentError::TooManyVolumes { count, max });
    }
    Ok(())
}

/// Writes each `(offset, block)` and waits for it, then flushes and waits: start-up only.
fn write_durably<'a, S: Storage>(
    storage: &mut S,
    writes: impl IntoIterator<Item = (u64, &'a [u8])>,
) -> Result<(), IntentError> {
    let mut others = Vec::new();
    for (at, data) in writes {
        storage.submit_write(SUPER_TAG, at, data)?;
        wait_for(storage, SUPER_TAG, &mut others)?;
    }
    storage.submit_flush(FLUSH_TAG)?;
    wait_for(storage, FLUSH_TAG, &mut others)?;
    assert!(others.is_empty(), "nothing else in flight at start-up");
    Ok(())
}

/// A valid superblock copy: its contents, sequence and slot.
type Found = (Superblock, u64, usize);

/// The valid superblock copy with the highest sequence, if any; `OtherVersion` when none is
/// valid and a copy carries the magic of another version.
fn newest_superblock<S: Storage>(storage: &mut S) -> Result<Option<Found>, IntentError> {
    if storage.geometry().size_bytes < BITMAP_START {
        return Ok(None);
    }
    let mut buf = vec![0u8; BLOCK_BYTES];
    let mut others = Vec::new();
    let mut best: Option<Found> = None;
    let mut other_version = None;
    for (slot, at) in SUPERBLOCK_COPY_OFFSETS.into_iter().enumerate() {
        read_blocking(storage, at, &mut buf, &mut others)?;
        if get_u64(&buf, 0) == SUPER_MAGIC && get_u32(&buf, 8) != INTENT_VERSION {
            other_version = Some(get_u32(&buf, 8));
        }
        if let Some((superblock, sequence)) = Superblock::decode(&buf) {
            if best.as_ref().is_none_or(|b| sequence > b.1) {
                best = Some((superblock, sequence, slot));
            }
        }
    }
    assert!(others.is_empty(), "nothing else in flight at start-up");
    match (best, other_version) {
        (None, Some(found)) => Err(IntentError::OtherVersion {
            found,
            supported: INTENT_VERSION,
        }),
        (best, _) => Ok(best),
    }
}

/// Why the volumes given are not those the superblock was formatted for, if they are not.
fn other_volumes(superblock: &Superblock, volumes: &[VolumeInfo]) -> Option<String> {
    if superblock.extent_bytes != EXTENT_BYTES {
        return Some(format!(
            "it tracks extents of {} bytes, this ordo uses {EXTENT_BYTES}",
            superblock.extent_bytes
        ));
    }
    if superblock.volumes_digest != volumes_digest(volumes) {
        return Some(format!(
            "the {} volumes given (names, sizes, block sizes or their order) are not the {} it was formatted for",
            volumes.len(),
            superblock.extent_counts.len()
        ));
    }
    let counts = volumes.iter().map(|v| volume_extents(v.size_bytes));
    if !counts.eq(superblock.extent_counts.iter().copied()) {
        return Some("its extent counts do not match the volumes' sizes".into());
    }
    None
}

/// Where a transaction is. Stages run in this order; those a transaction does not need
/// are skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// First transaction after `open`: flushes what the previous process may have left in
    /// a volatile cache (the superblock copy it read, the bits it read as set) before
    /// anything relies on it or overwrites the other copy.
    SyncPrevious,
    WriteSuperblock,
    FlushSuperblock,
    WriteBlocks,
    FlushBlocks,
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Txn {
    number: u64,
    stage: Stage,
    /// The stage's single request (write or flush) was submitted.
    submitted: bool,
    /// Requests submitted and not completed.
    pending: u32,
    /// Next block to consider in `WriteBlocks`.
    next_block: usize,
    has_blocks: bool,
    /// Copy slot and sequence of the superblock it carries.
    superblock: Option<(usize, u64)>,
}

/// The write-intent record on its own storage (see the module docs). Start-up calls
/// (`format`, `open`) block; everything else is the hot path and never does.
pub struct WriteIntent<S: Storage> {
    storage: S,
    superblock: Superblock,
    /// First global bit of each volume.
    volume_base: Vec<u64>,
    total_extents: u64,
    /// 4088 bytes of bits per bitmap block, bit `g % 8` of byte `g / 8` for global bit `g`.
    bits: Vec<u8>,
    set_count: u64,
    /// Per block: changed since it was last put in a transaction.
    dirty: Vec<bool>,
    dirty_count: usize,
    /// Per block: part of the transaction in flight.
    in_txn: Vec<bool>,
    /// The blocks of the transaction in flight, encoded when it started (its snapshot).
    write_bufs: Vec<u8>,
    superblock_buf: Vec<u8>,
    superblock_dirty: bool,
    /// Sequence and slot of the newest valid superblock copy.
    sequence: u64,
    newest_slot: usize,
    /// Everything read at open is known durable (see `Stage::SyncPrevious`).
    synced: bool,
    txn: Option<Txn>,
    durable_txn: u64,
    torn_blocks: u64,
    completions: Vec<Completion>,
    failed: Option<StorageError>,
}

impl<S: Storage> WriteIntent<S> {
    /// Formats `storage` for `volumes` as a new history `generation` with a clear bitmap
    /// and waits until it is durable. Start-up only.
    pub fn format(
        mut storage: S,
        volumes: &[VolumeInfo],
        generation: GenerationId,
        genesis_zero: bool,
    ) -> Result<WriteIntent<S>, IntentError> {
        assert_eq!(storage.in_flight(), 0, "storage is handed over drained");
        check_device(&storage.geometry(), volumes)?;
        let (size, needed) = (storage.geometry().size_bytes, required_bytes(volumes));
        if size < needed {
            return Err(IntentError::TooSmall { size, needed });
        }
        // Sequences above any copy already there, so no stale one can win later.
        let previous = match newest_superblock(&mut storage) {
            Ok(found) => found.map_or(0, |(_, sequence, _)| sequence),
            Err(IntentError::OtherVersion { .. }) => 0,
            Err(error) => return Err(error),
        };
        let superblock = Superblock {
            generation,
            ancestors: Vec::with_capacity(MAX_ANCESTORS),
            genesis_zero,
            bits_complete: true,
            shutdown: Shutdown::Running,
            peer_journal_id: 0,
            volumes_digest: volumes_digest(volumes),
            extent_bytes: EXTENT_BYTES,
            extent_counts: volumes
                .iter()
                .map(|v| volume_extents(v.size_bytes))
                .collect(),
        };
        let newest = previous + 2;
        let mut intent = WriteIntent::assemble(storage, superblock, newest, (newest % 2) as usize);
        // Both copies durable first, then the clear bitmap: a crash in between leaves the
        // new superblock over old bits (more bits set: conservative), never an old
        // superblock over cleared ones.
        let mut copies = vec![0u8; 2 * BLOCK_BYTES];
        for (slot, copy) in copies.chunks_mut(BLOCK_BYTES).enumerate() {
            let older = usize::from(slot != intent.newest_slot) as u64;
            intent.superblock.encode(newest - older, copy);
        }
        let offsets = SUPERBLOCK_COPY_OFFSETS.into_iter();
        write_durably(&mut intent.storage, offsets.zip(copies.chunks(BLOCK_BYTES)))?;
        (0..intent.dirty.len()).for_each(|block| intent.encode_block(block));
        let blocks = intent.write_bufs.chunks(BLOCK_BYTES).enumerate();
        let blocks = blocks.map(|(i, data)| (block_offset(i), data));
        write_durably(&mut intent.storage, blocks)?;
        intent.synced = true;
        Ok(intent)
    }

    /// Opens a formatted area for `volumes`: the newest valid superblock, and the bitmap,
    /// where a torn block counts as all bits set. Writes nothing. Start-up only.
    pub fn open(mut storage: S, volumes: &[VolumeInfo]) -> Result<WriteIntent<S>, IntentError> {
        assert_eq!(storage.in_flight(), 0, "storage is handed over drained");
        check_device(&storage.geometry(), volumes)?;
        let found = newest_superblock(&mut storage)?.ok_or(IntentError::NotFormatted)?;
        let (superblock, sequence, slot) = found;
        if let Some(reason) = other_volumes(&superblock, volumes) {
            return Err(IntentError::OtherVolumes(reason));
        }
        let (size, needed) = (storage.geometry().size_bytes, required_bytes(volumes));
        if size < needed {
            return Err(IntentError::TooSmall { size, needed });
        }
        let mut intent = WriteIntent::assemble(storage, superblock, sequence, slot);
        let mut others = Vec::new();
        for block in 0..intent.dirty.len() {
            let buf = &mut intent.write_bufs[buf_range(block)];
            let at = block_offset(block);
            read_blocking(&mut intent.storage, at, buf, &mut others)?;
            intent.load_block(block);
        }
        assert!(others.is_empty(), "nothing else in flight at start-up");
        intent.set_count = intent.bits.iter().map(|b| u64::from(b.count_ones())).sum();
        Ok(intent)
    }

    /// Whether `storage` holds a write-intent area (of this version or another): blank or
    /// garbage storage is not formatted, and the caller decides whether to format it.
    pub fn is_formatted(storage: &mut S) -> Result<bool, IntentError> {
        check_device(&storage.geometry(), &[])?;
        match newest_superblock(storage) {
            Ok(found) => Ok(found.is_some()),
            Err(IntentError::OtherVersion { .. }) => Ok(true),
            Err(error) => Err(error),
        }
    }

    /// Allocates everything the hot path uses.
    fn assemble(storage: S, superblock: Superblock, sequence: u64, slot: usize) -> Self {
        let mut volume_base = Vec::with_capacity(superblock.extent_counts.len());
        let mut total_extents = 0;
        for count in &superblock.extent_counts {
            volume_base.push(total_extents);
            total_extents += count;
        }
        let blocks = total_extents.div_ceil(EXTENTS_PER_BLOCK) as usize;
        WriteIntent {
            storage,
            superblock,
            volume_base,
            total_extents,
            bits: vec![0; blocks * BITS_BYTES_PER_BLOCK],
            set_count: 0,
            dirty: vec![false; blocks],
            dirty_count: 0,
            in_txn: vec![false; blocks],
            write_bufs: vec![0; blocks * BLOCK_BYTES],
            superblock_buf: vec![0; BLOCK_BYTES],
            superblock_dirty: false,
            sequence,
            newest_slot: slot,
            synced: false,
            txn: None,
            durable_txn: 0,
            torn_blocks: 0,
            completions: Vec::with_capacity(64),
            failed: None,
        }
    }

    /// Takes block `block` from its just-read write buffer into the bitmap; a torn one (or
    /// one with bits past the last extent, which no writer sets) becomes all bits set.
    fn load_block(&mut self, block: usize) {
        let buf = &self.write_bufs[buf_range(block)];
        let bits = &mut self.bits[bits_range(block)];
        let first = block as u64 * EXTENTS_PER_BLOCK;
        let valid = (self.total_extents - first).min(EXTENTS_PER_BLOCK);
        let intact = get_u32(buf, 0) == bitmap_block_crc(block, buf)
            && (valid..EXTENTS_PER_BLOCK)
                .all(|bit| buf[8 + (bit / 8) as usize] & (1 << (bit % 8)) == 0);
        if intact {
            bits.copy_from_slice(&buf[BLOCK_HEADER_BYTES..]);
            return;
        }
        bits.fill(0);
        for bit in 0..valid {
            bits[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        self.torn_blocks += 1;
        // Rewritten whole by the first transaction, so the tear does not outlive it.
        self.dirty[block] = true;
        self.dirty_count += 1;
    }

    fn encode_block(&mut self, block: usize) {
        let buf = &mut self.write_bufs[buf_range(block)];
        buf[4..BLOCK_HEADER_BYTES].fill(0);
        buf[BLOCK_HEADER_BYTES..].copy_from_slice(&self.bits[bits_range(block)]);
        put_u32(buf, 0, bitmap_block_crc(block, buf));
    }
}

impl<S: Storage + std::fmt::Debug> std::fmt::Debug for WriteIntent<S> {
    /// The state, not the bitmap (which may be megabytes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteIntent")
            .field("storage", &self.storage)
            .field("superblock", &self.superblock)
            .field("set_count", &self.set_count)
            .field("durable_txn", &self.durable_txn)
            .field("txn", &self.txn)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Txn {
    /// The stage after `after`, skipping what this transaction does not carry.
    fn next_stage(&self, after: Stage) -> Stage {
        match after {
            Stage::SyncPrevious if self.superblock.is_some() => Stage::WriteSuperblock,
            Stage::SyncPrevious | Stage::FlushSuperblock if self.has_blocks => Stage::WriteBlocks,
            Stage::SyncPrevious | Stage::FlushSuperblock => Stage::Done,
            Stage::WriteSuperblock => Stage::FlushSuperblock,
            Stage::WriteBlocks => Stage::FlushBlocks,
            Stage::FlushBlocks | Stage::Done => Stage::Done,
        }
    }
}

/// The hot path: bit changes and transactions, no allocation, no waiting.
impl<S: Storage> WriteIntent<S> {
    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub fn extent_count(&self, volume: VolumeId) -> u64 {
        self.superblock.extent_counts[usize::from(volume.0)]
    }

    pub fn is_set(&self, volume: VolumeId, extent: u64) -> bool {
        let (byte, mask, _) = self.bit(volume, extent);
        self.bits[byte] & mask != 0
    }

    pub fn set_count(&self) -> u64 {
        self.set_count
    }

    /// The set extents, in volume then extent order.
    pub fn set_extents(&self) -> impl Iterator<Item = (VolumeId, u64)> + '_ {
        (0..self.volume_base.len() as u16).flat_map(move |v| {
            let volume = VolumeId(v);
            (0..self.extent_count(volume))
                .filter(move |&extent| self.is_set(volume, extent))
                .map(move |extent| (volume, extent))
        })
    }

    /// Bitmap blocks found torn at open (read as all bits set).
    pub fn torn_blocks(&self) -> u64 {
        self.torn_blocks
    }

    /// Every transaction up to this number is durable.
    pub fn durable_txn(&self) -> u64 {
        self.durable_txn
    }

    /// The storage error that stopped transactions, if any: nothing becomes durable after it.
    pub fn failed(&self) -> Option<&StorageError> {
        self.failed.as_ref()
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Hands the storage back; requests may still be in flight (the caller drains).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// The transaction that will carry a change made now.
    fn next_txn(&self) -> u64 {
        self.durable_txn + 1 + u64::from(self.txn.is_some())
    }

    /// Byte, mask and block of a bit. Out of range is the caller's bug.
    fn bit(&self, volume: VolumeId, extent: u64) -> (usize, u8, usize) {
        let index = usize::from(volume.0);
        assert!(index < self.volume_base.len(), "no volume {volume:?}");
        let count = self.superblock.extent_counts[index];
        assert!(
            extent < count,
            "extent {extent} of {volume:?} past its {count}"
        );
        let global = self.volume_base[index] + extent;
        assert!(global < self.total_extents);
        let block = (global / EXTENTS_PER_BLOCK) as usize;
        ((global / 8) as usize, 1 << (global % 8), block)
    }

    fn mark_dirty(&mut self, block: usize) {
        if !self.dirty[block] {
            self.dirty[block] = true;
            self.dirty_count += 1;
        }
        assert!(self.dirty_count <= self.dirty.len());
    }

    /// Sets an extent's bit: `Some(txn)` if the caller's write must wait until
    /// `durable_txn() >= txn`, `None` if the bit is already durably set. After a failure
    /// the transaction never comes (see `failed`).
    pub fn set(&mut self, volume: VolumeId, extent: u64) -> Option<u64> {
        let (byte, mask, block) = self.bit(volume, extent);
        if self.bits[byte] & mask == 0 {
            self.bits[byte] |= mask;
            self.set_count += 1;
            self.mark_dirty(block);
            return Some(self.next_txn());
        }
        if self.dirty[block] {
            return Some(self.next_txn());
        }
        match self.txn {
            // The first transaction after open makes what open read durable.
            Some(txn) if self.in_txn[block] || !self.synced => Some(txn.number),
            None if !self.synced => Some(self.next_txn()),
            _ => None,
        }
    }

    /// Clears an extent's bit (its extent is known equal on the secondary); nothing
    /// waits for it. The next superblock written says `bits_complete = false`.
    pub fn clear(&mut self, volume: VolumeId, extent: u64) {
        let (byte, mask, block) = self.bit(volume, extent);
        if self.bits[byte] & mask == 0 {
            return;
        }
        self.bits[byte] &= !mask;
        self.set_count -= 1;
        self.mark_dirty(block);
        if self.superblock.bits_complete {
            self.superblock.bits_complete = false;
            self.superblock_dirty = true;
        }
    }

    /// Changes the superblock (not its volume layout); returns the transaction that makes
    /// the change durable.
    pub fn set_superblock(&mut self, change: impl FnOnce(&mut Superblock)) -> u64 {
        let digest = self.superblock.volumes_digest;
        change(&mut self.superblock);
        let sb = &self.superblock;
        let layout = (sb.extent_counts.len(), sb.extent_counts.iter().sum::<u64>());
        assert!(sb.volumes_digest == digest && sb.extent_bytes == EXTENT_BYTES);
        assert_eq!(
            layout,
            (self.volume_base.len(), self.total_extents),
            "layout is fixed"
        );
        assert!(sb.ancestors.len() <= MAX_ANCESTORS);
        self.superblock_dirty = true;
        self.next_txn()
    }

    /// Handles storage completions and moves the transaction on (starting the next one
    /// when none is in flight and something changed). Returns completions handled plus
    /// requests submitted; 0 once failed.
    pub fn poll(&mut self) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        let mut batch = std::mem::take(&mut self.completions);
        let max = batch.capacity();
        self.storage.poll(&mut batch, max);
        let handled = batch.len();
        batch
            .drain(..)
            .for_each(|completion| self.complete(completion));
        self.completions = batch;
        handled + self.advance()
    }

    fn complete(&mut self, completion: Completion) {
        let txn = self
            .txn
            .as_mut()
            .expect("completions only for a transaction");
        let expected = match completion.tag {
            FLUSH_TAG => matches!(
                txn.stage,
                Stage::SyncPrevious | Stage::FlushSuperblock | Stage::FlushBlocks
            ),
            SUPER_TAG => txn.stage == Stage::WriteSuperblock,
            block => {
                txn.stage == Stage::WriteBlocks && self.in_txn.get(block as usize) == Some(&true)
            }
        };
        assert!(
            expected && txn.pending > 0,
            "unexpected {completion:?} in {txn:?}"
        );
        txn.pending -= 1;
        if let Err(error) = completion.result {
            self.failed.get_or_insert(error);
        }
    }

    fn advance(&mut self) -> usize {
        let mut submitted = 0;
        while self.failed.is_none() {
            let Some(mut txn) = self.txn else {
                if self.synced && !self.superblock_dirty && self.dirty_count == 0 {
                    break;
                }
                self.txn = Some(self.start_txn());
                continue;
            };
            let moved = self.step(&mut txn, &mut submitted);
            self.txn = Some(txn);
            if txn.stage == Stage::Done {
                self.finish_txn(txn);
            } else if !moved {
                break;
            }
        }
        submitted
    }

    /// Takes a snapshot of what changed (superblock, dirty blocks) as the next transaction.
    fn start_txn(&mut self) -> Txn {
        let mut txn = Txn {
            number: self.durable_txn + 1,
            stage: Stage::SyncPrevious,
            submitted: false,
            pending: 0,
            next_block: 0,
            has_blocks: self.dirty_count > 0,
            superblock: None,
        };
        if self.superblock_dirty {
            // Into the copy not holding the newest valid one, which a tear leaves intact.
            let (slot, sequence) = (1 - self.newest_slot, self.sequence + 1);
            self.superblock.encode(sequence, &mut self.superblock_buf);
            txn.superblock = Some((slot, sequence));
            self.superblock_dirty = false;
        }
        for block in 0..self.dirty.len() {
            if self.dirty[block] {
                self.dirty[block] = false;
                self.in_txn[block] = true;
                self.encode_block(block);
            }
        }
        self.dirty_count = 0;
        if self.synced {
            txn.stage = txn.next_stage(Stage::SyncPrevious);
        }
        txn
    }

    /// Submits what the stage needs and moves to the next stage once all its requests
    /// completed; false when it must wait (requests pending, or a full queue).
    fn step(&mut self, txn: &mut Txn, submitted: &mut usize) -> bool {
        if txn.stage == Stage::WriteBlocks {
            while txn.next_block < self.in_txn.len() {
                let block = txn.next_block;
                if self.in_txn[block] {
                    let data = &self.write_bufs[buf_range(block)];
                    let at = block_offset(block);
                    let result = self.storage.submit_write(block as u64, at, data);
                    if !self.accepted(result, txn, submitted) {
                        return false;
                    }
                }
                txn.next_block += 1;
            }
        } else if !txn.submitted {
            let result = match (txn.stage, txn.superblock) {
                (Stage::WriteSuperblock, Some((slot, _))) => {
                    let at = SUPERBLOCK_COPY_OFFSETS[slot];
                    self.storage
                        .submit_write(SUPER_TAG, at, &self.superblock_buf)
                }
                _ => self.storage.submit_flush(FLUSH_TAG),
            };
            if !self.accepted(result, txn, submitted) {
                return false;
            }
            txn.submitted = true;
        }
        if txn.pending > 0 {
            return false;
        }
        if txn.stage == Stage::SyncPrevious {
            self.synced = true;
        }
        (txn.stage, txn.submitted) = (txn.next_stage(txn.stage), false);
        true
    }

    /// Counts a submitted request; false if it must be retried (full queue) or failed.
    fn accepted(&mut self, result: Result<(), StorageError>, txn: &mut Txn, n: &mut usize) -> bool {
        match result {
            Ok(()) => {
                txn.pending += 1;
                *n += 1;
                true
            }
            Err(StorageError::QueueFull(_)) => false,
            Err(error) => {
                self.failed = Some(error);
                false
            }
        }
    }

    fn finish_txn(&mut self, txn: Txn) {
        assert_eq!(
            txn.number,
            self.durable_txn + 1,
            "transactions complete in order"
        );
        assert_eq!(txn.pending, 0);
        if let Some((slot, sequence)) = txn.superblock {
            (self.newest_slot, self.sequence) = (slot, sequence);
        }
        self.in_txn.fill(false);
        self.durable_txn = txn.number;
        self.txn = None;
    }
}

#[cfg(test)]
#[path = "intent_tests.rs"]
mod tests;

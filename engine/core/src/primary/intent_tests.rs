//! Tests of the write-intent record: format and open, durability of bits and superblocks,
//! torn blocks and copies, crashes at any point (SimDisk), and a model-based property test.
use std::collections::HashSet;

use proptest::prelude::*;

use super::*;
use crate::sim::SimDisk;
use crate::storage::{drain, MemStorage};

const GENERATION: GenerationId = GenerationId(0xabc);

fn volume(name: &str, size_bytes: u64) -> VolumeInfo {
    VolumeInfo {
        name: name.into(),
        size_bytes,
        block_size: 4096,
    }
}

/// 40000 + 4 + 30000 extents: three bitmap blocks, volume `b` inside block 1, volume `c`
/// across blocks 1 and 2.
fn volumes() -> Vec<VolumeInfo> {
    vec![
        volume("a", 40_000 << 20),
        volume("b", (3 << 20) + 4096),
        volume("c", 30_000 << 20),
    ]
}

const A: VolumeId = VolumeId(0);
const B: VolumeId = VolumeId(1);
const C: VolumeId = VolumeId(2);

fn mem_storage(size: u64) -> MemStorage {
    MemStorage::new(Geometry::new(size, 4096).unwrap()).unwrap()
}

fn formatted() -> WriteIntent<MemStorage> {
    let storage = mem_storage(required_bytes(&volumes()));
    WriteIntent::format(storage, &volumes(), GENERATION, true).unwrap()
}

fn sim_disk(seed: u64) -> SimDisk {
    let geometry = Geometry::new(required_bytes(&volumes()), 512).unwrap();
    SimDisk::new(geometry, 50, seed)
}

/// Polls until transaction `txn` is durable.
fn settle<S: Storage>(intent: &mut WriteIntent<S>, txn: u64) {
    for _ in 0..100_000 {
        if intent.durable_txn() >= txn {
            return;
        }
        assert!(intent.failed().is_none(), "{:?}", intent.failed());
        intent.poll();
    }
    panic!("transaction {txn} never became durable");
}

fn set_durably<S: Storage>(intent: &mut WriteIntent<S>, volume: VolumeId, extent: u64) {
    let txn = intent.set(volume, extent).expect("a clear bit");
    settle(intent, txn);
}

/// Polls until nothing is left to write.
fn settle_all<S: Storage>(intent: &mut WriteIntent<S>) {
    for _ in 0..100_000 {
        let idle = intent.txn.is_none() && intent.dirty_count == 0 && !intent.superblock_dirty;
        if idle && intent.synced {
            return;
        }
        assert!(intent.failed().is_none(), "{:?}", intent.failed());
        intent.poll();
    }
    panic!("the write-intent record never settled");
}

fn reopen(intent: WriteIntent<MemStorage>) -> WriteIntent<MemStorage> {
    let mut storage = intent.into_storage();
    drain(&mut storage);
    WriteIntent::open(storage, &volumes()).unwrap()
}

/// Writes `data` at `at` and waits for it, as a crash or another program would leave it.
fn overwrite<S: Storage>(storage: &mut S, at: u64, data: &[u8]) {
    let mut others = Vec::new();
    storage.submit_write(77, at, data).unwrap();
    crate::storage::wait_for(storage, 77, &mut others).unwrap();
}

fn bitmap_block_at(block: u64) -> u64 {
    BITMAP_START + block * BLOCK_BYTES as u64
}

#[test]
fn format_then_open_gives_the_same_superblock_and_a_clear_bitmap() {
    let intent = formatted();
    let expected = Superblock {
        generation: GENERATION,
        ancestors: vec![],
        genesis_zero: true,
        bits_complete: true,
        shutdown: Shutdown::Running,
        peer_journal_id: 0,
        volumes_digest: volumes_digest(&volumes()),
        extent_bytes: EXTENT_BYTES,
        extent_counts: vec![40_000, 4, 30_000],
    };
    assert_eq!(intent.superblock(), &expected);
    let before = intent.storage().contents().to_vec();
    let reopened = reopen(intent);
    assert_eq!(reopened.storage().contents(), before, "open writes nothing");
    assert_eq!(reopened.superblock(), &expected);
    assert_eq!((reopened.set_count(), reopened.torn_blocks()), (0, 0));
    assert_eq!(reopened.set_extents().count(), 0);
    assert_eq!(reopened.extent_count(B), 4);
}

#[test]
fn open_refuses_blank_storage_other_volumes_and_another_version() {
    let mut blank = mem_storage(required_bytes(&volumes()));
    assert!(!WriteIntent::is_formatted(&mut blank).unwrap());
    overwrite(&mut blank, 0, &[0x5a; 8192]);
    assert!(!WriteIntent::is_formatted(&mut blank).unwrap(), "garbage");
    let error = WriteIntent::open(blank, &volumes()).unwrap_err();
    assert_eq!(error, IntentError::NotFormatted);

    let mut renamed = volumes();
    renamed[1].name = "B".into();
    let mut resized = volumes();
    resized[2].size_bytes += 4096;
    let mut reordered = volumes();
    reordered.swap(0, 2);
    let fewer = volumes()[..2].to_vec();
    for others in [renamed, resized, reordered, fewer] {
        let mut storage = formatted().into_storage();
        assert!(WriteIntent::is_formatted(&mut storage).unwrap());
        let error = WriteIntent::open(storage, &others).unwrap_err();
        assert!(matches!(error, IntentError::OtherVolumes(_)), "{error}");
        assert!(error.to_string().contains("not the 3 it was formatted for"));
    }

    // Both copies resealed as version 2: readable as such, never as this version.
    let mut storage = formatted().into_storage();
    for at in SUPERBLOCK_COPY_OFFSETS {
        let mut copy = storage.contents()[at as usize..at as usize + BLOCK_BYTES].to_vec();
        put_u32(&mut copy, 8, 2);
        let crc = superblock_crc(&copy);
        put_u32(&mut copy, 12, crc);
        overwrite(&mut storage, at, &copy);
    }
    assert!(WriteIntent::is_formatted(&mut storage).unwrap());
    let error = WriteIntent::open(storage, &volumes()).unwrap_err();
    let other = IntentError::OtherVersion {
        found: 2,
        supported: 1,
    };
    assert_eq!(error, other);
}

#[test]
fn format_refuses_unsuitable_storage() {
    let needed = required_bytes(&volumes());
    let small = mem_storage(needed - 4096);
    let error = WriteIntent::format(small, &volumes(), GENERATION, true).unwrap_err();
    let size = needed - 4096;
    assert_eq!(error, IntentError::TooSmall { size, needed });

    let narrow = Geometry {
        max_io_bytes: 2048,
        ..Geometry::new(needed, 512).unwrap()
    };
    let narrow = MemStorage::new(narrow).unwrap();
    let error = WriteIntent::format(narrow, &volumes(), GENERATION, true).unwrap_err();
    assert_eq!(error, IntentError::RequestsTooSmall { max_io: 2048 });

    // SimDisk takes any geometry; 8192-byte blocks do not divide a 4096-byte block.
    let wide = Geometry {
        block_size: 8192,
        ..Geometry::new(needed + 4096, 4096).unwrap()
    };
    let wide = SimDisk::new(wide, 100, 1);
    let error = WriteIntent::format(wide, &volumes(), GENERATION, true).unwrap_err();
    assert_eq!(error, IntentError::BlockSize { block_size: 8192 });

    let many: Vec<_> = (0..65).map(|i| volume(&i.to_string(), 1 << 20)).collect();
    let storage = mem_storage(required_bytes(&many));
    let error = WriteIntent::format(storage, &many, GENERATION, true).unwrap_err();
    assert_eq!(error, IntentError::TooManyVolumes { count: 65, max: 64 });
}

#[test]
fn a_durable_set_and_a_durable_clear_survive_a_reopen() {
    let mut intent = formatted();
    let txn = intent.set(C, 29_999).expect("a clear bit must be written");
    assert_eq!(txn, 1);
    assert!(intent.is_set(C, 29_999) && intent.set_count() == 1);
    settle(&mut intent, txn);
    assert_eq!(
        intent.set(C, 29_999),
        None,
        "durably set: nothing to wait for"
    );

    let mut reopened = reopen(intent);
    assert!(reopened.is_set(C, 29_999));
    assert_eq!(reopened.set_extents().collect::<Vec<_>>(), [(C, 29_999)]);
    assert!(reopened.superblock().bits_complete);

    reopened.clear(C, 29_999);
    assert!(!reopened.superblock().bits_complete);
    settle_all(&mut reopened);
    let reopened = reopen(reopened);
    assert!(!reopened.is_set(C, 29_999) && reopened.set_count() == 0);
    assert!(!reopened.superblock().bits_complete, "a bit was cleared");
}

#[test]
fn a_set_while_its_block_is_in_flight_waits_for_the_next_transaction() {
    let mut intent = formatted();
    assert_eq!(intent.set(A, 0), Some(1));
    assert_eq!(intent.set(B, 0), Some(1));
    intent.poll(); // Transaction 1 submits blocks 0 and 1.
    assert!(intent.txn.is_some() && intent.durable_txn() == 0);
    assert_eq!(intent.set(B, 0), Some(1), "in flight, not changed since");
    assert_eq!(
        intent.set(A, 1),
        Some(2),
        "block 0 is in flight: the next one"
    );
    assert_eq!(intent.set(A, 0), Some(2), "its block is dirty again");
    settle(&mut intent, 1);
    assert_eq!(intent.set(B, 0), None);
    assert!(intent.txn.is_some(), "transaction 2 started at once");
    settle(&mut intent, 2);
    let reopened = reopen(intent);
    let set: Vec<_> = reopened.set_extents().collect();
    assert_eq!(set, [(A, 0), (A, 1), (B, 0)]);
}

#[test]
fn after_open_a_set_bit_waits_for_the_first_flush() {
    let mut intent = formatted();
    set_durably(&mut intent, B, 3);
    let mut reopened = reopen(intent);
    // What open read may sit in a volatile cache the previous process never flushed.
    assert_eq!(reopened.set(B, 3), Some(1));
    reopened.poll();
    assert_eq!(reopened.set(B, 3), Some(1), "the flush is in flight");
    settle(&mut reopened, 1);
    assert_eq!(reopened.set(B, 3), None);
}

#[test]
fn a_torn_bitmap_block_reads_as_all_set_until_rewritten() {
    let mut intent = formatted();
    set_durably(&mut intent, A, 5);
    let mut storage = intent.into_storage();
    overwrite(&mut storage, bitmap_block_at(1), &[0xc3; 4096]);
    // Block 0's bytes at block 2's place: its crc names index 0.
    let block0 = storage.contents()[bitmap_block_at(0) as usize..][..4096].to_vec();
    overwrite(&mut storage, bitmap_block_at(2), &block0);
    let mut intent = WriteIntent::open(storage, &volumes()).unwrap();
    assert_eq!(intent.torn_blocks(), 2);
    // Block 1 holds extents 32704.. of a, all of b and c's first 25404.
    let in_block_1 = (40_000 - 32_704) + 4 + 25_404;
    let in_block_2 = 30_000 - 25_404;
    assert_eq!(intent.set_count(), 1 + in_block_1 + in_block_2);
    assert!(intent.is_set(A, 5) && !intent.is_set(A, 6) && intent.is_set(A, 32_704));
    assert!(intent.is_set(B, 0) && intent.is_set(C, 29_999));
    // The first transaction rewrites the torn blocks whole; they read set, not torn.
    settle_all(&mut intent);
    let reopened = reopen(intent);
    assert_eq!(reopened.torn_blocks(), 0);
    assert_eq!(reopened.set_count(), 1 + in_block_1 + in_block_2);
}

#[test]
fn superblocks_alternate_and_a_torn_newest_copy_falls_back_to_the_older() {
    let mut intent = formatted();
    let mut slots = vec![intent.newest_slot];
    for peer in [7, 8] {
        let txn = intent.set_superblock(|sb| sb.peer_journal_id = peer);
        settle(&mut intent, txn);
        slots.push(intent.newest_slot);
    }
    assert_eq!(
        slots,
        [0, 1, 0],
        "format leaves the newest (sequence 2) in slot 0"
    );
    let newest = SUPERBLOCK_COPY_OFFSETS[intent.newest_slot];
    let older = SUPERBLOCK_COPY_OFFSETS[1 - intent.newest_slot];
    let mut storage = intent.into_storage();
    let contents = storage.contents().to_vec();
    overwrite(
        &mut storage,
        newest,
        &contents[newest as usize + 100..][..4096],
    );
    let fallback = WriteIntent::open(storage, &volumes()).unwrap();
    assert_eq!(fallback.superblock().peer_journal_id, 7);

    let mut storage = fallback.into_storage();
    overwrite(&mut storage, older, &[0; 4096]);
    let error = WriteIntent::open(storage, &volumes()).unwrap_err();
    assert_eq!(error, IntentError::NotFormatted);
}

#[test]
fn history_shutdown_and_ancestors_round_trip_and_ancestors_are_bounded() {
    let mut intent = formatted();
    let clean = Shutdown::Clean {
        last_data_set: DataSetId(41),
        last_seq: Seq(4242),
        stream_end: 1 << 40,
    };
    let txn = intent.set_superblock(|sb| {
        for ancestor in 1..=MAX_ANCESTORS as u64 + 1 {
            sb.push_ancestor(sb.generation);
            sb.generation = GenerationId(ancestor);
        }
        sb.shutdown = clean;
        sb.genesis_zero = false;
    });
    let expected: Vec<_> = (1..=16).rev().map(GenerationId).collect();
    assert_eq!(intent.superblock().ancestors, expected, "0xabc was dropped");
    assert_eq!(intent.superblock().ancestors.capacity(), MAX_ANCESTORS);
    settle(&mut intent, txn);
    let reopened = reopen(intent);
    let sb = reopened.superblock();
    assert_eq!(
        (sb.generation, &sb.ancestors),
        (GenerationId(17), &expected)
    );
    assert_eq!((sb.shutdown, sb.genesis_zero), (clean, false));
}

#[test]
fn extents_fill_several_bitmap_blocks_in_volume_order() {
    assert_eq!(volume_extents(32_704 << 20), 32_704);
    assert_eq!(required_bytes(&[volume("x", 32_704 << 20)]), 8192 + 4096);
    assert_eq!(volume_extents((32_704 << 20) + 512), 32_705);
    assert_eq!(
        required_bytes(&[volume("x", (32_704 << 20) + 512)]),
        8192 + 8192
    );
    assert_eq!(required_bytes(&[]), 8192);

    let many: Vec<_> = (0..9)
        .map(|i| volume(&format!("v{i}"), 9_000 << 20))
        .collect();
    assert_eq!(required_bytes(&many), 8192 + 3 * 4096);
    let storage = mem_storage(required_bytes(&many));
    let mut intent = WriteIntent::format(storage, &many, GENERATION, false).unwrap();
    let mut expected = vec![];
    for v in 0..9 {
        for extent in [0, 4_321, 8_999] {
            expected.push((VolumeId(v), extent));
        }
    }
    for &(volume, extent) in expected.iter().rev() {
        intent.set(volume, extent);
    }
    settle_all(&mut intent);
    let mut storage = intent.into_storage();
    drain(&mut storage);
    let reopened = WriteIntent::open(storage, &many).unwrap();
    assert_eq!(reopened.set_extents().collect::<Vec<_>>(), expected);
}

#[test]
fn a_full_queue_is_retried_on_the_next_poll() {
    let geometry = Geometry {
        max_in_flight: 1,
        ..Geometry::new(required_bytes(&volumes()), 4096).unwrap()
    };
    let storage = MemStorage::new(geometry).unwrap();
    let mut intent = WriteIntent::format(storage, &volumes(), GENERATION, true).unwrap();
    intent.set(A, 0);
    intent.set(B, 0);
    intent.set(C, 29_999);
    let txn = intent.set_superblock(|sb| sb.peer_journal_id = 3);
    settle(&mut intent, txn);
    let reopened = reopen(intent);
    assert_eq!(reopened.set_count(), 3);
    assert_eq!(reopened.superblock().peer_journal_id, 3);
}

#[test]
fn a_storage_error_stops_transactions() {
    let mut disk = sim_disk(3);
    let rate = std::rc::Rc::new(std::cell::Cell::new(0));
    disk.fail_at(&rate);
    let mut intent = WriteIntent::format(disk, &volumes(), GENERATION, true).unwrap();
    rate.set(10_000);
    let txn = intent.set(A, 0).unwrap();
    while intent.failed().is_none() {
        intent.poll();
    }
    assert!(intent.failed().unwrap().to_string().contains("injected"));
    assert_eq!(intent.poll(), 0);
    assert!(intent.durable_txn() < txn);
}

#[test]
fn a_crash_keeps_every_durable_set_and_either_state_of_a_pending_one() {
    for seed in 0..64 {
        let disk = sim_disk(seed);
        let mut intent = WriteIntent::format(disk, &volumes(), GENERATION, true).unwrap();
        set_durably(&mut intent, A, 1);
        let pending = intent.set(C, 0).unwrap();
        intent.set_superblock(|sb| sb.peer_journal_id = 9);
        for _ in 0..seed % 7 {
            intent.poll();
        }
        let durable = intent.durable_txn() >= pending;
        let mut disk = intent.into_storage();
        disk.crash();
        let reopened = WriteIntent::open(disk, &volumes()).unwrap();
        assert!(reopened.is_set(A, 1), "seed {seed}");
        assert!(!durable || reopened.is_set(C, 0), "seed {seed}");
        assert!(!durable || reopened.superblock().peer_journal_id == 9);
        let torn_set = reopened.torn_blocks() > 0 && reopened.is_set(A, 2);
        assert!(!reopened.is_set(A, 2) || torn_set, "seed {seed}: never set");
    }
}

#[test]
fn a_cleared_bit_never_lands_under_a_superblock_that_says_bits_complete() {
    for seed in 0..64 {
        let disk = sim_disk(seed);
        let mut intent = WriteIntent::format(disk, &volumes(), GENERATION, true).unwrap();
        set_durably(&mut intent, B, 2);
        intent.clear(B, 2);
        for _ in 0..seed % 9 {
            intent.poll();
        }
        let mut disk = intent.into_storage();
        disk.crash();
        let reopened = WriteIntent::open(disk, &volumes()).unwrap();
        if !reopened.is_set(B, 2) {
            assert!(!reopened.superblock().bits_complete, "seed {seed}");
        }
    }
}

/// Only the first sector of a superblock copy changes from one sequence to the next, so a
/// SimDisk crash never tears one into garbage: tear it by hand, where the write went.
#[test]
fn a_torn_superblock_write_leaves_the_previous_superblock() {
    let mut intent = formatted();
    for peer in 1..=3 {
        let txn = intent.set_superblock(|sb| sb.peer_journal_id = peer);
        settle(&mut intent, txn);
    }
    let before = intent.storage().contents()[..8192].to_vec();
    intent.set_superblock(|sb| sb.peer_journal_id = 4);
    // Stop once the copy is written, before its flush completes.
    while intent
        .txn
        .is_none_or(|txn| txn.stage < Stage::FlushSuperblock)
    {
        assert!(
            intent.durable_txn() < 4,
            "stopped before transaction 4 ends"
        );
        intent.poll();
    }
    let after = intent.storage().contents()[..8192].to_vec();
    let changed = |slot: usize| before[slot * 4096..][..4096] != after[slot * 4096..][..4096];
    let written: Vec<usize> = (0..2).filter(|&slot| changed(slot)).collect();
    assert_eq!(written.len(), 1, "one copy per transaction");
    let mut torn = after[written[0] * 4096..][..4096].to_vec();
    torn[512..].fill(0xee);
    let mut storage = intent.into_storage();
    drain(&mut storage);
    overwrite(&mut storage, written[0] as u64 * 4096, &torn);
    let reopened = WriteIntent::open(storage, &volumes()).unwrap();
    assert_eq!(reopened.superblock().peer_journal_id, 3);
}

/// A previous process wrote a newer superblock copy and died before flushing it (the OS
/// still holds it). The next life reads it as the newest, so it must make it durable
/// before it overwrites the other copy, or a power cut then leaves no valid copy.
#[test]
fn the_first_superblock_after_open_waits_for_what_open_read_to_be_durable() {
    for seed in 0..64 {
        let geometry = Geometry::new(required_bytes(&volumes()), 512).unwrap();
        let disk = SimDisk::new(geometry, 100, seed);
        let intent = WriteIntent::format(disk, &volumes(), GENERATION, true).unwrap();
        let mut unflushed = intent.superblock().clone();
        unflushed.peer_journal_id = 2;
        let mut copy = vec![0; BLOCK_BYTES];
        unflushed.encode(intent.sequence + 1, &mut copy);
        let slot = 1 - intent.newest_slot;
        let mut disk = intent.into_storage();
        overwrite(&mut disk, SUPERBLOCK_COPY_OFFSETS[slot], &copy);
        let mut intent = WriteIntent::open(disk, &volumes()).unwrap();
        assert_eq!(intent.superblock().peer_journal_id, 2);
        intent.set_superblock(|sb| sb.peer_journal_id = 3);
        intent.poll(); // Submits the flush of what open read.
        intent.poll(); // It completes; the new superblock goes to the other copy.
        let mut disk = intent.into_storage();
        disk.crash();
        let reopened = WriteIntent::open(disk, &volumes()).expect("a valid copy survives");
        assert!([2, 3].contains(&reopened.superblock().peer_journal_id));
    }
}

/// The extents the property test touches, per volume (taken modulo its extent count):
/// both sides of every block boundary.
const EXTENT_POOL: [u64; 8] = [0, 1, 3, 25_403, 25_404, 32_703, 32_704, 39_999];

type Bit = (VolumeId, u64);

#[derive(Clone, Debug)]
enum Op {
    Set(u16, usize),
    Clear(u16, usize),
    Peer(u64),
    Poll(u8),
    Crash,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u16, 0..EXTENT_POOL.len()).prop_map(|(v, e)| Op::Set(v, e)),
        2 => (0..3u16, 0..EXTENT_POOL.len()).prop_map(|(v, e)| Op::Clear(v, e)),
        2 => (1..1000u64).prop_map(Op::Peer),
        4 => (1..8u8).prop_map(Op::Poll),
        1 => Just(Op::Crash),
    ]
}

/// What must be true on the disk after a crash, whatever the crash kept.
#[derive(Debug, Default)]
struct Model {
    must_set: HashSet<Bit>,
    must_clear: HashSet<Bit>,
    /// Changes made and not yet durable, with the transaction that carries them.
    pending_sets: Vec<(Bit, u64)>,
    pending_clears: Vec<(Bit, u64)>,
    peer: u64,
    pending_peers: Vec<(u64, u64)>,
}

impl Model {
    fn promote(&mut self, durable: u64) {
        for &(bit, _) in self.pending_sets.iter().filter(|(_, t)| *t <= durable) {
            self.must_set.insert(bit);
        }
        for &(bit, _) in self.pending_clears.iter().filter(|(_, t)| *t <= durable) {
            self.must_clear.insert(bit);
        }
        self.pending_sets.retain(|&(_, t)| t > durable);
        self.pending_clears.retain(|&(_, t)| t > durable);
        for &(peer, _) in self.pending_peers.iter().filter(|(_, t)| *t <= durable) {
            self.peer = peer;
        }
        self.pending_peers.retain(|&(_, t)| t > durable);
    }

    /// Checks a reopened intent against the model, then makes what it holds the model.
    fn check_reopened(&mut self, intent: &WriteIntent<SimDisk>, universe: &[Bit]) {
        // Blocks that read all set after a tear, now or at an earlier open (rewritten
        // whole since).
        let block_of = |(volume, extent): Bit| {
            let global = intent.volume_base[usize::from(volume.0)] + extent;
            (global / EXTENTS_PER_BLOCK) as usize
        };
        let full: Vec<bool> = (0..intent.dirty.len())
            .map(|block| {
                let first = block as u64 * EXTENTS_PER_BLOCK;
                let end = (first + EXTENTS_PER_BLOCK).min(intent.total_extents);
                (first..end).all(|g| intent.bits[(g / 8) as usize] & (1 << (g % 8)) != 0)
            })
            .collect();
        let torn = |bit: Bit| intent.torn_blocks() > 0 && full[block_of(bit)];
        for &bit in &self.must_set {
            assert!(intent.is_set(bit.0, bit.1), "durably set {bit:?} lost");
        }
        for &bit in &self.must_clear {
            assert!(
                !intent.is_set(bit.0, bit.1) || torn(bit),
                "durably cleared {bit:?} set"
            );
        }
        for bit in intent.set_extents() {
            let maybe = self.must_set.contains(&bit)
                || self.pending_sets.iter().any(|(b, _)| *b == bit)
                || self.pending_clears.iter().any(|(b, _)| *b == bit);
            assert!(maybe || torn(bit), "{bit:?} set but never set");
        }
        let peer = intent.superblock().peer_journal_id;
        assert!(peer == self.peer || self.pending_peers.iter().any(|(p, _)| *p == peer));
        // After a crash the disk is durable as read: that is the new model (a torn block
        // reads all set until rewritten, and all set after).
        *self = Model {
            peer,
            must_set: intent.set_extents().collect(),
            ..Model::default()
        };
        assert_eq!(intent.set_count(), self.must_set.len() as u64);
        let clear = universe.iter().filter(|b| !intent.is_set(b.0, b.1));
        self.must_clear.extend(clear);
    }
}

fn run_ops(ops: &[Op], seed: u64, complete_percent: u32, max_in_flight: u32) {
    let geometry = Geometry {
        max_in_flight,
        ..Geometry::new(required_bytes(&volumes()), 512).unwrap()
    };
    let disk = SimDisk::new(geometry, complete_percent, seed);
    let mut intent = WriteIntent::format(disk, &volumes(), GENERATION, true).unwrap();
    let bit = |intent: &WriteIntent<SimDisk>, v: u16, e: usize| {
        let volume = VolumeId(v);
        (volume, EXTENT_POOL[e] % intent.extent_count(volume))
    };
    let universe: Vec<Bit> = (0..3)
        .flat_map(|v| (0..EXTENT_POOL.len()).map(move |e| (v, e)))
        .map(|(v, e)| bit(&intent, v, e))
        .collect();
    let mut model = Model::default();
    for op in ops.iter().chain([&Op::Poll(0), &Op::Crash]) {
        match *op {
            Op::Set(v, e) => {
                let b = bit(&intent, v, e);
                model.must_clear.remove(&b);
                model.pending_clears.retain(|(p, _)| *p != b);
                match intent.set(b.0, b.1) {
                    None => assert!(model.must_set.contains(&b), "{b:?} is not durable"),
                    Some(txn) => model.pending_sets.push((b, txn)),
                }
            }
            Op::Clear(v, e) => {
                let b = bit(&intent, v, e);
                intent.clear(b.0, b.1);
                model.must_set.remove(&b);
                model.pending_sets.retain(|(p, _)| *p != b);
                model.pending_clears.push((b, intent.next_txn()));
            }
            Op::Peer(peer) => {
                let txn = intent.set_superblock(|sb| sb.peer_journal_id = peer);
                model.pending_peers.push((peer, txn));
            }
            Op::Poll(0) => settle_all(&mut intent),
            Op::Poll(n) => {
                for _ in 0..n {
                    intent.poll();
                }
            }
            Op::Crash => {
                let mut disk = intent.into_storage();
                disk.crash();
                intent = WriteIntent::open(disk, &volumes()).expect("a superblock survives");
                model.check_reopened(&intent, &universe);
                continue;
            }
        }
        model.promote(intent.durable_txn());
    }
    assert_eq!(
        intent.torn_blocks(),
        0,
        "everything was durable before the last crash"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn crashes_never_lose_a_durable_bit_nor_invent_one(
        ops in prop::collection::vec(arb_op(), 1..80),
        seed in any::<u64>(),
        complete_percent in 20..=100u32,
        max_in_flight in prop_oneof![Just(1u32), Just(2), Just(256)],
    ) {
        run_ops(&ops, seed, complete_percent, max_in_flight);
    }
}

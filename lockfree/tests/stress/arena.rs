//! Real threads on the staging arena: writers copy tagged payloads into slots of the
//! arena, some slots theirs alone and some contested by two writers whose ranges overlap
//! by a granule, while one reader polls every range, checks each payload it finds whole
//! and in the order its writer wrote it, and releases it. Threads wait by yielding.

use std::collections::HashMap;
use std::thread;

use ordo_lockfree::{ArenaError, ArenaReader, ArenaWriter, StagingArena, GRANULE_BYTES};

const G: usize = GRANULE_BYTES;
const WRITERS: usize = 4;
const SLOTS: usize = 8;
/// Slots start 9 granules apart, so the last one (granules 63..66) spans two bitmap words.
const SLOT_STRIDE_GRANULES: usize = 9;
/// A payload covers two granules: a slot's left range is its granules 0 and 1, its right
/// range granules 1 and 2.
const PAYLOAD_BYTES: usize = 2 * G;
/// Miri interprets every byte copy and comparison: two rounds still contest each slot.
const ROUNDS: u32 = if cfg!(miri) { 2 } else { 2_000 };

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// Who writes where: even slots belong to one writer (left range); odd slots are
/// contested, writer `a` on the left and the next writer on the right.
fn writers_of(slot: usize) -> Vec<(usize, Side)> {
    let a = (slot / 2) % WRITERS;
    if slot.is_multiple_of(2) {
        vec![(a, Side::Left)]
    } else {
        vec![(a, Side::Left), ((a + 1) % WRITERS, Side::Right)]
    }
}

fn range_at(slot: usize, side: Side) -> usize {
    let granule = slot * SLOT_STRIDE_GRANULES + usize::from(side == Side::Right);
    granule * G
}

/// The payload of `writer`'s `round` in `slot`: a header naming them, then bytes that
/// depend on all three and on the position, so a torn or shifted copy shows.
fn payload(writer: usize, round: u32, slot: usize) -> Vec<u8> {
    let mut bytes = vec![0; PAYLOAD_BYTES];
    bytes[0] = writer as u8;
    bytes[1..5].copy_from_slice(&round.to_le_bytes());
    bytes[5] = slot as u8;
    let seed = round
        .wrapping_mul(7)
        .wrapping_add(writer as u32 * 13 + slot as u32);
    for (i, byte) in bytes[6..].iter_mut().enumerate() {
        *byte = (i as u32).wrapping_mul(31).wrapping_add(seed) as u8;
    }
    bytes
}

/// Writes every round to each of this writer's ranges, retrying (yielding) while the
/// range overlaps one not yet released: its own previous round's, or the other writer's
/// of a contested slot.
fn write_all(writer: &ArenaWriter, id: usize) {
    let targets: Vec<(usize, Side)> = (0..SLOTS)
        .flat_map(|slot| {
            writers_of(slot)
                .into_iter()
                .filter(move |&(owner, _)| owner == id)
                .map(move |(_, side)| (slot, side))
        })
        .collect();
    for round in 0..ROUNDS {
        for &(slot, side) in &targets {
            let bytes = payload(id, round, slot);
            loop {
                match writer.write(range_at(slot, side), &bytes) {
                    Ok(()) => break,
                    Err(ArenaError::Overlap { .. }) => thread::yield_now(),
                    Err(other) => panic!("writer {id}: {other}"),
                }
            }
        }
    }
}

/// Polls every range until all writes have come, checking and releasing each.
fn read_all(reader: &mut ArenaReader) {
    let expected_writes =
        (0..SLOTS).map(|slot| writers_of(slot).len()).sum::<usize>() * ROUNDS as usize;
    // By (writer, slot).
    let mut next_round: HashMap<(usize, usize), u32> = HashMap::new();
    let mut seen = 0;
    while seen < expected_writes {
        let mut found = false;
        for slot in 0..SLOTS {
            for (_, side) in writers_of(slot) {
                let at = range_at(slot, side);
                let Some(bytes) = reader.read(at, PAYLOAD_BYTES).unwrap() else {
                    continue;
                };
                let writer = usize::from(bytes[0]);
                let round = u32::from_le_bytes(bytes[1..5].try_into().unwrap());
                assert!(
                    writers_of(slot).contains(&(writer, side)),
                    "slot {slot} {side:?}: a payload of writer {writer}"
                );
                assert_eq!(usize::from(bytes[5]), slot, "a payload of another slot");
                let next = next_round.entry((writer, slot)).or_default();
                assert_eq!(round, *next, "a round lost or repeated");
                assert!(bytes == payload(writer, round, slot), "a torn payload");
                *next += 1;
                reader.release(at, PAYLOAD_BYTES).unwrap();
                seen += 1;
                found = true;
            }
        }
        if !found {
            thread::yield_now();
        }
    }
    for slot in 0..SLOTS {
        for (writer, _) in writers_of(slot) {
            assert_eq!(next_round[&(writer, slot)], ROUNDS);
        }
    }
}

#[test]
fn writers_on_disjoint_and_contested_ranges_hand_the_reader_whole_payloads() {
    let arena = StagingArena::new(vec![0; SLOTS * SLOT_STRIDE_GRANULES * G]);
    let (writer, mut reader) = arena.split();
    thread::scope(|scope| {
        for id in 0..WRITERS {
            let writer = writer.clone();
            scope.spawn(move || write_all(&writer, id));
        }
        read_all(&mut reader);
    });
    // Nothing is left claimed: every range can be written once more.
    for slot in 0..SLOTS {
        let at = range_at(slot, Side::Left);
        writer.write(at, &payload(0, ROUNDS, slot)).unwrap();
        reader.release(at, PAYLOAD_BYTES).unwrap();
    }
}

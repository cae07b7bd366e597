//! Tests of the staging journal: reopen, torn records, stale laps and lives, superblocks.
use super::*;
use crate::storage::{Geometry, MemStorage};

const GROUP: GroupId = GroupId(9);
const WINDOW: u64 = 64 << 10;
const MAX_WRITE: u32 = 8192;

fn fresh() -> Journal<MemStorage> {
    let size = required_bytes(WINDOW, MAX_WRITE, 4096);
    let storage = MemStorage::new(Geometry::new(size, 4096).unwrap()).unwrap();
    Journal::format(storage, GROUP, 0x1d, WINDOW, MAX_WRITE, 0, false).unwrap()
}

fn header(seq: u64, payload_len: u32) -> RecordHeader {
    RecordHeader {
        lsn: 0,
        incarnation: 0,
        seq: Seq(seq),
        data_set: DataSetId(1),
        stream_offset: seq * 100_000,
        kind: RecordKind::Write {
            volume: VolumeId(0),
            offset: seq * 4096,
            len: payload_len,
        },
    }
}

fn settle(journal: &mut Journal<MemStorage>) {
    let mut done = Vec::new();
    while journal.storage().in_flight() > 0 {
        journal.storage_mut().poll(&mut done, 64);
    }
}

/// Reopens the journal's storage and returns what the scan found: (seq, payload byte).
fn reopen(mut journal: Journal<MemStorage>) -> (Journal<MemStorage>, Vec<(u64, u8)>) {
    settle(&mut journal);
    let mut reopened = Journal::open(journal.into_storage(), GROUP).unwrap();
    let mut found = Vec::new();
    reopened
        .scan(|r| found.push((r.header.seq.0, r.payload.first().copied().unwrap_or(0))))
        .unwrap();
    (reopened, found)
}

#[test]
fn records_survive_a_reopen_in_log_order() {
    let mut journal = fresh();
    for seq in [3, 1, 2] {
        journal
            .append(seq, header(seq, 4096), &[seq as u8; 4096])
            .unwrap();
    }
    let (reopened, found) = reopen(journal);
    assert_eq!(found, vec![(3, 3), (1, 1), (2, 2)]);
    assert_eq!(reopened.used_bytes(), 3 * record_bytes(4096, 4096));
}

#[test]
fn a_zeroing_record_survives_a_reopen_with_its_range_and_flag() {
    let mut journal = fresh();
    let zero = |seq: u64, unmap| RecordHeader {
        kind: RecordKind::Zero {
            volume: VolumeId(1),
            offset: seq << 20,
            len: u32::MAX - 511,
            unmap,
        },
        ..header(seq, 0)
    };
    journal.append(1, zero(1, true), &[]).unwrap();
    journal.append(2, header(2, 4096), &[2; 4096]).unwrap();
    journal.append(3, zero(3, false), &[]).unwrap();
    settle(&mut journal);
    let mut reopened = Journal::open(journal.into_storage(), GROUP).unwrap();
    let mut kinds = Vec::new();
    reopened.scan(|r| kinds.push(r.header.kind)).unwrap();
    assert_eq!(
        kinds,
        [
            zero(1, true).kind,
            header(2, 4096).kind,
            zero(3, false).kind
        ]
    );
    let header_only = record_bytes(0, 4096);
    assert_eq!(
        reopened.used_bytes(),
        2 * header_only + record_bytes(4096, 4096),
        "a zeroing costs a header whatever its length"
    );
}

#[test]
fn a_torn_record_ends_the_log() {
    let mut journal = fresh();
    let mut lsns = Vec::new();
    for seq in 1..=3 {
        lsns.push(
            journal
                .append(seq, header(seq, 4096), &[seq as u8; 4096])
                .unwrap(),
        );
    }
    // Tear the second record's payload: it and everything after it is gone.
    let at = LOG_START + lsns[1] + 4096;
    journal
        .storage_mut()
        .submit_write(99, at, &[0xAB; 4096])
        .unwrap();
    let (reopened, found) = reopen(journal);
    assert_eq!(found, vec![(1, 1)]);
    assert_eq!(
        reopened.used_bytes(),
        record_bytes(4096, 4096),
        "the tail is where the tear was"
    );
}

#[test]
fn records_of_an_earlier_lap_are_not_taken_for_new_ones() {
    let mut journal = fresh();
    let log_bytes = journal.log_bytes();
    let size = record_bytes(MAX_WRITE, 4096);
    let mut seq = 1;
    // Fill most of the log, free it all, and write a few records on the next lap.
    while journal.used_bytes() + 2 * size <= log_bytes {
        journal
            .append(seq, header(seq, MAX_WRITE), &[1; MAX_WRITE as usize])
            .unwrap();
        seq += 1;
    }
    let first_lap_end = journal.tail_lsn;
    let sb = Superblock {
        generation: 3,
        head_lsn: first_lap_end,
        ..*journal.superblock()
    };
    journal.submit_superblock(100, sb).unwrap();
    journal.superblock_durable(sb);
    let new_lap = (seq..seq + 3)
        .map(|s| {
            journal
                .append(s, header(s, MAX_WRITE), &[2; MAX_WRITE as usize])
                .unwrap()
        })
        .collect::<Vec<_>>();
    assert!(
        new_lap.iter().any(|&lsn| lsn >= log_bytes),
        "the log wrapped"
    );
    let (_, found) = reopen(journal);
    assert_eq!(found.len(), 3, "only the new lap's records: {found:?}");
    assert!(found.iter().all(|&(s, byte)| s >= seq && byte == 2));
}

#[test]
fn records_of_an_earlier_life_behind_a_hole_are_not_revived() {
    // Life 1: A, B, C written; A never reaches the disk, B and C do.
    let mut journal = fresh();
    let lsns: Vec<u64> = (1..=3)
        .map(|seq| {
            journal
                .append(seq, header(seq, 4096), &[seq as u8; 4096])
                .unwrap()
        })
        .collect();
    journal
        .storage_mut()
        .submit_write(99, LOG_START + lsns[0], &[0; 4096])
        .unwrap();
    // Life 2 finds nothing after the hole and writes D where A was, the same size.
    let (mut journal, found) = reopen(journal);
    assert_eq!(found, vec![]);
    assert_eq!(
        journal.append(4, header(4, 4096), &[4; 4096]).unwrap(),
        lsns[0]
    );
    // Life 3 must stop after D: B and C line up again, but they belong to life 1.
    let (_, found) = reopen(journal);
    assert_eq!(found, vec![(4, 4)]);
}

#[test]
fn a_torn_superblock_falls_back_to_the_other_copy() {
    let applied_five = |journal: &mut Journal<MemStorage>| {
        let sb = *journal.superblock();
        let next = Superblock {
            generation: sb.generation + 1,
            applied_data_set: DataSetId(5),
            ..sb
        };
        journal.submit_superblock(1, next).unwrap();
        settle(journal);
        next.generation
    };
    // Intact, the newer superblock wins (and opening writes the next life's).
    let mut journal = fresh();
    applied_five(&mut journal);
    let (reopened, _) = reopen(journal);
    assert_eq!(reopened.superblock().applied_data_set, DataSetId(5));
    assert_eq!(reopened.superblock().incarnation, 2);
    // Torn, the other copy (nothing applied) wins.
    let mut journal = fresh();
    let generation = applied_five(&mut journal);
    let mut storage = journal.into_storage();
    let copy = SUPERBLOCK_COPY_OFFSETS[(generation % 2) as usize];
    storage.submit_write(2, copy, &[0x55; 4096]).unwrap();
    let mut done = Vec::new();
    storage.poll(&mut done, 8);
    let journal = Journal::open(storage, GROUP).unwrap();
    assert_eq!(journal.superblock().applied_data_set, DataSetId::NONE);
    // The fallback's next generation rewrites the torn copy, as the next life's.
    assert_eq!(journal.superblock().generation, generation);
    assert_eq!(journal.superblock().incarnation, 2);
}

#[test]
fn open_refuses_an_unformatted_or_foreign_journal() {
    let size = required_bytes(WINDOW, MAX_WRITE, 4096);
    let blank = MemStorage::new(Geometry::new(size, 4096).unwrap()).unwrap();
    assert_eq!(
        Journal::open(blank, GROUP).unwrap_err(),
        JournalError::NotFormatted
    );
    let mut journal = fresh();
    settle(&mut journal);
    let error = Journal::open(journal.into_storage(), GroupId(10)).unwrap_err();
    assert_eq!(
        error,
        JournalError::WrongGroup {
            expected: 10,
            found: 9
        }
    );
    let small = MemStorage::new(Geometry::new(size - 4096, 4096).unwrap()).unwrap();
    assert!(matches!(
        Journal::format(small, GROUP, 0x1d, WINDOW, MAX_WRITE, 0, false),
        Err(JournalError::TooSmall { .. })
    ));
}

/// A record (header block and payload) goes to the device in one request, so a device
/// whose requests are smaller than a record of the largest write is refused up front, at
/// format and at open, rather than failing the first large write.
#[test]
fn a_device_that_cannot_take_a_whole_record_is_refused() {
    let size = required_bytes(WINDOW, MAX_WRITE, 4096);
    let narrow = |max_io_bytes| Geometry {
        max_io_bytes,
        ..Geometry::new(size, 4096).unwrap()
    };
    let record = record_bytes(MAX_WRITE, 4096);
    assert_eq!(record, u64::from(MAX_WRITE) + 4096);
    let too_narrow = MemStorage::new(narrow(MAX_WRITE)).unwrap();
    assert_eq!(
        Journal::format(too_narrow, GROUP, 0x1d, WINDOW, MAX_WRITE, 0, false).unwrap_err(),
        JournalError::RequestsTooSmall {
            max_io: MAX_WRITE,
            record
        }
    );
    let exact = MemStorage::new(narrow(record as u32)).unwrap();
    assert!(Journal::format(exact, GROUP, 0x1d, WINDOW, MAX_WRITE, 0, false).is_ok());

    // The same device contents behind narrower requests: open refuses too.
    let mut journal = fresh();
    settle(&mut journal);
    let contents = journal.into_storage().contents().to_vec();
    let mut reopened = MemStorage::new(narrow(MAX_WRITE)).unwrap();
    reopened
        .submit_write(1, 0, &contents[..MAX_WRITE as usize])
        .unwrap();
    let mut done = Vec::new();
    reopened.poll(&mut done, 8);
    assert!(matches!(
        Journal::open(reopened, GROUP),
        Err(JournalError::RequestsTooSmall { .. })
    ));
}

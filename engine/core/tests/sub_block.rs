//! Writes and reads at any byte offset, as NBD clients send them (a filesystem on a loop
//! device over FUSE writes 512-byte sectors on a 4 KiB-block export): the primary merges a
//! partial block with what the writes accepted before it left there, whether those are
//! still on their way to the volume or long written, and sends one block-aligned record.
//! Expected images are kept here byte by byte, not read back from the engine.

mod primary_support;

use primary_support::*;

/// Polls until every write is acknowledged; returns how many were.
fn settle(p: &mut Primary<MemStorage>) -> usize {
    let mut done = 0;
    for _ in 0..100 {
        p.poll_storage();
        for event in events(p) {
            if let PrimaryEvent::WriteDone { result, .. } = event {
                result.unwrap();
                done += 1;
            }
        }
    }
    done
}

fn bytes(fill: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| fill.wrapping_add(i as u8) | 1).collect()
}

struct Case {
    p: Primary<MemStorage>,
    model: Vec<u8>,
}

impl Case {
    fn new(config: PrimaryConfig) -> Case {
        Case {
            p: primary(config),
            model: vec![0; VOLUME_BYTES as usize],
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Seq {
        let seq = self.p.submit_write(0, VOL, offset, data, 0).unwrap();
        self.model[offset as usize..][..data.len()].copy_from_slice(data);
        seq
    }

    fn read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xeeu8; len];
        self.p.read(VOL, offset, &mut buf).unwrap();
        assert!(
            buf == self.model[offset as usize..][..len],
            "read of {len} at {offset}"
        );
        buf
    }
}

#[test]
fn a_partial_block_merges_with_writes_still_in_flight() {
    let mut case = Case::new(config(open_ended()));
    // Two blocks, not yet polled: still on their way to the volume.
    case.write(0, &bytes(1, 8192));
    // Across the boundary of those two blocks, then inside a block never written.
    case.write(4000, &bytes(2, 200));
    case.write(9000, &bytes(3, 10));
    // Inside one block, over the merged record before it.
    case.write(4100, &bytes(4, 1));
    assert_eq!(settle(&mut case.p), 4);
    assert!(case.p.volumes()[0].contents() == case.model, "volume image");
    assert_eq!(case.p.stats().sub_block_writes, 3);
    assert_eq!(case.p.stats().writes_accepted, 4);
}

#[test]
fn a_partial_block_merges_with_what_is_on_the_volume_once_released() {
    // Replication off: a write is released as soon as it is on the volume, so the merge
    // must read the volume to find it.
    let mut case = Case::new(PrimaryConfig {
        replication: Replication::Off,
        ..config(open_ended())
    });
    case.write(65536, &bytes(5, 4096));
    assert_eq!(settle(&mut case.p), 1);
    assert_eq!(case.p.retention_bytes(), 0, "released");
    case.write(65536 + 512, &bytes(6, 512));
    case.write(65536 - 3, &bytes(7, 6));
    assert_eq!(settle(&mut case.p), 2);
    assert!(case.p.volumes()[0].contents() == case.model);
}

#[test]
fn the_record_sent_is_block_aligned_and_carries_the_merged_blocks() {
    let mut case = Case::new(config(open_ended()));
    connect(&mut case.p, 0, 16 << 20);
    case.write(8192, &bytes(8, 4096));
    let seq = case.write(8192 + 4000, &bytes(9, 300));
    case.p.flush(1).unwrap();
    let sent = transmit(&mut case.p, 0, 0);
    let record = sent.iter().find_map(|s| match s {
        Sent::Write {
            seq: s,
            offset,
            payload,
            ..
        } if *s == seq.0 => Some((*offset, payload.clone())),
        _ => None,
    });
    let (offset, payload) = record.expect("the merged write was sent");
    assert_eq!(offset, 8192, "starts at its first block");
    assert_eq!(payload.len(), 8192, "two whole blocks");
    assert!(payload == case.model[8192..8192 + 8192]);
}

#[test]
fn reads_at_any_offset_return_the_bytes_written() {
    let mut case = Case::new(config(open_ended()));
    case.write(0, &bytes(10, 16384));
    case.write(20000, &bytes(11, 777));
    assert_eq!(settle(&mut case.p), 2);
    for (offset, len) in [
        (0, 1),
        (1, 4095),
        (4095, 2),
        (100, 12000),
        (4096, 8192),
        (19999, 1000),
        (VOLUME_BYTES - 1, 1),
        (3, 3 * 4096),
    ] {
        case.read(offset, len);
    }
    let mut buf = vec![0u8; 2];
    let past_end = case.p.read(VOL, VOLUME_BYTES - 1, &mut buf);
    assert!(
        matches!(
            past_end,
            Err(SubmitError::Invalid(StorageError::OutOfRange { .. }))
        ),
        "{past_end:?}"
    );
}

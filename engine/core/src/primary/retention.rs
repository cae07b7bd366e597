//! The primary's retention window: every write and sync record the secondary has not yet
//! staged durably, kept in seq order, with payloads in one preallocated arena.
//!
//! A record lives at `stream_offset % window_bytes` in the arena. The records retained at
//! any moment span at most `window_bytes` of the stream (admission checks it), and a span
//! of that length maps one-to-one onto the arena, so records never overlap there; a record
//! that starts near the end runs on into `max_payload_bytes` of slack instead of wrapping.
//! Nothing here allocates after construction.

use std::collections::VecDeque;

pub use crate::protocol::RecordKind;
use crate::protocol::{stream_cost, DataSetId, Seq, VolumeId, RECORD_OVERHEAD_BYTES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentOn {
    pub lane: usize,
    pub at_ms: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub seq: Seq,
    pub data_set: DataSetId,
    pub stream_offset: u64,
    pub kind: RecordKind,
    /// Staged durably on the secondary.
    pub acked: bool,
    /// Written to the primary's own volume (syncs are born done).
    pub local_done: bool,
    pub sent: Option<SentOn>,
    /// In the resend queue already.
    pub resend_queued: bool,
    /// The application's token for a write, echoed when it is acknowledged.
    pub token: u64,
}

impl Record {
    pub fn payload_len(&self) -> u32 {
        self.kind.payload_len()
    }

    pub fn stream_end(&self) -> u64 {
        self.stream_offset + stream_cost(self.payload_len())
    }
}

/// What the newest retained record covering a byte left there (`newest_covering`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Covering<'a> {
    /// A write of `seq`, whose payload starts at volume offset `start`.
    Data {
        seq: Seq,
        start: u64,
        payload: &'a [u8],
    },
    /// A zeroed range.
    Zeroes { seq: Seq },
}

#[derive(Debug)]
pub struct Retention {
    window_bytes: u64,
    arena: Vec<u8>,
    records: VecDeque<Record>,
    /// Stream offset the next record gets.
    stream_next: u64,
}

impl Retention {
    /// `window_bytes` must hold at least one largest write plus a sync.
    pub fn new(window_bytes: u64, max_payload_bytes: u32, max_records: usize) -> Retention {
        assert!(window_bytes >= stream_cost(max_payload_bytes) + RECORD_OVERHEAD_BYTES);
        let arena_len = usize::try_from(window_bytes + u64::from(max_payload_bytes))
            .expect("retention window fits in memory");
        Retention {
            window_bytes,
            arena: crate::storage::prefaulted(arena_len),
            records: VecDeque::with_capacity(max_records),
            stream_next: 0,
        }
    }

    pub fn window_bytes(&self) -> u64 {
        self.window_bytes
    }

    /// An empty window takes its next record at `stream_offset` (a resumed stream, or a
    /// new generation at 0).
    pub fn resume_at(&mut self, stream_offset: u64) {
        assert!(self.records.is_empty(), "only an empty window moves");
        self.stream_next = stream_offset;
    }

    pub fn stream_next(&self) -> u64 {
        self.stream_next
    }

    /// Stream bytes held: from the oldest retained record to the next offset.
    pub fn used_bytes(&self) -> u64 {
        self.stream_next - self.base()
    }

    fn base(&self) -> u64 {
        self.records
            .front()
            .map_or(self.stream_next, |r| r.stream_offset)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Whether a record of `cost` stream bytes fits now, leaving room for `reserve` more.
    pub fn fits(&self, cost: u64, reserve: u64) -> bool {
        self.used_bytes() + cost + reserve <= self.window_bytes
            && self.records.len() < self.records.capacity()
    }

    /// Appends a record (the caller checked `fits`), copying `payload` into the arena.
    pub fn push(
        &mut self,
        seq: Seq,
        data_set: DataSetId,
        kind: RecordKind,
        payload: &[u8],
        token: u64,
    ) {
        if let Some(last) = self.records.back() {
            assert_eq!(last.seq.next(), seq, "retention is contiguous in seq");
        }
        let len = kind.payload_len();
        assert_eq!(payload.len(), len as usize);
        let cost = stream_cost(len);
        assert!(
            self.used_bytes() + cost <= self.window_bytes,
            "admission was checked"
        );
        let at = self.arena_pos(self.stream_next);
        self.arena[at..at + payload.len()].copy_from_slice(payload);
        self.records.push_back(Record {
            seq,
            data_set,
            stream_offset: self.stream_next,
            kind,
            acked: false,
            local_done: matches!(kind, RecordKind::Sync { .. }),
            sent: None,
            resend_queued: false,
            token,
        });
        self.stream_next += cost;
    }

    fn arena_pos(&self, stream_offset: u64) -> usize {
        // Lossless: the remainder is below window_bytes, which fits in usize (arena exists).
        (stream_offset % self.window_bytes) as usize
    }

    pub fn payload(&self, record: &Record) -> &[u8] {
        let at = self.arena_pos(record.stream_offset);
        &self.arena[at..at + record.payload_len() as usize]
    }

    pub fn front_seq(&self) -> Option<Seq> {
        self.records.front().map(|r| r.seq)
    }

    fn index(&self, seq: Seq) -> Option<usize> {
        let front = self.records.front()?.seq;
        let index = usize::try_from(seq.0.checked_sub(front.0)?).ok()?;
        (index < self.records.len()).then_some(index)
    }

    pub fn get(&self, seq: Seq) -> Option<&Record> {
        self.index(seq).map(|i| &self.records[i])
    }

    pub fn get_mut(&mut self, seq: Seq) -> Option<&mut Record> {
        self.index(seq).map(|i| &mut self.records[i])
    }

    /// What the newest retained write or zeroing on `volume` that covers the byte at
    /// `offset` left there. Retention holds a contiguous run of the newest records (it
    /// frees only from the front), so when there is none, every write that ever covered
    /// that byte is written on the volume. A scan, for the rare sub-block write, not the
    /// hot path.
    pub fn newest_covering(&self, volume: VolumeId, offset: u64) -> Option<Covering<'_>> {
        self.records.iter().rev().find_map(|r| match r.kind {
            RecordKind::Write {
                volume: v,
                offset: start,
                len,
            } if v == volume && start <= offset && offset < start + u64::from(len) => {
                Some(Covering::Data {
                    seq: r.seq,
                    start,
                    payload: self.payload(r),
                })
            }
            RecordKind::Zero {
                volume: v,
                offset: start,
                len,
                ..
            } if v == volume && start <= offset && offset < start + u64::from(len) => {
                Some(Covering::Zeroes { seq: r.seq })
            }
            _ => None,
        })
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Record> {
        self.records.iter_mut()
    }

    /// Marks every retained record in `[first, last]` acked; returns how many changed.
    pub fn ack_range(&mut self, first: Seq, last: Seq) -> usize {
        let Some(front) = self.front_seq() else {
            return 0;
        };
        let back = front.0 + self.records.len() as u64 - 1;
        let lo = first.0.max(front.0);
        let hi = last.0.min(back);
        let mut changed = 0;
        if lo > hi {
            return 0;
        }
        for seq in lo..=hi {
            let index = (seq - front.0) as usize;
            let record = &mut self.records[index];
            if !record.acked {
                record.acked = true;
                changed += 1;
            }
        }
        changed
    }

    /// Frees records from the front that are acked and written locally.
    pub fn release(&mut self) -> usize {
        let mut freed = 0;
        while let Some(front) = self.records.front() {
            if !(front.acked && front.local_done) {
                break;
            }
            self.records.pop_front();
            freed += 1;
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(len: u32) -> RecordKind {
        RecordKind::Write {
            volume: VolumeId(0),
            offset: 0,
            len,
        }
    }

    #[test]
    fn payloads_never_overlap_across_the_arena_end() {
        let window = 4 * stream_cost(4096);
        let mut retention = Retention::new(window, 8192, 64);
        for (seq, round) in (1..).zip(0..20u8) {
            let len = if round % 3 == 0 { 8192 } else { 4096 };
            while !retention.fits(stream_cost(len), RECORD_OVERHEAD_BYTES) {
                let front = retention.front_seq().unwrap();
                retention.ack_range(front, front);
                retention.get_mut(front).unwrap().local_done = true;
                assert_eq!(retention.release(), 1);
            }
            let payload = vec![round; len as usize];
            retention.push(Seq(seq), DataSetId(1), write(len), &payload, 0);
            let front = retention.front_seq().unwrap().0;
            for s in front..=seq {
                let record = *retention.get(Seq(s)).unwrap();
                let byte = retention.payload(&record)[0];
                assert!(retention.payload(&record).iter().all(|&b| b == byte));
            }
        }
    }

    #[test]
    fn release_stops_at_the_first_unacked_or_unwritten_record() {
        let mut retention = Retention::new(1 << 20, 4096, 16);
        for s in 1..=3 {
            retention.push(Seq(s), DataSetId(1), write(4096), &[0; 4096], 0);
        }
        assert_eq!(retention.ack_range(Seq(2), Seq(100)), 2);
        assert_eq!(retention.release(), 0, "seq 1 is not acked");
        retention.ack_range(Seq(0), Seq(1));
        assert_eq!(retention.release(), 0, "seq 1 is not written locally");
        retention.iter_mut().for_each(|r| r.local_done = true);
        assert_eq!(retention.release(), 3);
        assert!(retention.is_empty());
        assert_eq!(retention.used_bytes(), 0);
    }

    #[test]
    fn the_newest_covering_write_or_zeroing_is_found_and_syncs_never_are() {
        let mut retention = Retention::new(1 << 20, 8192, 16);
        let at = |offset, len| RecordKind::Write {
            volume: VolumeId(1),
            offset,
            len,
        };
        retention.push(Seq(1), DataSetId(1), at(0, 8192), &[1; 8192], 0);
        retention.push(Seq(2), DataSetId(1), at(4096, 4096), &[2; 4096], 0);
        let sync = RecordKind::Sync {
            first_seq: Seq(1),
            write_count: 2,
            ends_resync: false,
        };
        retention.push(Seq(3), DataSetId(1), sync, &[], 0);
        let zero = RecordKind::Zero {
            volume: VolumeId(1),
            offset: 4096,
            len: 8192,
            unmap: true,
        };
        retention.push(Seq(4), DataSetId(2), zero, &[], 0);
        let found = |offset| match retention.newest_covering(VolumeId(1), offset) {
            Some(Covering::Data {
                seq,
                start,
                payload,
            }) => Some((seq, payload[(offset - start) as usize])),
            Some(Covering::Zeroes { seq }) => Some((seq, 0)),
            None => None,
        };
        assert_eq!(found(0), Some((Seq(1), 1)));
        assert_eq!(found(4095), Some((Seq(1), 1)));
        assert_eq!(found(4096), Some((Seq(4), 0)), "the zeroing is newer");
        assert_eq!(found(12287), Some((Seq(4), 0)));
        assert_eq!(found(12288), None, "past every write");
        assert_eq!(retention.newest_covering(VolumeId(0), 0), None);
    }
}

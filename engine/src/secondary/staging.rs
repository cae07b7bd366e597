//! The secondary's reorder buffer and receipt tracker: the records received past the
//! applied point, their payloads, and which data sets are complete.
//!
//! Every record held lies in the stream window `(applied_stream_end, applied_stream_end +
//! window_bytes]`, so (as in the primary's retention) its payload lives in a preallocated
//! arena at `stream_offset % window_bytes` without overlapping any other. Records are
//! slots in a ring indexed by `seq`: every record costs at least `RECORD_OVERHEAD_BYTES`
//! of stream, so at most `window_bytes / RECORD_OVERHEAD_BYTES` seqs fit in the window and
//! the ring (the receipt bitmap, with each record's metadata) never collides. Data sets
//! likewise live in a small ring indexed by id, holding their sync and how many of their
//! records are durable. Nothing allocates after construction.

use crate::protocol::{
    push_seq, stream_cost, DataSetId, RecordKind, Seq, SeqRange, RECORD_OVERHEAD_BYTES,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    Empty,
    /// Being written to the journal.
    Journaling,
    /// Written, not yet covered by a journal flush.
    Written,
    /// Durable in the journal: counts toward its data set and has been (or will be) acked.
    Durable,
}

#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub seq: Seq,
    pub data_set: DataSetId,
    pub stream_offset: u64,
    pub kind: RecordKind,
    pub state: SlotState,
}

impl Slot {
    fn payload_len(&self) -> u32 {
        self.kind.payload_len()
    }

    fn stream_end(&self) -> u64 {
        self.stream_offset + stream_cost(self.payload_len())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct DataSetSlot {
    id: DataSetId,
    sync_seq: Option<Seq>,
    sync_durable: bool,
    durable_writes: u64,
}

/// What to do with an arriving record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Held already; `durable` says whether it may be acked again now.
    Duplicate {
        durable: bool,
    },
    /// Part of an applied data set: the `Applied` frame acknowledges it.
    AlreadyApplied,
    /// Past the window the primary was given: dropped, the primary resends it later.
    OutOfWindow,
    /// Contradicts what is held: the peer broke the protocol.
    Conflict(&'static str),
}

/// A data set whose sync and every write are durable and consistent, ready to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompleteDataSet {
    pub id: DataSetId,
    pub first_seq: Seq,
    pub sync_seq: Seq,
    pub stream_end: u64,
}

#[derive(Debug)]
pub struct Staging {
    window_bytes: u64,
    arena: Vec<u8>,
    slots: Vec<Slot>,
    data_sets: Vec<DataSetSlot>,
    applied: DataSetId,
    applied_seq: Seq,
    applied_stream_end: u64,
    /// Highest seq ever held: bounds the neighbour search above a new record.
    highest_held: Seq,
}

const EMPTY_SLOT: Slot = Slot {
    seq: Seq::NONE,
    data_set: DataSetId::NONE,
    stream_offset: 0,
    kind: RecordKind::Sync {
        first_seq: Seq::NONE,
        write_count: 0,
    },
    state: SlotState::Empty,
};

impl Staging {
    pub fn new(
        window_bytes: u64,
        max_write_bytes: u32,
        applied: DataSetId,
        applied_seq: Seq,
        applied_stream_end: u64,
    ) -> Staging {
        let seqs = (window_bytes / RECORD_OVERHEAD_BYTES + 1) as usize;
        // A data set is at least one write and its sync.
        let data_sets = (window_bytes / (2 * RECORD_OVERHEAD_BYTES) + 2) as usize;
        Staging {
            window_bytes,
            arena: crate::storage::prefaulted((window_bytes + u64::from(max_write_bytes)) as usize),
            slots: vec![EMPTY_SLOT; seqs],
            data_sets: vec![DataSetSlot::default(); data_sets],
            applied,
            applied_seq,
            applied_stream_end,
            highest_held: applied_seq,
        }
    }

    pub fn applied(&self) -> DataSetId {
        self.applied
    }

    pub fn applied_seq(&self) -> Seq {
        self.applied_seq
    }

    pub fn applied_stream_end(&self) -> u64 {
        self.applied_stream_end
    }

    fn slot_index(&self, seq: Seq) -> usize {
        (seq.0 % self.slots.len() as u64) as usize
    }

    fn data_set_index(&self, id: DataSetId) -> usize {
        (id.0 % self.data_sets.len() as u64) as usize
    }

    /// The slot holding `seq`, if it is held.
    pub fn slot(&self, seq: Seq) -> Option<&Slot> {
        let slot = &self.slots[self.slot_index(seq)];
        (slot.state != SlotState::Empty && slot.seq == seq).then_some(slot)
    }

    /// Decides what to do with a record arriving with these fields.
    pub fn admit(
        &self,
        seq: Seq,
        data_set: DataSetId,
        stream_offset: u64,
        payload_len: u32,
    ) -> Admission {
        if seq <= self.applied_seq {
            return Admission::AlreadyApplied;
        }
        if data_set <= self.applied {
            return Admission::Conflict(
                "a record above the applied seq claims an applied data set",
            );
        }
        let Some(stream_end) = stream_offset.checked_add(stream_cost(payload_len)) else {
            return Admission::Conflict("stream offset overflows");
        };
        if stream_offset < self.applied_stream_end {
            return Admission::Conflict(
                "a record above the applied seq lies before the applied stream end",
            );
        }
        let seq_room = self.slots.len() as u64 - 1;
        let data_set_room = self.data_sets.len() as u64 - 1;
        if stream_end > self.applied_stream_end + self.window_bytes
            || seq.0 - self.applied_seq.0 > seq_room
            || data_set.0 - self.applied.0 > data_set_room
        {
            return Admission::OutOfWindow;
        }
        let slot = &self.slots[self.slot_index(seq)];
        if slot.state != SlotState::Empty {
            assert_eq!(slot.seq, seq, "two seqs in the window share a slot");
            return Admission::Duplicate {
                durable: slot.state == SlotState::Durable,
            };
        }
        self.check_neighbours(seq, stream_offset, stream_end)
    }

    /// Records held must keep seq order in the stream: the nearest held seq below must end
    /// before this one starts, and the nearest above must start after it ends.
    fn check_neighbours(&self, seq: Seq, stream_offset: u64, stream_end: u64) -> Admission {
        // Records mostly arrive in seq order, so both searches usually stop at once.
        let lowest = self.applied_seq.0 + 1;
        let highest = self.highest_held.0;
        if let Some(below) = (lowest..seq.0).rev().find_map(|s| self.slot(Seq(s))) {
            if below.stream_end() > stream_offset {
                return Admission::Conflict("stream ranges of two records overlap");
            }
        }
        if let Some(above) = (seq.0 + 1..=highest).find_map(|s| self.slot(Seq(s))) {
            if above.stream_offset < stream_end {
                return Admission::Conflict("stream ranges of two records overlap");
            }
        }
        Admission::Accept
    }

    /// Holds an admitted record (state `state`) and copies its payload into the arena.
    pub fn insert(
        &mut self,
        slot: Slot,
        payload: &[u8],
        state: SlotState,
    ) -> Result<(), &'static str> {
        debug_assert_eq!(
            self.admit(
                slot.seq,
                slot.data_set,
                slot.stream_offset,
                slot.payload_len()
            ),
            Admission::Accept
        );
        assert_eq!(payload.len(), slot.payload_len() as usize);
        let index = self.data_set_index(slot.data_set);
        let entry = &mut self.data_sets[index];
        if entry.id != slot.data_set {
            assert!(
                entry.id <= self.applied,
                "data-set ring entry reused while live"
            );
            *entry = DataSetSlot {
                id: slot.data_set,
                ..DataSetSlot::default()
            };
        }
        if let RecordKind::Sync { .. } = slot.kind {
            if entry.sync_seq.is_some_and(|s| s != slot.seq) {
                return Err("two syncs for one data set");
            }
            entry.sync_seq = Some(slot.seq);
        }
        let at = (slot.stream_offset % self.window_bytes) as usize;
        self.arena[at..at + payload.len()].copy_from_slice(payload);
        let index = self.slot_index(slot.seq);
        self.slots[index] = Slot { state, ..slot };
        self.highest_held = self.highest_held.max(slot.seq);
        if state == SlotState::Durable {
            self.count_durable(slot.seq);
        }
        Ok(())
    }

    pub fn payload(&self, seq: Seq) -> &[u8] {
        let slot = self.slot(seq).expect("payload of a held record");
        let at = (slot.stream_offset % self.window_bytes) as usize;
        &self.arena[at..at + slot.payload_len() as usize]
    }

    pub fn set_state(&mut self, seq: Seq, state: SlotState) {
        let index = self.slot_index(seq);
        let slot = &mut self.slots[index];
        assert!(
            slot.seq == seq && slot.state != SlotState::Empty,
            "state change of a held record"
        );
        assert!(state != SlotState::Empty && slot.state != SlotState::Durable);
        slot.state = state;
        if state == SlotState::Durable {
            self.count_durable(seq);
        }
    }

    fn count_durable(&mut self, seq: Seq) {
        let slot = *self.slot(seq).expect("held");
        let index = self.data_set_index(slot.data_set);
        let entry = &mut self.data_sets[index];
        assert_eq!(entry.id, slot.data_set);
        match slot.kind {
            RecordKind::Write { .. } => entry.durable_writes += 1,
            RecordKind::Sync { .. } => entry.sync_durable = true,
        }
    }

    /// The next data set to apply, if it is complete. `Err` if its records contradict
    /// each other (then it must never be applied). With `ignore_missing` (a deliberately
    /// broken applier, for proving the simulator's checker) a durable sync is enough.
    pub fn next_complete(
        &self,
        ignore_missing: bool,
    ) -> Result<Option<CompleteDataSet>, &'static str> {
        let id = self.applied.next();
        let entry = &self.data_sets[self.data_set_index(id)];
        if entry.id != id || !entry.sync_durable {
            return Ok(None);
        }
        let sync_seq = entry.sync_seq.expect("a durable sync was recorded");
        let sync = *self.slot(sync_seq).expect("sync held");
        let RecordKind::Sync {
            first_seq,
            write_count,
        } = sync.kind
        else {
            return Err("sync slot holds a write");
        };
        if first_seq != self.applied_seq.next() {
            return Err("data set does not start right after the applied one");
        }
        if ignore_missing {
            return Ok(Some(CompleteDataSet {
                id,
                first_seq,
                sync_seq,
                stream_end: sync.stream_end(),
            }));
        }
        if entry.durable_writes < write_count {
            return Ok(None);
        }
        let mut expected_offset = self.applied_stream_end;
        for seq in first_seq.0..sync_seq.0 {
            let Some(slot) = self.slot(Seq(seq)) else {
                return Ok(None);
            };
            if slot.state != SlotState::Durable {
                return Ok(None);
            }
            if slot.data_set != id || !matches!(slot.kind, RecordKind::Write { .. }) {
                return Err("a seq inside a data set belongs elsewhere");
            }
            if slot.stream_offset != expected_offset {
                return Err("stream offsets of a data set are not contiguous");
            }
            expected_offset = slot.stream_end();
        }
        if sync.stream_offset != expected_offset {
            return Err("sync does not follow its data set's last write");
        }
        Ok(Some(CompleteDataSet {
            id,
            first_seq,
            sync_seq,
            stream_end: sync.stream_end(),
        }))
    }

    /// `data_set` is applied and its watermark durable: forget its records.
    pub fn advance(&mut self, data_set: &CompleteDataSet) {
        assert_eq!(
            data_set.id,
            self.applied.next(),
            "data sets are applied in order"
        );
        for seq in data_set.first_seq.0..=data_set.sync_seq.0 {
            let index = self.slot_index(Seq(seq));
            if self.slots[index].seq == Seq(seq) {
                self.slots[index] = EMPTY_SLOT;
            }
        }
        self.applied = data_set.id;
        self.applied_seq = data_set.sync_seq;
        self.applied_stream_end = data_set.stream_end;
    }

    /// Durable seq ranges above the applied point, at most `max` of them, into `out`.
    pub fn durable_ranges(&self, max: usize, out: &mut Vec<SeqRange>) {
        out.clear();
        let highest = self.applied_seq.0 + self.slots.len() as u64 - 1;
        for seq in self.applied_seq.0 + 1..=highest {
            if !self
                .slot(Seq(seq))
                .is_some_and(|s| s.state == SlotState::Durable)
            {
                continue;
            }
            if !push_seq(out, Seq(seq), max) {
                break;
            }
        }
    }
}

//! The records the journal writer has taken in seq order and not yet applied: their
//! metadata (a ring of slots indexed by `seq`, the receipt tracker), their journal state,
//! which data sets are complete, and their payloads in the staging arena that the
//! receivers filled (see `inbox`).
//!
//! Every record held lies in the stream window `(applied_stream_end, applied_stream_end +
//! window_bytes]`: every record costs at least `RECORD_OVERHEAD_BYTES` of stream, so at
//! most `window_bytes / RECORD_OVERHEAD_BYTES` seqs fit in the window and the slot ring
//! never collides. Data sets likewise live in a small ring indexed by id, holding their
//! sync and how many of their records are durable. Nothing allocates after construction.

use ordo_lockfree::{ArenaError, ArenaReader};

use crate::protocol::push_seq;
use crate::protocol::{stream_cost, DataSetId, RecordKind, Seq, SeqRange, RECORD_OVERHEAD_BYTES};

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
}

/// A data set whose sync and every write are durable and consistent, ready to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompleteDataSet {
    pub id: DataSetId,
    pub first_seq: Seq,
    pub sync_seq: Seq,
    pub stream_end: u64,
    /// Its sync ends the resync of its generation.
    pub ends_resync: bool,
}

#[derive(Debug)]
pub struct Staging {
    window_bytes: u64,
    arena: ArenaReader,
    slots: Vec<Slot>,
    data_sets: Vec<DataSetSlot>,
    applied: DataSetId,
    applied_seq: Seq,
    applied_stream_end: u64,
}

const EMPTY_SLOT: Slot = Slot {
    seq: Seq::NONE,
    data_set: DataSetId::NONE,
    stream_offset: 0,
    kind: RecordKind::Sync {
        first_seq: Seq::NONE,
        write_count: 0,
        ends_resync: false,
    },
    state: SlotState::Empty,
};

impl Staging {
    /// `arena` holds the payloads of records in the window at `stream_offset %
    /// window_bytes`.
    pub fn new(
        window_bytes: u64,
        arena: ArenaReader,
        applied: DataSetId,
        applied_seq: Seq,
        applied_stream_end: u64,
    ) -> Staging {
        let seqs = Staging::seq_capacity_for(window_bytes);
        // A data set is at least one write and its sync.
        let data_sets = (window_bytes / (2 * RECORD_OVERHEAD_BYTES) + 2) as usize;
        Staging {
            window_bytes,
            arena,
            slots: vec![EMPTY_SLOT; seqs],
            data_sets: vec![DataSetSlot::default(); data_sets],
            applied,
            applied_seq,
            applied_stream_end,
        }
    }

    /// How many seqs the window can hold.
    pub fn seq_capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many seqs a window of `window_bytes` can hold.
    pub fn seq_capacity_for(window_bytes: u64) -> usize {
        (window_bytes / RECORD_OVERHEAD_BYTES + 1) as usize
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

    /// Holds a record taken in seq order (its payload is in the arena already).
    pub fn insert(&mut self, slot: Slot) -> Result<(), &'static str> {
        assert!(
            slot.seq > self.applied_seq
                && slot.seq.0 - self.applied_seq.0 < self.slots.len() as u64,
            "{} is outside the staging window",
            slot.seq
        );
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
        let index = self.slot_index(slot.seq);
        assert_eq!(
            self.slots[index].state,
            SlotState::Empty,
            "a seq held twice"
        );
        self.slots[index] = slot;
        if slot.state == SlotState::Durable {
            self.sync_durable(slot.seq);
        }
        Ok(())
    }

    /// Holds a durable record found in the journal at start, copying its payload into
    /// the arena.
    pub fn restore(&mut self, slot: Slot, payload: &[u8]) -> Result<(), ArenaError> {
        let (at, claim) = self.arena_range(&slot);
        self.arena.claim_and_write(at, claim, payload)?;
        self.insert(Slot {
            state: SlotState::Durable,
            ..slot
        })
        .expect("records restored in seq order are consistent");
        Ok(())
    }

    /// Where `slot`'s stream range lies in the arena: its start and length.
    fn arena_range(&self, slot: &Slot) -> (usize, usize) {
        let at = (slot.stream_offset % self.window_bytes) as usize;
        (at, stream_cost(slot.payload_len()) as usize)
    }

    pub fn payload(&self, seq: Seq) -> &[u8] {
        let slot = self.slot(seq).expect("payload of a held record");
        let (at, _) = self.arena_range(slot);
        self.arena
            .read(at, slot.payload_len() as usize)
            .expect("a held record's range is in the arena")
            .expect("a held record's payload is written")
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
            self.sync_durable(seq);
        }
    }

    /// Marks the data set of `seq` complete if `seq` is its sync.
    fn sync_durable(&mut self, seq: Seq) {
        let slot = *self.slot(seq).expect("held");
        if let RecordKind::Sync { .. } = slot.kind {
            let index = self.data_set_index(slot.data_set);
            let entry = &mut self.data_sets[index];
            assert_eq!(entry.id, slot.data_set);
            entry.sync_durable = true;
        }
    }

    /// The next data set to apply, if it is complete: its sync is durable. Records are
    /// taken in seq order, checked to follow one another (the cursor), journaled in that
    /// order and committed as a prefix, so every write before a durable sync is durable.
    pub fn next_complete(&self) -> Option<CompleteDataSet> {
        let next = self.complete(self.applied.next());
        debug_assert!(next.is_none_or(|d| d.first_seq == self.applied_seq.next()));
        next
    }

    /// Data set `id` (past the applied one), if it is complete. A resync's data sets are
    /// applied one after another as a unit before the watermark moves past any of them.
    pub fn complete(&self, id: DataSetId) -> Option<CompleteDataSet> {
        assert!(id > self.applied, "{id} is applied already");
        let entry = &self.data_sets[self.data_set_index(id)];
        if entry.id != id || !entry.sync_durable {
            return None;
        }
        let sync_seq = entry.sync_seq.expect("a durable sync was recorded");
        let sync = *self.slot(sync_seq).expect("sync held");
        let RecordKind::Sync {
            first_seq,
            ends_resync,
            ..
        } = sync.kind
        else {
            unreachable!("the data set's sync slot holds its sync");
        };
        debug_assert!((first_seq.0..sync_seq.0).all(|seq| self
            .slot(Seq(seq))
            .is_some_and(|slot| slot.data_set == id && slot.state == SlotState::Durable)));
        Some(CompleteDataSet {
            id,
            first_seq,
            sync_seq,
            stream_end: sync.stream_end(),
            ends_resync,
        })
    }

    /// `data_set` is applied and its watermark durable: forget its records and free
    /// their arena ranges.
    pub fn advance(&mut self, data_set: &CompleteDataSet) {
        assert_eq!(
            data_set.id,
            self.applied.next(),
            "data sets are applied in order"
        );
        for seq in data_set.first_seq.0..=data_set.sync_seq.0 {
            let index = self.slot_index(Seq(seq));
            let slot = self.slots[index];
            if slot.seq == Seq(seq) && slot.state != SlotState::Empty {
                let (at, claim) = self.arena_range(&slot);
                self.arena
                    .release(at, claim)
                    .expect("a held record's range is in the arena");
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

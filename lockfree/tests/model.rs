//! The reorder buffer against a model (a `BTreeMap` of held seqs and the consumer's
//! `next`): random inserts (stale, in the window, ahead, duplicates), reserves (later
//! published or aborted), pops and drains from one thread give the same answers, and
//! every value is dropped exactly once. The staging arena's model is in model/arena.rs,
//! built into this target so that ci/miri.sh runs it too.
#![cfg(not(loom))]

#[path = "model/arena.rs"]
mod arena;

use std::cell::RefCell;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::rc::Rc;

use ordo_lockfree::{Rejected, ReorderBuffer, ReorderStats, Reservation, SEQ_LIMIT};
use proptest::prelude::*;

/// A value that counts its drops in a table shared with the test.
#[derive(Debug)]
struct Tracked {
    id: usize,
    drops: Rc<RefCell<Vec<u32>>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.borrow_mut()[self.id] += 1;
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Insert at `next + offset` (skipped if that is below zero).
    Insert {
        offset: i64,
    },
    /// Reserve `next + offset` (skipped if below zero) and keep the reservation.
    Reserve {
        offset: i64,
    },
    /// Publish (with a new value) or abort the held reservation at `pick` modulo how
    /// many are held; skipped if none is.
    Finish {
        pick: usize,
        publish: bool,
    },
    Pop,
    Drain {
        max: usize,
    },
}

fn op(capacity: usize) -> impl Strategy<Value = Op> {
    let window = capacity as i64;
    prop_oneof![
        6 => (-window - 2..2 * window + 2).prop_map(|offset| Op::Insert { offset }),
        2 => (-window - 2..2 * window + 2).prop_map(|offset| Op::Reserve { offset }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, publish)| Op::Finish { pick, publish }),
        2 => Just(Op::Pop),
        1 => (0..2 * capacity + 1).prop_map(|max| Op::Drain { max }),
    ]
}

fn case() -> impl Strategy<Value = (usize, u64, Vec<Op>)> {
    let capacity = prop_oneof![Just(1usize), Just(2), Just(4), Just(8)];
    let first_seq = prop_oneof![Just(0u64), 0..1_000u64, Just(SEQ_LIMIT - 1_000)];
    (capacity, first_seq).prop_flat_map(|(capacity, first_seq)| {
        (
            Just(capacity),
            Just(first_seq),
            prop::collection::vec(op(capacity), 1..200),
        )
    })
}

/// What a held seq has in the model: a reservation, or the id of its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Reserved,
    Value(usize),
}

/// What the buffer should do: the held seqs, `next`, and the counters.
struct Model {
    capacity: u64,
    next: u64,
    held: BTreeMap<u64, Held>,
    stats: ReorderStats,
}

/// The expected outcome of an insert, with the id of the value involved.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Inserted,
    Stale(usize),
    Ahead(usize),
    Duplicate(usize),
}

impl Model {
    /// An insert (`what` is `Value`) or a reserve (`Reserved`); `id` names the value an
    /// insert gives back when refused (a reserve's id is unused).
    fn insert(&mut self, seq: u64, id: usize, what: Held) -> Outcome {
        if seq < self.next {
            self.stats.rejected_stale += 1;
            Outcome::Stale(id)
        } else if seq >= self.next + self.capacity {
            self.stats.rejected_ahead += 1;
            Outcome::Ahead(id)
        } else if let Entry::Vacant(entry) = self.held.entry(seq) {
            entry.insert(what);
            if what != Held::Reserved {
                self.stats.inserted += 1;
            }
            Outcome::Inserted
        } else {
            self.stats.rejected_duplicate += 1;
            Outcome::Duplicate(id)
        }
    }

    fn finish(&mut self, seq: u64, published: Option<usize>) {
        let held = self
            .held
            .get_mut(&seq)
            .expect("a held reservation is in the model");
        assert_eq!(*held, Held::Reserved);
        match published {
            Some(id) => {
                *held = Held::Value(id);
                self.stats.inserted += 1;
            }
            None => {
                self.held.remove(&seq);
            }
        }
    }

    fn pop(&mut self) -> Option<(u64, usize)> {
        let Some(&Held::Value(id)) = self.held.get(&self.next) else {
            return None;
        };
        self.held.remove(&self.next);
        self.next += 1;
        Some((self.next - 1, id))
    }
}

/// A reserve's refusal, named with the op's id as the model names it (a reserve has no
/// value to give back).
fn refused(rejected: Rejected<()>, id: usize) -> Outcome {
    match rejected {
        Rejected::Stale(()) => Outcome::Stale(id),
        Rejected::Ahead(()) => Outcome::Ahead(id),
        Rejected::Duplicate(()) => Outcome::Duplicate(id),
    }
}

fn outcome(result: Result<(), Rejected<Tracked>>) -> Outcome {
    match result {
        Ok(()) => Outcome::Inserted,
        Err(Rejected::Stale(value)) => Outcome::Stale(value.id),
        Err(Rejected::Ahead(value)) => Outcome::Ahead(value.id),
        Err(Rejected::Duplicate(value)) => Outcome::Duplicate(value.id),
    }
}

fn run(capacity: usize, first_seq: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let drops = Rc::new(RefCell::new(vec![0u32; ops.len()]));
    let mut model = Model {
        capacity: capacity as u64,
        next: first_seq,
        held: BTreeMap::new(),
        stats: ReorderStats::default(),
    };
    let (producer, mut consumer) = ReorderBuffer::new(capacity, first_seq).split();
    let mut reservations: Vec<Reservation<'_, Tracked>> = Vec::new();
    // Each op may create one value; its id is the op's index.
    let mut created = vec![false; ops.len()];
    for (id, op) in ops.iter().enumerate() {
        match *op {
            Op::Insert { offset } => {
                let Some(seq) = model.next.checked_add_signed(offset) else {
                    continue;
                };
                created[id] = true;
                let value = Tracked {
                    id,
                    drops: Rc::clone(&drops),
                };
                let expected = model.insert(seq, id, Held::Value(id));
                prop_assert_eq!(outcome(producer.insert(seq, value)), expected);
            }
            Op::Reserve { offset } => {
                let Some(seq) = model.next.checked_add_signed(offset) else {
                    continue;
                };
                let expected = model.insert(seq, id, Held::Reserved);
                let got = match producer.reserve(seq) {
                    Ok(reservation) => {
                        prop_assert_eq!(reservation.seq(), seq);
                        reservations.push(reservation);
                        Outcome::Inserted
                    }
                    Err(rejected) => refused(rejected, id),
                };
                prop_assert_eq!(got, expected);
            }
            Op::Finish { pick, publish } => {
                if reservations.is_empty() {
                    continue;
                }
                let reservation = reservations.swap_remove(pick % reservations.len());
                let seq = reservation.seq();
                if publish {
                    created[id] = true;
                    reservation.publish(Tracked {
                        id,
                        drops: Rc::clone(&drops),
                    });
                    model.finish(seq, Some(id));
                } else {
                    drop(reservation);
                    model.finish(seq, None);
                }
            }
            Op::Pop => {
                let got = consumer.pop().map(|(seq, value)| (seq, value.id));
                prop_assert_eq!(got, model.pop());
            }
            Op::Drain { max } => {
                let mut got = Vec::new();
                let taken = consumer.drain(max, |seq, value| got.push((seq, value.id)));
                let expected: Vec<_> = std::iter::from_fn(|| model.pop()).take(max).collect();
                prop_assert_eq!(taken, got.len());
                prop_assert_eq!(got, expected);
            }
        }
        prop_assert_eq!(consumer.next(), model.next);
        prop_assert_eq!(producer.stats(), model.stats);
    }
    // Reservations still held abort; the buffer drops with no slot `WRITING`.
    drop(reservations);
    drop((producer, consumer));
    let drops = drops.borrow();
    for (id, &created) in created.iter().enumerate() {
        prop_assert_eq!(drops[id], u32::from(created), "drops of value {}", id);
    }
    Ok(())
}

proptest! {
    // Under miri (slow, and isolated from the file system proptest saves failures to):
    // fewer cases, nothing persisted.
    #![proptest_config(if cfg!(miri) {
        ProptestConfig { cases: 4, failure_persistence: None, ..ProptestConfig::default() }
    } else {
        ProptestConfig::with_cases(512)
    })]

    #[test]
    fn matches_the_model_and_drops_each_value_once((capacity, first_seq, ops) in case()) {
        run(capacity, first_seq, &ops)?;
    }
}

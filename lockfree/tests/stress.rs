//! Real threads on the reorder buffer: producers insert permutations of seqs, retrying
//! what is `Ahead`, while one consumer drains; it must see exactly `0..SEQS` in order.
//! Threads wait by yielding, never by sleeping. loom checks the interleavings
//! exhaustively on small cases (tests/loom.rs); this runs the real atomics at volume. The
//! staging arena's run is in stress/arena.rs, built into this target so that ci/miri.sh
//! runs it too.
#![cfg(not(loom))]

#[path = "stress/arena.rs"]
mod arena;

use std::thread;

use ordo_lockfree::{Consumer, Producer, Rejected, ReorderBuffer};

/// Miri interprets every instruction: a few hundred seqs still wrap the ring many times.
const SEQS: u64 = if cfg!(miri) { 300 } else { 30_000 };
const CAPACITY: usize = 64;
const DRAIN_MAX: usize = 16;

/// splitmix64: a seeded shuffle without a dependency.
fn shuffle(seqs: &mut [u64], mut seed: u64) {
    for i in (1..seqs.len()).rev() {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        seqs.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

/// Inserts every seq in `seqs` (in that order, deferring what is `Ahead` and retrying it
/// lowest first). Returns how many were refused as stale or duplicate.
fn insert_all(producer: &Producer<Box<u64>>, seqs: &[u64]) -> u64 {
    let mut refused = 0;
    let mut deferred = Vec::new();
    for &seq in seqs {
        match producer.insert(seq, Box::new(seq)) {
            Ok(()) => {}
            Err(Rejected::Ahead(_)) => deferred.push(seq),
            Err(Rejected::Stale(_) | Rejected::Duplicate(_)) => refused += 1,
        }
    }
    // Highest first, so `pop` takes the lowest: the one the consumer waits for soonest.
    deferred.sort_unstable_by(|a, b| b.cmp(a));
    while let Some(&seq) = deferred.last() {
        match producer.insert(seq, Box::new(seq)) {
            Ok(()) => {}
            Err(Rejected::Ahead(_)) => {
                thread::yield_now();
                continue;
            }
            Err(Rejected::Stale(_) | Rejected::Duplicate(_)) => refused += 1,
        }
        deferred.pop();
    }
    refused
}

/// Drains until `SEQS` values have come, checking each is the next seq with its value.
fn consume_all(consumer: &mut Consumer<Box<u64>>) {
    let mut expected = 0;
    while expected < SEQS {
        let taken = consumer.drain(DRAIN_MAX, |seq, value| {
            assert_eq!(seq, expected, "delivered out of order");
            assert_eq!(*value, seq, "value of another seq");
            expected += 1;
        });
        if taken == 0 {
            thread::yield_now();
        }
    }
    assert_eq!(consumer.next(), SEQS);
    assert_eq!(consumer.pop(), None);
}

/// Each producer gets its own seqs (every `producers`-th), shuffled.
fn disjoint_producers(producers: u64, seed: u64) {
    let (producer, mut consumer) = ReorderBuffer::new(CAPACITY, 0).split();
    thread::scope(|scope| {
        for lane in 0..producers {
            let producer = producer.clone();
            scope.spawn(move || {
                let mut seqs: Vec<u64> = (lane..SEQS).step_by(producers as usize).collect();
                shuffle(&mut seqs, seed + lane);
                assert_eq!(insert_all(&producer, &seqs), 0);
            });
        }
        consume_all(&mut consumer);
    });
    let stats = producer.stats();
    assert_eq!(stats.inserted, SEQS);
    assert_eq!(stats.rejected_stale + stats.rejected_duplicate, 0);
}

#[test]
fn two_disjoint_producers_deliver_every_seq_once_in_order() {
    disjoint_producers(2, 1);
}

#[test]
fn four_disjoint_producers_deliver_every_seq_once_in_order() {
    disjoint_producers(4, 2);
}

/// Two producers both insert every seq (as when a lane resends): each seq is accepted
/// exactly once and refused once, as a duplicate or as stale.
#[test]
fn overlapping_producers_deliver_every_seq_once() {
    let (producer, mut consumer) = ReorderBuffer::new(CAPACITY, 0).split();
    let refused = thread::scope(|scope| {
        let lanes: Vec<_> = (0..2)
            .map(|lane| {
                let producer = producer.clone();
                scope.spawn(move || {
                    let mut seqs: Vec<u64> = (0..SEQS).collect();
                    shuffle(&mut seqs, 10 + lane);
                    insert_all(&producer, &seqs)
                })
            })
            .collect();
        consume_all(&mut consumer);
        lanes
            .into_iter()
            .map(|lane| lane.join().expect("producer panicked"))
            .sum::<u64>()
    });
    let stats = producer.stats();
    assert_eq!(stats.inserted, SEQS);
    assert_eq!(refused, SEQS);
    assert_eq!(stats.rejected_stale + stats.rejected_duplicate, SEQS);
}

//! loom models of the reorder buffer: every interleaving (and every value the memory
//! model lets a load see) of two producers and the consumer on a few seqs, capacity 1, 2
//! or 4. Each value holds a loom `Arc`, so a value dropped twice or never fails the model.
//! Then the staging arena's: two writers, or a writer and the reader, on ranges of a few
//! granules, some across a bitmap word; loom sees every access to a granule's bytes
//! (through the arena's per-granule loom cells) and fails a model on one not ordered
//! after a conflicting access. Run with ci/loom.sh (`RUSTFLAGS="--cfg loom"`, release).
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use ordo_lockfree::{
    ArenaError, Consumer, Producer, Rejected, ReorderBuffer, StagingArena, GRANULE_BYTES,
};

/// A value tagged with the seq it was inserted for and the lane that inserted it. It
/// holds a loom `Arc`, so loom fails the model if it is dropped twice or never.
struct Value {
    seq: u64,
    lane: u8,
    _alive: Arc<()>,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value(seq {}, lane {})", self.seq, self.lane)
    }
}

/// Inserts `seq` from `lane`, retrying while it is `Ahead`; the final answer.
fn insert(producer: &Producer<Value>, seq: u64, lane: u8) -> Result<(), Rejected<Value>> {
    loop {
        match producer.insert(
            seq,
            Value {
                seq,
                lane,
                _alive: Arc::new(()),
            },
        ) {
            Err(Rejected::Ahead(_)) => thread::yield_now(),
            result => return result,
        }
    }
}

/// Pops until `next` reaches `end`; what came, in order, as (seq, lane).
fn pop_until(consumer: &mut Consumer<Value>, end: u64) -> Vec<(u64, u8)> {
    let mut delivered = Vec::new();
    while consumer.next() < end {
        match consumer.pop() {
            Some((seq, value)) => {
                assert_eq!(value.seq, seq, "a value of another seq");
                delivered.push((value.seq, value.lane));
            }
            None => thread::yield_now(),
        }
    }
    delivered
}

fn seqs(delivered: &[(u64, u8)]) -> Vec<u64> {
    delivered.iter().map(|&(seq, _)| seq).collect()
}

/// Capacity 2, seqs 0..3 from two lanes: lane 0 inserts 2 (= 0 + capacity) while the
/// consumer is taking 0, the lap wrap-around.
#[test]
fn disjoint_lanes_wrap_a_lap_in_order() {
    loom::model(|| {
        let (producer, mut consumer) = ReorderBuffer::new(2, 0).split();
        let lane_0 = producer.clone();
        let a = thread::spawn(move || {
            insert(&lane_0, 0, 0).unwrap();
            insert(&lane_0, 2, 0).unwrap();
        });
        let lane_1 = producer.clone();
        let b = thread::spawn(move || insert(&lane_1, 1, 1).unwrap());
        assert_eq!(seqs(&pop_until(&mut consumer, 3)), [0, 1, 2]);
        a.join().unwrap();
        b.join().unwrap();
        assert!(consumer.pop().is_none());
        assert_eq!(producer.stats().inserted, 3);
    });
}

/// Two lanes insert the same seqs 0 and 1 while the consumer takes them: each seq is
/// accepted from exactly one lane, the consumer gets that lane's value, and the other
/// insert is refused as a duplicate or, if the consumer already took it, as stale.
#[test]
fn the_same_seq_from_two_lanes_is_accepted_once() {
    loom::model(|| {
        let (producer, mut consumer) = ReorderBuffer::new(2, 0).split();
        let lanes: Vec<_> = (0..2u8)
            .map(|lane| {
                let producer = producer.clone();
                thread::spawn(move || [insert(&producer, 0, lane), insert(&producer, 1, lane)])
            })
            .collect();
        let delivered = pop_until(&mut consumer, 2);
        let results: Vec<_> = lanes.into_iter().map(|lane| lane.join().unwrap()).collect();
        assert_eq!(seqs(&delivered), [0, 1]);
        for (seq, &(_, winner)) in delivered.iter().enumerate() {
            for (lane, result) in results.iter().enumerate() {
                match &result[seq] {
                    Ok(()) => assert_eq!(lane, usize::from(winner), "two lanes accepted"),
                    Err(Rejected::Duplicate(_) | Rejected::Stale(_)) => {
                        assert_ne!(lane, usize::from(winner), "the winner was refused")
                    }
                    Err(Rejected::Ahead(_)) => unreachable!("retried"),
                }
            }
        }
        let stats = producer.stats();
        assert_eq!(stats.inserted, 2);
        assert_eq!(stats.rejected_duplicate + stats.rejected_stale, 2);
    });
}

/// Seqs 0 and 1 are held before the threads start (capacity 2). While the consumer
/// takes them, a resend of 0 is refused (duplicate before the take, stale after, never
/// accepted for the next lap) and another lane inserts 2 into the slot 0 frees.
#[test]
fn a_resend_racing_the_consumer_never_fills_the_next_lap() {
    loom::model(|| {
        let (producer, mut consumer) = ReorderBuffer::new(2, 0).split();
        insert(&producer, 0, 0).unwrap();
        insert(&producer, 1, 0).unwrap();
        let resend = producer.clone();
        let a = thread::spawn(move || insert(&resend, 0, 1));
        let next_lap = producer.clone();
        let b = thread::spawn(move || insert(&next_lap, 2, 2).unwrap());
        let delivered = pop_until(&mut consumer, 3);
        assert_eq!(delivered, [(0, 0), (1, 0), (2, 2)]);
        match a.join().unwrap() {
            Err(Rejected::Duplicate(value) | Rejected::Stale(value)) => {
                assert_eq!((value.seq, value.lane), (0, 1));
            }
            other => panic!("a resend of a held seq got {other:?}"),
        }
        b.join().unwrap();
    });
}

/// Capacity 2, seq 0 held before the threads start; one lane inserts 1, another 2 (the
/// next lap of 0's slot) while the consumer drains in batches of 2, publishing `next`
/// once per batch: the insert of 2 waits for the publish that frees its slot, and
/// delivery stays in order whether 0 and 1 come in one batch or two.
#[test]
fn batch_drains_deliver_in_order_across_laps() {
    loom::model(|| {
        let (producer, mut consumer) = ReorderBuffer::new(2, 0).split();
        insert(&producer, 0, 0).unwrap();
        let lane_1 = producer.clone();
        let a = thread::spawn(move || insert(&lane_1, 1, 1).unwrap());
        let lane_2 = producer.clone();
        let b = thread::spawn(move || insert(&lane_2, 2, 2).unwrap());
        let mut delivered = Vec::new();
        while consumer.next() < 3 {
            let taken = consumer.drain(2, |seq, value| {
                assert_eq!(value.seq, seq);
                delivered.push(seq);
            });
            if taken == 0 {
                thread::yield_now();
            }
        }
        assert_eq!(delivered, [0, 1, 2]);
        a.join().unwrap();
        b.join().unwrap();
    });
}

/// Capacity 4: lanes insert 1, 2 and 3 while the consumer finds 0 missing; dropping the
/// handles must drop the three values (loom fails the model on a leaked `Arc`).
#[test]
fn values_left_behind_are_dropped_once() {
    loom::model(|| {
        let (producer, mut consumer) = ReorderBuffer::new(4, 0).split();
        let lanes: Vec<_> = [[1, 3], [2, 2]]
            .into_iter()
            .enumerate()
            .map(|(lane, lane_seqs)| {
                let producer = producer.clone();
                thread::spawn(move || {
                    for seq in lane_seqs {
                        let _ = insert(&producer, seq, lane as u8);
                    }
                })
            })
            .collect();
        assert!(consumer.pop().is_none(), "0 never arrives");
        for lane in lanes {
            lane.join().unwrap();
        }
        let stats = producer.stats();
        assert_eq!((stats.inserted, stats.rejected_duplicate), (3, 1));
        drop((producer, consumer));
    });
}

/// Capacity 1, seq 0 held before the threads start, so seq 1 is the next lap of the one
/// slot. Two lanes race to reserve 1 while the consumer takes 0: lane 0 tries once and
/// aborts the reservation if it gets one (it is refused if the slot still serves 0 or
/// lane 1 holds 1), lane 1 retries while 1 is ahead or reserved by lane 0, and
/// publishes. The consumer gets lane 1's value exactly once: an abort hands the slot on,
/// never leaves it stuck, and lane 1's write is ordered after the consumer's move out of
/// the previous lap even when it reserved right after lane 0's abort.
///
/// The consumer joins lane 0 before it waits for 1: loom bounds preemptions, not how
/// long two threads may spin, so a reservation holder preempted while both lane 1 and
/// the consumer spin on it makes one execution exceed loom's branch limit.
#[test]
fn an_aborted_reservation_hands_the_seq_to_the_other_lane() {
    loom::model(|| {
        let (producer, mut consumer) = ReorderBuffer::new(1, 0).split();
        insert(&producer, 0, 0).unwrap();
        let aborting = producer.clone();
        let a = thread::spawn(move || match aborting.reserve(1) {
            Ok(reservation) => {
                assert_eq!(reservation.seq(), 1);
                drop(reservation);
                true
            }
            Err(Rejected::Ahead(()) | Rejected::Duplicate(()) | Rejected::Stale(())) => false,
        });
        let retrying = producer.clone();
        let b = thread::spawn(move || loop {
            match retrying.reserve(1) {
                Err(Rejected::Ahead(()) | Rejected::Duplicate(())) => thread::yield_now(),
                Ok(reservation) => {
                    reservation.publish(Value {
                        seq: 1,
                        lane: 1,
                        _alive: Arc::new(()),
                    });
                    return;
                }
                Err(Rejected::Stale(())) => panic!("1 was delivered without lane 1"),
            }
        });
        let (seq, value) = consumer.pop().expect("0 is held");
        assert_eq!((seq, value.seq, value.lane), (0, 0, 0));
        let aborted = a.join().unwrap();
        assert_eq!(pop_until(&mut consumer, 2), [(1, 1)]);
        b.join().unwrap();
        assert!(consumer.pop().is_none());
        let stats = producer.stats();
        assert_eq!(stats.inserted, 2, "an abort is not an insert");
        let refused = stats.rejected_ahead + stats.rejected_duplicate + stats.rejected_stale;
        assert!(
            aborted || refused > 0,
            "lane 0 neither reserved nor was refused"
        );
    });
}

const G: usize = GRANULE_BYTES;

/// `granules` granules tagged `tag`, varying inside so a shifted or partial copy shows.
fn payload(tag: u8, granules: usize) -> Vec<u8> {
    (0..granules * G)
        .map(|i| tag.wrapping_add((i / 64) as u8))
        .collect()
}

/// Writers claim granules 62..66 (across the first two bitmap words) and 65..67: of two
/// racing claims of overlapping ranges exactly one succeeds, and the loser undoes every
/// bit it set (in both words, if it is the wider one), so the winner's range reads back
/// whole and the rest of the loser's range can be written afterwards.
#[test]
fn of_two_overlapping_writes_exactly_one_succeeds_and_the_loser_leaves_nothing() {
    loom::model(|| {
        let (writer, reader) = StagingArena::new(vec![0; 68 * G]).split();
        let ranges = [(62, 4), (65, 2)];
        let writes: Vec<_> = ranges
            .iter()
            .enumerate()
            .map(|(tag, &(first, granules))| {
                let writer = writer.clone();
                thread::spawn(move || writer.write(first * G, &payload(tag as u8, granules)))
            })
            .collect();
        let results: Vec<_> = writes.into_iter().map(|w| w.join().unwrap()).collect();
        let winner = match results[..] {
            [Ok(()), Err(ArenaError::Overlap { .. })] => 0,
            [Err(ArenaError::Overlap { .. }), Ok(())] => 1,
            ref other => panic!("not exactly one winner: {other:?}"),
        };
        let (first, granules) = ranges[winner];
        assert_eq!(
            reader.read(first * G, granules * G).unwrap(),
            Some(&payload(winner as u8, granules)[..])
        );
        // The loser's granules outside the winner's range are free again.
        let (loser_first, loser_granules) = ranges[1 - winner];
        for granule in loser_first..loser_first + loser_granules {
            if !(first..first + granules).contains(&granule) {
                assert_eq!(reader.read(granule * G, G).unwrap(), None);
                reader.write(granule * G, &payload(9, 1)).unwrap();
            }
        }
    });
}

/// A writer writes granules 63..65 (across a bitmap word) while the reader reads them
/// once: it sees nothing or the whole payload, never part of it or stale bytes.
#[test]
fn a_concurrent_read_sees_nothing_or_the_whole_payload() {
    loom::model(|| {
        let (writer, reader) = StagingArena::new(vec![0; 66 * G]).split();
        let write = thread::spawn(move || writer.write(63 * G, &payload(1, 2)).unwrap());
        if let Some(bytes) = reader.read(63 * G, 2 * G).unwrap() {
            assert!(bytes == payload(1, 2), "a partial payload");
        }
        write.join().unwrap();
        assert_eq!(
            reader.read(63 * G, 2 * G).unwrap(),
            Some(&payload(1, 2)[..])
        );
    });
}

/// Granule 0 holds a payload the reader wrote at setup. A writer retries claiming it
/// while the reader reads the old payload and releases it: the writer succeeds only
/// after the release (it sees the flag the reader set just before), and the reader then
/// reads the new payload intact. loom checks the reader's reads of the old bytes happen
/// before the writer's copy.
#[test]
fn a_released_range_goes_to_the_next_writer_only_after_the_release() {
    loom::model(|| {
        let (writer, mut reader) = StagingArena::new(vec![0; G]).split();
        reader.write(0, &payload(1, 1)).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let write = {
            let released = Arc::clone(&released);
            thread::spawn(move || loop {
                match writer.write(0, &payload(2, 1)) {
                    Ok(()) => {
                        // Relaxed: the claim acquired the release, which follows the store.
                        assert!(released.load(Ordering::Relaxed), "claimed before release");
                        return;
                    }
                    Err(ArenaError::Overlap { .. }) => thread::yield_now(),
                    Err(other) => panic!("{other}"),
                }
            })
        };
        assert_eq!(reader.read(0, G).unwrap(), Some(&payload(1, 1)[..]));
        // Relaxed: ordered before the writer's check by the release that follows.
        released.store(true, Ordering::Relaxed);
        reader.release(0, G).unwrap();
        loop {
            match reader.read(0, G).unwrap() {
                Some(bytes) => {
                    assert!(bytes == payload(2, 1), "the new payload torn");
                    break;
                }
                None => thread::yield_now(),
            }
        }
        write.join().unwrap();
    });
}

/// Runs `f`; `None` if it panicked because a release found its range not written (that
/// panic is not printed). Any other panic, loom's included, goes on as it would.
fn unless_refused_as_unwritten<R>(f: impl FnOnce() -> R) -> Option<R> {
    fn refused_as_unwritten(payload: &(dyn std::any::Any + Send)) -> bool {
        payload
            .downcast_ref::<String>()
            .is_some_and(|message| message.contains("not all written"))
    }
    let previous = std::sync::Arc::new(std::panic::take_hook());
    let chained = std::sync::Arc::clone(&previous);
    std::panic::set_hook(Box::new(move |info| {
        if !refused_as_unwritten(info.payload()) {
            (*chained)(info);
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(std::panic::take_hook());
    let Ok(previous) = std::sync::Arc::try_unwrap(previous) else {
        unreachable!("the chaining hook was dropped");
    };
    std::panic::set_hook(previous);
    match result {
        Ok(value) => Some(value),
        Err(payload) if refused_as_unwritten(&*payload) => None,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// The reader learns of a write through a Relaxed flag (not through `read`), releases the
/// range and writes it itself. The flag orders nothing, so `release` may not see the
/// range written and panic (the caller's bug, refused before anything changes); when it
/// does see it, it must order the writer's copy before the next one on its own, or the
/// two copies race, which loom reports.
#[test]
fn a_release_without_a_read_still_orders_the_next_write() {
    static RELEASED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    loom::model(|| {
        let (writer, mut reader) = StagingArena::new(vec![0; G]).split();
        let done = Arc::new(AtomicBool::new(false));
        let write = {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                writer.write(0, &payload(1, 1)).unwrap();
                // Relaxed on purpose: the flag carries no order; `release` must.
                done.store(true, Ordering::Relaxed);
            })
        };
        while !done.load(Ordering::Relaxed) {
            thread::yield_now();
        }
        if let Some(released) = unless_refused_as_unwritten(|| reader.release(0, G)) {
            released.unwrap();
            RELEASED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            reader.write(0, &payload(2, 1)).unwrap();
            assert_eq!(reader.read(0, G).unwrap(), Some(&payload(2, 1)[..]));
        }
        write.join().unwrap();
    });
    assert!(
        RELEASED.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no execution released: the model checked nothing"
    );
}

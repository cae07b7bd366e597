//! Single-threaded cases of the reorder buffer, including its stamps; the model
//! comparison and the threaded runs are in tests/.

use super::*;

fn buffer(capacity: usize, first_seq: u64) -> (Producer<u64>, Consumer<u64>) {
    ReorderBuffer::new(capacity, first_seq).split()
}

#[test]
fn delivers_out_of_order_inserts_in_seq_order() {
    let (producer, mut consumer) = buffer(4, 0);
    assert_eq!(consumer.pop(), None);
    for seq in [2, 0, 3, 1] {
        producer.insert(seq, seq * 10).unwrap();
    }
    assert_eq!(consumer.pop(), Some((0, 0)));
    assert_eq!(consumer.pop(), Some((1, 10)));
    assert_eq!(consumer.pop(), Some((2, 20)));
    assert_eq!(consumer.pop(), Some((3, 30)));
    assert_eq!(consumer.pop(), None);
    assert_eq!(consumer.next(), 4);
}

#[test]
fn rejects_stale_ahead_and_duplicate_and_counts_them() {
    let (producer, mut consumer) = buffer(4, 10);
    assert_eq!(producer.insert(9, 1), Err(Rejected::Stale(1)));
    assert_eq!(producer.insert(14, 2), Err(Rejected::Ahead(2)));
    producer.insert(13, 3).unwrap();
    assert_eq!(producer.insert(13, 4), Err(Rejected::Duplicate(4)));
    producer.insert(10, 5).unwrap();
    assert_eq!(consumer.pop(), Some((10, 5)));
    assert_eq!(producer.insert(10, 6), Err(Rejected::Stale(6)));
    producer.insert(14, 7).unwrap();
    assert_eq!(
        producer.stats(),
        ReorderStats {
            inserted: 3,
            rejected_ahead: 1,
            rejected_stale: 2,
            rejected_duplicate: 1,
        }
    );
    assert_eq!(Rejected::Ahead(8).into_inner(), 8);
}

#[test]
fn stamps_start_at_the_first_seq_of_each_slot() {
    let shared = ReorderBuffer::<u64>::new(4, 6);
    let stamps: Vec<u64> = shared
        .slots
        .iter()
        .map(|slot| slot.stamp.load(Ordering::Relaxed))
        .collect();
    // Slot i waits for the first seq >= 6 with seq % 4 == i.
    assert_eq!(stamps, [8, 9, 6, 7].map(|seq| stamp(seq, EMPTY)).to_vec());
}

#[test]
fn a_slot_is_released_for_the_next_lap_only_when_taken() {
    let (producer, mut consumer) = buffer(2, 0);
    producer.insert(0, 0).unwrap();
    producer.insert(1, 1).unwrap();
    assert_eq!(producer.insert(2, 2), Err(Rejected::Ahead(2)));
    assert_eq!(consumer.pop(), Some((0, 0)));
    producer.insert(2, 2).unwrap();
    assert_eq!(producer.insert(3, 3), Err(Rejected::Ahead(3)));
    assert_eq!(consumer.pop(), Some((1, 1)));
    assert_eq!(consumer.pop(), Some((2, 2)));
}

#[test]
fn drain_publishes_next_once_per_batch() {
    let (producer, mut consumer) = buffer(4, 0);
    for seq in 0..4 {
        producer.insert(seq, seq).unwrap();
    }
    let mut seen = Vec::new();
    let taken = consumer.drain(3, |seq, value| {
        // Inside the batch the freed slots are not yet published: still `Ahead`.
        assert_eq!(producer.insert(seq + 4, 0), Err(Rejected::Ahead(0)));
        seen.push((seq, value));
    });
    assert_eq!(taken, 3);
    assert_eq!(seen, [(0, 0), (1, 1), (2, 2)]);
    producer.insert(4, 4).unwrap();
    producer.insert(6, 6).unwrap();
    assert_eq!(consumer.drain(0, |_, _| unreachable!()), 0);
    assert_eq!(consumer.drain(10, |_, _| {}), 2, "3 and 4; 5 is missing");
    assert_eq!(consumer.next(), 5);
}

#[test]
fn capacity_one_serves_one_seq_at_a_time() {
    let (producer, mut consumer) = buffer(1, 0);
    producer.insert(0, 0).unwrap();
    assert_eq!(producer.insert(1, 1), Err(Rejected::Ahead(1)));
    assert_eq!(consumer.pop(), Some((0, 0)));
    producer.insert(1, 1).unwrap();
    assert_eq!(consumer.pop(), Some((1, 1)));
}

#[test]
fn dropping_the_handles_drops_values_still_held() {
    let value = std::sync::Arc::new(());
    let (producer, consumer) = ReorderBuffer::new(4, 0).split();
    producer.insert(1, std::sync::Arc::clone(&value)).unwrap();
    producer.insert(3, std::sync::Arc::clone(&value)).unwrap();
    assert_eq!(std::sync::Arc::strong_count(&value), 3);
    drop(consumer);
    assert_eq!(
        std::sync::Arc::strong_count(&value),
        3,
        "the producer holds it"
    );
    drop(producer);
    assert_eq!(std::sync::Arc::strong_count(&value), 1);
}

#[test]
fn an_aborted_reservation_frees_its_seq_for_a_later_reserve() {
    let (producer, mut consumer) = buffer(4, 0);
    let reservation = producer.reserve(1).unwrap();
    assert_eq!(reservation.seq(), 1);
    drop(reservation);
    assert_eq!(
        producer.shared.slot(1).stamp.load(Ordering::Relaxed),
        stamp(1, EMPTY),
        "the abort restores the stamp the reserve found"
    );
    producer.reserve(1).unwrap().publish(10);
    producer.insert(0, 0).unwrap();
    assert_eq!(consumer.pop(), Some((0, 0)));
    assert_eq!(consumer.pop(), Some((1, 10)));
    assert_eq!(producer.stats().inserted, 2, "the abort is not an insert");
}

#[test]
fn a_held_reservation_refuses_the_same_seq_as_duplicate() {
    let (producer, _consumer) = buffer(4, 0);
    let reservation = producer.reserve(2).unwrap();
    assert_eq!(producer.reserve(2).unwrap_err(), Rejected::Duplicate(()));
    assert_eq!(producer.insert(2, 20), Err(Rejected::Duplicate(20)));
    reservation.publish(2);
    assert_eq!(producer.reserve(2).unwrap_err(), Rejected::Duplicate(()));
    assert_eq!(
        producer.stats(),
        ReorderStats {
            inserted: 1,
            rejected_duplicate: 3,
            ..ReorderStats::default()
        }
    );
}

#[test]
fn the_consumer_waits_at_a_reserved_seq() {
    let (producer, mut consumer) = buffer(4, 0);
    let reservation = producer.reserve(0).unwrap();
    producer.insert(1, 1).unwrap();
    assert_eq!(consumer.pop(), None);
    assert_eq!(consumer.drain(4, |_, _| unreachable!()), 0);
    assert_eq!(consumer.next(), 0);
    reservation.publish(0);
    let mut delivered = Vec::new();
    consumer.drain(4, |seq, value| delivered.push((seq, value)));
    assert_eq!(delivered, [(0, 0), (1, 1)]);
}

#[test]
fn reserve_refuses_stale_and_ahead_seqs_like_insert() {
    let (producer, mut consumer) = buffer(2, 5);
    assert_eq!(producer.reserve(4).unwrap_err(), Rejected::Stale(()));
    assert_eq!(producer.reserve(7).unwrap_err(), Rejected::Ahead(()));
    producer.insert(5, 5).unwrap();
    assert_eq!(consumer.pop(), Some((5, 5)));
    producer.reserve(7).unwrap().publish(7);
    let stats = producer.stats();
    assert_eq!((stats.rejected_stale, stats.rejected_ahead), (1, 1));
}

#[test]
fn a_reservation_can_be_published_from_another_thread() {
    let (producer, mut consumer) = buffer(4, 0);
    let reservation = producer.reserve(0).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(move || reservation.publish(7));
    });
    assert_eq!(consumer.pop(), Some((0, 7)));
}

#[test]
// The panic in the buffer's `Drop` stops the `Arc` from freeing its allocation, which miri
// would report as a leak: the point of this test is the panic, so it runs natively only.
#[cfg_attr(miri, ignore)]
#[should_panic(expected = "a reservation was leaked")]
fn a_leaked_reservation_is_caught_when_the_buffer_drops() {
    let (producer, consumer) = buffer(4, 0);
    std::mem::forget(producer.reserve(0).unwrap());
    drop((producer, consumer));
}

#[test]
#[should_panic(expected = "not a power of two")]
fn capacity_must_be_a_power_of_two() {
    let _ = ReorderBuffer::<u64>::new(3, 0);
}

#[test]
#[should_panic(expected = "too close to the seq limit")]
fn first_seq_must_leave_room_for_a_window() {
    let _ = ReorderBuffer::<u64>::new(4, SEQ_LIMIT - 3);
}

#[test]
fn handles_are_send_and_sync_as_intended() {
    fn send<S: Send>() {}
    fn sync<S: Sync>() {}
    fn clone<C: Clone>() {}
    send::<Producer<Vec<u8>>>();
    sync::<Producer<Vec<u8>>>();
    clone::<Producer<Vec<u8>>>();
    send::<Consumer<Vec<u8>>>();
    send::<Reservation<'static, Vec<u8>>>();
}

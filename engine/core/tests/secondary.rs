//! Scenarios on a secondary alone, fed hand-built primary frames (through the wire codec)
//! in chosen orders, from one or several threads, and restarted on its own storage. The
//! replica is always compared with an independent model: a plain image per volume with
//! every applied data set written in seq order. Refused input: secondary_refusals.rs.

mod support;

use support::*;

#[test]
fn a_data_set_arriving_out_of_order_on_two_lanes_is_acked_then_applied_as_a_unit() {
    let mut s = create();
    hello(&mut s, 0);
    hello(&mut s, 1);
    let mut stream = Stream::default();
    let ds1 = stream.data_set(vec![
        w(0, 0, 2, 0x10),
        w(1, 3, 1, 0x20),
        w(0, 1, 1, 0x30),
        w(1, 0, 4, 0x40),
        w(0, 10, 16, 0x50),
    ]);
    for (i, index) in [3, 0, 4, 1, 2].into_iter().enumerate() {
        send(&mut s, i % 2, [&ds1.writes[index]]);
    }
    settle(&mut s);
    let (lane0, lane1) = (transmit(&mut s, 0), transmit(&mut s, 1));
    assert_eq!((lane0.hellos.len(), lane1.hellos.len()), (1, 1));
    let resume = &lane0.hellos[0].resume;
    assert_eq!(resume.applied_data_set, DataSetId(0));
    assert_eq!(resume.window_bytes, WINDOW);
    let mut acked = [lane0.acked, lane1.acked].concat();
    acked.sort_unstable();
    assert_eq!(acked, seqs(&ds1.writes), "each write acked once durable");
    assert!(lane0.applied.is_empty() && lane1.applied.is_empty());
    assert_eq!(s.applied(), DataSetId(0), "no sync yet");
    assert_replica(&s, &Model::zeros());

    send(&mut s, 1, [&ds1.sync]);
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(1));
    assert!(s.is_between_data_sets());
    let mut model = Model::zeros();
    model.apply(&ds1);
    assert_replica(&s, &model);
    let reply = transmit(&mut s, 1);
    assert_eq!(reply.acked, [ds1.sync.seq.0]);
    assert_eq!(reply.applied, [ds1.applied()]);
    assert_eq!(s.stats().data_sets_applied, 1);
}

#[test]
fn overlapping_writes_in_a_data_set_the_higher_seq_wins_in_any_arrival_order() {
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let mut s = create();
        hello(&mut s, 0);
        let mut stream = Stream::default();
        let ds1 = stream.data_set(vec![w(0, 0, 4, 1), w(0, 1, 2, 2), w(0, 2, 1, 3)]);
        for index in order {
            send(&mut s, 0, [&ds1.writes[index]]);
        }
        send(&mut s, 0, [&ds1.sync]);
        settle(&mut s);
        let mut model = Model::zeros();
        model.apply(&ds1);
        assert_eq!(s.applied(), DataSetId(1), "{order:?}");
        assert_replica(&s, &model);
    }
}

#[test]
fn a_data_set_waits_for_its_missing_write_and_for_the_data_set_before_it() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::default();
    let ds1 = stream.data_set(vec![w(0, 0, 2, 1), w(1, 0, 1, 2), w(0, 4, 1, 3)]);
    let ds2 = stream.data_set(vec![w(0, 1, 4, 4), w(1, 0, 2, 5)]);
    let missing = &ds1.writes[1];
    send(&mut s, 0, ds1.records().filter(|r| r.seq != missing.seq));
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(0), "a write of 1 is missing");
    assert_replica(&s, &Model::zeros());

    send(&mut s, 0, ds2.records());
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(0), "2 is complete, 1 is not");
    assert!(s.is_between_data_sets());
    assert_replica(&s, &Model::zeros());
    // Records are journaled in seq order: what follows the gap waits, unacknowledged, in
    // the reorder buffer.
    let reply = transmit(&mut s, 0);
    assert_eq!(reply.acked, seqs([&ds1.writes[0]]));
    assert!(reply.applied.is_empty());
    assert_eq!(s.stats().records_received, 6);
    assert_eq!(s.stats().records_staged, 1);

    send(&mut s, 0, [missing]);
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(2));
    let mut model = Model::zeros();
    model.apply(&ds1);
    model.apply(&ds2);
    assert_replica(&s, &model);
    let reply = transmit(&mut s, 0);
    let rest = ds1.records().chain(ds2.records()).skip(1);
    assert_eq!(reply.acked, seqs(rest));
    assert_eq!(reply.applied.last(), Some(&ds2.applied()));
}

#[test]
fn a_duplicate_write_is_harmless_and_acknowledged_again() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::default();
    let ds1 = stream.data_set(vec![w(0, 0, 1, 1), w(0, 1, 1, 2)]);
    let first = &ds1.writes[0];
    send(&mut s, 0, [first]);
    settle(&mut s);
    assert_eq!(transmit(&mut s, 0).acked, [first.seq.0]);
    send(&mut s, 0, [first]);
    settle(&mut s);
    assert_eq!(s.stats().duplicates, 1);
    assert_eq!(transmit(&mut s, 0).acked, [first.seq.0], "acked again");

    send(&mut s, 0, ds1.records().skip(1));
    send(&mut s, 0, [first]);
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(1));
    let mut model = Model::zeros();
    model.apply(&ds1);
    assert_replica(&s, &model);
    transmit(&mut s, 0);

    // Once applied, a late copy is answered with the watermark instead of an ack.
    send(&mut s, 0, [first]);
    settle(&mut s);
    let reply = transmit(&mut s, 0);
    assert!(reply.acked.is_empty());
    assert_eq!(reply.applied, [ds1.applied()]);
    assert_eq!(s.stats().duplicates, 3);
    assert_eq!(s.stats().data_sets_applied, 1);
    assert_replica(&s, &model);
}

#[test]
fn a_restarted_secondary_reapplies_what_its_journal_holds_and_finishes_the_rest() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::default();
    let ds1 = stream.data_set(vec![w(0, 0, 3, 1), w(1, 2, 1, 2), w(0, 1, 1, 3)]);
    let ds2 = stream.data_set(vec![w(0, 0, 1, 4), w(1, 2, 2, 5), w(1, 9, 1, 6)]);
    let missing = &ds2.writes[2];
    send(&mut s, 0, ds1.records());
    send(&mut s, 0, ds2.records().filter(|r| r.seq != missing.seq));
    s.poll_storage();
    assert_eq!(s.applied(), DataSetId(0), "crashed before any apply");

    // Records are journaled in seq order: data set 2's sync, behind the missing write,
    // was never journaled.
    let mut s = restart(s);
    assert_eq!(s.stats().recovered_records, 4 + 2);
    assert_eq!(s.applied(), DataSetId(0));
    assert!(!s.is_between_data_sets(), "1 is still to be re-applied");
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(1));
    assert!(s.is_between_data_sets());
    let mut model = Model::zeros();
    model.apply(&ds1);
    assert_replica(&s, &model);

    hello(&mut s, 0);
    let reply = transmit(&mut s, 0);
    let [answer] = &reply.hellos[..] else {
        panic!("{reply:?}");
    };
    let resume = &answer.resume;
    assert_eq!(resume.applied_data_set, DataSetId(1));
    assert_eq!(resume.applied_seq, ds1.sync.seq);
    assert_eq!(resume.applied_stream_end, ds1.applied().stream_end);
    let held = seqs(&ds2.writes[..2]);
    assert_eq!(expand(&resume.staged), held, "staged records resume");

    // The primary sends what the Hello does not name.
    send(&mut s, 0, [missing, &ds2.sync]);
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(2));
    model.apply(&ds2);
    assert_replica(&s, &model);
}

#[test]
fn a_crash_at_any_step_of_an_apply_recovers_to_a_closed_data_set_then_catches_up() {
    let mut stream = Stream::default();
    let ds1 = stream.data_set(vec![w(0, 0, 2, 1), w(0, 1, 1, 2), w(1, 5, 1, 3)]);
    let ds2 = stream.data_set(vec![w(0, 0, 1, 4), w(1, 5, 2, 5)]);
    let mut model = Model::zeros();
    model.apply(&ds1);
    // Each poll takes the apply one step: journal writes, their flush, replica writes,
    // replica flush, watermark write, its flush. Crash after each.
    for polls in 0..12 {
        let mut s = create();
        hello(&mut s, 0);
        send(&mut s, 0, ds1.records().chain(ds2.records().skip(1)));
        for _ in 0..polls {
            s.poll_storage();
        }
        let mut s = restart(s);
        // Records are journaled in seq order, from the first poll on: data set 2's, behind
        // its missing write, never are. Once data set 1 is applied its records leave the
        // journal.
        let journal_holds = if s.applied() == ds1.id || polls == 0 {
            0
        } else {
            4
        };
        assert_eq!(s.stats().recovered_records, journal_holds, "{polls} polls");
        settle(&mut s);
        if polls == 0 {
            assert_eq!(s.applied(), DataSetId(0));
            assert_replica(&s, &Model::zeros());
        } else {
            assert_eq!(s.applied(), ds1.id, "crash after {polls} polls");
            assert_replica(&s, &model);
        }

        // The primary resends what was not acknowledged (here: everything; copies of what
        // the secondary holds are harmless).
        hello(&mut s, 0);
        send(&mut s, 0, ds1.records().chain(ds2.records()));
        settle(&mut s);
        assert_eq!(s.applied(), ds2.id, "crash after {polls} polls");
        let mut model = model.clone();
        model.apply(&ds2);
        assert_replica(&s, &model);
    }
}

/// Four receiver threads hand one stream's records to the inbox at once, each its own
/// share in its own order, some twice, while this thread journals and applies: every data
/// set is applied in order and the replica is the model's.
#[test]
fn receivers_on_several_threads_stage_one_stream_concurrently() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::default();
    let mut model = Model::zeros();
    let data_sets: Vec<DataSet> = (0..60u64)
        .map(|i| {
            let writes = (0..1 + i % 5)
                .map(|k| {
                    w(
                        (i + k) as u16 % 2,
                        (i * 7 + k * 3) % 60,
                        1 + (k % 3) as usize,
                        i as u8,
                    )
                })
                .collect();
            let data_set = stream.data_set(writes);
            model.apply(&data_set);
            data_set
        })
        .collect();
    let records: Vec<&Record> = data_sets.iter().flat_map(DataSet::records).collect();
    const THREADS: usize = 4;
    let inbox = std::sync::Arc::clone(s.inbox());
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let inbox = std::sync::Arc::clone(&inbox);
            let mine: Vec<&Record> = records
                .iter()
                .copied()
                .skip(thread)
                .step_by(THREADS)
                .collect();
            scope.spawn(move || {
                // Odd threads send their share backwards; every 5th record goes twice.
                let order: Vec<&Record> = if thread % 2 == 1 {
                    mine.iter().rev().copied().collect()
                } else {
                    mine
                };
                let mut pending: Vec<(usize, &Record)> = order.into_iter().enumerate().collect();
                // Records past the window are refused; as the primary does, send them
                // again on a later pass rather than wait on one.
                while !pending.is_empty() {
                    pending.retain(|&(n, record)| {
                        let (frame, _) = decode(&record.wire).unwrap();
                        let copies = if n % 5 == 0 { 2 } else { 1 };
                        let mut refused = false;
                        for _ in 0..copies {
                            let received = match &frame {
                                Frame::Write(write) => inbox.receive_write(write),
                                Frame::Sync(sync) => inbox.receive_sync(sync),
                                _ => unreachable!("records only"),
                            };
                            refused |= received.unwrap() == Received::OutOfWindow;
                        }
                        refused
                    });
                    std::thread::yield_now();
                }
            });
        }
        let last = data_sets.last().unwrap().id;
        // The deadline only keeps a broken test from hanging CI; nothing is timed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while s.applied() < last {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck at {}",
                s.applied()
            );
            assert_eq!(s.failure(), None);
            if s.poll_storage() == 0 {
                std::thread::yield_now();
            }
        }
    });
    settle(&mut s);
    assert!(s.is_between_data_sets());
    assert_replica(&s, &model);
    let stats = s.stats();
    assert_eq!(stats.records_received, records.len() as u64);
    assert_eq!(stats.records_staged, records.len() as u64);
    assert!(stats.duplicates >= (records.len() / 5) as u64, "{stats:?}");
}

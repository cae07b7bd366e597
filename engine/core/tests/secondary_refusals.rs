//! What a secondary refuses: records before the handshake, a Hello of another group or
//! other volumes, bad writes and frames only a secondary sends, records overlapping in the
//! stream, journals not formatted or not its own, and a window it cannot stage in. Each
//! time the replica stays untouched and the secondary still works after.

mod support;

use support::*;

#[test]
fn records_before_the_hello_are_dropped_and_counted() {
    let mut s = create();
    let mut stream = Stream::default();
    let ds1 = stream.data_set(vec![w(0, 0, 1, 1), w(1, 1, 1, 2)]);
    send(&mut s, 0, ds1.records());
    settle(&mut s);
    assert_eq!(s.stats().before_hello, 3);
    assert_eq!(s.stats().records_staged, 0);
    let reply = transmit(&mut s, 0);
    assert!(reply.hellos.is_empty() && reply.acked.is_empty());
    assert_replica(&s, &Model::zeros());

    hello(&mut s, 0);
    send(&mut s, 1, ds1.records());
    assert_eq!(s.stats().before_hello, 6, "lane 1 has had no Hello");
    send(&mut s, 0, ds1.records());
    settle(&mut s);
    let mut model = Model::zeros();
    model.apply(&ds1);
    assert_eq!(s.applied(), DataSetId(1));
    assert_replica(&s, &model);
}

#[test]
fn a_hello_from_another_group_or_with_other_volumes_is_refused() {
    let wrong: [Change; 6] = [
        ("role", &|h| h.role = Role::Secondary),
        ("group id", &|h| h.group = GroupId(8)),
        ("volume count", &|h| h.volumes.truncate(1)),
        ("volume name", &|h| h.volumes[1].name = "logs".into()),
        ("volume size", &|h| h.volumes[0].size_bytes *= 2),
        ("block size", &|h| h.volumes[1].block_size = 512),
    ];
    for (expected_field, change) in wrong {
        let mut s = create();
        let mut bad = primary_hello();
        change(&mut bad);
        let error = deliver(&mut s, 0, &Frame::Hello(bad)).unwrap_err();
        let PeerError::Mismatch { field, .. } = error else {
            panic!("{expected_field}: {error:?}");
        };
        assert_eq!(field, expected_field);
        let mut stream = Stream::default();
        let ds1 = stream.data_set(vec![w(0, 0, 1, 1)]);
        send(&mut s, 0, ds1.records());
        settle(&mut s);
        assert_eq!(s.stats().before_hello, 2, "{expected_field}");
        assert!(transmit(&mut s, 0).hellos.is_empty(), "{expected_field}");
        assert_replica(&s, &Model::zeros());
        still_works(&mut s, &mut Stream::default(), &mut Model::zeros());
    }
}

#[test]
fn a_bad_write_or_a_frame_only_a_secondary_sends_is_refused_without_touching_the_replica() {
    let mut s = create();
    hello(&mut s, 0);
    let (_, _, block) = w(0, 0, 1, 9);
    let two_blocks = [block.clone(), block.clone()].concat();
    let too_large = vec![9; 2 * MAX_WRITE as usize];
    let bad_writes = [
        (2, 0, &block[..]),
        (0, 100, &block[..]),
        (0, 0, &block[..1000]),
        (0, VOLUME_BYTES - 4096, &two_blocks[..]),
        (1, VOLUME_BYTES, &block[..]),
        (0, 0, &too_large[..]),
    ];
    for (volume, offset, payload) in bad_writes {
        let write = WriteFrame {
            volume: VolumeId(volume),
            seq: Seq(1),
            data_set: DataSetId(1),
            offset,
            stream_offset: 0,
            payload,
        };
        let error = deliver(&mut s, 0, &Frame::Write(write));
        assert!(matches!(error, Err(PeerError::BadWrite(_))), "{error:?}");
    }
    let ack = Frame::Ack(AckFrame { ranges: Vec::new() });
    let applied = Frame::Applied(AppliedFrame {
        data_set: DataSetId(1),
        applied_seq: Seq(3),
        stream_end: 20480,
    });
    for frame in [ack, applied] {
        let error = deliver(&mut s, 0, &frame);
        assert!(matches!(error, Err(PeerError::Unexpected(_))), "{error:?}");
    }
    settle(&mut s);
    assert_eq!(s.stats().records_staged, 0);
    assert!(transmit(&mut s, 0).acked.is_empty());
    assert_eq!(s.applied(), DataSetId(0));
    assert_replica(&s, &Model::zeros());
    still_works(&mut s, &mut Stream::default(), &mut Model::zeros());
}

#[test]
fn a_record_overlapping_a_held_one_in_the_stream_is_a_violation() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::default();
    let ds1 = stream.data_set(vec![w(0, 0, 1, 1), w(0, 1, 1, 2), w(0, 2, 1, 3)]);
    let [first, second, third] = &ds1.writes[..] else {
        unreachable!()
    };
    send(&mut s, 0, [first, third]);
    let (_, _, evil) = w(0, 0, 1, 0xEE);
    let forged = |stream_offset: u64| {
        Frame::Write(WriteFrame {
            volume: VolumeId(0),
            seq: second.seq,
            data_set: ds1.id,
            offset: 0,
            stream_offset,
            payload: &evil,
        })
    };
    // Starts inside the first record; then ends inside the third.
    for stream_offset in [first.stream_offset + 4096, second.stream_offset + 4096] {
        let error = deliver(&mut s, 0, &forged(stream_offset));
        assert!(matches!(error, Err(PeerError::Violation(_))), "{error:?}");
    }
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(0));
    assert_replica(&s, &Model::zeros());

    send(&mut s, 0, [second, &ds1.sync]);
    settle(&mut s);
    let mut model = Model::zeros();
    model.apply(&ds1);
    assert_eq!(s.applied(), DataSetId(1));
    assert_replica(&s, &model);
    still_works(&mut s, &mut stream, &mut model);
}

fn journal_error(started: Result<Secondary<MemStorage>, SecondaryError>) -> JournalError {
    match started {
        Err(SecondaryError::Journal(error)) => error,
        other => panic!("{:?}", other.map(|_| "started")),
    }
}

#[test]
fn opening_a_journal_that_is_not_formatted_or_not_ours_fails() {
    let (journal, replicas) = blank_storages();
    let error = journal_error(Secondary::open(config(), journal, replicas));
    assert_eq!(error, JournalError::NotFormatted);

    let (journal, replicas) = create().into_storages();
    let other_group = SecondaryConfig {
        group: GroupId(8),
        ..config()
    };
    let error = journal_error(Secondary::open(other_group, journal, replicas));
    let (expected, found) = (8, 7);
    assert_eq!(error, JournalError::WrongGroup { expected, found });

    let (journal, replicas) = blank_storages();
    let small = mem(journal.geometry().size_bytes - u64::from(BLOCK));
    let error = journal_error(Secondary::create(config(), 0x5eed, small, replicas, true));
    assert!(matches!(error, JournalError::TooSmall { .. }), "{error}");
}

/// The staging arena claims whole 512-byte granules, so the window is a whole number of
/// them; anything else is refused up front with the reason.
#[test]
fn a_window_that_is_not_a_multiple_of_512_is_refused() {
    let (journal, replicas) = blank_storages();
    let config = SecondaryConfig {
        window_bytes: WINDOW + 100,
        ..config()
    };
    let error = Secondary::create(config, 1, journal, replicas, true).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, SecondaryError::Config(_)), "{message}");
    assert!(message.contains("multiple of 512"), "{message}");
}

//! Scenarios on a primary and its link, with the secondary's side of the conversation as
//! hand-built frames: the handshake, the credit window, resends after a lane loss, a
//! secondary with another history, group-ordered sending and replication off.

mod primary_support;

use primary_support::*;

#[test]
fn a_secondary_hello_that_does_not_match_is_refused_and_reported() {
    let window = open_ended().max_stream_bytes(MAX_WRITE);
    let volume = |name: &str, size_bytes: u64, block_size: u32| VolumeInfo {
        name: name.to_string(),
        size_bytes,
        block_size,
    };
    let wrong: [Change<Hello>; 6] = [
        ("role", &|h| h.role = Role::Primary),
        ("group id", &|h| h.group = GroupId(8)),
        ("volume name", &|h| h.volumes[0].name = "other".into()),
        ("volume size", &|h| {
            h.volumes[0].size_bytes = VOLUME_BYTES / 2
        }),
        ("block size", &|h| h.volumes[0].block_size = 512),
        ("volume count", &|h| {
            h.volumes.push(volume("log", 4096, 4096))
        }),
    ];
    for (expected_field, change) in wrong {
        let mut p = primary(config(open_ended()));
        write_block(&mut p, 0, 0, 1);
        p.lane_up(0);
        let mut hello = secondary_hello(resume(window));
        change(&mut hello);
        let error = deliver(&mut p, 0, &Frame::Hello(hello)).unwrap_err();
        let PeerError::Mismatch { field, .. } = &error else {
            panic!("{expected_field}: {error:?}");
        };
        assert_eq!(*field, expected_field);
        assert_eq!(p.stalled(), Some(&error));
        let sent = transmit(&mut p, 0, 0);
        assert!(sent.iter().all(is_hello), "{expected_field}: {sent:?}");
        // The right secondary clears the stall.
        connect(&mut p, 0, window);
        assert_eq!(p.stalled(), None);
        assert_eq!(record_seqs(&transmit(&mut p, 1, 0)), [1]);
    }

    let mut p = primary(config(open_ended()));
    p.lane_up(0);
    let small = Frame::Hello(secondary_hello(resume(window - 1)));
    let error = deliver(&mut p, 0, &small).unwrap_err();
    let too_small = PeerError::WindowTooSmall {
        window: window - 1,
        needed: window,
    };
    assert_eq!(error, too_small);
    assert_eq!(p.stalled(), Some(&too_small));
    connect(&mut p, 0, window);
    assert_eq!(p.stalled(), None);
}

#[test]
fn nothing_but_the_primary_hello_is_sent_before_the_secondary_answers() {
    let mut p = primary(config(open_ended()));
    write_block(&mut p, 0, 0, 1);
    p.flush(0).unwrap();
    assert!(transmit(&mut p, 0, 0).is_empty(), "lane down");
    p.lane_up(0);
    let sent = transmit(&mut p, 0, 0);
    let [Sent::Hello(hello)] = &sent[..] else {
        panic!("{sent:?}");
    };
    assert_eq!((hello.role, hello.group), (Role::Primary, GROUP));
    let expected = secondary_hello(ResumeState::default()).volumes;
    assert_eq!(hello.volumes, expected);
    assert!(transmit(&mut p, RETRANSMIT_MS - 1, 0).is_empty());
    let again = transmit(&mut p, RETRANSMIT_MS, 0);
    assert!(matches!(&again[..], [Sent::Hello(_)]), "Hello resent");
    let window = open_ended().max_stream_bytes(MAX_WRITE);
    deliver(&mut p, 0, &Frame::Hello(secondary_hello(resume(window)))).unwrap();
    let sent = transmit(&mut p, RETRANSMIT_MS + 1, 0);
    assert_eq!(record_seqs(&sent), [1, 2]);
    assert!(!sent.iter().any(is_hello), "answered: no more Hellos");
}

#[test]
fn records_past_the_offered_window_wait_for_the_applied_point_to_move() {
    // Two one-block writes and a sync per data set: 8 + 8 + 4 KiB of stream.
    let data_sets = policy(2, 2 * u64::from(BLOCK), 0);
    let config = PrimaryConfig {
        max_write_bytes: BLOCK,
        window_bytes: 256 << 10,
        ..config(data_sets)
    };
    let mut p = primary(config);
    for i in 0..9 {
        write_block(&mut p, 0, i, i as u8);
    }
    let window = data_sets.max_stream_bytes(BLOCK);
    assert_eq!(window, (24 << 10) - 1, "one data set and a bit");
    connect(&mut p, 0, window);
    let offsets = |sent: &[Sent]| -> Vec<u64> {
        let offset = |s: &Sent| match s {
            Sent::Write { stream_offset, .. } => Some(*stream_offset),
            Sent::Sync(sync) => Some(sync.stream_offset),
            Sent::Hello(_) => None,
        };
        sent.iter().filter_map(offset).collect()
    };
    let sent = transmit(&mut p, 0, 0);
    assert_eq!(record_seqs(&sent), [1, 2, 3], "seq 4 would end at 28 KiB");
    assert_eq!(offsets(&sent), [0, 8192, 16384]);
    assert!(p.stats().credit_stalls > 0);
    ack(&mut p, 0, 1, 3);
    assert!(transmit(&mut p, 1, 0).is_empty(), "acks give no credit");

    let applied = |data_set, applied_seq, stream_end| {
        Frame::Applied(AppliedFrame {
            data_set: DataSetId(data_set),
            applied_seq: Seq(applied_seq),
            stream_end,
        })
    };
    deliver(&mut p, 0, &applied(1, 3, 20480)).unwrap();
    assert_eq!(p.peer_applied(), DataSetId(1));
    let sent = transmit(&mut p, 2, 0);
    assert_eq!(record_seqs(&sent), [4, 5, 6]);
    assert_eq!(offsets(&sent), [20480, 28672, 36864]);
    // An old watermark arriving late moves nothing.
    deliver(&mut p, 0, &applied(1, 3, 20480)).unwrap();
    assert!(transmit(&mut p, 3, 0).is_empty());
    deliver(&mut p, 0, &applied(2, 6, 40960)).unwrap();
    assert_eq!(record_seqs(&transmit(&mut p, 4, 0)), [7, 8, 9]);
}

#[test]
fn unacked_writes_are_resent_after_a_lane_loss_and_a_timeout_acked_ones_are_not() {
    let mut p = primary(config(open_ended()));
    let window = open_ended().max_stream_bytes(MAX_WRITE);
    connect(&mut p, 0, window);
    write_block(&mut p, 0, 0, 1);
    write_block(&mut p, 0, 1, 2);
    let first = transmit(&mut p, 0, 0);
    assert_eq!(record_seqs(&first), [1, 2]);
    ack(&mut p, 0, 1, 1);

    p.lane_down(0);
    connect(&mut p, 1, window);
    let resent = transmit(&mut p, 10, 1);
    assert!(is_hello(&resent[0]));
    assert_eq!(resent[1..], first[2..], "seq 2 again, identical");
    assert_eq!(p.stats().retransmits, 1);

    // Not before the timeout; by a quarter of it later (timeouts are scanned for a few
    // times per interval, not on every tick).
    for now in (10..10 + RETRANSMIT_MS).step_by(10) {
        p.tick(now);
        assert!(transmit(&mut p, now, 1).is_empty(), "at {now} ms");
    }
    let mut timed_out = Vec::new();
    for now in (10 + RETRANSMIT_MS..=10 + RETRANSMIT_MS * 5 / 4).step_by(5) {
        p.tick(now);
        timed_out.extend(transmit(&mut p, now, 1));
    }
    assert_eq!(timed_out[..], first[2..]);
    assert_eq!(p.stats().retransmits, 2);

    ack(&mut p, 1, 2, 2);
    for now in (200..=1000).step_by(25) {
        p.tick(now);
        assert!(transmit(&mut p, now, 1).is_empty(), "at {now} ms");
    }
    assert_eq!(p.stats().retransmits, 2);
}

/// A secondary that applied data sets of a history this primary neither writes nor
/// descends from (another primary's replica): their seqs collide with this history's, so
/// the primary must not stream on top, and says why. A secondary of this history is fine.
#[test]
fn a_secondary_with_another_history_stalls_replication() {
    let window = open_ended().max_stream_bytes(MAX_WRITE);
    let mut p = primary(config(open_ended()));
    write_block(&mut p, 0, 0, 1);
    p.flush(0).unwrap();
    p.lane_up(0);
    let other = GenerationId(0x0BAD_0BAD);
    let other_run = Hello {
        generation: other,
        ..secondary_hello(ResumeState {
            applied_data_set: DataSetId(5),
            applied_seq: Seq(40),
            applied_stream_end: 40 * 8192,
            ..resume(window)
        })
    };
    let error = deliver(&mut p, 0, &Frame::Hello(other_run)).unwrap_err();
    let unrelated = PeerError::UnrelatedHistory {
        primary: GENERATION,
        secondary: other,
    };
    assert_eq!(error, unrelated);
    assert_eq!(p.stalled(), Some(&error));
    let sent = transmit(&mut p, 0, 0);
    assert!(sent.iter().all(is_hello), "nothing but Hellos: {sent:?}");
    assert_eq!(
        p.generation(),
        GENERATION,
        "a refused secondary changes no history"
    );
    // A secondary of this history is one this primary can write.
    connect(&mut p, 0, window);
    assert_eq!(p.stalled(), None);
    assert_eq!(record_seqs(&transmit(&mut p, 1, 0)), [1, 2]);
}

#[test]
fn group_ordered_sends_a_data_set_only_once_the_one_before_is_applied() {
    // Two one-block writes and a sync per data set; a window wide enough for all of them,
    // so only the mode holds records back.
    let config = PrimaryConfig {
        max_write_bytes: BLOCK,
        replication: Replication::GroupOrdered,
        ..config(policy(2, 2 * u64::from(BLOCK), 0))
    };
    let mut p = primary(config);
    for i in 0..6 {
        write_block(&mut p, 0, i, i as u8);
    }
    connect(&mut p, 0, 16 << 20);
    assert_eq!(record_seqs(&transmit(&mut p, 0, 0)), [1, 2, 3]);
    ack(&mut p, 0, 1, 3);
    assert!(transmit(&mut p, 1, 0).is_empty(), "staged is not applied");
    let applied = Frame::Applied(AppliedFrame {
        data_set: DataSetId(1),
        applied_seq: Seq(3),
        stream_end: 20480,
    });
    deliver(&mut p, 0, &applied).unwrap();
    assert_eq!(record_seqs(&transmit(&mut p, 2, 0)), [4, 5, 6]);
    assert!(transmit(&mut p, 3, 0).is_empty(), "data set 3 waits for 2");
}

#[test]
fn with_replication_off_records_go_once_written_locally_and_nothing_is_sent() {
    let config = PrimaryConfig {
        replication: Replication::Off,
        ..config(policy(2, 1 << 20, 0))
    };
    let mut p = primary(config);
    for i in 0..5 {
        write_block(&mut p, 0, i, i as u8);
    }
    p.flush(9).unwrap();
    connect(&mut p, 0, 16 << 20);
    assert!(transmit(&mut p, 0, 0).is_empty(), "not even a Hello");
    while p.poll_storage() > 0 {}
    let events = events(&mut p);
    let acked = events
        .iter()
        .filter(|e| matches!(e, PrimaryEvent::WriteDone { result: Ok(()), .. }))
        .count();
    assert_eq!(acked, 5);
    assert!(events
        .iter()
        .any(|e| matches!(e, PrimaryEvent::FlushDone { token: 9, .. })));
    assert_eq!(closed(&events).len(), 3, "data sets still close by policy");
    assert_eq!(p.retention_bytes(), 0, "nothing waits for a secondary");
    assert_eq!(p.volumes()[0].contents()[4 * BLOCK as usize], 4);
}

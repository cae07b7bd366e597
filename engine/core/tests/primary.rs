//! Scenarios on a primary alone, as an application drives it: data-set policy, flushes,
//! one seq space and stream for writes and syncs, bad writes and configs, a full window.
//! Expected seqs, data sets and stream offsets are computed here from the protocol's rules,
//! not read back from the engine. The link's scenarios are in `primary_link.rs`.

mod primary_support;

use primary_support::*;

#[test]
fn max_writes_closes_a_data_set_after_that_many_writes() {
    let mut p = primary(config(policy(3, 1 << 20, 0)));
    let seqs: Vec<u64> = (0..7).map(|i| write_block(&mut p, 0, i, 1).0).collect();
    // Each sync takes the seq right after its data set's last write.
    assert_eq!(seqs, [1, 2, 3, 5, 6, 7, 9]);
    assert_eq!(closed(&events(&mut p)), [(1, 1, 4), (2, 5, 8)]);
    assert_eq!(p.stats().data_sets_closed, 2);
    assert_eq!(p.last_closed(), DataSetId(2));
}

#[test]
fn max_bytes_closes_a_data_set_once_its_payload_reaches_the_limit() {
    let mut p = primary(config(policy(1000, 3 * u64::from(BLOCK), 0)));
    let two_blocks = p.submit_write(0, VOL, 0, &data(1, 2), 0).unwrap();
    assert!(closed(&events(&mut p)).is_empty(), "8 KiB of 12 KiB");
    let one_block = p.submit_write(0, VOL, 0, &data(2, 1), 0).unwrap();
    assert_eq!((two_blocks, one_block), (Seq(1), Seq(2)));
    assert_eq!(closed(&events(&mut p)), [(1, 1, 3)], "12 KiB reached");
    // One write over the limit makes a data set of its own.
    assert_eq!(p.submit_write(0, VOL, 0, &data(3, 4), 0), Ok(Seq(4)));
    assert_eq!(closed(&events(&mut p)), [(2, 4, 5)]);
    assert_eq!(p.submit_write(0, VOL, 0, &data(4, 1), 0), Ok(Seq(6)));
    assert!(closed(&events(&mut p)).is_empty());
}

#[test]
fn the_interval_closes_a_data_set_on_tick_after_it_ran_out_never_an_empty_one() {
    let mut p = primary(config(policy(1000, 1 << 20, 10)));
    for now in [0, 10, 50, 99] {
        p.tick(now);
    }
    assert!(closed(&events(&mut p)).is_empty(), "nothing written");
    assert_eq!(write_block(&mut p, 100, 0, 1), Seq(1));
    p.tick(105);
    assert_eq!(write_block(&mut p, 107, 1, 2), Seq(2));
    p.tick(109);
    assert!(closed(&events(&mut p)).is_empty(), "9 ms after");
    p.tick(110);
    assert_eq!(closed(&events(&mut p)), [(1, 1, 3)]);
    p.tick(200);
    p.tick(1000);
    assert!(closed(&events(&mut p)).is_empty(), "nothing open");
    // The interval runs from the next data set's own first write.
    assert_eq!(write_block(&mut p, 1500, 0, 3), Seq(4));
    p.tick(1509);
    assert!(closed(&events(&mut p)).is_empty());
    p.tick(1510);
    assert_eq!(closed(&events(&mut p)), [(2, 4, 5)]);
}

#[test]
fn flush_closes_the_open_data_set_and_is_done_only_after_every_earlier_write() {
    let mut p = primary(config(open_ended()));
    // The second write overlaps the first, so it waits for it on the primary's volume.
    let mut model = vec![0u8; VOLUME_BYTES as usize];
    let writes = [(0, data(1, 2)), (4096, data(2, 1)), (65536, data(3, 1))];
    for (token, (offset, bytes)) in writes.iter().enumerate() {
        p.submit_write(0, VOL, *offset, bytes, token as u64)
            .unwrap();
        model[*offset as usize..][..bytes.len()].copy_from_slice(bytes);
    }
    assert_eq!(p.flush(99), Ok(DataSetId(1)));
    assert_eq!(closed(&events(&mut p)), [(1, 1, 4)]);

    let mut done_writes = Vec::new();
    let mut flush_done = None;
    for _ in 0..10 {
        p.poll_storage();
        for event in events(&mut p) {
            match event {
                PrimaryEvent::WriteDone { token, seq, result } => {
                    assert!(flush_done.is_none(), "write {seq} done after the flush");
                    assert_eq!(result, Ok(()));
                    done_writes.push((token, seq.0));
                }
                PrimaryEvent::FlushDone {
                    token,
                    data_set,
                    result,
                } => {
                    assert_eq!(done_writes.len(), 3, "flush done before every write");
                    assert_eq!((token, data_set, result), (99, DataSetId(1), Ok(())));
                    assert!(flush_done.replace(token).is_none(), "one FlushDone");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(flush_done, Some(99));
    done_writes.sort_unstable();
    assert_eq!(done_writes, [(0, 1), (1, 2), (2, 3)]);
    assert!(p.volumes()[0].contents() == model, "the higher seq wins");

    // Nothing open: the flush stands for the last closed data set and closes none.
    assert_eq!(p.flush(100), Ok(DataSetId(1)));
    p.poll_storage();
    p.poll_storage();
    let after = events(&mut p);
    assert!(closed(&after).is_empty());
    let expected = PrimaryEvent::FlushDone {
        token: 100,
        data_set: DataSetId(1),
        result: Ok(()),
    };
    assert_eq!(after, [expected]);
}

#[test]
fn writes_and_syncs_share_one_increasing_seq_space_and_stream() {
    let mut p = primary(config(policy(2, 1 << 20, 0)));
    let mut write_seqs = Vec::new();
    for i in 0..3 {
        write_seqs.push(write_block(&mut p, 0, i, i as u8 + 1).0);
    }
    p.flush(0).unwrap();
    write_seqs.push(write_block(&mut p, 0, 9, 9).0);
    p.flush(0).unwrap();
    let data_sets = closed(&events(&mut p));
    assert_eq!(data_sets, [(1, 1, 3), (2, 4, 5), (3, 6, 7)]);
    assert_eq!(write_seqs, [1, 2, 4, 6]);

    // On the wire: every record once, in seq order, stamped with its data set, each
    // starting where the previous one's stream cost ends.
    connect(&mut p, 0, open_ended().max_stream_bytes(MAX_WRITE));
    let sent = transmit(&mut p, 0, 0);
    assert!(is_hello(&sent[0]));
    assert_eq!(record_seqs(&sent), [1, 2, 3, 4, 5, 6, 7]);
    let mut stream_offset = 0;
    for record in &sent[1..] {
        let (seq, in_set, at, cost) = match record {
            Sent::Write {
                seq,
                data_set,
                stream_offset,
                payload,
                ..
            } => (
                *seq,
                *data_set,
                *stream_offset,
                stream_cost(payload.len() as u32),
            ),
            Sent::Sync(s) => {
                assert_eq!(s.first_seq.0 + s.write_count, s.seq.0);
                (s.seq.0, s.data_set.0, s.stream_offset, stream_cost(0))
            }
            Sent::Hello(_) => panic!("one Hello"),
        };
        let (id, ..) = data_sets
            .iter()
            .find(|(_, first, sync)| (*first..=*sync).contains(&seq))
            .unwrap();
        assert_eq!(in_set, *id, "seq {seq}");
        assert_eq!(at, stream_offset, "seq {seq}");
        stream_offset += cost;
    }
}

#[test]
fn bad_writes_get_a_typed_error_and_take_no_seq() {
    let mut p = primary(config(open_ended()));
    let block = data(1, 1);
    let refused = [
        (VolumeId(1), 0, block.clone()),
        (VOL, 0, Vec::new()),
        (VOL, VOLUME_BYTES - 4096, data(1, 2)),
        (VOL, VOLUME_BYTES, block.clone()),
        (VOL, VOLUME_BYTES - 10, vec![1; 11]),
        (VOL, 0, data(1, 32)),
        // 64 KiB fit the limit, but not the 68 KiB of blocks they touch.
        (VOL, 100, data(1, 16)),
    ];
    let mut errors = Vec::new();
    for (volume, offset, bytes) in &refused {
        errors.push(p.submit_write(0, *volume, *offset, bytes, 0).unwrap_err());
    }
    assert_eq!(errors[0], SubmitError::UnknownVolume(VolumeId(1)));
    let empty = matches!(
        errors[1],
        SubmitError::Invalid(StorageError::Unaligned { len: 0, .. })
    );
    assert!(empty, "{:?}", errors[1]);
    for error in &errors[2..5] {
        let past_end = matches!(error, SubmitError::Invalid(StorageError::OutOfRange { .. }));
        assert!(past_end, "{error:?}");
    }
    for (error, blocks) in errors[5..].iter().zip([32, 16]) {
        let too_large = SubmitError::TooLarge {
            len: blocks * BLOCK as usize,
            max: MAX_WRITE,
        };
        assert_eq!(*error, too_large);
    }
    assert!(events(&mut p).is_empty());
    assert_eq!(p.stats().writes_accepted, 0);
    assert_eq!(p.retention_bytes(), 0);
    assert_eq!(p.submit_write(0, VOL, 0, &block, 0), Ok(Seq(1)));
    p.flush(0).unwrap();
    assert_eq!(closed(&events(&mut p)), [(1, 1, 2)]);
}

#[test]
fn invalid_configs_are_rejected() {
    let good = config(open_ended());
    assert_eq!(good.validate(), Ok(()));
    let with = |change: &dyn Fn(&mut PrimaryConfig)| {
        let mut config = good.clone();
        change(&mut config);
        config.validate()
    };
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let (longest, too_long) = ("x".repeat(32), "x".repeat(33));
    assert_eq!(with(&|c| c.volume_names = names(&[&longest])), Ok(()));
    let floor = 2 * (stream_cost(MAX_WRITE) + stream_cost(0));
    assert_eq!(with(&|c| c.window_bytes = floor), Ok(()));
    let bad: [Change<PrimaryConfig>; 7] = [
        ("no volumes", &|c| c.volume_names.clear()),
        ("empty name", &|c| c.volume_names = names(&["a", ""])),
        ("duplicate name", &|c| c.volume_names = names(&["a", "a"])),
        ("33-byte name", &|c| c.volume_names = names(&[&too_long])),
        ("window too small", &|c| c.window_bytes = floor - 1),
        ("no lanes", &|c| c.lanes = 0),
        ("unaligned max write", &|c| c.max_write_bytes = 1000),
    ];
    for (what, change) in bad {
        let error = with(change);
        assert!(matches!(error, Err(ConfigError::Invalid(_))), "{what}");
    }
    let two_volumes = Primary::new(good, vec![volume(), volume()], record(), 1);
    assert!(matches!(two_volumes, Err(ConfigError::Invalid(_))));
}

#[test]
fn a_full_window_refuses_writes_closes_the_data_set_and_drains_after_acks() {
    let window_bytes = 64 << 10;
    let config = PrimaryConfig {
        window_bytes,
        max_write_bytes: BLOCK,
        ..config(open_ended())
    };
    let mut p = primary(config);
    // A one-block write costs 8 KiB of stream and must leave 4 KiB for its data set's
    // sync: seven fit in 64 KiB.
    let (write_cost, sync_cost) = (stream_cost(BLOCK), stream_cost(0));
    let fit = (window_bytes - sync_cost) / write_cost;
    assert_eq!(fit, 7);
    let mut accepted = 0;
    let refused = loop {
        match p.submit_write(0, VOL, accepted * 4096, &data(1, 1), 0) {
            Ok(seq) => assert_eq!(seq, Seq(accepted + 1)),
            Err(error) => break error,
        }
        accepted += 1;
        assert!(accepted <= fit, "the window never fills");
    };
    assert_eq!((refused, accepted), (SubmitError::WindowFull, fit));
    let closed_sets = closed(&events(&mut p));
    assert_eq!(closed_sets, [(1, 1, fit + 1)], "a full window cuts one");
    assert_eq!(p.stats().window_full, 1);
    assert_eq!(p.retention_bytes(), fit * write_cost + sync_cost);
    let retry = p.submit_write(0, VOL, 0, &data(1, 1), 0);
    assert_eq!(retry, Err(SubmitError::WindowFull));
    assert_eq!(p.stats().window_full, 2);
    assert!(closed(&events(&mut p)).is_empty(), "nothing open to close");

    connect(&mut p, 0, open_ended().max_stream_bytes(BLOCK));
    let sent = transmit(&mut p, 0, 0);
    assert!(is_hello(&sent[0]));
    assert_eq!(record_seqs(&sent), (1..=fit + 1).collect::<Vec<_>>());
    // Staged on the secondary is not enough: a record also waits for the local write.
    ack(&mut p, 0, 1, 3);
    assert_eq!(p.retention_bytes(), fit * write_cost + sync_cost);
    // The local writes (after their extent's write-intent bit is durable) complete.
    poll_until_quiet(&mut p);
    assert_eq!(p.retention_bytes(), (fit - 3) * write_cost + sync_cost);
    ack(&mut p, 0, 4, fit + 1);
    assert_eq!(p.retention_bytes(), 0);
    assert_eq!(p.submit_write(0, VOL, 0, &data(2, 1), 0), Ok(Seq(fit + 2)));
}

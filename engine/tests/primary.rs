//! Scenarios on a primary alone: it is driven like an application would (writes, flushes,
//! ticks, storage polls), what it sends is decoded off the wire, and the secondary's side
//! of the conversation is hand-built frames. Expected seqs, data sets and stream offsets
//! are computed here from the protocol's rules, not read back from the engine.

use ordo_engine::primary::{
    ConfigError, DataSetPolicy, PeerError, Primary, PrimaryConfig, PrimaryEvent, Replication,
    SubmitError,
};
use ordo_engine::protocol::{
    decode, encode, frame_len, stream_cost, AckFrame, AppliedFrame, DataSetId, Frame, GroupId,
    Hello, ResumeState, Role, Seq, SeqRange, SyncFrame, VolumeId, VolumeInfo,
};
use ordo_engine::storage::{Geometry, MemStorage, StorageError};

const GROUP: GroupId = GroupId(7);
const BLOCK: u32 = 4096;
const VOLUME_BYTES: u64 = 1 << 20;
const MAX_WRITE: u32 = 64 << 10;
const RETRANSMIT_MS: u64 = 100;
const VOL: VolumeId = VolumeId(0);

fn policy(max_writes: u64, max_bytes: u64, interval_ms: u64) -> DataSetPolicy {
    DataSetPolicy {
        interval_ms,
        max_writes,
        max_bytes,
    }
}

/// Data sets that close only on a flush (or a full window).
fn open_ended() -> DataSetPolicy {
    policy(1000, 1 << 20, 0)
}

fn config(policy: DataSetPolicy) -> PrimaryConfig {
    PrimaryConfig {
        group: GROUP,
        volume_names: vec!["data".to_string()],
        policy,
        window_bytes: 4 << 20,
        max_write_bytes: MAX_WRITE,
        lanes: 2,
        retransmit_ms: RETRANSMIT_MS,
        max_pending_flushes: 4,
        ..PrimaryConfig::default()
    }
}

fn volume() -> MemStorage {
    MemStorage::new(Geometry::new(VOLUME_BYTES, BLOCK).unwrap()).unwrap()
}

fn primary(config: PrimaryConfig) -> Primary<MemStorage> {
    Primary::new(config, vec![volume()]).unwrap()
}

/// `blocks` blocks of `fill`.
fn data(fill: u8, blocks: usize) -> Vec<u8> {
    vec![fill; blocks * BLOCK as usize]
}

/// Submits one block of `fill` at block `index`.
fn write_block(p: &mut Primary<MemStorage>, now_ms: u64, index: u64, fill: u8) -> Seq {
    let offset = index * u64::from(BLOCK);
    p.submit_write(now_ms, VOL, offset, &data(fill, 1), u64::from(fill))
        .unwrap()
}

fn events(p: &mut Primary<MemStorage>) -> Vec<PrimaryEvent> {
    std::iter::from_fn(|| p.next_event()).collect()
}

/// The (data set, first seq, sync seq) of every `DataSetClosed` in `events`.
fn closed(events: &[PrimaryEvent]) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for event in events {
        if let PrimaryEvent::DataSetClosed {
            data_set,
            first_seq,
            sync_seq,
        } = event
        {
            out.push((data_set.0, first_seq.0, sync_seq.0));
        }
    }
    out
}

/// The secondary's Hello, built from what the secondary would know, not from the primary.
fn secondary_hello(resume: ResumeState) -> Hello {
    Hello {
        role: Role::Secondary,
        group: GROUP,
        max_write_bytes: MAX_WRITE,
        volumes: vec![VolumeInfo {
            name: "data".to_string(),
            size_bytes: VOLUME_BYTES,
            block_size: BLOCK,
        }],
        resume,
    }
}

fn resume(window_bytes: u64) -> ResumeState {
    ResumeState {
        window_bytes,
        ..ResumeState::default()
    }
}

/// Hands `frame` to the primary as it would arrive: encoded, then decoded off the wire.
fn deliver(p: &mut Primary<MemStorage>, lane: usize, frame: &Frame<'_>) -> Result<(), PeerError> {
    let mut wire = Vec::new();
    encode(frame, &mut wire);
    let (decoded, used) = decode(&wire).unwrap();
    assert_eq!(used, wire.len());
    p.handle_frame(lane, &decoded)
}

/// Brings `lane` up and answers it with a secondary Hello offering `window_bytes`.
fn connect(p: &mut Primary<MemStorage>, lane: usize, window_bytes: u64) {
    p.lane_up(lane);
    deliver(
        p,
        lane,
        &Frame::Hello(secondary_hello(resume(window_bytes))),
    )
    .unwrap();
}

fn ack(p: &mut Primary<MemStorage>, lane: usize, first: u64, last: u64) {
    let ranges = vec![SeqRange {
        first: Seq(first),
        last: Seq(last),
    }];
    deliver(p, lane, &Frame::Ack(AckFrame { ranges })).unwrap();
}

/// What a variant of a config or frame is called, and how it differs from the good one.
type Change<'a, T> = (&'a str, &'a dyn Fn(&mut T));

/// A frame the primary sent, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sent {
    Hello(Hello),
    Write {
        seq: u64,
        data_set: u64,
        offset: u64,
        stream_offset: u64,
        payload: Vec<u8>,
    },
    Sync(SyncFrame),
}

/// Everything the primary has to send on `lane` now, decoded.
fn transmit(p: &mut Primary<MemStorage>, now_ms: u64, lane: usize) -> Vec<Sent> {
    let mut wire = Vec::new();
    let appended = p.poll_transmit(now_ms, lane, &mut wire, 16 << 20);
    assert_eq!(appended, wire.len());
    let mut sent = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let len = frame_len(&wire[at..]).unwrap();
        let (frame, used) = decode(&wire[at..at + len]).unwrap();
        assert_eq!(used, len);
        sent.push(match frame {
            Frame::Hello(hello) => Sent::Hello(hello),
            Frame::Write(w) => {
                assert_eq!(w.volume, VOL);
                Sent::Write {
                    seq: w.seq.0,
                    data_set: w.data_set.0,
                    offset: w.offset,
                    stream_offset: w.stream_offset,
                    payload: w.payload.to_vec(),
                }
            }
            Frame::Sync(sync) => Sent::Sync(sync),
            other => panic!("a primary sent {other:?}"),
        });
        at += len;
    }
    sent
}

/// Seqs of the records (writes and syncs) in `sent`, in order.
fn record_seqs(sent: &[Sent]) -> Vec<u64> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Hello(_) => None,
            Sent::Write { seq, .. } => Some(*seq),
            Sent::Sync(sync) => Some(sync.seq.0),
        })
        .collect()
}

fn is_hello(sent: &Sent) -> bool {
    matches!(sent, Sent::Hello(_))
}

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
        (VOL, 100, block.clone()),
        (VOL, 0, vec![1; 1000]),
        (VOL, 0, Vec::new()),
        (VOL, VOLUME_BYTES - 4096, data(1, 2)),
        (VOL, VOLUME_BYTES, block.clone()),
        (VOL, 0, data(1, 32)),
    ];
    let mut errors = Vec::new();
    for (volume, offset, bytes) in &refused {
        errors.push(p.submit_write(0, *volume, *offset, bytes, 0).unwrap_err());
    }
    assert_eq!(errors[0], SubmitError::UnknownVolume(VolumeId(1)));
    for error in &errors[1..4] {
        let unaligned = matches!(error, SubmitError::Invalid(StorageError::Unaligned { .. }));
        assert!(unaligned, "{error:?}");
    }
    for error in &errors[4..6] {
        let past_end = matches!(error, SubmitError::Invalid(StorageError::OutOfRange { .. }));
        assert!(past_end, "{error:?}");
    }
    let too_large = SubmitError::TooLarge {
        len: 32 * BLOCK as usize,
        max: MAX_WRITE,
    };
    assert_eq!(errors[6], too_large);
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
    let two_volumes = Primary::new(good, vec![volume(), volume()]);
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
    p.poll_storage();
    assert_eq!(p.retention_bytes(), (fit - 3) * write_cost + sync_cost);
    ack(&mut p, 0, 4, fit + 1);
    assert_eq!(p.retention_bytes(), 0);
    assert_eq!(p.submit_write(0, VOL, 0, &data(2, 1), 0), Ok(Seq(fit + 2)));
}

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

/// A primary restarted (it keeps no state) meets a secondary that applied data sets of
/// its earlier run: their seqs collide with the new run's, so it must not stream on top,
/// and says why. The same secondary at applied 0 is fine.
#[test]
fn a_secondary_with_another_history_stalls_replication() {
    let window = open_ended().max_stream_bytes(MAX_WRITE);
    let mut p = primary(config(open_ended()));
    write_block(&mut p, 0, 0, 1);
    p.flush(0).unwrap();
    p.lane_up(0);
    let earlier_run = ResumeState {
        applied_data_set: DataSetId(5),
        applied_seq: Seq(40),
        applied_stream_end: 40 * 8192,
        ..resume(window)
    };
    let error = deliver(&mut p, 0, &Frame::Hello(secondary_hello(earlier_run))).unwrap_err();
    assert_eq!(error, PeerError::ForeignHistory { applied: 5 });
    assert_eq!(p.stalled(), Some(&error));
    let sent = transmit(&mut p, 0, 0);
    assert!(sent.iter().all(is_hello), "nothing but Hellos: {sent:?}");
    // A fresh secondary is a history this primary can write.
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

//! Regression tests, one per bug found in review: each scenario failed (or did not build,
//! where the fix added to the API) before its fix. Secondaries are fed hand-built primary
//! frames through the wire codec; primaries talk to real secondaries where they can.

mod pair_support;

use ordo_core::primary::intent::{required_bytes as record_bytes, WriteIntent};
use ordo_core::primary::{
    format_record, ConfigError, DataSetPolicy, PeerError, Primary, PrimaryConfig, Start,
};
use ordo_core::protocol::{
    decode, encode, stream_cost, DataSetId, Frame, GenerationId, GroupId, Hello, HistoryFlags,
    ResumeState, Role, Seq, SyncFrame, VolumeId, VolumeInfo, WriteFrame,
};
use ordo_core::secondary::journal::{required_bytes, Journal, LOG_START};
use ordo_core::secondary::ReplicaState;
use ordo_core::secondary::{Secondary, SecondaryConfig, SecondaryError};
use ordo_core::storage::{drain, Geometry, MemStorage, Storage};
use pair_support::Pair;

const GROUP: GroupId = GroupId(7);
const BLOCK: u32 = 4096;
const VOLUME_BYTES: u64 = 256 << 10;
const NAMES: [&str; 2] = ["data", "log"];
const WINDOW: u64 = 256 << 10;
/// One block: a write record takes 8192 bytes of journal, a sync 4096.
const MAX_WRITE: u32 = BLOCK;
/// The history a fresh primary's write-intent record is formatted with.
const GENERATION: GenerationId = GenerationId(0x4E61);

fn config() -> SecondaryConfig {
    SecondaryConfig {
        group: GROUP,
        volume_names: NAMES.iter().map(|n| n.to_string()).collect(),
        window_bytes: WINDOW,
        max_write_bytes: MAX_WRITE,
        lanes: 2,
        applied_interval_ms: 50,
        bug: None,
    }
}

fn mem(size_bytes: u64) -> MemStorage {
    MemStorage::new(Geometry::new(size_bytes, BLOCK).unwrap()).unwrap()
}

/// A blank journal device of the size `config` needs, with a queue of `depth` requests.
fn journal_device(config: &SecondaryConfig, depth: u32) -> MemStorage {
    let size = required_bytes(config.window_bytes, config.max_write_bytes, BLOCK);
    let mut geometry = Geometry::new(size, BLOCK).unwrap();
    geometry.max_in_flight = depth;
    MemStorage::new(geometry).unwrap()
}

fn replicas() -> Vec<MemStorage> {
    vec![mem(VOLUME_BYTES), mem(VOLUME_BYTES)]
}

fn start(mut s: Secondary<MemStorage>) -> Secondary<MemStorage> {
    s.lane_up(0);
    s
}

fn create(config: SecondaryConfig, journal_id: u64) -> Secondary<MemStorage> {
    let journal = journal_device(&config, 256);
    start(Secondary::create(config, journal_id, journal, replicas(), true).unwrap())
}

/// The frames in `wire`, decoded as the peer would.
fn frames(mut wire: &[u8]) -> Vec<Frame<'_>> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let (frame, used) = decode(wire).unwrap();
        out.push(frame);
        wire = &wire[used..];
    }
    out
}

/// Hands the secondary, on lane 0, the frames in `wire`.
fn receive(s: &mut Secondary<MemStorage>, wire: &[u8]) {
    frames(wire)
        .iter()
        .for_each(|frame| s.handle_frame(0, frame).unwrap());
}

/// A Hello as `role` would send it, hand-built: a primary of `GENERATION` that began as
/// zeros and holds its whole stream, or a secondary that follows it.
fn hello_frame(role: Role, max_write_bytes: u32, resume: ResumeState) -> Frame<'static> {
    let volumes = NAMES.iter().map(|name| VolumeInfo {
        name: name.to_string(),
        size_bytes: VOLUME_BYTES,
        block_size: BLOCK,
    });
    let (group, volumes) = (GROUP, volumes.collect());
    let flags = HistoryFlags {
        genesis_stream: role == Role::Primary,
        genesis_bits: role == Role::Primary,
        ..HistoryFlags::default()
    };
    Frame::Hello(Hello {
        role,
        group,
        max_write_bytes,
        volumes,
        generation: GENERATION,
        ancestors: vec![],
        flags,
        resume,
    })
}

/// The primary's Hello, on lane 0.
fn hello(s: &mut Secondary<MemStorage>) {
    let hello = hello_frame(Role::Primary, MAX_WRITE, ResumeState::default());
    s.handle_frame(0, &hello).unwrap();
}

/// Polls storage until two polls in a row find nothing to do.
fn settle(s: &mut Secondary<MemStorage>) {
    let mut idle = 0;
    for _ in 0..1000 {
        idle = if s.poll_storage() == 0 { idle + 1 } else { 0 };
        if idle == 2 {
            assert_eq!(s.failure(), None);
            return;
        }
    }
    panic!("the secondary's storage never went quiet");
}

/// Receives each record in turn, letting storage settle after each.
fn feed(s: &mut Secondary<MemStorage>, records: &[Vec<u8>]) {
    for record in records {
        receive(s, record);
        settle(s);
    }
}

/// A one-block write: (volume, block, fill byte).
type Block = (u16, u64, u8);

/// The primary's numbering: seqs from 1 shared by writes and syncs, data sets from 1, each
/// record at the stream offset where the previous one ends.
#[derive(Default)]
struct Stream {
    seq: u64,
    data_set: u64,
    stream_end: u64,
}

impl Stream {
    /// The wire frames of a data set: its one-block writes, then its sync (last).
    fn data_set(&mut self, writes: &[Block]) -> Vec<Vec<u8>> {
        self.data_set += 1;
        let (data_set, first_seq) = (DataSetId(self.data_set), Seq(self.seq + 1));
        let mut records = Vec::new();
        for &(volume, block, fill) in writes {
            let payload = vec![fill; BLOCK as usize];
            let write = Frame::Write(WriteFrame {
                volume: VolumeId(volume),
                seq: Seq(self.seq + 1),
                data_set,
                offset: block * u64::from(BLOCK),
                stream_offset: self.stream_end,
                payload: &payload,
            });
            records.push(self.record(&write, BLOCK));
        }
        let sync = Frame::Sync(SyncFrame {
            seq: Seq(self.seq + 1),
            data_set,
            first_seq,
            write_count: writes.len() as u64,
            stream_offset: self.stream_end,
            ends_resync: false,
        });
        records.push(self.record(&sync, 0));
        records
    }

    fn record(&mut self, frame: &Frame<'_>, payload_len: u32) -> Vec<u8> {
        let mut wire = Vec::new();
        encode(frame, &mut wire);
        self.seq += 1;
        self.stream_end += stream_cost(payload_len);
        wire
    }
}

/// Whether the replicas hold exactly `writes` (in order) over zeros.
fn replicas_hold(s: &Secondary<MemStorage>, writes: &[Block]) -> bool {
    let mut images = vec![vec![0u8; VOLUME_BYTES as usize]; NAMES.len()];
    for &(volume, block, fill) in writes {
        let at = (block * u64::from(BLOCK)) as usize;
        images[usize::from(volume)][at..at + BLOCK as usize].fill(fill);
    }
    s.replicas()
        .iter()
        .zip(&images)
        .all(|(replica, image)| replica.contents() == &image[..])
}

/// The replicas hold exactly `writes` (in order) over zeros.
fn assert_replicas(s: &Secondary<MemStorage>, writes: &[Block]) {
    assert!(replicas_hold(s, writes), "replica differs");
}

fn overwrite(storage: &mut MemStorage, offset: u64, data: &[u8]) {
    storage.submit_write(0, offset, data).unwrap();
    drain(storage);
}

fn primary_config(max_write_bytes: u32) -> PrimaryConfig {
    PrimaryConfig {
        group: GROUP,
        volume_names: NAMES.iter().map(|n| n.to_string()).collect(),
        policy: DataSetPolicy {
            interval_ms: 0,
            max_writes: 4,
            max_bytes: 16 << 10,
        },
        window_bytes: 1 << 20,
        max_write_bytes,
        lanes: 2,
        retransmit_ms: 100,
        max_pending_flushes: 4,
        ..PrimaryConfig::default()
    }
}

fn volume_infos() -> Vec<VolumeInfo> {
    let info = |name: &&str| VolumeInfo {
        name: name.to_string(),
        size_bytes: VOLUME_BYTES,
        block_size: BLOCK,
    };
    NAMES.iter().map(info).collect()
}

/// A fresh primary on zeroed volumes and a new write-intent record for `generation`,
/// once the record says it runs (it sends nothing before).
fn primary_of(generation: GenerationId, max_write_bytes: u32) -> Primary<MemStorage> {
    let infos = volume_infos();
    let device = mem(record_bytes(&infos).next_multiple_of(4096));
    let record = format_record(device, &infos, generation, true).unwrap();
    let volumes = vec![mem(VOLUME_BYTES), mem(VOLUME_BYTES)];
    let mut p = Primary::new(primary_config(max_write_bytes), volumes, record, 1).unwrap();
    while p.poll_storage() > 0 {}
    p
}

fn primary(max_write_bytes: u32) -> Primary<MemStorage> {
    primary_of(GENERATION, max_write_bytes)
}

/// The primary dies (its volumes and record keep every write it submitted) and starts
/// again on them: with no clean stop recorded, a new generation.
fn crash_and_restart(p: Primary<MemStorage>) -> Primary<MemStorage> {
    let (mut volumes, mut record) = p.into_storages();
    // A process crash: every write submitted is on the devices, whatever its completion.
    volumes.iter_mut().for_each(drain);
    drain(&mut record);
    let record = WriteIntent::open(record, &volume_infos()).unwrap();
    let mut p = Primary::new(primary_config(MAX_WRITE), volumes, record, 2).unwrap();
    assert!(
        matches!(p.start(), Start::NewGeneration { .. }),
        "{:?}",
        p.start()
    );
    while p.poll_storage() > 0 {}
    p
}

/// Round trips on lane 0: what the primary sends goes to the secondary (whose storage
/// then settles), and its answer back to the primary.
fn exchange(
    p: &mut Primary<MemStorage>,
    s: &mut Secondary<MemStorage>,
    n: usize,
) -> Result<(), PeerError> {
    for _ in 0..n {
        p.poll_storage();
        let mut wire = Vec::new();
        p.poll_transmit(0, 0, &mut wire, 1 << 20);
        for frame in frames(&wire) {
            s.handle_frame(0, &frame)?;
        }
        settle(s);
        let mut wire = Vec::new();
        s.poll_transmit(0, &mut wire, 1 << 20);
        for frame in frames(&wire) {
            p.handle_frame(0, &frame)?;
        }
    }
    Ok(())
}

/// Closes a data set of one write of `len` bytes at the start of the first volume.
fn one_write(p: &mut Primary<MemStorage>, len: usize) {
    let seq = p.submit_write(0, VolumeId(0), 0, &vec![7; len], 1);
    assert_eq!(seq, Ok(Seq(1)));
    p.flush(2).unwrap();
}

/// Whether `error` is the handshake's mismatch on the largest write.
fn largest_write(error: &PeerError) -> bool {
    matches!(error, PeerError::Mismatch { field, .. } if *field == "largest write")
}

fn connect(p: &mut Primary<MemStorage>, s: &mut Secondary<MemStorage>) -> Result<(), PeerError> {
    p.lane_up(0);
    s.lane_up(0);
    exchange(p, s, 1)
}

/// Bug 1. Old: `format` restarted at lsn 0 with superblock generations 1 and 2, and a
/// record's crc did not depend on which journal wrote it. A secondary re-created on a used
/// journal device and restarted before journaling anything scanned the earlier journal's
/// records as its own and re-applied them over the new replicas; and if the format's last
/// superblock write was lost, the earlier journal's superblock (a higher generation) won.
#[test]
fn a_reformatted_journal_never_resurrects_the_one_before() {
    let old_writes = [(0, 0, 0xA0), (0, 1, 0xA1), (1, 2, 0xA2)];
    let new_writes = [(0, 0, 0x10), (1, 3, 0x11)];
    // None: the format completed; Some(at): the superblock copy at `at` kept what it held
    // before the format (copies at bytes 0 and 4096).
    for lost in [None, Some(0), Some(4096)] {
        let mut s = create(config(), 0xA);
        hello(&mut s);
        feed(&mut s, &Stream::default().data_set(&old_writes));
        assert_eq!(s.applied(), DataSetId(1));
        let (mut journal, _) = s.into_storages();
        let before = journal.contents()[..LOG_START as usize].to_vec();
        let s = Secondary::create(config(), 0xB, journal, replicas(), true).unwrap();
        (journal, _) = s.into_storages();
        if let Some(at) = lost {
            overwrite(&mut journal, at, &before[at as usize..][..BLOCK as usize]);
        }
        let mut s = start(Secondary::open(config(), journal, replicas()).unwrap());
        assert_eq!(s.stats().recovered_records, 0, "lost {lost:?}");
        assert_eq!(s.applied(), DataSetId::NONE, "lost {lost:?}");
        settle(&mut s);
        hello(&mut s);
        feed(&mut s, &Stream::default().data_set(&new_writes));
        assert_eq!(s.applied(), DataSetId(1), "lost {lost:?}");
        assert_replicas(&s, &new_writes);
    }
}

/// Bug 2. Old: at a missing record the recovery scan always tried the start of the next
/// lap. A power loss that lost an unflushed record well before the lap boundary but kept
/// later ones written past it made the scan jump the hole; the hole stayed inside the live
/// log, the resent records went after the ones found, and the journal overflowed (the
/// "journal full" assertion) before the data sets could complete.
#[test]
fn a_hole_before_the_lap_boundary_ends_the_recovery_scan() {
    let mut s = create(config(), 1);
    hello(&mut s);
    let log_bytes = s.journal_use().1;
    assert_eq!(log_bytes, 2 * WINDOW + 8192);
    let mut stream = Stream::default();
    // 40 small data sets, applied: the log's head and tail move to `head`.
    let small = |i: u64| (0, i % 64, i as u8 + 1);
    for i in 0..40 {
        feed(&mut s, &stream.data_set(&[small(i)]));
    }
    let head = 40 * (8192 + 4096);
    assert_eq!((s.applied(), s.journal_use().0), (DataSetId(40), 0));
    // Data set 41 fills the window. Its records from `lost_lsn` on are in the journal
    // when the power fails; the first of them is lost, the ones after it (some past the
    // lap boundary) survive.
    let blocks = |n: u64, fill: u8| (0..n).map(|b| (1, b, fill)).collect::<Vec<Block>>();
    let ds41 = stream.data_set(&blocks(30, 0x41));
    let lost_lsn = head + s.journal_use().0;
    assert!(log_bytes - lost_lsn >= 2 * 8192, "well before the boundary");
    feed(&mut s, &ds41[..6]);
    assert!(lost_lsn + 6 * 8192 > log_bytes, "later records wrapped");
    let (mut journal, replicas) = s.into_storages();
    let at = LOG_START + lost_lsn;
    assert_ne!(journal.contents()[at as usize..][..8192], [0; 8192]);
    overwrite(&mut journal, at, &[0; 8192]);

    let mut s = start(Secondary::open(config(), journal, replicas).unwrap());
    assert_eq!(s.stats().recovered_records, 0, "the scan stops at the hole");
    hello(&mut s);
    // The primary resends what was not acknowledged.
    feed(&mut s, &ds41);
    assert_eq!(s.applied(), DataSetId(41));
    let mut expected: Vec<Block> = (0..40).map(small).collect();
    expected.extend(blocks(30, 0x41));
    assert_replicas(&s, &expected);
}

/// Bug 3. Old: the Hello carried no largest write, so a primary allowed larger writes than
/// the secondary's journal holds shook hands, and each such write then dropped the lane.
#[test]
fn the_handshake_compares_the_largest_write() {
    for (primary_max, journal_max) in [(MAX_WRITE, MAX_WRITE), (MAX_WRITE, 2 * MAX_WRITE)] {
        let mut p = primary(primary_max);
        let config = SecondaryConfig {
            max_write_bytes: journal_max,
            ..config()
        };
        let mut s = create(config, 1);
        connect(&mut p, &mut s).unwrap();
        one_write(&mut p, primary_max as usize);
        exchange(&mut p, &mut s, 3).unwrap();
        assert_eq!(
            (s.applied(), p.peer_applied()),
            (DataSetId(1), DataSetId(1))
        );
    }
    // The secondary refuses a primary whose writes its journal cannot hold...
    let mut p = primary(2 * MAX_WRITE);
    p.lane_up(0);
    let mut wire = Vec::new();
    p.poll_transmit(0, 0, &mut wire, 1 << 20);
    let mut s = create(config(), 1);
    let error = s.handle_frame(0, &frames(&wire)[0]).unwrap_err();
    assert!(largest_write(&error), "{error}");
    // ... and the primary a secondary that says so.
    let resume = ResumeState {
        window_bytes: WINDOW,
        ..ResumeState::default()
    };
    let error = p
        .handle_frame(0, &hello_frame(Role::Secondary, MAX_WRITE, resume))
        .unwrap_err();
    assert!(largest_write(&error), "{error}");
    assert_eq!(p.stalled(), Some(&error));
}

/// Bug 4. Old: a journal device with a queue of 2 was accepted, and every record was then
/// dropped as "journal busy" (room is kept for a flush and a superblock).
#[test]
fn a_journal_device_with_too_short_a_queue_is_refused() {
    for depth in [1, 2, 3] {
        let device = journal_device(&config(), depth);
        let created = Secondary::create(config(), 1, device, replicas(), true);
        let device = journal_device(&config(), depth);
        let journal = Journal::format(device, GROUP, 1, WINDOW, MAX_WRITE, 0, false).unwrap();
        let opened = Secondary::open(config(), journal.into_storage(), replicas());
        for result in [created, opened] {
            let error = result.map(|_| ()).unwrap_err();
            let invalid = matches!(error, SecondaryError::Config(ConfigError::Invalid(_)));
            assert!(invalid, "depth {depth}: {error}");
        }
    }
    // The shortest queue accepted journals and applies.
    let journal = journal_device(&config(), 4);
    let mut s = start(Secondary::create(config(), 1, journal, replicas(), true).unwrap());
    hello(&mut s);
    let writes = [(0, 0, 1), (1, 0, 2), (0, 1, 3)];
    feed(&mut s, &Stream::default().data_set(&writes));
    assert_eq!(s.applied(), DataSetId(1));
    assert_replicas(&s, &writes);
}

/// Bug 5. Old: `applied_stream_end + window_bytes` overflowed on a huge window (a panic in
/// a debug build).
#[test]
fn a_huge_window_from_the_peer_does_not_overflow_the_credit() {
    let mut p = primary(MAX_WRITE);
    p.lane_up(0);
    let resume = ResumeState {
        applied_stream_end: 1,
        window_bytes: u64::MAX,
        ..ResumeState::default()
    };
    p.handle_frame(0, &hello_frame(Role::Secondary, MAX_WRITE, resume))
        .unwrap();
    one_write(&mut p, BLOCK as usize);
    let mut wire = Vec::new();
    p.poll_transmit(0, 0, &mut wire, 1 << 20);
    let sent = frames(&wire);
    let hello_write_sync = matches!(sent[..], [Frame::Hello(_), Frame::Write(_), Frame::Sync(_)]);
    assert!(hello_write_sync, "{} frames", sent.len());
}

/// A secondary re-created with a new journal (it lost what it had acknowledged) must not
/// be taken for the one the primary knew, answering late. Old: the primary stalled on it
/// (`StateLost`). Now the new journal holds no history and needs records the primary
/// freed once the first one applied them: the primary does not stream on as if it held
/// them; the new secondary re-bases onto the primary's history (a new generation
/// descending from it, or its stream started anew) and is resynchronised to the primary's
/// image, the freed write included.
#[test]
fn a_secondary_with_another_journal_is_resynchronised_not_taken_for_the_known_one() {
    let mut p = primary(MAX_WRITE);
    let (known, now) = (0xA, 0xB);
    let mut a = create(config(), known);
    connect(&mut p, &mut a).unwrap();
    one_write(&mut p, BLOCK as usize);
    exchange(&mut p, &mut a, 3).unwrap();
    assert_eq!(p.peer_applied(), DataSetId(1));
    while p.poll_storage() > 0 {}
    assert_eq!(
        p.retention_bytes(),
        0,
        "what the first secondary applied is freed"
    );

    let mut pair = Pair::new(p, create(config(), now), 1, 0);
    pair.run_until(
        "the new secondary holds the primary's image",
        20_000,
        |pair| {
            let target = (pair.p.generation(), pair.p.last_closed());
            pair.s.replica_point() == Some(target) && pair.s.is_between_data_sets()
        },
    );
    let last_hello = pair.primary_hellos.last().expect("the primary greeted it");
    assert_eq!(last_hello.generation, pair.p.generation());
    let descends = last_hello.ancestors.first() == Some(&GENERATION);
    assert!(
        pair.p.generation() == GENERATION || descends,
        "{last_hello:?}"
    );
    assert_eq!(pair.s.history(), pair.p.generation());
    assert!(
        pair.s.stats().rebases >= 1,
        "it re-based rather than resumed"
    );
    assert_eq!(pair.s.replica_state(), ReplicaState::Consistent);
    assert!(pair.primary_errors.is_empty(), "{:?}", pair.primary_errors);
    assert!(
        pair.secondary_errors.is_empty(),
        "{:?}",
        pair.secondary_errors
    );
    assert_replicas(&pair.s, &[(0, 0, 7)]);
}

/// Records restaged at `open` must fit the replicas it is given: a write to a volume that
/// is gone, or past the end of one that shrank, fails `open` instead of the apply. (The
/// superblock's volume digest now refuses such replicas before any record is read; the
/// per-record check stays behind it.)
#[test]
fn a_journal_that_does_not_fit_the_replicas_fails_open() {
    type Replace = fn(&mut SecondaryConfig, &mut Vec<MemStorage>);
    let cases: [(&str, Replace); 2] = [
        ("not those this journal was created for", |c, r| {
            c.volume_names.truncate(1);
            r.truncate(1);
        }),
        ("not those this journal was created for", |_, r| {
            r[1] = mem(VOLUME_BYTES / 2)
        }),
    ];
    for (expected, replace) in cases {
        let mut s = create(config(), 1);
        hello(&mut s);
        let records = Stream::default().data_set(&[(0, 0, 1), (1, 60, 2)]);
        feed(&mut s, &records[..2]);
        let (journal, mut replicas) = s.into_storages();
        let mut config = config();
        replace(&mut config, &mut replicas);
        match Secondary::open(config, journal, replicas) {
            Err(SecondaryError::JournalMismatch(why)) => assert!(why.contains(expected), "{why}"),
            other => panic!("{expected}: {:?}", other.map(|_| ())),
        }
    }
}

/// Review finding. Old: journal records name volumes by index, and nothing tied a journal
/// to its replicas, so a secondary restarted with its volumes listed in another order (or
/// other volumes) replayed staged writes onto the wrong replica. Now the superblock keeps
/// a digest of the replicas' names, sizes and block sizes, in order, and open refuses any
/// other set.
#[test]
fn a_journal_is_never_replayed_onto_other_replicas() {
    let journal = journal_device(&config(), 8);
    let (journal, _) = Secondary::create(config(), 1, journal, replicas(), true)
        .unwrap()
        .into_storages();
    // A copy of the device for each attempt (open consumes it).
    let copy = || {
        let mut device = MemStorage::new(journal.geometry()).unwrap();
        device
            .submit_write(1, 0, &journal.contents()[..8192])
            .unwrap();
        drain(&mut device);
        device
    };
    let swapped = SecondaryConfig {
        volume_names: NAMES.iter().rev().map(|n| n.to_string()).collect(),
        ..config()
    };
    let resized = vec![mem(VOLUME_BYTES), mem(2 * VOLUME_BYTES)];
    for (what, config, replicas) in [
        ("swapped names", swapped, replicas()),
        ("a resized replica", config(), resized),
    ] {
        let error = Secondary::open(config, copy(), replicas).unwrap_err();
        let SecondaryError::JournalMismatch(why) = &error else {
            panic!("{what}: {error}");
        };
        assert!(
            why.contains("not those this journal was created for"),
            "{what}: {why}"
        );
    }
    assert!(
        Secondary::open(config(), copy(), replicas()).is_ok(),
        "the same replicas"
    );
}

/// Review finding. Old: a restarted primary (it keeps no state) met a secondary that had
/// applied nothing but held staged records of the earlier run; it took them for its own
/// records with the same seqs, and its new sync completed data set 1 over the old
/// payloads: the primary held B, the replica A, and nothing said so. Now a primary of
/// another history is refused on both sides and nothing is applied; the same primary
/// restarted without a clean stop begins a new generation, the secondary re-bases onto it
/// (dropping the earlier run's incomplete data set) and is resynchronised to B, its replica
/// never holding any of A.
#[test]
fn a_restarted_primary_never_completes_an_earlier_runs_staged_records() {
    let mut s = create(config(), 0xA);
    let block = |byte: u8| vec![byte; BLOCK as usize];
    let mut earlier = primary(MAX_WRITE);
    connect(&mut earlier, &mut s).unwrap();
    earlier
        .submit_write(0, VolumeId(0), 0, &block(0xA1), 1)
        .unwrap();
    earlier
        .submit_write(0, VolumeId(0), 4096, &block(0xA2), 2)
        .unwrap();
    exchange(&mut earlier, &mut s, 3).unwrap();
    assert_eq!(s.applied(), DataSetId::NONE, "data set 1 is still open");
    s.lane_down(0);

    let b_writes = |p: &mut Primary<MemStorage>| {
        p.submit_write(0, VolumeId(0), 0, &block(0xB1), 1).unwrap();
        p.submit_write(0, VolumeId(0), 4096, &block(0xB2), 2)
            .unwrap();
        p.flush(3).unwrap();
    };
    let other_history = GenerationId(0x07E4);
    let mut other = primary_of(other_history, MAX_WRITE);
    b_writes(&mut other);
    let mut pair = Pair::new(other, s, 1, 0);
    pair.run(100);
    let unrelated = PeerError::UnrelatedHistory {
        primary: other_history,
        secondary: GENERATION,
    };
    assert!(!pair.secondary_errors.is_empty());
    assert!(
        pair.secondary_errors.iter().all(|e| *e == unrelated),
        "{:?}",
        pair.secondary_errors
    );
    assert!(!pair.primary_errors.is_empty());
    assert!(
        pair.primary_errors.iter().all(|e| *e == unrelated),
        "{:?}",
        pair.primary_errors
    );
    assert_eq!(pair.p.stalled(), Some(&unrelated));
    assert_eq!(pair.s.applied(), DataSetId::NONE);
    assert_replicas(&pair.s, &[]);
    let (_, s, now_ms) = pair.into_parts();

    let mut restarted = crash_and_restart(earlier);
    b_writes(&mut restarted);
    let mut pair = Pair::new(restarted, s, 1, now_ms);
    let b = [(0, 0, 0xB1), (0, 1, 0xB2)];
    for _ in 0..20_000 {
        assert!(
            replicas_hold(&pair.s, &[]) || replicas_hold(&pair.s, &b),
            "the replica is neither the zero image nor B: {}",
            pair.describe()
        );
        let target = (pair.p.generation(), pair.p.last_closed());
        if pair.s.replica_point() == Some(target) && pair.s.is_between_data_sets() {
            break;
        }
        pair.step();
    }
    assert_eq!(
        pair.s.replica_point(),
        Some((pair.p.generation(), pair.p.last_closed())),
        "{}",
        pair.describe()
    );
    assert_ne!(pair.p.generation(), GENERATION);
    assert_eq!(pair.s.history(), pair.p.generation());
    assert!(pair.primary_errors.is_empty() && pair.secondary_errors.is_empty());
    assert_replicas(&pair.s, &b);
}

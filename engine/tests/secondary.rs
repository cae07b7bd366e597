//! Scenarios on a secondary alone, fed hand-built primary frames (through the wire codec)
//! in chosen orders, restarted on its own storage, and given bad input. The replica is
//! always compared with an independent model: a plain image per volume with every applied
//! data set written in seq order.

use ordo_engine::protocol::{
    decode, encode, frame_len, stream_cost, AckFrame, AppliedFrame, DataSetId, Frame, GroupId,
    Hello, PeerError, ResumeState, Role, Seq, SeqRange, SyncFrame, VolumeId, VolumeInfo,
    WriteFrame,
};
use ordo_engine::secondary::journal::{required_bytes, JournalError};
use ordo_engine::secondary::{Received, Secondary, SecondaryConfig, SecondaryError};
use ordo_engine::storage::{Geometry, MemStorage, Storage};

const GROUP: GroupId = GroupId(7);
const BLOCK: u32 = 4096;
const VOLUME_BYTES: u64 = 256 << 10;
const NAMES: [&str; 2] = ["data", "log"];
const WINDOW: u64 = 1 << 20;
const MAX_WRITE: u32 = 64 << 10;

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

/// A blank journal of the size the window needs, and blank replicas.
fn blank_storages() -> (MemStorage, Vec<MemStorage>) {
    let journal = mem(required_bytes(WINDOW, MAX_WRITE, BLOCK).next_multiple_of(4096));
    (journal, vec![mem(VOLUME_BYTES), mem(VOLUME_BYTES)])
}

fn start(mut secondary: Secondary<MemStorage>) -> Secondary<MemStorage> {
    (0..2).for_each(|lane| secondary.lane_up(lane));
    secondary
}

fn create() -> Secondary<MemStorage> {
    let (journal, replicas) = blank_storages();
    start(Secondary::create(config(), 0x5eed, journal, replicas).unwrap())
}

fn restart(secondary: Secondary<MemStorage>) -> Secondary<MemStorage> {
    let (journal, replicas) = secondary.into_storages();
    start(Secondary::open(config(), journal, replicas).unwrap())
}

fn primary_hello() -> Hello {
    let volume = |name: &&str| VolumeInfo {
        name: name.to_string(),
        size_bytes: VOLUME_BYTES,
        block_size: BLOCK,
    };
    let volumes = NAMES.iter().map(volume).collect();
    let resume = ResumeState::default();
    let (role, group) = (Role::Primary, GROUP);
    Hello {
        role,
        group,
        max_write_bytes: MAX_WRITE,
        volumes,
        resume,
    }
}

/// One record of the primary's stream: its frame on the wire, and for a write what it
/// puts where (volume, byte offset, payload).
#[derive(Clone, Debug)]
struct Record {
    seq: Seq,
    stream_offset: u64,
    wire: Vec<u8>,
    write: Option<Placed>,
}

/// Volume index, byte offset and payload of a write.
type Placed = (usize, usize, Vec<u8>);

#[derive(Clone, Debug)]
struct DataSet {
    id: DataSetId,
    /// In seq order.
    writes: Vec<Record>,
    sync: Record,
}

impl DataSet {
    fn records(&self) -> impl Iterator<Item = &Record> {
        self.writes.iter().chain([&self.sync])
    }

    /// The watermark the secondary announces once this data set is applied.
    fn applied(&self) -> AppliedFrame {
        AppliedFrame {
            data_set: self.id,
            applied_seq: self.sync.seq,
            stream_end: self.sync.stream_offset + stream_cost(0),
        }
    }
}

/// A write of `blocks` blocks at block `block` of `volume`; each 512 bytes of its payload
/// differ, so a misplaced or torn copy shows.
fn w(volume: u16, block: u64, blocks: usize, fill: u8) -> (u16, u64, Vec<u8>) {
    let payload = (0..blocks * BLOCK as usize).map(|i| fill.wrapping_add((i / 512) as u8));
    (volume, block * u64::from(BLOCK), payload.collect())
}

/// The primary's numbering: seqs from 1 shared by writes and syncs, data sets from 1, and
/// each record at the stream offset where the previous one's stream cost ends.
#[derive(Default)]
struct Stream {
    records: u64,
    data_sets: u64,
    stream_end: u64,
}

impl Stream {
    fn data_set(&mut self, writes: Vec<(u16, u64, Vec<u8>)>) -> DataSet {
        self.data_sets += 1;
        let (id, first_seq) = (DataSetId(self.data_sets), Seq(self.records + 1));
        let mut records = Vec::new();
        for (volume, offset, payload) in &writes {
            let frame = Frame::Write(WriteFrame {
                volume: VolumeId(*volume),
                seq: Seq(self.records + 1),
                data_set: id,
                offset: *offset,
                stream_offset: self.stream_end,
                payload,
            });
            let write = (usize::from(*volume), *offset as usize, payload.clone());
            records.push(self.record(&frame, payload.len(), Some(write)));
        }
        let sync = Frame::Sync(SyncFrame {
            seq: Seq(self.records + 1),
            data_set: id,
            first_seq,
            write_count: writes.len() as u64,
            stream_offset: self.stream_end,
        });
        let sync = self.record(&sync, 0, None);
        let writes = records;
        DataSet { id, writes, sync }
    }

    fn record(&mut self, frame: &Frame<'_>, len: usize, write: Option<Placed>) -> Record {
        let mut wire = Vec::new();
        encode(frame, &mut wire);
        self.records += 1;
        let (seq, stream_offset) = (Seq(self.records), self.stream_end);
        self.stream_end += stream_cost(len as u32);
        Record {
            seq,
            stream_offset,
            wire,
            write,
        }
    }
}

/// The replica the secondary must hold: every applied data set, writes in seq order.
#[derive(Clone, Debug, PartialEq)]
struct Model(Vec<Vec<u8>>);

impl Model {
    fn zeros() -> Model {
        Model(vec![vec![0; VOLUME_BYTES as usize]; NAMES.len()])
    }

    fn apply(&mut self, data_set: &DataSet) {
        for (volume, offset, payload) in data_set.writes.iter().filter_map(|r| r.write.as_ref()) {
            self.0[*volume][*offset..][..payload.len()].copy_from_slice(payload);
        }
    }
}

fn assert_replica(s: &Secondary<MemStorage>, model: &Model) {
    for (index, image) in model.0.iter().enumerate() {
        let same = s.replicas()[index].contents() == &image[..];
        assert!(same, "replica {} differs from the model", NAMES[index]);
    }
}

/// Hands `frame` to the secondary as it would arrive: encoded, then decoded off the wire.
fn deliver(s: &mut Secondary<MemStorage>, lane: usize, frame: &Frame<'_>) -> Result<(), PeerError> {
    let mut wire = Vec::new();
    encode(frame, &mut wire);
    receive(s, lane, &wire)
}

fn receive(s: &mut Secondary<MemStorage>, lane: usize, wire: &[u8]) -> Result<(), PeerError> {
    let (frame, used) = decode(wire).unwrap();
    assert_eq!(used, wire.len());
    s.handle_frame(lane, &frame)
}

fn hello(s: &mut Secondary<MemStorage>, lane: usize) {
    deliver(s, lane, &Frame::Hello(primary_hello())).unwrap();
}

fn send<'a>(
    s: &mut Secondary<MemStorage>,
    lane: usize,
    records: impl IntoIterator<Item = &'a Record>,
) {
    for record in records {
        receive(s, lane, &record.wire).unwrap();
    }
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

/// What a variant of the primary's Hello is called, and how it differs from the good one.
type Change<'a> = (&'a str, &'a dyn Fn(&mut Hello));

/// What the secondary sent on a lane, decoded.
#[derive(Debug, Default)]
struct Reply {
    hellos: Vec<Hello>,
    applied: Vec<AppliedFrame>,
    acked: Vec<u64>,
}

fn transmit(s: &mut Secondary<MemStorage>, lane: usize) -> Reply {
    let mut wire = Vec::new();
    assert_eq!(s.poll_transmit(lane, &mut wire, 1 << 20), wire.len());
    let mut reply = Reply::default();
    let mut at = 0;
    while at < wire.len() {
        let len = frame_len(&wire[at..]).unwrap();
        match decode(&wire[at..at + len]).unwrap().0 {
            Frame::Hello(hello) => reply.hellos.push(hello),
            Frame::Applied(applied) => reply.applied.push(applied),
            Frame::Ack(ack) => reply.acked.extend(expand(&ack.ranges)),
            other => panic!("a secondary sent {other:?}"),
        }
        at += len;
    }
    reply.acked.sort_unstable();
    reply
}

fn expand(ranges: &[SeqRange]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for range in ranges {
        assert!(range.first <= range.last, "{range:?}");
        seqs.extend(range.first.0..=range.last.0);
    }
    seqs
}

fn seqs<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<u64> {
    let mut seqs: Vec<u64> = records.into_iter().map(|r| r.seq.0).collect();
    seqs.sort_unstable();
    seqs
}

/// After bad input: a fresh Hello on lane 0 and the next data set still work.
fn still_works(s: &mut Secondary<MemStorage>, stream: &mut Stream, model: &mut Model) {
    s.lane_down(0);
    s.lane_up(0);
    hello(s, 0);
    let next = stream.data_set(vec![w(0, 7, 1, 0x77), w(1, 7, 2, 0x78)]);
    send(s, 0, next.records());
    settle(s);
    model.apply(&next);
    assert_eq!(s.applied(), next.id);
    assert!(s.is_between_data_sets());
    assert_replica(s, model);
}

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
    let error = journal_error(Secondary::create(config(), 0x5eed, small, replicas));
    assert!(matches!(error, JournalError::TooSmall { .. }), "{error}");
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

/// The staging arena claims whole 512-byte granules, so the window is a whole number of
/// them; anything else is refused up front with the reason.
#[test]
fn a_window_that_is_not_a_multiple_of_512_is_refused() {
    let (journal, replicas) = blank_storages();
    let config = SecondaryConfig {
        window_bytes: WINDOW + 100,
        ..config()
    };
    let error = Secondary::create(config, 1, journal, replicas).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, SecondaryError::Config(_)), "{message}");
    assert!(message.contains("multiple of 512"), "{message}");
}

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
use ordo_engine::secondary::{Secondary, SecondaryConfig, SecondaryError};
use ordo_engine::storage::{Geometry, MemStorage};

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
    let journal_bytes = required_bytes(WINDOW, MAX_WRITE, BLOCK).next_multiple_of(4096);
    (
        mem(journal_bytes),
        vec![mem(VOLUME_BYTES), mem(VOLUME_BYTES)],
    )
}

fn start(secondary: Secondary<MemStorage>) -> Secondary<MemStorage> {
    let mut secondary = secondary;
    secondary.lane_up(0);
    secondary.lane_up(1);
    secondary
}

fn create() -> Secondary<MemStorage> {
    let (journal, replicas) = blank_storages();
    start(Secondary::create(config(), journal, replicas).unwrap())
}

fn restart(secondary: Secondary<MemStorage>) -> Secondary<MemStorage> {
    let (journal, replicas) = secondary.into_storages();
    start(Secondary::open(config(), journal, replicas).unwrap())
}

fn primary_hello() -> Hello {
    let volume = |name: &str| VolumeInfo {
        name: name.to_string(),
        size_bytes: VOLUME_BYTES,
        block_size: BLOCK,
    };
    Hello {
        role: Role::Primary,
        group: GROUP,
        volumes: NAMES.iter().map(|n| volume(n)).collect(),
        resume: ResumeState::default(),
    }
}

/// One record of the primary's stream, owned.
#[derive(Clone, Debug)]
struct Record {
    seq: Seq,
    data_set: DataSetId,
    stream_offset: u64,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Write {
        volume: VolumeId,
        offset: u64,
        payload: Vec<u8>,
    },
    Sync {
        first_seq: Seq,
        write_count: u64,
    },
}

impl Record {
    fn frame(&self) -> Frame<'_> {
        match &self.body {
            Body::Write {
                volume,
                offset,
                payload,
            } => Frame::Write(WriteFrame {
                volume: *volume,
                seq: self.seq,
                data_set: self.data_set,
                offset: *offset,
                stream_offset: self.stream_offset,
                payload,
            }),
            Body::Sync {
                first_seq,
                write_count,
            } => Frame::Sync(SyncFrame {
                seq: self.seq,
                data_set: self.data_set,
                first_seq: *first_seq,
                write_count: *write_count,
                stream_offset: self.stream_offset,
            }),
        }
    }
}

#[derive(Clone, Debug)]
struct DataSet {
    id: DataSetId,
    /// In seq order.
    writes: Vec<Record>,
    sync: Record,
}

impl DataSet {
    fn stream_end(&self) -> u64 {
        self.sync.stream_offset + stream_cost(0)
    }

    fn records(&self) -> impl Iterator<Item = &Record> {
        self.writes.iter().chain([&self.sync])
    }
}

/// A write of `blocks` blocks at block `block` of `volume`; each 512 bytes of its payload
/// differ, so a misplaced or torn copy shows.
fn w(volume: u16, block: u64, blocks: usize, fill: u8) -> (VolumeId, u64, Vec<u8>) {
    let len = blocks * BLOCK as usize;
    let payload = (0..len)
        .map(|i| fill.wrapping_add((i / 512) as u8))
        .collect();
    (VolumeId(volume), block * u64::from(BLOCK), payload)
}

/// The primary's numbering: seqs from 1 shared by writes and syncs, data sets from 1, and
/// each record at the stream offset where the previous one's stream cost ends.
struct Stream {
    next_seq: u64,
    next_data_set: u64,
    next_offset: u64,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            next_seq: 1,
            next_data_set: 1,
            next_offset: 0,
        }
    }

    fn record(&mut self, data_set: DataSetId, body: Body) -> Record {
        let payload_len = match &body {
            Body::Write { payload, .. } => payload.len() as u32,
            Body::Sync { .. } => 0,
        };
        let record = Record {
            seq: Seq(self.next_seq),
            data_set,
            stream_offset: self.next_offset,
            body,
        };
        self.next_seq += 1;
        self.next_offset += stream_cost(payload_len);
        record
    }

    fn data_set(&mut self, writes: Vec<(VolumeId, u64, Vec<u8>)>) -> DataSet {
        let id = DataSetId(self.next_data_set);
        self.next_data_set += 1;
        let first_seq = Seq(self.next_seq);
        let write_count = writes.len() as u64;
        let writes = writes
            .into_iter()
            .map(|(volume, offset, payload)| {
                let body = Body::Write {
                    volume,
                    offset,
                    payload,
                };
                self.record(id, body)
            })
            .collect();
        let sync = Body::Sync {
            first_seq,
            write_count,
        };
        let sync = self.record(id, sync);
        DataSet { id, writes, sync }
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
        for record in &data_set.writes {
            let Body::Write {
                volume,
                offset,
                payload,
            } = &record.body
            else {
                unreachable!()
            };
            let image = &mut self.0[usize::from(volume.0)];
            image[*offset as usize..][..payload.len()].copy_from_slice(payload);
        }
    }
}

fn assert_replica(secondary: &Secondary<MemStorage>, model: &Model) {
    for (index, (replica, image)) in secondary.replicas().iter().zip(&model.0).enumerate() {
        let differs = replica
            .contents()
            .iter()
            .zip(image)
            .position(|(a, b)| a != b);
        assert_eq!(
            differs, None,
            "replica {} differs at that byte",
            NAMES[index]
        );
    }
}

/// Hands `frame` to the secondary as it would arrive: encoded, then decoded off the wire.
fn deliver(s: &mut Secondary<MemStorage>, lane: usize, frame: &Frame<'_>) -> Result<(), PeerError> {
    let mut wire = Vec::new();
    encode(frame, &mut wire);
    let (decoded, used) = decode(&wire).unwrap();
    assert_eq!(used, wire.len());
    s.handle_frame(lane, &decoded)
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
        deliver(s, lane, &record.frame()).unwrap();
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

fn applied_frame(data_set: &DataSet) -> AppliedFrame {
    AppliedFrame {
        data_set: data_set.id,
        applied_seq: data_set.sync.seq,
        stream_end: data_set.stream_end(),
    }
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
    let mut stream = Stream::new();
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
    assert_eq!(
        (resume.applied_data_set, resume.window_bytes),
        (DataSetId(0), WINDOW)
    );
    let mut acked = [lane0.acked, lane1.acked].concat();
    acked.sort_unstable();
    assert_eq!(
        acked,
        seqs(&ds1.writes),
        "every write staged durably is acked"
    );
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
    assert_eq!(reply.applied, [applied_frame(&ds1)]);
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
        let mut stream = Stream::new();
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
    let mut stream = Stream::new();
    let ds1 = stream.data_set(vec![w(0, 0, 2, 1), w(1, 0, 1, 2), w(0, 4, 1, 3)]);
    let ds2 = stream.data_set(vec![w(0, 1, 4, 4), w(1, 0, 2, 5)]);
    let missing = &ds1.writes[1];
    send(&mut s, 0, ds1.records().filter(|r| r.seq != missing.seq));
    settle(&mut s);
    assert_eq!(
        s.applied(),
        DataSetId(0),
        "a write of data set 1 is missing"
    );
    assert_replica(&s, &Model::zeros());

    send(&mut s, 0, ds2.records());
    settle(&mut s);
    assert_eq!(
        s.applied(),
        DataSetId(0),
        "data set 2 is complete, 1 is not"
    );
    assert!(s.is_between_data_sets());
    assert_replica(&s, &Model::zeros());
    let reply = transmit(&mut s, 0);
    let held: Vec<&Record> = ds1.records().chain(ds2.records()).collect();
    let expected: Vec<u64> = seqs(held.iter().copied().filter(|r| r.seq != missing.seq));
    assert_eq!(reply.acked, expected);
    assert!(reply.applied.is_empty());

    send(&mut s, 0, [missing]);
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(2));
    let mut model = Model::zeros();
    model.apply(&ds1);
    model.apply(&ds2);
    assert_replica(&s, &model);
    let reply = transmit(&mut s, 0);
    assert_eq!(reply.acked, [missing.seq.0]);
    assert_eq!(reply.applied.last(), Some(&applied_frame(&ds2)));
}

#[test]
fn a_duplicate_write_is_harmless_and_acknowledged_again() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::new();
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
    assert_eq!(reply.applied, [applied_frame(&ds1)]);
    assert_eq!(s.stats().duplicates, 3);
    assert_eq!(s.stats().data_sets_applied, 1);
    assert_replica(&s, &model);
}

#[test]
fn a_restarted_secondary_reapplies_what_its_journal_holds_and_finishes_the_rest() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::new();
    let ds1 = stream.data_set(vec![w(0, 0, 3, 1), w(1, 2, 1, 2), w(0, 1, 1, 3)]);
    let ds2 = stream.data_set(vec![w(0, 0, 1, 4), w(1, 2, 2, 5), w(1, 9, 1, 6)]);
    let missing = &ds2.writes[2];
    send(&mut s, 0, ds1.records());
    send(&mut s, 0, ds2.records().filter(|r| r.seq != missing.seq));
    s.poll_storage();
    assert_eq!(
        s.applied(),
        DataSetId(0),
        "crashed before applying anything"
    );

    let mut s = restart(s);
    assert_eq!(s.stats().recovered_records, 4 + 3);
    assert_eq!(s.applied(), DataSetId(0));
    assert!(
        !s.is_between_data_sets(),
        "data set 1 still to be re-applied"
    );
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
    assert_eq!(resume.applied_stream_end, ds1.stream_end());
    let held = seqs(ds2.records().filter(|r| r.seq != missing.seq));
    assert_eq!(expand(&resume.staged), held, "staged records resume");

    send(&mut s, 0, [missing]);
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(2));
    model.apply(&ds2);
    assert_replica(&s, &model);
}

#[test]
fn a_restart_after_an_apply_keeps_the_watermark_and_the_later_records() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::new();
    let ds1 = stream.data_set(vec![w(0, 0, 1, 1)]);
    let ds2 = stream.data_set(vec![w(0, 0, 1, 2), w(1, 0, 1, 3)]);
    send(&mut s, 0, ds1.records());
    settle(&mut s);
    send(&mut s, 0, ds2.records().skip(1));
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(1));

    let mut s = restart(s);
    assert_eq!(s.applied(), DataSetId(1), "the watermark is durable");
    assert_eq!(
        s.stats().recovered_records,
        2,
        "data set 1 left the journal"
    );
    settle(&mut s);
    let mut model = Model::zeros();
    model.apply(&ds1);
    assert_replica(&s, &model);
    hello(&mut s, 0);
    send(&mut s, 0, [&ds2.writes[0]]);
    settle(&mut s);
    assert_eq!(s.applied(), DataSetId(2));
    model.apply(&ds2);
    assert_replica(&s, &model);
}

#[test]
fn records_before_the_hello_are_dropped_and_counted() {
    let mut s = create();
    let mut stream = Stream::new();
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
    let wrong: [(&str, &dyn Fn(&mut Hello)); 6] = [
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
        let mut stream = Stream::new();
        let ds1 = stream.data_set(vec![w(0, 0, 1, 1)]);
        send(&mut s, 0, ds1.records());
        settle(&mut s);
        assert_eq!(
            s.stats().before_hello,
            2,
            "{expected_field}: lane not ready"
        );
        assert!(
            transmit(&mut s, 0).hellos.is_empty(),
            "no answer to a bad Hello"
        );
        assert_replica(&s, &Model::zeros());
        still_works(&mut s, &mut Stream::new(), &mut Model::zeros());
    }
}

#[test]
fn a_bad_write_is_refused_without_touching_the_replica() {
    let mut s = create();
    hello(&mut s, 0);
    let (_, _, block) = w(0, 0, 1, 9);
    let bad = |volume: u16, offset: u64, payload: &[u8]| {
        let write = WriteFrame {
            volume: VolumeId(volume),
            seq: Seq(1),
            data_set: DataSetId(1),
            offset,
            stream_offset: 0,
            payload,
        };
        deliver(&mut s, 0, &Frame::Write(write))
    };
    let errors = [
        bad(2, 0, &block),
        bad(0, 100, &block),
        bad(0, 0, &block[..1000]),
        bad(
            0,
            VOLUME_BYTES - 4096,
            &[block.clone(), block.clone()].concat(),
        ),
        bad(1, VOLUME_BYTES, &block),
        bad(0, 0, &vec![9; 2 * MAX_WRITE as usize]),
    ];
    for error in errors {
        assert!(matches!(error, Err(PeerError::BadWrite(_))), "{error:?}");
    }
    settle(&mut s);
    assert_eq!(s.stats().records_staged, 0);
    assert!(transmit(&mut s, 0).acked.is_empty());
    assert_replica(&s, &Model::zeros());
    still_works(&mut s, &mut Stream::new(), &mut Model::zeros());
}

#[test]
fn a_record_overlapping_a_held_one_in_the_stream_is_a_violation() {
    let mut s = create();
    hello(&mut s, 0);
    let mut stream = Stream::new();
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

#[test]
fn ack_and_applied_frames_from_the_primary_are_unexpected() {
    let mut s = create();
    hello(&mut s, 0);
    let ack = Frame::Ack(AckFrame {
        ranges: vec![SeqRange {
            first: Seq(1),
            last: Seq(3),
        }],
    });
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
    assert_eq!(s.applied(), DataSetId(0));
    assert_replica(&s, &Model::zeros());
    still_works(&mut s, &mut Stream::new(), &mut Model::zeros());
}

#[test]
fn opening_a_journal_that_is_not_formatted_or_not_ours_fails() {
    let (journal, replicas) = blank_storages();
    let error = Secondary::open(config(), journal, replicas).unwrap_err();
    let not_formatted = matches!(error, SecondaryError::Journal(JournalError::NotFormatted));
    assert!(not_formatted, "{error}");

    let (journal, replicas) = create().into_storages();
    let other_group = SecondaryConfig {
        group: GroupId(8),
        ..config()
    };
    let error = Secondary::open(other_group, journal, replicas).unwrap_err();
    let wrong_group = JournalError::WrongGroup {
        expected: 8,
        found: 7,
    };
    assert!(
        matches!(&error, SecondaryError::Journal(e) if *e == wrong_group),
        "{error}"
    );

    let journal_bytes = required_bytes(WINDOW, MAX_WRITE, BLOCK).next_multiple_of(4096);
    let small = mem(journal_bytes - 4096);
    let replicas = vec![mem(VOLUME_BYTES), mem(VOLUME_BYTES)];
    let error = Secondary::create(config(), small, replicas).unwrap_err();
    let too_small = matches!(
        error,
        SecondaryError::Journal(JournalError::TooSmall { .. })
    );
    assert!(too_small, "{error}");
}

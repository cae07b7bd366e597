//! What the secondary's scenario tests share: the configuration and storage, a primary's
//! stream built by hand (frames through the wire codec), an independent model of the
//! replica, and helpers to feed frames, settle storage and read what the secondary sent.
//! Each test crate uses part of it.
#![allow(dead_code, unused_imports)]

pub use ordo_core::protocol::{
    decode, encode, frame_len, stream_cost, AckFrame, AppliedFrame, DataSetId, Frame, GenerationId,
    GroupId, Hello, HistoryFlags, PeerError, ResumeState, Role, Seq, SeqRange, SyncFrame, VolumeId,
    VolumeInfo, WriteFrame,
};
pub use ordo_core::secondary::journal::{required_bytes, JournalError};
pub use ordo_core::secondary::{Received, Secondary, SecondaryConfig, SecondaryError};
pub use ordo_core::storage::{Geometry, MemStorage, Storage};

pub const GROUP: GroupId = GroupId(7);
pub const BLOCK: u32 = 4096;
pub const VOLUME_BYTES: u64 = 256 << 10;
pub const NAMES: [&str; 2] = ["data", "log"];
pub const WINDOW: u64 = 1 << 20;
pub const MAX_WRITE: u32 = 64 << 10;
/// The history of the hand-built primary: one that began as zeros and holds its whole
/// stream, so a fresh, zeroed secondary follows it from seq 1 with no resync.
pub const GENERATION: GenerationId = GenerationId(0x0AD0_97ED);

pub fn config() -> SecondaryConfig {
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

pub fn mem(size_bytes: u64) -> MemStorage {
    MemStorage::new(Geometry::new(size_bytes, BLOCK).unwrap()).unwrap()
}

/// A blank journal of the size the window needs, and blank replicas.
pub fn blank_storages() -> (MemStorage, Vec<MemStorage>) {
    let journal = mem(required_bytes(WINDOW, MAX_WRITE, BLOCK).next_multiple_of(4096));
    (journal, vec![mem(VOLUME_BYTES), mem(VOLUME_BYTES)])
}

pub fn start(mut secondary: Secondary<MemStorage>) -> Secondary<MemStorage> {
    (0..2).for_each(|lane| secondary.lane_up(lane));
    secondary
}

pub fn create() -> Secondary<MemStorage> {
    let (journal, replicas) = blank_storages();
    start(Secondary::create(config(), 0x5eed, journal, replicas, true).unwrap())
}

pub fn restart(secondary: Secondary<MemStorage>) -> Secondary<MemStorage> {
    let (journal, replicas) = secondary.into_storages();
    start(Secondary::open(config(), journal, replicas).unwrap())
}

pub fn primary_hello() -> Hello {
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
        generation: GENERATION,
        ancestors: vec![],
        flags: HistoryFlags {
            genesis_stream: true,
            genesis_bits: true,
            ..HistoryFlags::default()
        },
        resume,
    }
}

/// One record of the primary's stream: its frame on the wire, and for a write what it
/// puts where (volume, byte offset, payload).
#[derive(Clone, Debug)]
pub struct Record {
    pub seq: Seq,
    pub stream_offset: u64,
    pub wire: Vec<u8>,
    pub write: Option<Placed>,
}

/// Volume index, byte offset and payload of a write.
pub type Placed = (usize, usize, Vec<u8>);

#[derive(Clone, Debug)]
pub struct DataSet {
    pub id: DataSetId,
    /// In seq order.
    pub writes: Vec<Record>,
    pub sync: Record,
}

impl DataSet {
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.writes.iter().chain([&self.sync])
    }

    /// The watermark the secondary announces once this data set is applied.
    pub fn applied(&self) -> AppliedFrame {
        AppliedFrame {
            data_set: self.id,
            applied_seq: self.sync.seq,
            stream_end: self.sync.stream_offset + stream_cost(0),
        }
    }
}

/// A write of `blocks` blocks at block `block` of `volume`; each 512 bytes of its payload
/// differ, so a misplaced or torn copy shows.
pub fn w(volume: u16, block: u64, blocks: usize, fill: u8) -> (u16, u64, Vec<u8>) {
    let payload = (0..blocks * BLOCK as usize).map(|i| fill.wrapping_add((i / 512) as u8));
    (volume, block * u64::from(BLOCK), payload.collect())
}

/// The primary's numbering: seqs from 1 shared by writes and syncs, data sets from 1, and
/// each record at the stream offset where the previous one's stream cost ends.
#[derive(Default)]
pub struct Stream {
    records: u64,
    data_sets: u64,
    stream_end: u64,
}

impl Stream {
    pub fn data_set(&mut self, writes: Vec<(u16, u64, Vec<u8>)>) -> DataSet {
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
            ends_resync: false,
        });
        let sync = self.record(&sync, 0, None);
        let writes = records;
        DataSet { id, writes, sync }
    }

    pub fn record(&mut self, frame: &Frame<'_>, len: usize, write: Option<Placed>) -> Record {
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
pub struct Model(pub Vec<Vec<u8>>);

impl Model {
    pub fn zeros() -> Model {
        Model(vec![vec![0; VOLUME_BYTES as usize]; NAMES.len()])
    }

    pub fn apply(&mut self, data_set: &DataSet) {
        for (volume, offset, payload) in data_set.writes.iter().filter_map(|r| r.write.as_ref()) {
            self.0[*volume][*offset..][..payload.len()].copy_from_slice(payload);
        }
    }
}

pub fn assert_replica(s: &Secondary<MemStorage>, model: &Model) {
    for (index, image) in model.0.iter().enumerate() {
        let same = s.replicas()[index].contents() == &image[..];
        assert!(same, "replica {} differs from the model", NAMES[index]);
    }
}

/// Hands `frame` to the secondary as it would arrive: encoded, then decoded off the wire.
pub fn deliver(
    s: &mut Secondary<MemStorage>,
    lane: usize,
    frame: &Frame<'_>,
) -> Result<(), PeerError> {
    let mut wire = Vec::new();
    encode(frame, &mut wire);
    receive(s, lane, &wire)
}

pub fn receive(s: &mut Secondary<MemStorage>, lane: usize, wire: &[u8]) -> Result<(), PeerError> {
    let (frame, used) = decode(wire).unwrap();
    assert_eq!(used, wire.len());
    s.handle_frame(lane, &frame)
}

pub fn hello(s: &mut Secondary<MemStorage>, lane: usize) {
    deliver(s, lane, &Frame::Hello(primary_hello())).unwrap();
}

pub fn send<'a>(
    s: &mut Secondary<MemStorage>,
    lane: usize,
    records: impl IntoIterator<Item = &'a Record>,
) {
    for record in records {
        receive(s, lane, &record.wire).unwrap();
    }
}

/// Polls storage until two polls in a row find nothing to do.
pub fn settle(s: &mut Secondary<MemStorage>) {
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
pub type Change<'a> = (&'a str, &'a dyn Fn(&mut Hello));

/// What the secondary sent on a lane, decoded.
#[derive(Debug, Default)]
pub struct Reply {
    pub hellos: Vec<Hello>,
    pub applied: Vec<AppliedFrame>,
    pub acked: Vec<u64>,
}

pub fn transmit(s: &mut Secondary<MemStorage>, lane: usize) -> Reply {
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

pub fn expand(ranges: &[SeqRange]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for range in ranges {
        assert!(range.first <= range.last, "{range:?}");
        seqs.extend(range.first.0..=range.last.0);
    }
    seqs
}

pub fn seqs<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<u64> {
    let mut seqs: Vec<u64> = records.into_iter().map(|r| r.seq.0).collect();
    seqs.sort_unstable();
    seqs
}

/// After bad input: a fresh Hello on lane 0 and the next data set still work.
pub fn still_works(s: &mut Secondary<MemStorage>, stream: &mut Stream, model: &mut Model) {
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

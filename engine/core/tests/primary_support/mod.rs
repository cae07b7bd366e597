//! What the primary's scenario tests share (`primary.rs`, `primary_link.rs`): its
//! configuration and volume, writes and events, and the secondary's side of the
//! conversation as hand-built frames delivered through the wire codec, with what the
//! primary sent decoded off the wire. Each test crate uses part of it.
#![allow(dead_code, unused_imports)]

pub use ordo_core::primary::intent::{required_bytes, WriteIntent};
pub use ordo_core::primary::{
    format_record, ConfigError, DataSetPolicy, PeerError, Primary, PrimaryConfig, PrimaryEvent,
    Replication, SubmitError,
};
pub use ordo_core::protocol::{
    decode, encode, frame_len, stream_cost, AckFrame, AppliedFrame, DataSetId, Frame, GenerationId,
    GroupId, Hello, HistoryFlags, ResumeState, Role, Seq, SeqRange, SyncFrame, VolumeId,
    VolumeInfo,
};
pub use ordo_core::storage::{Geometry, MemStorage, StorageError};

pub const GROUP: GroupId = GroupId(7);
pub const BLOCK: u32 = 4096;
pub const VOLUME_BYTES: u64 = 1 << 20;
pub const MAX_WRITE: u32 = 64 << 10;
pub const RETRANSMIT_MS: u64 = 100;
pub const VOL: VolumeId = VolumeId(0);
/// The history a fresh primary's write-intent record is formatted with: its first start
/// resumes it at seq 1.
pub const GENERATION: GenerationId = GenerationId(0x0001_D57A);

pub fn policy(max_writes: u64, max_bytes: u64, interval_ms: u64) -> DataSetPolicy {
    DataSetPolicy {
        interval_ms,
        max_writes,
        max_bytes,
    }
}

/// Data sets that close only on a flush (or a full window).
pub fn open_ended() -> DataSetPolicy {
    policy(1000, 1 << 20, 0)
}

pub fn config(policy: DataSetPolicy) -> PrimaryConfig {
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

pub fn volume() -> MemStorage {
    MemStorage::new(Geometry::new(VOLUME_BYTES, BLOCK).unwrap()).unwrap()
}

/// The one volume as a handshake describes it.
pub fn volume_infos() -> Vec<VolumeInfo> {
    vec![VolumeInfo {
        name: "data".to_string(),
        size_bytes: VOLUME_BYTES,
        block_size: BLOCK,
    }]
}

/// A write-intent record for a new history of all-zero volumes (`GENERATION`).
pub fn record() -> WriteIntent<MemStorage> {
    let infos = volume_infos();
    let size = required_bytes(&infos).next_multiple_of(4096);
    let storage = MemStorage::new(Geometry::new(size, BLOCK).unwrap()).unwrap();
    format_record(storage, &infos, GENERATION, true).unwrap()
}

/// A primary on a zeroed volume and a fresh record, once the record says it runs (it
/// sends nothing before).
pub fn primary(config: PrimaryConfig) -> Primary<MemStorage> {
    let mut p = Primary::new(config, vec![volume()], record(), 1).unwrap();
    assert_eq!(
        p.generation(),
        GENERATION,
        "a fresh record's history resumes"
    );
    poll_until_quiet(&mut p);
    p
}

/// Polls storage (volumes and the write-intent record) until a poll finds nothing to do.
pub fn poll_until_quiet(p: &mut Primary<MemStorage>) {
    for _ in 0..1000 {
        if p.poll_storage() == 0 {
            return;
        }
    }
    panic!("the primary's storage never went quiet");
}

/// `blocks` blocks of `fill`.
pub fn data(fill: u8, blocks: usize) -> Vec<u8> {
    vec![fill; blocks * BLOCK as usize]
}

/// Submits one block of `fill` at block `index`.
pub fn write_block(p: &mut Primary<MemStorage>, now_ms: u64, index: u64, fill: u8) -> Seq {
    let offset = index * u64::from(BLOCK);
    p.submit_write(now_ms, VOL, offset, &data(fill, 1), u64::from(fill))
        .unwrap()
}

pub fn events(p: &mut Primary<MemStorage>) -> Vec<PrimaryEvent> {
    std::iter::from_fn(|| p.next_event()).collect()
}

/// The (data set, first seq, sync seq) of every `DataSetClosed` in `events`.
pub fn closed(events: &[PrimaryEvent]) -> Vec<(u64, u64, u64)> {
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
pub fn secondary_hello(resume: ResumeState) -> Hello {
    Hello {
        role: Role::Secondary,
        group: GROUP,
        max_write_bytes: MAX_WRITE,
        volumes: vec![VolumeInfo {
            name: "data".to_string(),
            size_bytes: VOLUME_BYTES,
            block_size: BLOCK,
        }],
        generation: GENERATION,
        ancestors: vec![],
        flags: HistoryFlags::default(),
        resume,
    }
}

pub fn resume(window_bytes: u64) -> ResumeState {
    ResumeState {
        window_bytes,
        ..ResumeState::default()
    }
}

/// Hands `frame` to the primary as it would arrive: encoded, then decoded off the wire.
pub fn deliver(
    p: &mut Primary<MemStorage>,
    lane: usize,
    frame: &Frame<'_>,
) -> Result<(), PeerError> {
    let mut wire = Vec::new();
    encode(frame, &mut wire);
    let (decoded, used) = decode(&wire).unwrap();
    assert_eq!(used, wire.len());
    p.handle_frame(lane, &decoded)
}

/// Brings `lane` up and answers it with a secondary Hello offering `window_bytes`.
pub fn connect(p: &mut Primary<MemStorage>, lane: usize, window_bytes: u64) {
    p.lane_up(lane);
    deliver(
        p,
        lane,
        &Frame::Hello(secondary_hello(resume(window_bytes))),
    )
    .unwrap();
}

pub fn ack(p: &mut Primary<MemStorage>, lane: usize, first: u64, last: u64) {
    let ranges = vec![SeqRange {
        first: Seq(first),
        last: Seq(last),
    }];
    deliver(p, lane, &Frame::Ack(AckFrame { ranges })).unwrap();
}

/// What a variant of a config or frame is called, and how it differs from the good one.
pub type Change<'a, T> = (&'a str, &'a dyn Fn(&mut T));

/// A frame the primary sent, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
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
pub fn transmit(p: &mut Primary<MemStorage>, now_ms: u64, lane: usize) -> Vec<Sent> {
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
pub fn record_seqs(sent: &[Sent]) -> Vec<u64> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Hello(_) => None,
            Sent::Write { seq, .. } => Some(*seq),
            Sent::Sync(sync) => Some(sync.seq.0),
        })
        .collect()
}

pub fn is_hello(sent: &Sent) -> bool {
    matches!(sent, Sent::Hello(_))
}

//! A peer that speaks the protocol but lies: frames that decode cleanly (right magic,
//! version and crc) with arbitrary field values, histories included (generations,
//! ancestors, flags, syncs that end a resync, digest requests and answers). Neither side
//! may panic, and a secondary that never applied a data set must still have an untouched
//! replica.

use ordo_core::primary::intent::required_bytes as record_bytes;
use ordo_core::primary::{format_record, DataSetPolicy, Primary, PrimaryConfig};
use ordo_core::protocol::{
    decode, encode, AckFrame, AppliedFrame, DataSetId, DigestRequestFrame, DigestsFrame, Frame,
    GenerationId, GroupId, Hello, HistoryFlags, ResumeState, Role, Seq, SeqRange, SyncFrame,
    VolumeId, VolumeInfo, WriteFrame, MAX_ANCESTORS, MAX_DIGESTS,
};
use ordo_core::secondary::journal::required_bytes;
use ordo_core::secondary::{Secondary, SecondaryConfig};
use ordo_core::storage::{Geometry, MemStorage, Storage};
use proptest::prelude::*;

const GROUP: GroupId = GroupId(3);
const VOLUME_BYTES: u64 = 64 << 10;
const WINDOW: u64 = 256 << 10;
const MAX_WRITE: u32 = 8192;
/// The honest primary's history (and the one its write-intent record is formatted with).
const GENERATION: GenerationId = GenerationId(0x11E5);

fn mem(size: u64) -> MemStorage {
    MemStorage::new(Geometry::new(size.next_multiple_of(4096), 4096).unwrap()).unwrap()
}

fn volumes() -> Vec<VolumeInfo> {
    vec![VolumeInfo {
        name: "v".into(),
        size_bytes: VOLUME_BYTES,
        block_size: 4096,
    }]
}

/// An honest Hello: a primary of `GENERATION` that began as zeros and holds its whole
/// stream, or a secondary that follows it.
fn hello(role: Role, resume: ResumeState) -> Hello {
    let primary = role == Role::Primary;
    Hello {
        role,
        group: GROUP,
        max_write_bytes: MAX_WRITE,
        volumes: volumes(),
        generation: GENERATION,
        ancestors: vec![],
        flags: HistoryFlags {
            genesis_stream: primary,
            genesis_bits: primary,
            ..HistoryFlags::default()
        },
        resume,
    }
}

/// Flags from their bits, one per field in declaration order.
fn flags(bits: u8) -> HistoryFlags {
    let bit = |n: u8| bits & (1 << n) != 0;
    HistoryFlags {
        genesis_stream: bit(0),
        genesis_bits: bit(1),
        replica_zeroed: bit(2),
        discard: bit(3),
        inconsistent: bit(4),
        held: bit(5),
        resync_all: bit(6),
        resync_from_zero: bit(7),
    }
}

/// Small values most of the time (so lies land near real state), any value sometimes.
fn near(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..=max, 1 => any::<u64>()]
}

/// The fields of one lying frame; turned into a `Frame` by `frame`.
#[derive(Clone, Debug)]
enum Lie {
    Write {
        volume: u16,
        seq: u64,
        data_set: u64,
        offset: u64,
        stream_offset: u64,
        len: usize,
        byte: u8,
    },
    Sync {
        data_set: u64,
        first_seq: u64,
        write_count: u64,
        stream_offset: u64,
        ends_resync: bool,
    },
    Ack {
        ranges: Vec<(u64, u64)>,
    },
    Applied {
        data_set: u64,
        applied_seq: u64,
        stream_end: u64,
    },
    Hello {
        role_primary: bool,
        group: u64,
        size: u64,
        applied: u64,
        stream_end: u64,
        window: u64,
        journal_id: u64,
        generation: u64,
        ancestors: Vec<u64>,
        flag_bits: u8,
    },
    DigestRequest {
        id: u64,
        volume: u16,
        offset: u64,
        len: u32,
    },
    Digests {
        id: u64,
        volume: u16,
        offset: u64,
        len: u32,
        digests: Vec<u64>,
    },
}

/// A generation a lie names: the honest one, none, a small one, or any.
fn generation() -> impl Strategy<Value = u64> {
    prop_oneof![2 => Just(GENERATION.0), 1 => Just(0), 1 => near(3)]
}

fn lie() -> impl Strategy<Value = Lie> {
    let lens = prop_oneof![Just(0usize), Just(512), Just(4096), Just(8192), Just(12288)];
    prop_oneof![
        4 => (0..3u16, near(40), near(12), near(VOLUME_BYTES + 8192), near(200_000), lens, any::<u8>())
            .prop_map(|(volume, seq, data_set, offset, stream_offset, len, byte)| Lie::Write {
                volume, seq, data_set, offset, stream_offset, len, byte
            }),
        2 => (near(12), near(40), near(20), near(200_000), any::<bool>())
            .prop_map(|(data_set, first_seq, write_count, stream_offset, ends_resync)| Lie::Sync {
                data_set, first_seq, write_count, stream_offset, ends_resync
            }),
        1 => prop::collection::vec((near(60), near(60)), 0..5).prop_map(|ranges| Lie::Ack { ranges }),
        1 => (near(12), near(60), near(400_000))
            .prop_map(|(data_set, applied_seq, stream_end)| Lie::Applied { data_set, applied_seq, stream_end }),
        2 => (
            (any::<bool>(), prop_oneof![Just(GROUP.0), any::<u64>()], prop_oneof![Just(VOLUME_BYTES), any::<u64>()]),
            (near(12), near(400_000), near(1 << 30), near(3)),
            (generation(), prop::collection::vec(generation(), 0..=MAX_ANCESTORS), any::<u8>()),
        )
            .prop_map(|((role_primary, group, size), (applied, stream_end, window, journal_id), (generation, ancestors, flag_bits))| Lie::Hello {
                role_primary, group, size, applied, stream_end, window, journal_id, generation, ancestors, flag_bits
            }),
        1 => (near(8), 0..3u16, near(VOLUME_BYTES + 8192), near(VOLUME_BYTES + 8192))
            .prop_map(|(id, volume, offset, len)| Lie::DigestRequest {
                id, volume, offset, len: u32::try_from(len).unwrap_or(u32::MAX)
            }),
        1 => (near(8), 0..3u16, near(VOLUME_BYTES + 8192), near(VOLUME_BYTES + 8192), prop::collection::vec(near(3), 0..=MAX_DIGESTS))
            .prop_map(|(id, volume, offset, len, digests)| Lie::Digests {
                id, volume, offset, len: u32::try_from(len).unwrap_or(u32::MAX), digests
            }),
    ]
}

/// The frame a lie stands for, if it can be encoded at all (a sync whose seq would
/// overflow cannot), checked to survive the wire.
fn frame<'a>(lie: &Lie, payload: &'a mut Vec<u8>) -> Option<Frame<'a>> {
    let frame = match *lie {
        Lie::Write {
            volume,
            seq,
            data_set,
            offset,
            stream_offset,
            len,
            byte,
        } => {
            payload.clear();
            payload.resize(len, byte);
            Frame::Write(WriteFrame {
                volume: VolumeId(volume),
                seq: Seq(seq),
                data_set: DataSetId(data_set),
                offset,
                stream_offset,
                payload,
            })
        }
        Lie::Sync {
            data_set,
            first_seq,
            write_count,
            stream_offset,
            ends_resync,
        } => Frame::Sync(SyncFrame {
            seq: Seq(first_seq.checked_add(write_count)?),
            data_set: DataSetId(data_set),
            first_seq: Seq(first_seq),
            write_count,
            stream_offset,
            ends_resync,
        }),
        Lie::Ack { ref ranges } => Frame::Ack(AckFrame {
            ranges: ranges
                .iter()
                .map(|&(a, b)| SeqRange {
                    first: Seq(a.min(b)),
                    last: Seq(a.max(b)),
                })
                .collect(),
        }),
        Lie::Applied {
            data_set,
            applied_seq,
            stream_end,
        } => Frame::Applied(AppliedFrame {
            data_set: DataSetId(data_set),
            applied_seq: Seq(applied_seq),
            stream_end,
        }),
        Lie::Hello {
            role_primary,
            group,
            size,
            applied,
            stream_end,
            window,
            journal_id,
            generation,
            ref ancestors,
            flag_bits,
        } => {
            let role = if role_primary {
                Role::Primary
            } else {
                Role::Secondary
            };
            let resume = ResumeState {
                applied_data_set: DataSetId(applied),
                applied_seq: Seq(applied.wrapping_mul(3)),
                applied_stream_end: stream_end,
                window_bytes: window,
                journal_id,
                staged: vec![],
            };
            let mut hello = hello(role, resume);
            hello.group = GroupId(group);
            hello.volumes[0].size_bytes = size;
            hello.generation = GenerationId(generation);
            hello.ancestors = ancestors.iter().copied().map(GenerationId).collect();
            hello.flags = flags(flag_bits);
            Frame::Hello(hello)
        }
        Lie::DigestRequest {
            id,
            volume,
            offset,
            len,
        } => Frame::DigestRequest(DigestRequestFrame {
            id,
            volume: VolumeId(volume),
            offset,
            len,
        }),
        Lie::Digests {
            id,
            volume,
            offset,
            len,
            ref digests,
        } => Frame::Digests(DigestsFrame {
            id,
            volume: VolumeId(volume),
            offset,
            len,
            digests: digests.clone(),
        }),
    };
    let mut bytes = Vec::new();
    encode(&frame, &mut bytes);
    let (decoded, _) = decode(&bytes).expect("what we encode decodes");
    assert_eq!(decoded, frame);
    Some(frame)
}

fn secondary_config() -> SecondaryConfig {
    SecondaryConfig {
        group: GROUP,
        volume_names: vec!["v".into()],
        window_bytes: WINDOW,
        max_write_bytes: MAX_WRITE,
        lanes: 2,
        ..SecondaryConfig::default()
    }
}

fn fresh_secondary() -> Secondary<MemStorage> {
    let journal = mem(required_bytes(WINDOW, MAX_WRITE, 4096));
    let replicas = vec![mem(VOLUME_BYTES)];
    Secondary::create(secondary_config(), 1, journal, replicas, true).unwrap()
}

/// A primary's Hello naming no history is input from outside like any other: a typed
/// error, the lane not taken, the replica untouched, and the honest primary still gets in.
/// (It once reached an assertion in `protocol::decide`.)
#[test]
fn a_primary_hello_that_names_no_history_is_refused_not_a_panic() {
    let mut secondary = fresh_secondary();
    secondary.lane_up(0);
    let nameless = Hello {
        generation: GenerationId::NONE,
        ..hello(Role::Primary, ResumeState::default())
    };
    let refused = secondary.handle_frame(0, &Frame::Hello(nameless));
    assert!(refused.is_err(), "{refused:?}");
    assert!(!secondary.lane_ready(0));
    for _ in 0..8 {
        secondary.poll_storage();
    }
    assert!(secondary.replicas()[0].contents().iter().all(|&b| b == 0));
    let honest = Frame::Hello(hello(Role::Primary, ResumeState::default()));
    secondary.handle_frame(0, &honest).unwrap();
    assert!(secondary.lane_ready(0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With `honest_first`, the honest primary's first data set is applied before the lies
    /// (so that they meet a secondary with a history and an image to keep).
    #[test]
    fn a_lying_primary_never_panics_the_secondary_or_touches_its_replica(
        honest_first in any::<bool>(),
        lies in prop::collection::vec((0..2usize, lie()), 1..60),
    ) {
        let mut secondary = fresh_secondary();
        let honest = Frame::Hello(hello(Role::Primary, ResumeState::default()));
        for lane in 0..2 {
            secondary.lane_up(lane);
            secondary.handle_frame(lane, &honest).unwrap();
        }
        let mut image = vec![0u8; VOLUME_BYTES as usize];
        if honest_first {
            let block = [0xAB; 4096];
            let write = Frame::Write(WriteFrame {
                volume: VolumeId(0),
                seq: Seq(1),
                data_set: DataSetId(1),
                offset: 8192,
                stream_offset: 0,
                payload: &block,
            });
            let sync = Frame::Sync(SyncFrame {
                seq: Seq(2),
                data_set: DataSetId(1),
                first_seq: Seq(1),
                write_count: 1,
                stream_offset: 8192,
                ends_resync: false,
            });
            secondary.handle_frame(0, &write).unwrap();
            secondary.handle_frame(1, &sync).unwrap();
            for _ in 0..64 {
                secondary.poll_storage();
            }
            prop_assert_eq!(secondary.stats().data_sets_applied, 1);
            image[8192..12288].fill(0xAB);
        }
        let honest_sets = u64::from(honest_first);
        let mut payload = Vec::new();
        let mut out = Vec::new();
        for (lane, lie) in &lies {
            let Some(frame) = frame(lie, &mut payload) else { continue };
            // An error drops the lane; the driver would reconnect it. (After a lie that
            // made it re-base onto another history, the honest Hello may be refused too:
            // a typed error, not a panic.)
            if secondary.handle_frame(*lane, &frame).is_err() {
                secondary.lane_down(*lane);
                secondary.lane_up(*lane);
                let _ = secondary.handle_frame(*lane, &honest);
            }
            for _ in 0..4 {
                secondary.poll_storage();
            }
            if secondary.rebasing() {
                // A Hello made it re-base: every lane stays down until that is durable,
                // then the primary reconnects.
                for _ in 0..16 {
                    secondary.poll_storage();
                }
                if !secondary.rebasing() {
                    for lane in 0..2 {
                        secondary.lane_up(lane);
                        let _ = secondary.handle_frame(lane, &honest);
                    }
                }
            }
            out.clear();
            secondary.poll_transmit(*lane, &mut out, 1 << 20);
            // What it sends must be whole, valid frames.
            let mut sent = &out[..];
            while !sent.is_empty() {
                let (_, used) = decode(sent).expect("a secondary sends valid frames");
                sent = &sent[used..];
            }
        }
        if secondary.stats().data_sets_applied == honest_sets {
            prop_assert!(secondary.replicas()[0].contents() == &image[..], "replica touched");
        }
    }

    #[test]
    fn a_lying_secondary_never_panics_the_primary(
        lies in prop::collection::vec((0..2usize, lie()), 1..60),
    ) {
        let config = PrimaryConfig {
            group: GROUP,
            volume_names: vec!["v".into()],
            policy: DataSetPolicy { interval_ms: 1, max_writes: 4, max_bytes: 1 << 20 },
            window_bytes: 128 << 10,
            max_write_bytes: MAX_WRITE,
            lanes: 2,
            retransmit_ms: 5,
            max_pending_flushes: 4,
            ..PrimaryConfig::default()
        };
        let record = mem(record_bytes(&volumes()));
        let record = format_record(record, &volumes(), GENERATION, true).unwrap();
        let mut primary = Primary::new(config, vec![mem(VOLUME_BYTES)], record, 1).unwrap();
        while primary.poll_storage() > 0 {}
        primary.lane_up(0);
        primary.lane_up(1);
        let mut payload = Vec::new();
        let mut out = Vec::new();
        for (step, (lane, lie)) in lies.iter().enumerate() {
            let now_ms = step as u64;
            let offset = (step as u64 * 4096) % VOLUME_BYTES;
            let _ = primary.submit_write(now_ms, VolumeId(0), offset, &[step as u8; 4096], 0);
            let Some(frame) = frame(lie, &mut payload) else { continue };
            if primary.handle_frame(*lane, &frame).is_err() {
                primary.lane_down(*lane);
                primary.lane_up(*lane);
            }
            primary.tick(now_ms);
            primary.poll_storage();
            while primary.next_event().is_some() {}
            out.clear();
            primary.poll_transmit(now_ms, *lane, &mut out, 1 << 20);
            let mut sent = &out[..];
            while !sent.is_empty() {
                let (_, used) = decode(sent).expect("a primary sends valid frames");
                sent = &sent[used..];
            }
            prop_assert!(primary.retention_bytes() <= 128 << 10);
        }
        prop_assert_eq!(primary.volumes()[0].geometry().size_bytes, VOLUME_BYTES);
    }
}

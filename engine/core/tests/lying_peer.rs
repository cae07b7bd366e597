//! A peer that speaks the protocol but lies: frames that decode cleanly (right magic,
//! version and crc) with arbitrary field values. Neither side may panic, and a secondary
//! that applied nothing must still have an untouched replica.

use ordo_core::primary::{DataSetPolicy, Primary, PrimaryConfig};
use ordo_core::protocol::{
    decode, encode, AckFrame, AppliedFrame, DataSetId, Frame, GroupId, Hello, ResumeState, Role,
    Seq, SeqRange, SyncFrame, VolumeId, VolumeInfo, WriteFrame,
};
use ordo_core::secondary::journal::required_bytes;
use ordo_core::secondary::{Secondary, SecondaryConfig};
use ordo_core::storage::{Geometry, MemStorage, Storage};
use proptest::prelude::*;

const GROUP: GroupId = GroupId(3);
const VOLUME_BYTES: u64 = 64 << 10;
const WINDOW: u64 = 256 << 10;
const MAX_WRITE: u32 = 8192;

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

fn hello(role: Role, resume: ResumeState) -> Hello {
    Hello {
        role,
        group: GROUP,
        max_write_bytes: MAX_WRITE,
        volumes: volumes(),
        resume,
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
    },
}

fn lie() -> impl Strategy<Value = Lie> {
    let lens = prop_oneof![Just(0usize), Just(512), Just(4096), Just(8192), Just(12288)];
    prop_oneof![
        4 => (0..3u16, near(40), near(12), near(VOLUME_BYTES + 8192), near(200_000), lens, any::<u8>())
            .prop_map(|(volume, seq, data_set, offset, stream_offset, len, byte)| Lie::Write {
                volume, seq, data_set, offset, stream_offset, len, byte
            }),
        2 => (near(12), near(40), near(20), near(200_000))
            .prop_map(|(data_set, first_seq, write_count, stream_offset)| Lie::Sync {
                data_set, first_seq, write_count, stream_offset
            }),
        1 => prop::collection::vec((near(60), near(60)), 0..5).prop_map(|ranges| Lie::Ack { ranges }),
        1 => (near(12), near(60), near(400_000))
            .prop_map(|(data_set, applied_seq, stream_end)| Lie::Applied { data_set, applied_seq, stream_end }),
        1 => (any::<bool>(), prop_oneof![Just(GROUP.0), any::<u64>()], prop_oneof![Just(VOLUME_BYTES), any::<u64>()],
              near(12), near(400_000), near(1 << 30), near(3))
            .prop_map(|(role_primary, group, size, applied, stream_end, window, journal_id)| Lie::Hello {
                role_primary, group, size, applied, stream_end, window, journal_id
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
        } => Frame::Sync(SyncFrame {
            seq: Seq(first_seq.checked_add(write_count)?),
            data_set: DataSetId(data_set),
            first_seq: Seq(first_seq),
            write_count,
            stream_offset,
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
            Frame::Hello(hello)
        }
    };
    let mut bytes = Vec::new();
    encode(&frame, &mut bytes);
    let (decoded, _) = decode(&bytes).expect("what we encode decodes");
    assert_eq!(decoded, frame);
    Some(frame)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_lying_primary_never_panics_the_secondary_or_touches_its_replica(
        lies in prop::collection::vec((0..2usize, lie()), 1..60),
    ) {
        let config = SecondaryConfig {
            group: GROUP,
            volume_names: vec!["v".into()],
            window_bytes: WINDOW,
            max_write_bytes: MAX_WRITE,
            lanes: 2,
            ..SecondaryConfig::default()
        };
        let journal = mem(required_bytes(WINDOW, MAX_WRITE, 4096));
        let mut secondary = Secondary::create(config, 1, journal, vec![mem(VOLUME_BYTES)]).unwrap();
        for lane in 0..2 {
            secondary.lane_up(lane);
            let honest = Frame::Hello(hello(Role::Primary, ResumeState::default()));
            secondary.handle_frame(lane, &honest).unwrap();
        }
        let mut payload = Vec::new();
        let mut out = Vec::new();
        for (lane, lie) in &lies {
            let Some(frame) = frame(lie, &mut payload) else { continue };
            // An error drops the lane; the driver would reconnect it.
            if secondary.handle_frame(*lane, &frame).is_err() {
                secondary.lane_down(*lane);
                secondary.lane_up(*lane);
                let honest = Frame::Hello(hello(Role::Primary, ResumeState::default()));
                secondary.handle_frame(*lane, &honest).unwrap();
            }
            for _ in 0..4 {
                secondary.poll_storage();
            }
            out.clear();
            secondary.poll_transmit(*lane, &mut out, 1 << 20);
        }
        if secondary.applied() == DataSetId::NONE {
            prop_assert!(secondary.replicas()[0].contents().iter().all(|&b| b == 0), "replica touched");
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
        let mut primary = Primary::new(config, vec![mem(VOLUME_BYTES)]).unwrap();
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
            prop_assert!(primary.retention_bytes() <= 128 << 10);
        }
        prop_assert_eq!(primary.volumes()[0].geometry().size_bytes, VOLUME_BYTES);
    }
}

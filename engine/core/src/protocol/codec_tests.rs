//! Tests of the wire codec: round trips, every prefix, every corruption, and fuzzing.
use super::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

fn encoded(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out);
    out
}

fn range(first: u64, last: u64) -> SeqRange {
    SeqRange {
        first: Seq(first),
        last: Seq(last),
    }
}

/// Recomputes the crc of the frame filling `buf`, so that edits reach the body parser.
fn reseal(buf: &mut [u8]) {
    buf[CRC_OFFSET..HEADER_BYTES].fill(0);
    let crc = crc32c::crc32c(buf);
    buf[CRC_OFFSET..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// Flags from their bits, one per field in declaration order (independent of the codec's
/// own constants: the wire layout is checked against these by the round trips).
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

fn samples() -> Vec<Frame<'static>> {
    let volume = |name: &str| VolumeInfo {
        name: name.into(),
        size_bytes: 1 << 30,
        block_size: 512,
    };
    let staged = vec![range(41, 45), range(47, 47)];
    let resume = ResumeState {
        applied_data_set: DataSetId(3),
        applied_seq: Seq(40),
        staged,
        ..Default::default()
    };
    let volumes = vec![volume("vol-a"), volume(&"é".repeat(16))];
    let (seq, data_set, offset, stream_offset) = (Seq(41), DataSetId(4), 8192, 9000);
    let write = WriteFrame {
        volume: VolumeId(1),
        seq,
        data_set,
        offset,
        stream_offset,
        payload: b"block",
    };
    let sync = SyncFrame {
        seq: Seq(46),
        data_set,
        first_seq: seq,
        write_count: 5,
        stream_offset,
        ends_resync: false,
    };
    vec![
        Frame::Hello(Hello {
            role: Role::Secondary,
            group: GroupId(7),
            max_write_bytes: 1 << 20,
            volumes,
            generation: GenerationId(0x0123_4567_89AB_CDEF),
            ancestors: vec![],
            flags: HistoryFlags {
                held: true,
                resync_from_zero: true,
                ..HistoryFlags::default()
            },
            resume,
        }),
        Frame::Hello(Hello {
            role: Role::Primary,
            group: GroupId(7),
            max_write_bytes: 4096,
            volumes: vec![],
            generation: GenerationId(9),
            ancestors: vec![],
            flags: HistoryFlags::default(),
            resume: Default::default(),
        }),
        Frame::Write(write),
        Frame::Write(WriteFrame {
            payload: &[],
            ..write
        }),
        Frame::Sync(sync),
        Frame::Ack(AckFrame {
            ranges: vec![range(1, 10), range(12, 12)],
        }),
        Frame::Ack(AckFrame { ranges: vec![] }),
        Frame::Applied(AppliedFrame {
            data_set,
            applied_seq: Seq(46),
            stream_end: u64::MAX,
        }),
        Frame::Zero(ZeroFrame {
            volume: VolumeId(1),
            seq: Seq(44),
            data_set,
            offset: 1 << 20,
            len: u32::MAX - 4095,
            unmap: true,
            stream_offset,
        }),
        Frame::Zero(ZeroFrame {
            volume: VolumeId(0),
            seq: Seq(45),
            data_set,
            offset: 0,
            len: 512,
            unmap: false,
            stream_offset: stream_offset + 4096,
        }),
        // From here on, the frames of histories (protocol version 3).
        Frame::Hello(Hello {
            role: Role::Primary,
            group: GroupId(7),
            max_write_bytes: 1 << 20,
            volumes: vec![volume("vol-a")],
            generation: GenerationId(u64::MAX),
            ancestors: (1..=MAX_ANCESTORS as u64).map(GenerationId).collect(),
            flags: flags(u8::MAX),
            resume: Default::default(),
        }),
        // The end point of a resync that sent nothing: an empty data set.
        Frame::Sync(SyncFrame {
            seq: Seq(47),
            data_set: DataSetId(5),
            first_seq: Seq(47),
            write_count: 0,
            stream_offset: stream_offset + 8192,
            ends_resync: true,
        }),
        Frame::DigestRequest(DigestRequestFrame {
            id: 11,
            volume: VolumeId(1),
            offset: 1 << 20,
            len: 1 << 20,
        }),
        Frame::Digests(DigestsFrame {
            id: 11,
            volume: VolumeId(1),
            offset: 1 << 20,
            len: 3 * 4096,
            digests: vec![0, u64::MAX, 0x5EED],
        }),
        Frame::Digests(DigestsFrame {
            id: u64::MAX,
            volume: VolumeId(u16::MAX),
            offset: 0,
            len: 0,
            digests: vec![],
        }),
    ]
}

#[test]
fn every_flag_is_its_own_bit_on_the_wire() {
    for n in 0..8 {
        let frame = Frame::Hello(Hello {
            role: Role::Secondary,
            group: GroupId(1),
            max_write_bytes: 4096,
            volumes: vec![],
            generation: GenerationId(1),
            ancestors: vec![],
            flags: flags(1 << n),
            resume: Default::default(),
        });
        let buf = encoded(&frame);
        // The flags field: the fourth u16 after role, padding, largest write and group.
        let at = HEADER_BYTES + 16 + 6;
        assert_eq!(buf[at..at + 2], (1u16 << n).to_le_bytes(), "flag {n}");
        check_round_trip(&frame);
    }
}

fn check_round_trip(frame: &Frame<'_>) {
    let buf = encoded(frame);
    assert_eq!(decode(&buf), Ok((frame.clone(), buf.len())));
    assert_eq!(frame_len(&buf), Ok(buf.len()));
}

/// Decode accepts exactly what `encode` produces, and agrees with `frame_len`.
fn check_total(buf: &[u8]) {
    match decode(buf) {
        Ok((frame, consumed)) => {
            assert_eq!(frame_len(buf), Ok(consumed));
            assert_eq!(encoded(&frame), buf[..consumed]);
        }
        Err(Incomplete { needed }) => assert!(needed > buf.len()),
        Err(_) => {}
    }
}

#[test]
fn every_kind_round_trips() {
    samples().iter().for_each(check_round_trip);
}

#[test]
fn every_strict_prefix_is_incomplete() {
    for buf in samples().iter().map(encoded) {
        for len in 0..buf.len() {
            let (prefix, header_complete) = (&buf[..len], len >= HEADER_BYTES);
            let needed = if header_complete {
                buf.len()
            } else {
                HEADER_BYTES
            };
            assert_eq!(decode(prefix), Err(Incomplete { needed }));
            let from_header = if header_complete {
                Ok(needed)
            } else {
                Err(Incomplete { needed })
            };
            assert_eq!(frame_len(prefix), from_header);
        }
    }
}

#[test]
fn every_single_byte_corruption_is_rejected() {
    for buf in samples().iter().map(encoded) {
        for at in 0..buf.len() {
            for mask in 1..=u8::MAX {
                let mut corrupt = buf.clone();
                corrupt[at] ^= mask;
                assert!(decode(&corrupt).is_err(), "byte {at} ^ {mask:#x} accepted");
            }
        }
    }
}

#[test]
fn frames_back_to_back_decode_in_sequence() {
    let frames = samples();
    let mut buf = Vec::new();
    frames.iter().for_each(|frame| encode(frame, &mut buf));
    let mut rest = &buf[..];
    for frame in &frames {
        let (decoded, consumed) = decode(rest).expect("a frame encode wrote");
        assert_eq!((&decoded, frame_len(rest)), (frame, Ok(consumed)));
        rest = &rest[consumed..];
    }
    assert!(rest.is_empty());
}

#[test]
fn corrupt_body_is_a_crc_mismatch() {
    let mut buf = encoded(&samples()[7]);
    let expected = u32::from_le_bytes(buf[CRC_OFFSET..HEADER_BYTES].try_into().expect("4"));
    buf[HEADER_BYTES] ^= 1;
    let mut crc_zeroed = buf.clone();
    crc_zeroed[CRC_OFFSET..HEADER_BYTES].fill(0);
    let actual = crc32c::crc32c(&crc_zeroed);
    assert_eq!(decode(&buf), Err(CrcMismatch { expected, actual }));
}

/// Each case edits one field of a valid frame and reseals it, so the crc passes.
#[test]
fn bad_fields_give_typed_errors() {
    let samples = samples();
    let [hello, write, sync, ack, applied, zero] = [0, 2, 4, 5, 7, 8].map(|i| encoded(&samples[i]));
    let [primary_hello, ends_resync, request, digests] =
        [10, 11, 12, 13].map(|i| encoded(&samples[i]));
    let name_at = HEADER_BYTES + HELLO_FIXED_BYTES + 16;
    let cases: &[(&[u8], usize, &[u8], &str)] = &[
        (&applied, 0, &[0; 4], "bad magic 0x00000000"),
        (&applied, 4, &[1], "unsupported protocol version 1"),
        (&applied, 4, &[2], "unsupported protocol version 2"),
        (&applied, 4, &[4], "unsupported protocol version 4"),
        (&applied, 5, &[10], "unknown frame kind 10"),
        (&applied, 5, &[0], "unknown frame kind 0"),
        (&applied, 6, &[1], "non-zero reserved header field"),
        (&sync, 8, &[41], "body length 41 invalid for frame kind 3"),
        (&write, 8, &[0xff; 4], "body length 4294967295 invalid"),
        (&hello, 16, &[3], "unknown role in hello"),
        (&hello, 17, &[1], "non-zero padding in hello"),
        (&hello, 32, &[65], "too many volumes in hello"),
        (&hello, 32, &[1], "body length 200 invalid for frame kind 1"),
        // Counts of ranges and ancestors, then the flags.
        (&hello, 34, &[129], "too many seq ranges in hello"),
        (&hello, 36, &[17], "too many ancestors in hello"),
        (&hello, 36, &[1], "body length 200 invalid for frame kind 1"),
        (
            &primary_hello,
            36,
            &[15],
            "body length 248 invalid for frame kind 1",
        ),
        (&hello, 38, &[0, 1], "unknown flags in hello"),
        (&primary_hello, 39, &[0x80], "unknown flags in hello"),
        (
            &ends_resync,
            8,
            &[41],
            "body length 41 invalid for frame kind 7",
        ),
        (
            &ends_resync,
            16,
            &[48],
            "sync seq is not first_seq + write_count",
        ),
        (
            &request,
            8,
            &[25],
            "body length 25 invalid for frame kind 8",
        ),
        (
            &request,
            8,
            &[23],
            "body length 23 invalid for frame kind 8",
        ),
        (&request, 18, &[1], "non-zero padding in digest request"),
        (&digests, 18, &[1, 1], "too many digests"),
        (
            &digests,
            18,
            &[2],
            "body length 48 invalid for frame kind 9",
        ),
        (
            &digests,
            18,
            &[4],
            "body length 48 invalid for frame kind 9",
        ),
        (
            &digests,
            8,
            &[0x19, 8],
            "body length 2073 invalid for frame kind 9",
        ),
        (
            &digests,
            8,
            &[23],
            "body length 23 invalid for frame kind 9",
        ),
        (
            &hello,
            name_at - 4,
            &[33],
            "volume name longer than 32 bytes",
        ),
        (
            &hello,
            name_at + 5,
            b"x",
            "non-zero bytes after volume name",
        ),
        (&hello, name_at, &[0xff], "volume name is not UTF-8"),
        (&write, 20, &[6], "body length 45 invalid for frame kind 2"),
        (
            &write,
            20,
            &[0xff; 4],
            "write payload over MAX_WRITE_PAYLOAD_BYTES",
        ),
        (&sync, 16, &[47], "sync seq is not first_seq + write_count"),
        (
            &sync,
            40,
            &[0xff; 8],
            "sync seq is not first_seq + write_count",
        ),
        (&zero, 8, &[41], "body length 41 invalid for frame kind 6"),
        (&zero, 18, &[2], "unknown flags in zero"),
        (&zero, 20, &[0; 4], "zero of an empty range"),
        (&ack, 18, &[1], "non-zero padding in ack"),
        (&ack, 24, &[11], "seq range with first > last"),
        (&ack, 16, &[129], "too many seq ranges in ack"),
    ];
    for &(frame, at, bytes, expected) in cases {
        let mut buf = frame.to_vec();
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        reseal(&mut buf);
        let error = decode(&buf).map(|_| ()).expect_err(expected).to_string();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }
}

fn arb_range() -> impl Strategy<Value = SeqRange> {
    (any::<u64>(), any::<u64>()).prop_map(|(a, b)| range(a.min(b), a.max(b)))
}

fn arb_hello() -> impl Strategy<Value = Hello> {
    let role = prop_oneof![Just(Role::Primary), Just(Role::Secondary)];
    // A char takes at most 4 bytes, so 8 of them fit a 32-byte name.
    let volume = (vec(any::<char>(), 0..=8), any::<u64>(), any::<u32>());
    let volumes = vec(volume, 0..=MAX_VOLUMES).prop_map(|volumes| {
        let volume = |(name, size_bytes, block_size): (Vec<char>, _, _)| VolumeInfo {
            name: name.into_iter().collect(),
            size_bytes,
            block_size,
        };
        volumes.into_iter().map(volume).collect()
    });
    let resume = (any::<[u64; 5]>(), vec(arb_range(), 0..=MAX_ACK_RANGES));
    let ids = (any::<u64>(), any::<u32>());
    let history = (
        any::<u64>(),
        vec(any::<u64>(), 0..=MAX_ANCESTORS),
        any::<u8>(),
    );
    let parts = (role, ids, volumes, resume, history);
    parts.prop_map(
        |(role, (group, max_write_bytes), volumes, resume, history)| {
            let ([data_set, seq, stream_end, window_bytes, journal_id], staged) = resume;
            let (generation, ancestors, bits) = history;
            let resume = ResumeState {
                applied_data_set: DataSetId(data_set),
                applied_seq: Seq(seq),
                applied_stream_end: stream_end,
                window_bytes,
                journal_id,
                staged,
            };
            Hello {
                role,
                group: GroupId(group),
                max_write_bytes,
                volumes,
                generation: GenerationId(generation),
                ancestors: ancestors.into_iter().map(GenerationId).collect(),
                flags: flags(bits),
                resume,
            }
        },
    )
}

/// Frames that own their contents: every kind but `Write`.
fn arb_owned_frame() -> impl Strategy<Value = Frame<'static>> {
    let first_and_count = any::<u64>().prop_flat_map(|first| (Just(first), 0..=u64::MAX - first));
    let sync = (first_and_count, any::<[u64; 2]>(), any::<bool>()).prop_map(
        |((first, count), [data_set, end], ends_resync)| {
            Frame::Sync(SyncFrame {
                seq: Seq(first + count),
                data_set: DataSetId(data_set),
                first_seq: Seq(first),
                write_count: count,
                stream_offset: end,
                ends_resync,
            })
        },
    );
    let request =
        (any::<(u64, u16, u32)>(), any::<u64>()).prop_map(|((id, volume, len), offset)| {
            Frame::DigestRequest(DigestRequestFrame {
                id,
                volume: VolumeId(volume),
                offset,
                len,
            })
        });
    let digests = (
        any::<(u64, u16, u32)>(),
        any::<u64>(),
        vec(any::<u64>(), 0..=MAX_DIGESTS),
    )
        .prop_map(|((id, volume, len), offset, digests)| {
            Frame::Digests(DigestsFrame {
                id,
                volume: VolumeId(volume),
                offset,
                len,
                digests,
            })
        });
    let ack =
        vec(arb_range(), 0..=MAX_ACK_RANGES).prop_map(|ranges| Frame::Ack(AckFrame { ranges }));
    let applied = any::<[u64; 3]>().prop_map(|[data_set, seq, stream_end]| {
        Frame::Applied(AppliedFrame {
            data_set: DataSetId(data_set),
            applied_seq: Seq(seq),
            stream_end,
        })
    });
    let zero = (any::<(u16, u32, bool)>(), any::<[u64; 4]>()).prop_map(
        |((volume, len, unmap), [seq, data_set, offset, stream_offset])| {
            Frame::Zero(ZeroFrame {
                volume: VolumeId(volume),
                seq: Seq(seq),
                data_set: DataSetId(data_set),
                offset,
                len: len.max(1),
                unmap,
                stream_offset,
            })
        },
    );
    prop_oneof![
        arb_hello().prop_map(Frame::Hello),
        sync,
        ack,
        applied,
        zero,
        request,
        digests
    ]
}

/// A `Write` borrows its payload, so strategies produce its fields and tests build it.
type WriteFields = (u16, [u64; 4], Vec<u8>);

fn arb_write_fields() -> impl Strategy<Value = WriteFields> {
    (any::<u16>(), any::<[u64; 4]>(), vec(any::<u8>(), 0..1024))
}

fn write_frame((volume, fields, payload): &WriteFields) -> Frame<'_> {
    let [seq, data_set, offset, stream_offset] = *fields;
    Frame::Write(WriteFrame {
        volume: VolumeId(*volume),
        seq: Seq(seq),
        data_set: DataSetId(data_set),
        offset,
        stream_offset,
        payload,
    })
}

fn arb_encoded() -> impl Strategy<Value = Vec<u8>> {
    let write = arb_write_fields().prop_map(|fields| encoded(&write_frame(&fields)));
    prop_oneof![arb_owned_frame().prop_map(|frame| encoded(&frame)), write]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn owned_frames_round_trip(frame in arb_owned_frame()) {
        check_round_trip(&frame);
    }

    #[test]
    fn write_frames_round_trip(fields in arb_write_fields()) {
        check_round_trip(&write_frame(&fields));
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in vec(any::<u8>(), 0..4096)) {
        check_total(&buf);
    }

    #[test]
    fn arbitrary_body_behind_sealed_header_never_panics(
        kind in 0u8..=10,
        body in vec(any::<u8>(), 0..4096),
    ) {
        let mut buf = MAGIC.to_le_bytes().to_vec();
        buf.extend_from_slice(&[VERSION, kind, 0, 0]);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&body);
        reseal(&mut buf);
        check_total(&buf);
    }

    /// Valid frames with random body bytes overwritten and the crc recomputed, so
    /// field validation (not the crc) is what must reject them.
    #[test]
    fn mutated_resealed_frames_never_panic(
        mut buf in arb_encoded(),
        edits in vec((any::<Index>(), any::<u8>()), 1..8),
    ) {
        let body_len = buf.len() - HEADER_BYTES;
        for (at, byte) in edits {
            buf[HEADER_BYTES + at.index(body_len)] = byte;
        }
        reseal(&mut buf);
        check_total(&buf);
    }
}

#[test]
fn a_write_head_then_its_payload_is_the_whole_write_frame() {
    let writes: Vec<WriteFrame<'_>> = samples()
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Write(write) => Some(write),
            _ => None,
        })
        .collect();
    assert!(!writes.is_empty());
    for write in writes {
        for payload in [&[][..], &[0xA5; 512][..], &[7; 4096][..], write.payload] {
            let write = WriteFrame { payload, ..write };
            let mut split = vec![0xEE; 3]; // after other bytes, as in a lane's buffer
            encode_write_head(&write, &mut split);
            split.extend_from_slice(payload);
            let mut whole = vec![0xEE; 3];
            encode(&Frame::Write(write), &mut whole);
            assert_eq!(split, whole);
        }
    }
}

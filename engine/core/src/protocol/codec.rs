//! The wire format: a fixed 16-byte little-endian header (magic, version, kind, body length,
//! crc32c of header and body) followed by a body whose layout the kind fixes. `decode` is
//! total and a fuzz target: any input gives a frame or a typed error, with bounded allocation.

use super::frame::{
    AckFrame, AppliedFrame, DigestRequestFrame, DigestsFrame, Frame, Hello, HistoryFlags,
    ResumeState, Role, SeqRange, SyncFrame, VolumeInfo, WriteFrame, ZeroFrame, MAX_ACK_RANGES,
    MAX_ANCESTORS, MAX_DIGESTS, MAX_VOLUMES, MAX_VOLUME_NAME_BYTES, MAX_WRITE_PAYLOAD_BYTES,
};
use super::ids::{DataSetId, GenerationId, GroupId, Seq, VolumeId};
use DecodeError::{
    BadLength, BadMagic, BadVersion, CrcMismatch, Incomplete, Malformed, UnknownKind,
};

pub const MAGIC: u32 = 0x4F52_444F;
/// 2: `Zero` frames (a range zeroed, NBD's WRITE_ZEROES and TRIM).
/// 3: histories (a generation, ancestors and flags in `Hello`), the sync that ends a
/// resync, and the digest frames of a resync.
pub const VERSION: u8 = 3;
pub const HEADER_BYTES: usize = 16;

const KIND_HELLO: u8 = 1;
const KIND_WRITE: u8 = 2;
const KIND_SYNC: u8 = 3;
const KIND_ACK: u8 = 4;
const KIND_APPLIED: u8 = 5;
const KIND_ZERO: u8 = 6;
/// A `Sync` that also ends its generation's resync (same body as `KIND_SYNC`).
const KIND_SYNC_ENDS_RESYNC: u8 = 7;
const KIND_DIGEST_REQUEST: u8 = 8;
const KIND_DIGESTS: u8 = 9;

const BODY_LEN_OFFSET: usize = 8;
const CRC_OFFSET: usize = 12;

const HELLO_FIXED_BYTES: usize = 72;
const VOLUME_ENTRY_BYTES: usize = 48;
const RANGE_BYTES: usize = 16;
const ANCESTOR_BYTES: usize = 8;
const DIGEST_REQUEST_BYTES: usize = 24;
const DIGESTS_FIXED_BYTES: usize = 24;
const DIGESTS_MAX_BYTES: usize = DIGESTS_FIXED_BYTES + MAX_DIGESTS * 8;
/// `Hello` flags, one bit each (see `HistoryFlags`); the others must be zero.
const FLAG_GENESIS_STREAM: u16 = 1;
const FLAG_GENESIS_BITS: u16 = 2;
const FLAG_REPLICA_ZEROED: u16 = 4;
const FLAG_DISCARD: u16 = 8;
const FLAG_INCONSISTENT: u16 = 16;
const FLAG_HELD: u16 = 32;
const FLAG_RESYNC_ALL: u16 = 64;
const FLAG_RESYNC_FROM_ZERO: u16 = 128;
const FLAGS_KNOWN: u16 = 255;
const WRITE_FIXED_BYTES: usize = 40;
const SYNC_BYTES: usize = 40;
const ZERO_BYTES: usize = 40;
/// `Zero` flags: the storage may deallocate the range.
const ZERO_UNMAP: u16 = 1;
const ACK_FIXED_BYTES: usize = 8;
const APPLIED_BYTES: usize = 24;
const HELLO_MAX_BYTES: usize = HELLO_FIXED_BYTES
    + MAX_VOLUMES * VOLUME_ENTRY_BYTES
    + MAX_ACK_RANGES * RANGE_BYTES
    + MAX_ANCESTORS * ANCESTOR_BYTES;
const ACK_MAX_BYTES: usize = ACK_FIXED_BYTES + MAX_ACK_RANGES * RANGE_BYTES;
/// Largest body any frame may declare: a `Write` carrying the largest payload.
pub const MAX_BODY_BYTES: usize = WRITE_FIXED_BYTES + MAX_WRITE_PAYLOAD_BYTES as usize;
/// What a record's frame (`Write` or `Sync`) adds to its payload: header and fixed fields.
pub const RECORD_FRAME_OVERHEAD_BYTES: usize = HEADER_BYTES + WRITE_FIXED_BYTES;
const _: () = assert!(SYNC_BYTES <= WRITE_FIXED_BYTES && ZERO_BYTES <= WRITE_FIXED_BYTES);
const _: () = assert!(ZERO_BYTES == 2 + 2 + 4 + 4 * 8);
/// The largest frame that carries no payload (`Hello` with every volume and range, `Ack`).
pub const MAX_CONTROL_FRAME_BYTES: usize = HEADER_BYTES + HELLO_MAX_BYTES;
const _: () = assert!(HELLO_MAX_BYTES >= ACK_MAX_BYTES && HELLO_MAX_BYTES >= APPLIED_BYTES);
const _: () = assert!(HELLO_MAX_BYTES >= DIGESTS_MAX_BYTES);

// Layouts, field by field, so a changed field shows up here and not on the wire.
const _: () = assert!(HEADER_BYTES == 4 + 1 + 1 + 2 + 4 + 4);
const _: () = assert!(BODY_LEN_OFFSET == 4 + 1 + 1 + 2 && CRC_OFFSET == BODY_LEN_OFFSET + 4);
const _: () = assert!(HELLO_FIXED_BYTES == 1 + 3 + 4 + 8 + 4 * 2 + 5 * 8 + 8);
const _: () = assert!(DIGEST_REQUEST_BYTES == 2 + 2 + 4 + 2 * 8);
const _: () = assert!(DIGESTS_FIXED_BYTES == 2 + 2 + 4 + 2 * 8);
// Counts fit their u16 fields.
const _: () = assert!(MAX_ANCESTORS < 1 << 16 && MAX_DIGESTS < 1 << 16);
const _: () = assert!(VOLUME_ENTRY_BYTES == 8 + 4 + 1 + 3 + MAX_VOLUME_NAME_BYTES);
const _: () = assert!(MAX_VOLUME_NAME_BYTES == 32 && RANGE_BYTES == 2 * 8);
const _: () = assert!(WRITE_FIXED_BYTES == 2 + 2 + 4 + 4 * 8);
const _: () = assert!(SYNC_BYTES == 5 * 8 && ACK_FIXED_BYTES == 2 + 6 && APPLIED_BYTES == 3 * 8);
// Counts fit their u16 fields, every body fits the u32 length, and body_len as usize is lossless.
const _: () = assert!(MAX_VOLUMES <= u16::MAX as usize);
const _: () = assert!(MAX_ACK_RANGES <= u16::MAX as usize);
const _: () = assert!(HELLO_MAX_BYTES <= MAX_BODY_BYTES && ACK_MAX_BYTES <= MAX_BODY_BYTES);
const _: () = assert!(MAX_BODY_BYTES <= u32::MAX as usize && usize::BITS >= 32);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("incomplete frame: {needed} bytes needed")]
    Incomplete { needed: usize },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("body length {body_len} invalid for frame kind {kind}")]
    BadLength { kind: u8, body_len: u32 },
    #[error("crc mismatch: header says {expected:#010x}, frame bytes give {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Appends one encoded frame to `out`. Panics on a frame that breaks the limits of
/// `frame.rs` or an invariant `decode` checks: that is a bug of the caller.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    let (kind, body_len) = kind_and_body_len(frame);
    assert!(body_len <= MAX_BODY_BYTES, "body of {body_len} bytes");
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[VERSION, kind, 0, 0]);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, patched below
    match frame {
        Frame::Hello(hello) => encode_hello(hello, out),
        Frame::Write(write) => {
            out.extend_from_slice(&write.volume.0.to_le_bytes());
            out.extend_from_slice(&[0; 2]);
            out.extend_from_slice(&(write.payload.len() as u32).to_le_bytes());
            put_u64s(out, &[write.seq.0, write.data_set.0]);
            put_u64s(out, &[write.offset, write.stream_offset]);
            out.extend_from_slice(write.payload);
        }
        Frame::Zero(zero) => {
            assert!(zero.len > 0, "{zero:?}: an empty range");
            out.extend_from_slice(&zero.volume.0.to_le_bytes());
            let flags = if zero.unmap { ZERO_UNMAP } else { 0 };
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&zero.len.to_le_bytes());
            put_u64s(out, &[zero.seq.0, zero.data_set.0]);
            put_u64s(out, &[zero.offset, zero.stream_offset]);
        }
        Frame::Sync(sync) => {
            let closing_seq = sync.first_seq.0.checked_add(sync.write_count);
            assert_eq!(closing_seq, Some(sync.seq.0), "{sync:?}: bad seq");
            put_u64s(out, &[sync.seq.0, sync.data_set.0, sync.first_seq.0]);
            put_u64s(out, &[sync.write_count, sync.stream_offset]);
        }
        Frame::Ack(ack) => {
            out.extend_from_slice(&(ack.ranges.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0; 6]);
            encode_ranges(&ack.ranges, out);
        }
        Frame::Applied(applied) => {
            put_u64s(out, &[applied.data_set.0, applied.applied_seq.0]);
            put_u64s(out, &[applied.stream_end]);
        }
        Frame::DigestRequest(request) => {
            out.extend_from_slice(&request.volume.0.to_le_bytes());
            out.extend_from_slice(&[0; 2]);
            out.extend_from_slice(&request.len.to_le_bytes());
            put_u64s(out, &[request.offset, request.id]);
        }
        Frame::Digests(digests) => {
            out.extend_from_slice(&digests.volume.0.to_le_bytes());
            out.extend_from_slice(&(digests.digests.len() as u16).to_le_bytes());
            out.extend_from_slice(&digests.len.to_le_bytes());
            put_u64s(out, &[digests.offset, digests.id]);
            put_u64s(out, &digests.digests);
        }
    }
    let written = out.len() - start;
    assert_eq!(
        written,
        HEADER_BYTES + body_len,
        "body differs from its layout"
    );
    let crc = crc32c::crc32c(&out[start..]);
    out[start + CRC_OFFSET..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a `Write` frame without its payload, which must follow it on the wire as is:
/// the header's crc already covers it. `encode_write_head(w, out)` then the payload gives
/// the bytes `encode(&Frame::Write(w), out)` gives, so a sender can write the payload
/// from where it lies (a vectored write) instead of copying it.
pub fn encode_write_head(write: &WriteFrame<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    let mut whole = *write;
    whole.payload = &[];
    encode(&Frame::Write(whole), out);
    let body_len = out.len() - start - HEADER_BYTES + write.payload.len();
    assert!(body_len <= MAX_BODY_BYTES, "body of {body_len} bytes");
    out[start + BODY_LEN_OFFSET..start + CRC_OFFSET]
        .copy_from_slice(&(body_len as u32).to_le_bytes());
    // The fields just past the header: volume (2), padding (2), then the payload length.
    let len_at = start + HEADER_BYTES + 4;
    out[len_at..len_at + 4].copy_from_slice(&(write.payload.len() as u32).to_le_bytes());
    out[start + CRC_OFFSET..start + HEADER_BYTES].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..]), write.payload);
    out[start + CRC_OFFSET..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the first frame in `buf`, returning it and the bytes it took. A `Write` payload
/// borrows from `buf`. Never panics; allocates at most `MAX_VOLUMES` names and
/// `MAX_ACK_RANGES` ranges.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), DecodeError> {
    let header = decode_header(buf)?;
    let needed = HEADER_BYTES + header.body_len as usize;
    let frame = buf.get(..needed).ok_or(Incomplete { needed })?;
    let (head, body) = frame
        .split_first_chunk::<HEADER_BYTES>()
        .ok_or(Incomplete { needed })?;
    let actual = frame_crc(head, body);
    if actual != header.crc {
        return Err(CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    let (r, body_len) = (&mut Reader { rest: body }, header.body_len);
    let decoded = match header.kind {
        KIND_HELLO => Frame::Hello(decode_hello(r, body_len)?),
        KIND_WRITE => Frame::Write(decode_write(r, body_len)?),
        KIND_SYNC | KIND_SYNC_ENDS_RESYNC => {
            let [seq, data_set, first_seq, write_count, stream_offset] = r.u64s()?;
            if first_seq.checked_add(write_count) != Some(seq) {
                return Err(Malformed("sync seq is not first_seq + write_count"));
            }
            Frame::Sync(SyncFrame {
                seq: Seq(seq),
                data_set: DataSetId(data_set),
                first_seq: Seq(first_seq),
                write_count,
                stream_offset,
                ends_resync: header.kind == KIND_SYNC_ENDS_RESYNC,
            })
        }
        KIND_ZERO => Frame::Zero(decode_zero(r)?),
        KIND_DIGEST_REQUEST => {
            let volume = VolumeId(r.u16()?);
            r.zeros(2, "non-zero padding in digest request")?;
            let len = r.u32()?;
            let [offset, id] = r.u64s()?;
            Frame::DigestRequest(DigestRequestFrame {
                id,
                volume,
                offset,
                len,
            })
        }
        KIND_DIGESTS => Frame::Digests(decode_digests(r, body_len)?),
        KIND_ACK => Frame::Ack(decode_ack(r, body_len)?),
        KIND_APPLIED => {
            let [data_set, applied_seq, stream_end] = r.u64s()?;
            Frame::Applied(AppliedFrame {
                data_set: DataSetId(data_set),
                applied_seq: Seq(applied_seq),
                stream_end,
            })
        }
        kind => return Err(UnknownKind(kind)),
    };
    r.finish()?;
    Ok((decoded, needed))
}

/// crc32c of the header with its crc field zeroed, then of the body.
fn frame_crc(head: &[u8; HEADER_BYTES], body: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&head[..CRC_OFFSET]);
    let crc = crc32c::crc32c_append(crc, &[0; HEADER_BYTES - CRC_OFFSET]);
    crc32c::crc32c_append(crc, body)
}

/// Total length of the first frame in `buf`, from its header alone, so a transport can
/// reject a bad or oversized frame before buffering its body.
pub fn frame_len(buf: &[u8]) -> Result<usize, DecodeError> {
    Ok(HEADER_BYTES + decode_header(buf)?.body_len as usize)
}

struct Header {
    kind: u8,
    body_len: u32,
    crc: u32,
}

fn decode_header(buf: &[u8]) -> Result<Header, DecodeError> {
    let head = buf.get(..HEADER_BYTES).ok_or(Incomplete {
        needed: HEADER_BYTES,
    })?;
    let r = &mut Reader { rest: head };
    let magic = r.u32()?;
    if magic != MAGIC {
        return Err(BadMagic(magic));
    }
    let [version, kind] = r.array()?;
    if version != VERSION {
        return Err(BadVersion(version));
    }
    let (body_min, body_max) = match kind {
        KIND_HELLO => (HELLO_FIXED_BYTES, HELLO_MAX_BYTES),
        KIND_WRITE => (WRITE_FIXED_BYTES, MAX_BODY_BYTES),
        KIND_SYNC | KIND_SYNC_ENDS_RESYNC => (SYNC_BYTES, SYNC_BYTES),
        KIND_DIGEST_REQUEST => (DIGEST_REQUEST_BYTES, DIGEST_REQUEST_BYTES),
        KIND_DIGESTS => (DIGESTS_FIXED_BYTES, DIGESTS_MAX_BYTES),
        KIND_ZERO => (ZERO_BYTES, ZERO_BYTES),
        KIND_ACK => (ACK_FIXED_BYTES, ACK_MAX_BYTES),
        KIND_APPLIED => (APPLIED_BYTES, APPLIED_BYTES),
        _ => return Err(UnknownKind(kind)),
    };
    r.zeros(2, "non-zero reserved header field")?;
    let body_len = r.u32()?;
    if !(body_min..=body_max).contains(&(body_len as usize)) {
        return Err(BadLength { kind, body_len });
    }
    Ok(Header {
        kind,
        body_len,
        crc: r.u32()?,
    })
}

fn decode_hello(r: &mut Reader<'_>, body_len: u32) -> Result<Hello, DecodeError> {
    let role = match r.u8()? {
        1 => Role::Primary,
        2 => Role::Secondary,
        _ => return Err(Malformed("unknown role in hello")),
    };
    r.zeros(3, "non-zero padding in hello")?;
    let max_write_bytes = r.u32()?;
    let group = GroupId(r.u64()?);
    let volume_count = usize::from(r.u16()?);
    let range_count = usize::from(r.u16()?);
    let ancestor_count = usize::from(r.u16()?);
    let flags = decode_flags(r.u16()?)?;
    let [applied_data_set, applied_seq, applied_stream_end, window_bytes] = r.u64s()?;
    let [journal_id, generation] = r.u64s()?;
    if volume_count > MAX_VOLUMES {
        return Err(Malformed("too many volumes in hello"));
    }
    if range_count > MAX_ACK_RANGES {
        return Err(Malformed("too many seq ranges in hello"));
    }
    if ancestor_count > MAX_ANCESTORS {
        return Err(Malformed("too many ancestors in hello"));
    }
    let expected = HELLO_FIXED_BYTES
        + volume_count * VOLUME_ENTRY_BYTES
        + range_count * RANGE_BYTES
        + ancestor_count * ANCESTOR_BYTES;
    if body_len as usize != expected {
        return Err(BadLength {
            kind: KIND_HELLO,
            body_len,
        });
    }
    let mut volumes = Vec::with_capacity(volume_count);
    for _ in 0..volume_count {
        volumes.push(decode_volume(r)?);
    }
    let staged = decode_ranges(r, range_count)?;
    let mut ancestors = Vec::with_capacity(ancestor_count);
    for _ in 0..ancestor_count {
        ancestors.push(GenerationId(r.u64()?));
    }
    let resume = ResumeState {
        applied_data_set: DataSetId(applied_data_set),
        applied_seq: Seq(applied_seq),
        applied_stream_end,
        window_bytes,
        journal_id,
        staged,
    };
    Ok(Hello {
        role,
        group,
        max_write_bytes,
        volumes,
        generation: GenerationId(generation),
        ancestors,
        flags,
        resume,
    })
}

fn decode_flags(bits: u16) -> Result<HistoryFlags, DecodeError> {
    if bits & !FLAGS_KNOWN != 0 {
        return Err(Malformed("unknown flags in hello"));
    }
    Ok(HistoryFlags {
        genesis_stream: bits & FLAG_GENESIS_STREAM != 0,
        genesis_bits: bits & FLAG_GENESIS_BITS != 0,
        replica_zeroed: bits & FLAG_REPLICA_ZEROED != 0,
        discard: bits & FLAG_DISCARD != 0,
        inconsistent: bits & FLAG_INCONSISTENT != 0,
        held: bits & FLAG_HELD != 0,
        resync_all: bits & FLAG_RESYNC_ALL != 0,
        resync_from_zero: bits & FLAG_RESYNC_FROM_ZERO != 0,
    })
}

fn encode_flags(flags: &HistoryFlags) -> u16 {
    let bit = |set: bool, bit: u16| if set { bit } else { 0 };
    bit(flags.genesis_stream, FLAG_GENESIS_STREAM)
        | bit(flags.genesis_bits, FLAG_GENESIS_BITS)
        | bit(flags.replica_zeroed, FLAG_REPLICA_ZEROED)
        | bit(flags.discard, FLAG_DISCARD)
        | bit(flags.inconsistent, FLAG_INCONSISTENT)
        | bit(flags.held, FLAG_HELD)
        | bit(flags.resync_all, FLAG_RESYNC_ALL)
        | bit(flags.resync_from_zero, FLAG_RESYNC_FROM_ZERO)
}

fn decode_digests(r: &mut Reader<'_>, body_len: u32) -> Result<DigestsFrame, DecodeError> {
    let volume = VolumeId(r.u16()?);
    let count = usize::from(r.u16()?);
    let len = r.u32()?;
    let [offset, id] = r.u64s()?;
    if count > MAX_DIGESTS {
        return Err(Malformed("too many digests"));
    }
    if body_len as usize != DIGESTS_FIXED_BYTES + count * 8 {
        let kind = KIND_DIGESTS;
        return Err(BadLength { kind, body_len });
    }
    let mut digests = Vec::with_capacity(count);
    for _ in 0..count {
        digests.push(r.u64()?);
    }
    Ok(DigestsFrame {
        id,
        volume,
        offset,
        len,
        digests,
    })
}

fn decode_volume(r: &mut Reader<'_>) -> Result<VolumeInfo, DecodeError> {
    let size_bytes = r.u64()?;
    let block_size = r.u32()?;
    let name_len = usize::from(r.u8()?);
    r.zeros(3, "non-zero padding in volume entry")?;
    let name_field: [u8; MAX_VOLUME_NAME_BYTES] = r.array()?;
    let (name, tail) = name_field
        .split_at_checked(name_len)
        .ok_or(Malformed("volume name longer than 32 bytes"))?;
    if tail.iter().any(|&byte| byte != 0) {
        return Err(Malformed("non-zero bytes after volume name"));
    }
    let name = std::str::from_utf8(name).map_err(|_| Malformed("volume name is not UTF-8"))?;
    Ok(VolumeInfo {
        name: name.to_owned(),
        size_bytes,
        block_size,
    })
}

fn decode_write<'a>(r: &mut Reader<'a>, body_len: u32) -> Result<WriteFrame<'a>, DecodeError> {
    let volume = VolumeId(r.u16()?);
    r.zeros(2, "non-zero padding in write")?;
    let payload_len = r.u32()?;
    let [seq, data_set, offset, stream_offset] = r.u64s()?;
    if payload_len > MAX_WRITE_PAYLOAD_BYTES {
        return Err(Malformed("write payload over MAX_WRITE_PAYLOAD_BYTES"));
    }
    if WRITE_FIXED_BYTES + payload_len as usize != body_len as usize {
        return Err(BadLength {
            kind: KIND_WRITE,
            body_len,
        });
    }
    Ok(WriteFrame {
        volume,
        seq: Seq(seq),
        data_set: DataSetId(data_set),
        offset,
        stream_offset,
        payload: r.bytes(payload_len as usize)?,
    })
}

fn decode_zero(r: &mut Reader<'_>) -> Result<ZeroFrame, DecodeError> {
    let volume = VolumeId(r.u16()?);
    let flags = r.u16()?;
    let len = r.u32()?;
    let [seq, data_set, offset, stream_offset] = r.u64s()?;
    if flags & !ZERO_UNMAP != 0 {
        return Err(Malformed("unknown flags in zero"));
    }
    if len == 0 {
        return Err(Malformed("zero of an empty range"));
    }
    Ok(ZeroFrame {
        volume,
        seq: Seq(seq),
        data_set: DataSetId(data_set),
        offset,
        len,
        unmap: flags & ZERO_UNMAP != 0,
        stream_offset,
    })
}

fn decode_ack(r: &mut Reader<'_>, body_len: u32) -> Result<AckFrame, DecodeError> {
    let range_count = usize::from(r.u16()?);
    r.zeros(6, "non-zero padding in ack")?;
    if range_count > MAX_ACK_RANGES {
        return Err(Malformed("too many seq ranges in ack"));
    }
    if body_len as usize != ACK_FIXED_BYTES + range_count * RANGE_BYTES {
        let kind = KIND_ACK;
        return Err(BadLength { kind, body_len });
    }
    let ranges = decode_ranges(r, range_count)?;
    Ok(AckFrame { ranges })
}

/// `count` was checked against `MAX_ACK_RANGES` and the body length by the caller.
fn decode_ranges(r: &mut Reader<'_>, count: usize) -> Result<Vec<SeqRange>, DecodeError> {
    let mut ranges = Vec::with_capacity(count.min(MAX_ACK_RANGES));
    for _ in 0..count {
        let [first, last] = r.u64s()?;
        if first > last {
            return Err(Malformed("seq range with first > last"));
        }
        ranges.push(SeqRange {
            first: Seq(first),
            last: Seq(last),
        });
    }
    Ok(ranges)
}

fn encode_hello(hello: &Hello, out: &mut Vec<u8>) {
    let resume = &hello.resume;
    out.extend_from_slice(&[hello.role as u8, 0, 0, 0]);
    out.extend_from_slice(&hello.max_write_bytes.to_le_bytes());
    out.extend_from_slice(&hello.group.0.to_le_bytes());
    out.extend_from_slice(&(hello.volumes.len() as u16).to_le_bytes());
    out.extend_from_slice(&(resume.staged.len() as u16).to_le_bytes());
    out.extend_from_slice(&(hello.ancestors.len() as u16).to_le_bytes());
    out.extend_from_slice(&encode_flags(&hello.flags).to_le_bytes());
    put_u64s(out, &[resume.applied_data_set.0, resume.applied_seq.0]);
    put_u64s(
        out,
        &[
            resume.applied_stream_end,
            resume.window_bytes,
            resume.journal_id,
            hello.generation.0,
        ],
    );
    for volume in &hello.volumes {
        let name = volume.name.as_bytes();
        assert!(
            name.len() <= MAX_VOLUME_NAME_BYTES,
            "{volume:?}: name too long"
        );
        out.extend_from_slice(&volume.size_bytes.to_le_bytes());
        out.extend_from_slice(&volume.block_size.to_le_bytes());
        out.extend_from_slice(&[name.len() as u8, 0, 0, 0]);
        out.extend_from_slice(name);
        out.extend_from_slice(&[0; MAX_VOLUME_NAME_BYTES][name.len()..]);
    }
    encode_ranges(&resume.staged, out);
    for ancestor in &hello.ancestors {
        out.extend_from_slice(&ancestor.0.to_le_bytes());
    }
}

fn encode_ranges(ranges: &[SeqRange], out: &mut Vec<u8>) {
    for range in ranges {
        assert!(range.first <= range.last, "{range:?} has first > last");
        put_u64s(out, &[range.first.0, range.last.0]);
    }
}

fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// Kind and body length implied by the fields; asserts the limits the wire relies on.
fn kind_and_body_len(frame: &Frame<'_>) -> (u8, usize) {
    let ranges = |count: usize| {
        assert!(count <= MAX_ACK_RANGES, "{count} seq ranges in one frame");
        count * RANGE_BYTES
    };
    match frame {
        Frame::Hello(hello) => {
            let volumes = hello.volumes.len();
            assert!(volumes <= MAX_VOLUMES, "{volumes} volumes in hello");
            let ancestors = hello.ancestors.len();
            assert!(ancestors <= MAX_ANCESTORS, "{ancestors} ancestors in hello");
            let body_len =
                HELLO_FIXED_BYTES + volumes * VOLUME_ENTRY_BYTES + ancestors * ANCESTOR_BYTES;
            (KIND_HELLO, body_len + ranges(hello.resume.staged.len()))
        }
        Frame::Write(write) => {
            let payload_len = write.payload.len();
            let payload_max = MAX_WRITE_PAYLOAD_BYTES as usize;
            assert!(payload_len <= payload_max, "payload of {payload_len} bytes");
            (KIND_WRITE, WRITE_FIXED_BYTES + payload_len)
        }
        Frame::Zero(_) => (KIND_ZERO, ZERO_BYTES),
        Frame::Sync(sync) if sync.ends_resync => (KIND_SYNC_ENDS_RESYNC, SYNC_BYTES),
        Frame::Sync(_) => (KIND_SYNC, SYNC_BYTES),
        Frame::DigestRequest(_) => (KIND_DIGEST_REQUEST, DIGEST_REQUEST_BYTES),
        Frame::Digests(digests) => {
            let count = digests.digests.len();
            assert!(count <= MAX_DIGESTS, "{count} digests in one frame");
            (KIND_DIGESTS, DIGESTS_FIXED_BYTES + count * 8)
        }
        Frame::Ack(ack) => (KIND_ACK, ACK_FIXED_BYTES + ranges(ack.ranges.len())),
        Frame::Applied(_) => (KIND_APPLIED, APPLIED_BYTES),
    }
}

/// Reads little-endian fields off the front of a body. Lengths are checked before a body
/// is parsed, so running short is unreachable; it is still an error, never a panic.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    const SHORT: DecodeError = Malformed("body shorter than its fields");

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.rest.split_at_checked(len).ok_or(Self::SHORT)?;
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or(Self::SHORT)?;
        self.rest = rest;
        Ok(*head)
    }

    /// Skips `len` padding bytes, which must be zero so that every frame has one encoding.
    fn zeros(&mut self, len: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.bytes(len)?.iter().any(|&byte| byte != 0) {
            return Err(Malformed(what));
        }
        Ok(())
    }

    fn u64s<const N: usize>(&mut self) -> Result<[u64; N], DecodeError> {
        let mut values = [0; N];
        for value in &mut values {
            *value = self.u64()?;
        }
        Ok(values)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array().map(u8::from_le_bytes)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if !self.rest.is_empty() {
            return Err(Malformed("body longer than its fields"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;

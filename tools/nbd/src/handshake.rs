//! The fixed newstyle handshake: the server's greeting, the client's flags, options and
//! the server's option replies. Parsers take a byte buffer and return `Ok(None)` until a
//! whole message is there.

use crate::{
    be_u16, be_u32, be_u64, NbdError, IHAVEOPT, MAX_OPTION_BYTES, MAX_STRING_BYTES, NBDMAGIC,
};
use crate::{
    CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES,
    OPTION_REPLY_MAGIC,
};

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// The server's first 18 bytes.
pub fn encode_greeting(out: &mut Vec<u8>) {
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
}

/// The client's 32-bit flags; returns whether it asked for no zero padding.
pub fn parse_client_flags(buf: &[u8]) -> Result<Option<(bool, usize)>, NbdError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let flags = be_u32(buf, 0);
    if flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(NbdError::UnknownClientFlags(flags));
    }
    Ok(Some((flags & CLIENT_NO_ZEROES != 0, 4)))
}

/// One option as sent: its number and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawOption<'a> {
    pub option: u32,
    pub data: &'a [u8],
}

/// The next option in `buf`, with the bytes it took.
pub fn parse_option(buf: &[u8]) -> Result<Option<(RawOption<'_>, usize)>, NbdError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let magic = be_u64(buf, 0);
    if magic != IHAVEOPT {
        return Err(NbdError::BadMagic {
            expected: IHAVEOPT,
            found: magic,
        });
    }
    let option = be_u32(buf, 8);
    let len = be_u32(buf, 12);
    if len > MAX_OPTION_BYTES {
        return Err(NbdError::OptionTooLong(len));
    }
    let end = 16 + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        RawOption {
            option,
            data: &buf[16..end],
        },
        end,
    )))
}

/// What an option asks for, or the error reply it earns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    ExportName(&'a str),
    Abort,
    List,
    /// `NBD_OPT_INFO` (`go == false`) or `NBD_OPT_GO`, with the info types asked for.
    Info {
        go: bool,
        name: &'a str,
        wanted: Vec<u16>,
    },
    /// Not understood or malformed: reply with this error type and carry on.
    Refuse {
        reply: u32,
        why: &'static str,
    },
}

fn export_name(bytes: &[u8]) -> Result<&str, &'static str> {
    if bytes.len() > MAX_STRING_BYTES {
        return Err("export name too long");
    }
    let name = std::str::from_utf8(bytes).map_err(|_| "export name is not UTF-8")?;
    if name.contains('\0') {
        return Err("export name contains NUL");
    }
    Ok(name)
}

pub fn decode_option<'a>(raw: &RawOption<'a>) -> Request<'a> {
    let invalid = |why| Request::Refuse {
        reply: REP_ERR_INVALID,
        why,
    };
    match raw.option {
        OPT_EXPORT_NAME => match export_name(raw.data) {
            Ok(name) => Request::ExportName(name),
            Err(why) => invalid(why),
        },
        OPT_ABORT => Request::Abort,
        OPT_LIST if raw.data.is_empty() => Request::List,
        OPT_LIST => invalid("NBD_OPT_LIST takes no data"),
        OPT_INFO | OPT_GO => {
            let data = raw.data;
            if data.len() < 6 {
                return invalid("NBD_OPT_INFO/GO data too short");
            }
            let name_len = be_u32(data, 0) as usize;
            // Compared without adding to it: a u32 near its top overflows a 32-bit usize.
            if name_len > data.len() - 6 {
                return invalid("NBD_OPT_INFO/GO name runs past the option");
            }
            let name = match export_name(&data[4..4 + name_len]) {
                Ok(name) => name,
                Err(why) => return invalid(why),
            };
            let count = usize::from(be_u16(data, 4 + name_len));
            let rest = &data[4 + name_len + 2..];
            if rest.len() != 2 * count {
                return invalid("NBD_OPT_INFO/GO request count does not match its length");
            }
            let wanted = rest
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            Request::Info {
                go: raw.option == OPT_GO,
                name,
                wanted,
            }
        }
        _ => Request::Refuse {
            reply: REP_ERR_UNSUP,
            why: "option not supported",
        },
    }
}

/// An option reply: header and `data`.
pub fn encode_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// `NBD_REP_SERVER` naming one export (the answer to `NBD_OPT_LIST`, one per export).
pub fn encode_server(out: &mut Vec<u8>, name: &str) {
    let mut data = Vec::with_capacity(4 + name.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    encode_reply(out, OPT_LIST, REP_SERVER, &data);
}

/// An export's block sizes (`NBD_INFO_BLOCK_SIZE`): the alignment requests must have,
/// the one they should have, and the largest payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// The `NBD_REP_INFO` replies for an export (size and flags, block sizes), then the
/// final `NBD_REP_ACK`.
pub fn encode_info(out: &mut Vec<u8>, option: u32, size: u64, flags: u16, sizes: BlockSizes) {
    let mut export = Vec::with_capacity(12);
    export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    export.extend_from_slice(&size.to_be_bytes());
    export.extend_from_slice(&flags.to_be_bytes());
    encode_reply(out, option, REP_INFO, &export);
    let mut info = Vec::with_capacity(14);
    info.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for value in [sizes.minimum, sizes.preferred, sizes.maximum] {
        info.extend_from_slice(&value.to_be_bytes());
    }
    encode_reply(out, option, REP_INFO, &info);
    encode_reply(out, option, REP_ACK, &[]);
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size and flags, padded unless the client asked not.
pub fn encode_export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0; 124]);
    }
}

/// The client's side: the server's greeting parsed, its handshake flags returned.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<u16>, NbdError> {
    if buf.len() < 18 {
        return Ok(None);
    }
    for (at, expected) in [(0, NBDMAGIC), (8, IHAVEOPT)] {
        let found = be_u64(buf, at);
        if found != expected {
            return Err(NbdError::BadMagic { expected, found });
        }
    }
    let flags = be_u16(buf, 16);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::NotFixedNewstyle(flags));
    }
    Ok(Some(flags))
}

/// The client's flags: fixed newstyle, and no zero padding when the server offers it.
pub fn encode_client_flags(out: &mut Vec<u8>, server_flags: u16) {
    let mut flags = CLIENT_FIXED_NEWSTYLE;
    if server_flags & FLAG_NO_ZEROES != 0 {
        flags |= CLIENT_NO_ZEROES;
    }
    out.extend_from_slice(&flags.to_be_bytes());
}

/// `NBD_OPT_GO` (or `NBD_OPT_INFO`) for export `name`, asking for the info types `wanted`.
pub fn encode_go(out: &mut Vec<u8>, option: u32, name: &str, wanted: &[u16]) {
    debug_assert!(option == OPT_GO || option == OPT_INFO);
    let len = 4 + name.len() + 2 + 2 * wanted.len();
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(wanted.len() as u16).to_be_bytes());
    wanted
        .iter()
        .for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
}

/// An option reply as the client reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReply<'a> {
    pub option: u32,
    pub reply: u32,
    pub data: &'a [u8],
}

impl OptionReply<'_> {
    /// Error replies have the top bit set.
    pub fn is_error(&self) -> bool {
        self.reply & (1 << 31) != 0
    }
}

/// The next option reply in `buf`, with the bytes it took.
pub fn parse_option_reply(buf: &[u8]) -> Result<Option<(OptionReply<'_>, usize)>, NbdError> {
    if buf.len() < 20 {
        return Ok(None);
    }
    let magic = be_u64(buf, 0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(NbdError::BadMagic {
            expected: OPTION_REPLY_MAGIC,
            found: magic,
        });
    }
    let len = be_u32(buf, 16);
    if len > MAX_OPTION_BYTES {
        return Err(NbdError::OptionTooLong(len));
    }
    let end = 20 + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let reply = OptionReply {
        option: be_u32(buf, 8),
        reply: be_u32(buf, 12),
        data: &buf[20..end],
    };
    Ok(Some((reply, end)))
}

/// What an `NBD_REP_INFO` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Info {
    Export {
        size: u64,
        flags: u16,
    },
    BlockSize {
        minimum: u32,
        preferred: u32,
        maximum: u32,
    },
    /// A type this client did not ask for: ignored.
    Other(u16),
}

pub fn decode_info(data: &[u8]) -> Result<Info, NbdError> {
    let short = |info| NbdError::ShortInfo {
        info,
        len: data.len(),
    };
    if data.len() < 2 {
        return Err(short(u16::MAX));
    }
    match be_u16(data, 0) {
        INFO_EXPORT if data.len() >= 12 => Ok(Info::Export {
            size: be_u64(data, 2),
            flags: be_u16(data, 10),
        }),
        INFO_BLOCK_SIZE if data.len() >= 14 => Ok(Info::BlockSize {
            minimum: be_u32(data, 2),
            preferred: be_u32(data, 6),
            maximum: be_u32(data, 10),
        }),
        info @ (INFO_EXPORT | INFO_BLOCK_SIZE) => Err(short(info)),
        other => Ok(Info::Other(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: BlockSizes = BlockSizes {
        minimum: 4096,
        preferred: 4096,
        maximum: 1 << 20,
    };

    fn option(option: u32, data: &[u8]) -> Vec<u8> {
        let mut out = IHAVEOPT.to_be_bytes().to_vec();
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn go_data(name: &str, wanted: &[u16]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&(wanted.len() as u16).to_be_bytes());
        wanted
            .iter()
            .for_each(|w| data.extend_from_slice(&w.to_be_bytes()));
        data
    }

    #[test]
    fn greeting_is_the_fixed_newstyle_one() {
        let mut out = Vec::new();
        encode_greeting(&mut out);
        assert_eq!(&out[..8], b"NBDMAGIC");
        assert_eq!(&out[8..16], b"IHAVEOPT");
        assert_eq!(out[16..], [0, 3]);
    }

    #[test]
    fn client_flags_unknown_bits_are_refused() {
        assert_eq!(parse_client_flags(&[0, 0, 0]), Ok(None));
        assert_eq!(parse_client_flags(&[0, 0, 0, 3]), Ok(Some((true, 4))));
        assert_eq!(parse_client_flags(&[0, 0, 0, 1]), Ok(Some((false, 4))));
        assert_eq!(
            parse_client_flags(&[0, 0, 1, 0]),
            Err(NbdError::UnknownClientFlags(256))
        );
    }

    #[test]
    fn go_is_parsed_and_each_prefix_is_incomplete() {
        let bytes = option(OPT_GO, &go_data("data", &[INFO_BLOCK_SIZE]));
        for cut in 0..bytes.len() {
            assert_eq!(parse_option(&bytes[..cut]), Ok(None), "prefix {cut}");
        }
        let (raw, used) = parse_option(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            decode_option(&raw),
            Request::Info {
                go: true,
                name: "data",
                wanted: vec![INFO_BLOCK_SIZE]
            }
        );
    }

    #[test]
    fn malformed_options_are_refused_not_fatal() {
        let cases: [(u32, Vec<u8>); 5] = [
            (OPT_GO, vec![0, 0, 0, 9, b'x']),
            (OPT_GO, go_data("a", &[1]).split_last().unwrap().1.to_vec()),
            (OPT_INFO, go_data("\u{0}", &[])),
            (OPT_LIST, vec![1]),
            (OPT_EXPORT_NAME, vec![0xff, 0xfe]),
        ];
        for (number, data) in cases {
            let bytes = option(number, &data);
            let (raw, _) = parse_option(&bytes).unwrap().unwrap();
            assert!(
                matches!(
                    decode_option(&raw),
                    Request::Refuse {
                        reply: REP_ERR_INVALID,
                        ..
                    }
                ),
                "option {number} with {data:?}"
            );
        }
        let bytes = option(42, &[]);
        let (raw, _) = parse_option(&bytes).unwrap().unwrap();
        assert!(matches!(
            decode_option(&raw),
            Request::Refuse {
                reply: REP_ERR_UNSUP,
                ..
            }
        ));
    }

    #[test]
    fn bad_magic_and_huge_options_drop_the_connection() {
        let mut bytes = option(OPT_LIST, &[]);
        bytes[0] ^= 1;
        assert!(matches!(
            parse_option(&bytes),
            Err(NbdError::BadMagic { .. })
        ));
        let mut huge = option(OPT_GO, &[]);
        huge[12..16].copy_from_slice(&(MAX_OPTION_BYTES + 1).to_be_bytes());
        assert_eq!(
            parse_option(&huge),
            Err(NbdError::OptionTooLong(MAX_OPTION_BYTES + 1))
        );
    }

    #[test]
    fn info_replies_end_with_an_ack() {
        let mut out = Vec::new();
        encode_info(&mut out, OPT_GO, 1 << 20, 0x10d, SIZES);
        // Three replies: export (12 data bytes), block size (14), ack (0).
        assert_eq!(out.len(), 3 * 20 + 12 + 14);
        assert_eq!(be_u64(&out, 0), OPTION_REPLY_MAGIC);
        assert_eq!(be_u32(&out, 12), REP_INFO);
        assert_eq!(be_u64(&out, 22), 1 << 20, "export size");
        let ack = 20 + 12 + 20 + 14;
        assert_eq!(be_u32(&out, ack + 12), REP_ACK);
        assert_eq!(be_u32(&out, ack + 16), 0);
    }

    #[test]
    fn the_client_half_reads_what_the_server_half_writes() {
        let mut greeting = Vec::new();
        encode_greeting(&mut greeting);
        for cut in 0..greeting.len() {
            assert_eq!(parse_greeting(&greeting[..cut]), Ok(None));
        }
        let flags = parse_greeting(&greeting).unwrap().unwrap();
        let mut client = Vec::new();
        encode_client_flags(&mut client, flags);
        assert_eq!(parse_client_flags(&client), Ok(Some((true, 4))));
        client.clear();
        encode_client_flags(&mut client, FLAG_FIXED_NEWSTYLE);
        assert_eq!(parse_client_flags(&client), Ok(Some((false, 4))));

        let mut go = Vec::new();
        encode_go(&mut go, OPT_GO, "data", &[INFO_BLOCK_SIZE]);
        let (raw, used) = parse_option(&go).unwrap().unwrap();
        assert_eq!(used, go.len());
        assert_eq!(
            decode_option(&raw),
            Request::Info {
                go: true,
                name: "data",
                wanted: vec![INFO_BLOCK_SIZE]
            }
        );

        let mut replies = Vec::new();
        encode_info(&mut replies, OPT_GO, 64 << 20, 0x10d, SIZES);
        encode_reply(&mut replies, OPT_GO, REP_ERR_UNKNOWN, b"no such export");
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((reply, used)) = parse_option_reply(&replies[at..]).unwrap() {
            assert_eq!(reply.option, OPT_GO);
            seen.push(match reply.reply {
                REP_INFO => format!("{:?}", decode_info(reply.data).unwrap()),
                REP_ACK => "ack".into(),
                _ => {
                    assert!(reply.is_error());
                    String::from_utf8_lossy(reply.data).into_owned()
                }
            });
            at += used;
        }
        assert_eq!(at, replies.len());
        assert_eq!(
            seen,
            [
                "Export { size: 67108864, flags: 269 }",
                "BlockSize { minimum: 4096, preferred: 4096, maximum: 1048576 }",
                "ack",
                "no such export"
            ]
        );
    }

    #[test]
    fn the_client_half_refuses_a_bad_server() {
        let mut greeting = Vec::new();
        encode_greeting(&mut greeting);
        greeting[17] = 0;
        assert_eq!(
            parse_greeting(&greeting),
            Err(NbdError::NotFixedNewstyle(0))
        );
        greeting[3] ^= 1;
        assert!(matches!(
            parse_greeting(&greeting),
            Err(NbdError::BadMagic { .. })
        ));
        let mut reply = Vec::new();
        encode_reply(&mut reply, OPT_GO, REP_INFO, &[0, 0, 1]);
        let (raw, _) = parse_option_reply(&reply).unwrap().unwrap();
        assert_eq!(
            decode_info(raw.data),
            Err(NbdError::ShortInfo { info: 0, len: 3 })
        );
        reply[16..20].copy_from_slice(&(MAX_OPTION_BYTES + 1).to_be_bytes());
        assert_eq!(
            parse_option_reply(&reply),
            Err(NbdError::OptionTooLong(MAX_OPTION_BYTES + 1))
        );
    }
}

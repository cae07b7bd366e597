//! The fuzz targets' bodies, shared by `fuzz/` (cargo-fuzz) and `tests/fuzz_regressions.rs`
//! (which replays the seeds and every stored crash on stable). Each reads arbitrary bytes
//! as a phase's byte stream in both directions and asserts what the parsers guarantee,
//! against fields read here independently of them; a panic is a bug found.

use crate::handshake::{self, Info, RawOption, Request as OptionRequest};
use crate::handshake::{INFO_BLOCK_SIZE, INFO_EXPORT, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO};
use crate::handshake::{OPT_INFO, OPT_LIST, REP_ERR_INVALID, REP_ERR_UNSUP};
use crate::transmission::{self, Command, Request, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE};
use crate::transmission::{REQUEST_HEADER_BYTES, SIMPLE_REPLY_BYTES};
use crate::{NbdError, CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, FLAG_FIXED_NEWSTYLE};
use crate::{IHAVEOPT, MAX_OPTION_BYTES, MAX_STRING_BYTES, NBDMAGIC, OPTION_REPLY_MAGIC};
use crate::{REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};

/// Command numbers `transmission` decodes but names no constant for (proto.md).
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

/// The handshake: `data` as a client's flags and options, and as a server's greeting and
/// option replies. Returns how many whole messages the two readings parsed.
pub fn options(data: &[u8]) -> usize {
    client_options(data) + server_option_replies(data)
}

/// Transmission: `data` as a client's requests (with a write's data after its header),
/// and as a server's simple reply headers. Returns how many whole messages were parsed.
pub fn requests(data: &[u8]) -> usize {
    client_requests(data) + server_simple_replies(data)
}

fn client_options(data: &[u8]) -> usize {
    let used = match handshake::parse_client_flags(data) {
        Ok(None) => {
            incomplete(data.len() < 4);
            return 0;
        }
        Err(error) => {
            let flags = u32_at(data, 0);
            assert_ne!(flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES), 0);
            assert_eq!(error, NbdError::UnknownClientFlags(flags));
            return 0;
        }
        Ok(Some((no_zeroes, used))) => {
            assert_eq!(used, 4);
            assert_eq!(no_zeroes, u32_at(data, 0) & CLIENT_NO_ZEROES != 0);
            used
        }
    };
    let mut rest = &data[used..];
    let mut messages = 1;
    loop {
        match handshake::parse_option(rest) {
            Ok(Some((raw, used))) => {
                assert!(
                    (16..=rest.len()).contains(&used),
                    "took {used} of {}",
                    rest.len()
                );
                check_option(raw, &rest[..used]);
                rest = &rest[used..];
                messages += 1;
            }
            // Waiting is right only for a whole option's valid prefix.
            Ok(None) => {
                incomplete(
                    rest.len() < 16
                        || (u64_at(rest, 0) == IHAVEOPT
                            && u32_at(rest, 12) <= MAX_OPTION_BYTES
                            && rest.len() < 16 + u32_at(rest, 12) as usize),
                );
                return messages;
            }
            Err(error) => {
                let (magic, len) = (u64_at(rest, 0), u32_at(rest, 12));
                let expected = match magic {
                    IHAVEOPT => NbdError::OptionTooLong(len),
                    found => NbdError::BadMagic {
                        expected: IHAVEOPT,
                        found,
                    },
                };
                assert_eq!(error, expected);
                assert!(magic != IHAVEOPT || len > MAX_OPTION_BYTES);
                return messages;
            }
        }
    }
}

/// One whole option, `wire` being its bytes: what `decode_option` answers must be what the
/// protocol says of it, and a request it reads encodes back to the very same bytes.
fn check_option(raw: RawOption<'_>, wire: &[u8]) {
    assert_eq!(u64_at(wire, 0), IHAVEOPT);
    assert_eq!(raw.option, u32_at(wire, 8));
    assert_eq!(raw.data, &wire[16..]);
    assert!(raw.data.len() <= MAX_OPTION_BYTES as usize);
    let decoded = handshake::decode_option(&raw);
    let expected = match raw.option {
        OPT_EXPORT_NAME => valid_name(raw.data).map(OptionRequest::ExportName),
        OPT_ABORT => Some(OptionRequest::Abort),
        OPT_LIST => raw.data.is_empty().then_some(OptionRequest::List),
        OPT_INFO | OPT_GO => info_request(raw.data).map(|(name, wanted)| OptionRequest::Info {
            go: raw.option == OPT_GO,
            name,
            wanted,
        }),
        _ => {
            assert!(
                refused(&decoded, REP_ERR_UNSUP),
                "option {} decoded as {decoded:?}",
                raw.option
            );
            return;
        }
    };
    match expected {
        Some(request) => assert_eq!(decoded, request, "option {}", raw.option),
        None => assert!(
            refused(&decoded, REP_ERR_INVALID),
            "malformed option {} decoded as {decoded:?}",
            raw.option
        ),
    }
    match decoded {
        OptionRequest::ExportName(name) => assert!(name.len() <= MAX_STRING_BYTES),
        OptionRequest::Info { name, wanted, .. } => {
            assert!(name.len() <= MAX_STRING_BYTES);
            assert!(wanted.len() <= MAX_OPTION_BYTES as usize / 2);
            let mut again = Vec::with_capacity(wire.len());
            handshake::encode_go(&mut again, raw.option, name, &wanted);
            assert_eq!(again, wire, "NBD_OPT_INFO/GO does not encode back");
        }
        _ => {}
    }
}

/// A refusal with error reply `reply` and a reason for it.
fn refused(decoded: &OptionRequest<'_>, reply: u32) -> bool {
    match decoded {
        OptionRequest::Refuse { reply: sent, why } => *sent == reply && !why.is_empty(),
        _ => false,
    }
}

/// An export name the protocol allows: UTF-8, no NUL, at most `MAX_STRING_BYTES`.
fn valid_name(bytes: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(bytes).ok()?;
    (bytes.len() <= MAX_STRING_BYTES && !bytes.contains(&0)).then_some(name)
}

/// `NBD_OPT_INFO`/`GO` data read by its layout: name length, name, request count and
/// exactly that many 16-bit info types.
fn info_request(data: &[u8]) -> Option<(&str, Vec<u16>)> {
    let (name_len, data) = data.split_at_checked(4)?;
    let name_len = usize::try_from(u32_at(name_len, 0)).ok()?;
    let (name, data) = data.split_at_checked(name_len)?;
    let (count, wanted) = data.split_at_checked(2)?;
    if wanted.len() != 2 * usize::from(u16_at(count, 0)) {
        return None;
    }
    let wanted = (0..wanted.len() / 2).map(|i| u16_at(wanted, 2 * i));
    Some((valid_name(name)?, wanted.collect()))
}

fn server_option_replies(data: &[u8]) -> usize {
    match handshake::parse_greeting(data) {
        Ok(None) => {
            incomplete(data.len() < 18);
            return 0;
        }
        Err(error) => {
            let (nbd, opt) = (u64_at(data, 0), u64_at(data, 8));
            let expected = if nbd != NBDMAGIC {
                NbdError::BadMagic {
                    expected: NBDMAGIC,
                    found: nbd,
                }
            } else if opt != IHAVEOPT {
                NbdError::BadMagic {
                    expected: IHAVEOPT,
                    found: opt,
                }
            } else {
                NbdError::NotFixedNewstyle(u16_at(data, 16))
            };
            assert_eq!(error, expected);
            return 0;
        }
        Ok(Some(flags)) => {
            assert_eq!((u64_at(data, 0), u64_at(data, 8)), (NBDMAGIC, IHAVEOPT));
            assert_eq!(flags, u16_at(data, 16));
            assert_ne!(flags & FLAG_FIXED_NEWSTYLE, 0);
        }
    }
    let mut rest = &data[18..];
    let mut messages = 1;
    loop {
        match handshake::parse_option_reply(rest) {
            Ok(Some((reply, used))) => {
                assert!(
                    (20..=rest.len()).contains(&used),
                    "took {used} of {}",
                    rest.len()
                );
                let wire = &rest[..used];
                assert_eq!(u64_at(wire, 0), OPTION_REPLY_MAGIC);
                assert_eq!(
                    (reply.option, reply.reply),
                    (u32_at(wire, 8), u32_at(wire, 12))
                );
                assert_eq!(reply.data, &wire[20..]);
                assert_eq!(reply.is_error(), reply.reply >> 31 == 1);
                let mut again = Vec::with_capacity(used);
                handshake::encode_reply(&mut again, reply.option, reply.reply, reply.data);
                assert_eq!(again, wire, "an option reply does not encode back");
                // The client decodes only NBD_REP_INFO's, but no data may make it panic.
                check_info(reply.data);
                rest = &rest[used..];
                messages += 1;
            }
            Ok(None) => {
                incomplete(
                    rest.len() < 20
                        || (u64_at(rest, 0) == OPTION_REPLY_MAGIC
                            && u32_at(rest, 16) <= MAX_OPTION_BYTES
                            && rest.len() < 20 + u32_at(rest, 16) as usize),
                );
                return messages;
            }
            Err(error) => {
                let (magic, len) = (u64_at(rest, 0), u32_at(rest, 16));
                let expected = match magic {
                    OPTION_REPLY_MAGIC => NbdError::OptionTooLong(len),
                    found => NbdError::BadMagic {
                        expected: OPTION_REPLY_MAGIC,
                        found,
                    },
                };
                assert_eq!(error, expected);
                assert!(magic != OPTION_REPLY_MAGIC || len > MAX_OPTION_BYTES);
                return messages;
            }
        }
    }
}

/// `NBD_REP_INFO` data: a 16-bit type, then 10 bytes for the export's size and flags or
/// 12 for its block sizes; other types are passed over.
fn check_info(data: &[u8]) {
    let kind = (data.len() >= 2).then(|| u16_at(data, 0));
    match (kind, handshake::decode_info(data)) {
        (Some(INFO_EXPORT), Ok(Info::Export { size, flags })) => {
            assert!(data.len() >= 12);
            assert_eq!((size, flags), (u64_at(data, 2), u16_at(data, 10)));
        }
        (
            Some(INFO_BLOCK_SIZE),
            Ok(Info::BlockSize {
                minimum,
                preferred,
                maximum,
            }),
        ) => {
            assert!(data.len() >= 14);
            let fields = (u32_at(data, 2), u32_at(data, 6), u32_at(data, 10));
            assert_eq!((minimum, preferred, maximum), fields);
        }
        (Some(kind), Ok(Info::Other(other))) => {
            assert_eq!(other, kind);
            assert!(other != INFO_EXPORT && other != INFO_BLOCK_SIZE);
        }
        (kind, Err(NbdError::ShortInfo { info, len })) => {
            assert_eq!(len, data.len());
            match kind {
                None => assert_eq!(info, u16::MAX),
                Some(INFO_EXPORT) => assert!(info == INFO_EXPORT && len < 12),
                Some(INFO_BLOCK_SIZE) => assert!(info == INFO_BLOCK_SIZE && len < 14),
                Some(other) => panic!("NBD_REP_INFO of type {other} refused as short"),
            }
        }
        (kind, decoded) => panic!("NBD_REP_INFO of type {kind:?} decoded as {decoded:?}"),
    }
}

fn client_requests(data: &[u8]) -> usize {
    let mut rest = data;
    let mut messages = 0;
    loop {
        match transmission::parse_request(rest) {
            Ok(Some(request)) => {
                check_request(request, &rest[..REQUEST_HEADER_BYTES]);
                messages += 1;
                // A write's data follows its header (the server bounds `length` before it
                // waits for it); a stream ending inside it is a request still arriving.
                let Some(next) = rest[REQUEST_HEADER_BYTES..].get(request.data_len()..) else {
                    return messages;
                };
                rest = next;
            }
            Ok(None) => {
                incomplete(rest.len() < REQUEST_HEADER_BYTES);
                return messages;
            }
            Err(error) => {
                let found = u32_at(rest, 0);
                assert_ne!(found, REQUEST_MAGIC);
                let expected = NbdError::BadMagic {
                    expected: u64::from(REQUEST_MAGIC),
                    found: u64::from(found),
                };
                assert_eq!(error, expected);
                return messages;
            }
        }
    }
}

/// One request header: its fields are the header's, and the client half encodes them
/// back to the same bytes, which parse to the same request.
fn check_request(request: Request, header: &[u8]) {
    assert_eq!(u32_at(header, 0), REQUEST_MAGIC);
    let command = command_number(request.command);
    let fields = (request.flags, command, request.handle);
    assert_eq!(
        fields,
        (u16_at(header, 4), u16_at(header, 6), u64_at(header, 8))
    );
    let fields = (request.offset, request.length);
    assert_eq!(fields, (u64_at(header, 16), u32_at(header, 24)));
    let data_len = match request.command {
        Command::Write => request.length as usize,
        _ => 0,
    };
    assert_eq!(request.data_len(), data_len);
    let mut again = Vec::with_capacity(REQUEST_HEADER_BYTES);
    let Request {
        flags,
        handle,
        offset,
        length,
        ..
    } = request;
    transmission::encode_request(&mut again, flags, command, handle, offset, length);
    assert_eq!(again, header, "a request does not encode back");
    assert_eq!(transmission::parse_request(&again), Ok(Some(request)));
}

/// The wire number of a command (proto.md); `Other` must never hide a named one.
fn command_number(command: Command) -> u16 {
    match command {
        Command::Read => CMD_READ,
        Command::Write => CMD_WRITE,
        Command::Disconnect => CMD_DISC,
        Command::Flush => CMD_FLUSH,
        Command::Trim => CMD_TRIM,
        Command::WriteZeroes => CMD_WRITE_ZEROES,
        Command::Other(number) => {
            let named = [
                CMD_READ,
                CMD_WRITE,
                CMD_DISC,
                CMD_FLUSH,
                CMD_TRIM,
                CMD_WRITE_ZEROES,
            ];
            assert!(
                !named.contains(&number),
                "command {number} decoded as Other"
            );
            number
        }
    }
}

/// Reply headers back to back: how much read data follows one depends on the request it
/// answers, which only the client knows, so none is assumed.
fn server_simple_replies(data: &[u8]) -> usize {
    let mut rest = data;
    let mut messages = 0;
    loop {
        match transmission::parse_simple_reply(rest) {
            Ok(Some(reply)) => {
                let header = &rest[..SIMPLE_REPLY_BYTES];
                assert_eq!(u32_at(header, 0), SIMPLE_REPLY_MAGIC);
                assert_eq!(
                    (reply.error, reply.handle),
                    (u32_at(header, 4), u64_at(header, 8))
                );
                let mut again = Vec::with_capacity(SIMPLE_REPLY_BYTES);
                transmission::encode_simple_reply(&mut again, reply.error, reply.handle);
                assert_eq!(again, header, "a simple reply does not encode back");
                rest = &rest[SIMPLE_REPLY_BYTES..];
                messages += 1;
            }
            Ok(None) => {
                incomplete(rest.len() < SIMPLE_REPLY_BYTES);
                return messages;
            }
            Err(error) => {
                let found = u32_at(rest, 0);
                assert_ne!(found, SIMPLE_REPLY_MAGIC);
                let expected = NbdError::BadMagic {
                    expected: u64::from(SIMPLE_REPLY_MAGIC),
                    found: u64::from(found),
                };
                assert_eq!(error, expected);
                return messages;
            }
        }
    }
}

/// A parser's `Ok(None)` (wait for more bytes) is right only when `short` holds.
fn incomplete(short: bool) {
    assert!(
        short,
        "a parser waits for more bytes than the message needs"
    );
}

// Big-endian fields read here rather than through the crate's helpers, so a check does
// not lean on the code it checks.
fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(bytes)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(bytes)
}

//! The transmission phase: requests (a 28-byte header, then the data of a write) and
//! simple replies (a 16-byte header, then the data of a read).

use crate::{be_u16, be_u32, be_u64, NbdError, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};

pub const REQUEST_HEADER_BYTES: usize = 28;
pub const SIMPLE_REPLY_BYTES: usize = 16;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// WRITE_ZEROES: the range must stay allocated (no hole punched).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// WRITE_ZEROES: fail at once rather than zero slowly (only if the server offers it).
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Command numbers on the wire (what `Command::from_wire` decodes).
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
    Other(u16),
}

impl Command {
    fn from_wire(value: u16) -> Command {
        match value {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            other => Command::Other(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Bytes of data that follow the header (a write's payload).
    pub fn data_len(&self) -> usize {
        match self.command {
            Command::Write => self.length as usize,
            _ => 0,
        }
    }

    /// Bytes of data the request carries either way: a write's payload or a read's
    /// reply. A TRIM or WRITE_ZEROES of any length carries none.
    pub fn buffer_len(&self) -> usize {
        match self.command {
            Command::Read | Command::Write => self.length as usize,
            _ => 0,
        }
    }
}

/// The request header at the start of `buf`, if whole. The caller bounds `length` before
/// it waits for a write's data.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, NbdError> {
    if buf.len() < REQUEST_HEADER_BYTES {
        return Ok(None);
    }
    let magic = be_u32(buf, 0);
    if magic != REQUEST_MAGIC {
        return Err(NbdError::BadMagic {
            expected: u64::from(REQUEST_MAGIC),
            found: u64::from(magic),
        });
    }
    Ok(Some(Request {
        flags: be_u16(buf, 4),
        command: Command::from_wire(be_u16(buf, 6)),
        handle: be_u64(buf, 8),
        offset: be_u64(buf, 16),
        length: be_u32(buf, 24),
    }))
}

/// A simple reply header (a read's data follows it when `error == 0`).
pub fn encode_simple_reply(out: &mut Vec<u8>, error: u32, handle: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
}

/// The client's side: a request header (a write's data goes after it).
pub fn encode_request(
    out: &mut Vec<u8>,
    flags: u16,
    command: u16,
    handle: u64,
    offset: u64,
    length: u32,
) {
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// A simple reply's header, as the client reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub handle: u64,
}

/// The simple reply header at the start of `buf`, if whole.
pub fn parse_simple_reply(buf: &[u8]) -> Result<Option<SimpleReply>, NbdError> {
    if buf.len() < SIMPLE_REPLY_BYTES {
        return Ok(None);
    }
    let magic = be_u32(buf, 0);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(NbdError::BadMagic {
            expected: u64::from(SIMPLE_REPLY_MAGIC),
            found: u64::from(magic),
        });
    }
    Ok(Some(SimpleReply {
        error: be_u32(buf, 4),
        handle: be_u64(buf, 8),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(flags: u16, command: u16, handle: u64, offset: u64, length: u32) -> Vec<u8> {
        let mut out = REQUEST_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&command.to_be_bytes());
        out.extend_from_slice(&handle.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
        out
    }

    #[test]
    fn a_write_request_parses_and_names_its_data() {
        let bytes = request(CMD_FLAG_FUA, 1, 0xfeed, 8192, 4096);
        for cut in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..cut]), Ok(None));
        }
        let parsed = parse_request(&bytes).unwrap().unwrap();
        assert_eq!(
            parsed,
            Request {
                flags: CMD_FLAG_FUA,
                command: Command::Write,
                handle: 0xfeed,
                offset: 8192,
                length: 4096
            }
        );
        assert_eq!(parsed.data_len(), 4096);
        let read = parse_request(&request(0, 0, 1, 0, 4096)).unwrap().unwrap();
        assert_eq!((read.command, read.data_len()), (Command::Read, 0));
        let odd = parse_request(&request(0, 9, 1, 0, 0)).unwrap().unwrap();
        assert_eq!(odd.command, Command::Other(9));
    }

    #[test]
    fn a_request_with_bad_magic_is_an_error() {
        let mut bytes = request(0, 3, 1, 0, 0);
        bytes[3] ^= 0xff;
        assert!(matches!(
            parse_request(&bytes),
            Err(NbdError::BadMagic { .. })
        ));
    }

    #[test]
    fn simple_reply_layout() {
        let mut out = Vec::new();
        encode_simple_reply(&mut out, 22, 0x0102_0304_0506_0708);
        assert_eq!(
            out,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn the_client_half_reads_what_the_server_half_writes() {
        let mut out = Vec::new();
        encode_request(&mut out, CMD_FLAG_FUA, CMD_WRITE, 0xfeed, 8192, 4096);
        assert_eq!(out, request(CMD_FLAG_FUA, 1, 0xfeed, 8192, 4096));
        let parsed = parse_request(&out).unwrap().unwrap();
        assert_eq!((parsed.command, parsed.handle), (Command::Write, 0xfeed));
        for (number, command) in [
            (CMD_READ, Command::Read),
            (CMD_DISC, Command::Disconnect),
            (CMD_FLUSH, Command::Flush),
        ] {
            out.clear();
            encode_request(&mut out, 0, number, 1, 0, 0);
            assert_eq!(parse_request(&out).unwrap().unwrap().command, command);
        }
        out.clear();
        encode_simple_reply(&mut out, 5, 77);
        for cut in 0..out.len() {
            assert_eq!(parse_simple_reply(&out[..cut]), Ok(None));
        }
        assert_eq!(
            parse_simple_reply(&out),
            Ok(Some(SimpleReply {
                error: 5,
                handle: 77
            }))
        );
        out[0] ^= 1;
        assert!(matches!(
            parse_simple_reply(&out),
            Err(NbdError::BadMagic { .. })
        ));
    }
}

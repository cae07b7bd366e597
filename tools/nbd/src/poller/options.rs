//! The handshake without blocking: each step takes what the client sent so far and
//! writes the server's answers, as the fixed newstyle protocol has them (greeting, client
//! flags, options until one picks an export).

use super::types::ExportInfo;
use crate::handshake::{
    self, Request as OptionRequest, OPT_ABORT, OPT_GO, OPT_INFO, OPT_LIST, REP_ACK, REP_ERR_UNKNOWN,
};
use crate::{
    NbdError, TFLAG_CAN_MULTI_CONN, TFLAG_HAS_FLAGS, TFLAG_SEND_FLUSH, TFLAG_SEND_FUA,
    TFLAG_SEND_TRIM, TFLAG_SEND_WRITE_ZEROES,
};

const FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_CAN_MULTI_CONN;

/// The transmission flags of `export`: every export's, and TRIM and WRITE_ZEROES if it
/// takes them.
pub(crate) fn flags(export: &ExportInfo) -> u16 {
    match export.can_zero {
        true => FLAGS | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES,
        false => FLAGS,
    }
}

/// Where the handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// The greeting is sent; the client's flags are due.
    ClientFlags,
    /// Options, until one picks an export.
    Options { no_zeroes: bool },
}

/// What one step of the handshake came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// It took this many bytes; more may follow.
    Took(usize),
    /// Not enough bytes yet.
    NeedMore,
    /// The client chose export `index` (after this many bytes): transmission begins.
    Chosen { index: usize, took: usize },
    /// The client aborted, or named an export that does not exist with an option that has
    /// no error reply: the session ends once `out` is sent.
    End { took: usize },
}

/// One step: parses the next message of `input` and writes the answer to `out`.
pub(crate) fn step(
    state: &mut Handshake,
    input: &[u8],
    exports: &[ExportInfo],
    out: &mut Vec<u8>,
) -> Result<Step, NbdError> {
    match *state {
        Handshake::ClientFlags => Ok(match handshake::parse_client_flags(input)? {
            None => Step::NeedMore,
            Some((no_zeroes, took)) => {
                *state = Handshake::Options { no_zeroes };
                Step::Took(took)
            }
        }),
        Handshake::Options { no_zeroes } => {
            let Some((raw, took)) = handshake::parse_option(input)? else {
                return Ok(Step::NeedMore);
            };
            Ok(answer(&raw, took, exports, no_zeroes, out))
        }
    }
}

fn answer(
    raw: &handshake::RawOption<'_>,
    took: usize,
    exports: &[ExportInfo],
    no_zeroes: bool,
    out: &mut Vec<u8>,
) -> Step {
    let find = |name: &str| {
        exports
            .iter()
            .position(|e| e.name == name || (name.is_empty() && exports.len() == 1))
    };
    match handshake::decode_option(raw) {
        OptionRequest::ExportName(name) => {
            // No error reply exists for this option: an unknown name ends the session.
            let Some(index) = find(name) else {
                return Step::End { took };
            };
            let export = &exports[index];
            handshake::encode_export_name_reply(out, export.size_bytes, flags(export), no_zeroes);
            Step::Chosen { index, took }
        }
        OptionRequest::Abort => {
            handshake::encode_reply(out, OPT_ABORT, REP_ACK, &[]);
            Step::End { took }
        }
        OptionRequest::List => {
            exports
                .iter()
                .for_each(|e| handshake::encode_server(out, &e.name));
            handshake::encode_reply(out, OPT_LIST, REP_ACK, &[]);
            Step::Took(took)
        }
        OptionRequest::Info { go, name, .. } => {
            let option = if go { OPT_GO } else { OPT_INFO };
            let Some(index) = find(name) else {
                handshake::encode_reply(out, option, REP_ERR_UNKNOWN, b"no such export");
                return Step::Took(took);
            };
            let export = &exports[index];
            let sizes = handshake::BlockSizes {
                minimum: export.min_block_size,
                preferred: export.block_size,
                maximum: export.max_request_bytes,
            };
            handshake::encode_info(out, option, export.size_bytes, flags(export), sizes);
            match go {
                true => Step::Chosen { index, took },
                false => Step::Took(took),
            }
        }
        OptionRequest::Refuse { reply, why } => {
            handshake::encode_reply(out, raw.option, reply, why.as_bytes());
            Step::Took(took)
        }
    }
}

//! The control socket: a Unix socket each daemon listens on for `ordo status` and
//! `ordo verify`. One JSON request on one line in, one JSON reply on one line out, then
//! the connection closes; both are serde types, so `jq`, `socat` and scripts can speak it
//! too. Requests are bounded and time out, so a stuck or hostile client cannot hold a
//! daemon; a line that does not decode is answered with an error naming why.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::report::{Digest, Status};

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 4096;
/// Each read and write of a client; a digest's reply is written within this too.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are closed at once, so no client can pile up threads.
const MAX_CLIENTS: usize = 16;
/// Largest chunk a digest may use: bounds the read buffer.
pub const MAX_DIGEST_CHUNK_BYTES: u64 = 16 << 20;
/// Most chunks one digest may have: bounds the reply (about 11 bytes of JSON each).
pub const MAX_DIGEST_CHUNKS: u64 = 1 << 20;
/// A digest's chunks are whole sectors (and whole blocks of each volume, checked there).
const DIGEST_CHUNK_ALIGN_BYTES: u64 = 512;
/// Longest reply a client reads: the largest digest, with room for names and offsets.
const MAX_REPLY_BYTES: u64 = 32 << 20;
const _: () = assert!(11 * MAX_DIGEST_CHUNKS + (1 << 20) <= MAX_REPLY_BYTES);

/// A request: `{"request":"status"}`, or `{"request":"digest","chunk_bytes":65536}` with
/// an optional `"range":{"volume":"data","offset":0,"len":1048576}` (every volume whole
/// without it).
///
/// A digest's fields are checked strictly (a misspelt `range` must not digest every
/// volume); a status has none to misspell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Digest(DigestRequest),
    /// Secondary: let a held resync go on without a consistent image (for one that does
    /// not fit the journal window); the replica is inconsistent until its end point.
    AllowInconsistent,
    /// Secondary: let the next primary overwrite this replica whatever its history (DRBD's
    /// `--discard-my-data`); the replica is inconsistent until that resync's end point.
    DiscardMyData,
}

/// Per-chunk crc32c checksums of the volumes at the current data set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestRequest {
    pub chunk_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<DigestRange>,
}

/// One volume's bytes `offset..offset + len`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestRange {
    pub volume: String,
    pub offset: u64,
    pub len: u64,
}

/// A reply, tagged `"reply"`: a status or digest (their fields beside the tag, so
/// `.data_sets.applied` reads as it does in `ordo status --json`), or an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlReply {
    /// Boxed: a status is ten times the size of the other replies.
    Status(Box<Status>),
    Digest(Digest),
    /// An operator's command was taken; what it does, in words.
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

impl ControlReply {
    pub fn error(message: impl Into<String>) -> ControlReply {
        ControlReply::Error {
            message: message.into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ControlReply::Status(_) => "a status",
            ControlReply::Digest(_) => "a digest",
            ControlReply::Done { .. } => "a confirmation",
            ControlReply::Error { .. } => "an error",
        }
    }
}

/// Why a request line was not taken; the daemon replies with it.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("the request is longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    #[error("no request line within {CLIENT_TIMEOUT:?}")]
    TimedOut,
    #[error("reading the request: {0}")]
    Read(#[source] io::Error),
    #[error("the request is not UTF-8")]
    NotUtf8,
    #[error("the request is not JSON ({0}): send one object on one line, e.g. {{\"request\":\"status\"}}")]
    NotJson(#[source] serde_json::Error),
    #[error("not a control request ({0}): {{\"request\":\"status\"}}, or {{\"request\":\"digest\",\"chunk_bytes\":N}} with an optional \"range\":{{\"volume\":NAME,\"offset\":N,\"len\":N}}")]
    NotARequest(#[source] serde_json::Error),
    #[error("chunk_bytes {0} is over the {MAX_DIGEST_CHUNK_BYTES} a digest may use")]
    ChunkTooLarge(u64),
    #[error("chunk_bytes {0} is not a positive multiple of {DIGEST_CHUNK_ALIGN_BYTES}")]
    ChunkUnaligned(u64),
}

impl ControlRequest {
    /// Decodes one request line and checks its bounds.
    pub fn decode(line: &str) -> Result<ControlRequest, RequestError> {
        let request: ControlRequest = serde_json::from_str(line).map_err(|e| {
            if e.is_data() {
                RequestError::NotARequest(e)
            } else {
                RequestError::NotJson(e)
            }
        })?;
        if let ControlRequest::Digest(digest) = &request {
            digest.check()?;
        }
        Ok(request)
    }
}

impl DigestRequest {
    /// The bounds that need no volume to check; `shared::digest_plan` checks the rest.
    pub fn check(&self) -> Result<(), RequestError> {
        let chunk = self.chunk_bytes;
        if chunk > MAX_DIGEST_CHUNK_BYTES {
            return Err(RequestError::ChunkTooLarge(chunk));
        }
        if chunk == 0 || !chunk.is_multiple_of(DIGEST_CHUNK_ALIGN_BYTES) {
            return Err(RequestError::ChunkUnaligned(chunk));
        }
        Ok(())
    }
}

/// Answers one decoded request.
pub type Handler = dyn Fn(ControlRequest) -> ControlReply + Send + Sync;

/// Binds `path` (replacing a stale socket file, refusing one a live daemon listens on)
/// and answers requests on a thread of its own, each connection on its own thread.
pub fn serve(path: &Path, handler: Arc<Handler>) -> Result<PathBuf> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another daemon is listening on control socket {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let clients = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // Relaxed: a counter that orders no other memory.
                if clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!("control: {MAX_CLIENTS} clients already connected; closed one");
                    continue;
                }
                let (handler, count) = (Arc::clone(&handler), Arc::clone(&clients));
                let spawned = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || {
                        answer(stream, &*handler);
                        count.fetch_sub(1, Ordering::Relaxed);
                    });
                if let Err(e) = spawned {
                    clients.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!("control: cannot start a thread: {e}");
                }
            }
        })
        .context("starting the control thread")?;
    Ok(path.to_path_buf())
}

fn answer(stream: UnixStream, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut reader = BufReader::new((&stream).take(MAX_REQUEST_BYTES));
    let reply = respond(&mut reader, handler);
    let line = serde_json::to_vec(&reply).unwrap_or_else(|e| {
        tracing::error!("control: a {} reply does not serialise: {e}", reply.kind());
        let error = ControlReply::error("the reply does not serialise (a bug)");
        serde_json::to_vec(&error).expect("an error reply serialises")
    });
    let mut stream = &stream;
    let _ = stream.write_all(&line);
    let _ = stream.write_all(b"\n");
}

/// The reply to the request line `reader` holds (at most MAX_REQUEST_BYTES of it).
fn respond(reader: &mut impl BufRead, handler: &Handler) -> ControlReply {
    match read_request(reader) {
        Ok(request) => handler(request),
        Err(why) => ControlReply::error(why.to_string()),
    }
}

fn read_request(reader: &mut impl BufRead) -> Result<ControlRequest, RequestError> {
    let mut line = Vec::new();
    match reader.read_until(b'\n', &mut line) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(RequestError::TimedOut)
        }
        Err(e) => return Err(RequestError::Read(e)),
    }
    if line.last() != Some(&b'\n') && line.len() as u64 >= MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong);
    }
    let line = std::str::from_utf8(&line).map_err(|_| RequestError::NotUtf8)?;
    ControlRequest::decode(line)
}

/// Why a client got no answer it can use.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connecting to control socket {} (is the daemon running?)", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to the daemon at {}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon at {} closed without replying", path.display())]
    NoReply { path: PathBuf },
    #[error("the daemon at {} replied more than {MAX_REPLY_BYTES} bytes", path.display())]
    TooLong { path: PathBuf },
    #[error("the daemon at {} replied {start:?}..., not a control reply", path.display())]
    NotAReply {
        path: PathBuf,
        /// The reply's first bytes.
        start: String,
        source: serde_json::Error,
    },
    #[error("the daemon at {}: {message}", path.display())]
    Refused { path: PathBuf, message: String },
    #[error("the daemon at {} answered with {got}, not {wanted}", path.display())]
    Unexpected {
        path: PathBuf,
        wanted: &'static str,
        got: &'static str,
    },
}

/// Sends `request` to the daemon at `path` and returns its reply. `timeout` bounds the
/// wait (a digest of large volumes takes a while).
pub fn request(
    path: &Path,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlReply, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("a request serialises");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = Vec::new();
    (&mut stream)
        .take(MAX_REPLY_BYTES + 1)
        .read_to_end(&mut reply)
        .map_err(io)?;
    let path = path.to_path_buf();
    if reply.is_empty() {
        return Err(ClientError::NoReply { path });
    }
    if reply.len() as u64 > MAX_REPLY_BYTES {
        return Err(ClientError::TooLong { path });
    }
    serde_json::from_slice(&reply).map_err(|source| ClientError::NotAReply {
        start: String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned(),
        path,
        source,
    })
}

/// The status of the daemon at `path`.
pub fn status(path: &Path, timeout: Duration) -> Result<Status, ClientError> {
    match request(path, &ControlRequest::Status, timeout)? {
        ControlReply::Status(status) => Ok(*status),
        other => Err(unexpected(path, "a status", other)),
    }
}

/// A digest of the volumes of the daemon at `path`.
pub fn digest(
    path: &Path,
    request: DigestRequest,
    timeout: Duration,
) -> Result<Digest, ClientError> {
    match self::request(path, &ControlRequest::Digest(request), timeout)? {
        ControlReply::Digest(digest) => Ok(digest),
        other => Err(unexpected(path, "a digest", other)),
    }
}

fn unexpected(path: &Path, wanted: &'static str, reply: ControlReply) -> ClientError {
    let path = path.to_path_buf();
    match reply {
        ControlReply::Error { message } => ClientError::Refused { path, message },
        other => ClientError::Unexpected {
            path,
            wanted,
            got: other.kind(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{primary_status, secondary_status};
    use crate::report::VolumeDigest;
    use serde_json::Value;

    fn digest_request() -> ControlRequest {
        ControlRequest::Digest(DigestRequest {
            chunk_bytes: 65536,
            range: Some(DigestRange {
                volume: "data".into(),
                offset: 0,
                len: 1 << 20,
            }),
        })
    }

    /// The reply the server sends to `bytes`, through a handler that must not be reached.
    fn reply_to_bad(bytes: &[u8]) -> String {
        let handler = |request: ControlRequest| -> ControlReply {
            panic!("bad input reached the handler as {request:?}")
        };
        let mut reader = BufReader::new(bytes.take(MAX_REQUEST_BYTES));
        match respond(&mut reader, &handler) {
            ControlReply::Error { message } => message,
            other => panic!("{bytes:?} was answered with {other:?}"),
        }
    }

    #[test]
    fn requests_round_trip_and_read_as_documented() {
        for request in [
            ControlRequest::Status,
            digest_request(),
            ControlRequest::Digest(DigestRequest {
                chunk_bytes: 512,
                range: None,
            }),
        ] {
            let line = serde_json::to_string(&request).unwrap();
            assert_eq!(ControlRequest::decode(&line).unwrap(), request, "{line}");
        }
        assert_eq!(
            ControlRequest::decode(r#"{"request":"status"}"#).unwrap(),
            ControlRequest::Status
        );
        let line = r#"{"request":"digest","chunk_bytes":65536,"range":{"volume":"data","offset":0,"len":1048576}}"#;
        assert_eq!(ControlRequest::decode(line).unwrap(), digest_request());
        assert_eq!(serde_json::to_string(&digest_request()).unwrap(), line);
    }

    #[test]
    fn replies_round_trip_tagged_with_their_fields_beside_the_tag() {
        let digest = Digest {
            data_set: 9,
            chunk_bytes: 4096,
            volumes: vec![VolumeDigest {
                name: "data".into(),
                offset: 8192,
                crc32c: vec![1, 2, u32::MAX],
            }],
        };
        let replies = [
            ControlReply::Status(Box::new(primary_status())),
            ControlReply::Status(Box::new(secondary_status())),
            ControlReply::Digest(digest),
            ControlReply::error("no volume \"x\""),
        ];
        for reply in &replies {
            let line = serde_json::to_string(reply).unwrap();
            let back: ControlReply = serde_json::from_str(&line).unwrap();
            assert_eq!(&back, reply);
        }
        let json = |reply: &ControlReply| serde_json::to_value(reply).unwrap();
        let primary = json(&replies[0]);
        assert_eq!(primary["reply"], "status");
        assert_eq!(primary["role"], "primary");
        assert_eq!(primary["data_sets"]["last_closed"], 12);
        assert_eq!(primary["writes"]["waiting_now"], true);
        let secondary = json(&replies[1]);
        assert_eq!(secondary["role"], "secondary");
        assert_eq!(secondary["counters"]["records_staged"], 110);
        let digest = json(&replies[2]);
        assert_eq!(digest["reply"], "digest");
        assert_eq!(digest["data_set"], 9);
        assert_eq!(digest["volumes"][0]["crc32c"][2], u32::MAX);
        let error = json(&replies[3]);
        assert_eq!(error["reply"], "error");
        assert_eq!(error["message"], "no volume \"x\"");
    }

    #[test]
    fn a_line_that_does_not_decode_is_answered_with_an_error_naming_why() {
        let cases: [(&[u8], &[&str]); 12] = [
            (b"status\n", &["not JSON"]),
            (b"{\"request\":\"status\"\n", &["not JSON"]),
            (b"", &["not JSON"]),
            (
                b"{\"request\":\"frobnicate\"}\n",
                &["not a control request", "unknown variant `frobnicate`"],
            ),
            (b"{\"chunk_bytes\":512}\n", &["missing field `request`"]),
            (
                b"{\"request\":\"digest\"}\n",
                &["missing field `chunk_bytes`"],
            ),
            (
                b"{\"request\":\"digest\",\"chunk_bytes\":512,\"chunk\":1}\n",
                &["unknown field `chunk`"],
            ),
            (
                b"{\"request\":\"digest\",\"chunk_bytes\":-512}\n",
                &["not a control request", "-512"],
            ),
            (
                b"{\"request\":\"digest\",\"chunk_bytes\":33554432}\n",
                &["chunk_bytes 33554432 is over the 16777216"],
            ),
            (
                b"{\"request\":\"digest\",\"chunk_bytes\":1000}\n",
                &["chunk_bytes 1000 is not a positive multiple of 512"],
            ),
            (
                b"{\"request\":\"digest\",\"chunk_bytes\":0}\n",
                &["chunk_bytes 0 is not a positive multiple of 512"],
            ),
            (b"{\"request\":\"st\xffatus\"}\n", &["not UTF-8"]),
        ];
        for (line, reasons) in cases {
            let message = reply_to_bad(line);
            for reason in reasons {
                assert!(message.contains(reason), "{line:?}: {message}");
            }
        }
        let mut long = br#"{"request":"status","pad":""#.to_vec();
        long.resize(2 * MAX_REQUEST_BYTES as usize, b' ');
        let message = reply_to_bad(&long);
        assert!(message.contains("longer than 4096 bytes"), "{message}");
    }

    #[test]
    fn the_socket_speaks_one_json_line_each_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let handler = |request: ControlRequest| match request {
            ControlRequest::Status => ControlReply::Status(Box::new(secondary_status())),
            ControlRequest::Digest(d) => ControlReply::error(format!("no {}", d.chunk_bytes)),
            ControlRequest::AllowInconsistent | ControlRequest::DiscardMyData => {
                ControlReply::Done {
                    message: "taken".into(),
                }
            }
        };
        serve(&path, Arc::new(handler)).unwrap();
        let timeout = Duration::from_secs(10);

        assert_eq!(status(&path, timeout).unwrap(), secondary_status());
        let request = DigestRequest {
            chunk_bytes: 4096,
            range: None,
        };
        match digest(&path, request, timeout).unwrap_err() {
            ClientError::Refused { message, .. } => assert_eq!(message, "no 4096"),
            other => panic!("{other}"),
        }
        // What a script sees: one line, tagged, the status's fields beside the tag.
        let mut stream = UnixStream::connect(&path).unwrap();
        stream.write_all(b"{\"request\":\"status\"}\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(
            reply.ends_with('\n') && reply.lines().count() == 1,
            "{reply}"
        );
        let json: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(json["reply"], "status");
        assert_eq!(json["data_sets"]["staged"], 12);
        // The old free-text request is told what to send instead.
        let mut stream = UnixStream::connect(&path).unwrap();
        stream.write_all(b"status\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let json: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(json["reply"], "error");
        let message = json["message"].as_str().unwrap();
        assert!(message.contains(r#"{"request":"status"}"#), "{message}");
        // A second daemon on the same socket is refused.
        let error = serve(&path, Arc::new(handler)).unwrap_err();
        assert!(error.to_string().contains("another daemon"), "{error}");
    }
}

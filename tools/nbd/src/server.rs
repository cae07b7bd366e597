//! An NBD server connection: the fixed newstyle handshake, then requests (several in flight,
//! see `pipeline`) until the client disconnects, against an `Export` (ordo's primary plugs
//! a replicated volume in). Each client connection gets its own thread; the caller sets
//! the socket options it wants (keepalive, say) before `serve`.

use std::io::{Read, Write};
use std::net::TcpStream;

pub use crate::export::{Export, ServeError};
use crate::handshake::{
    self, Request as OptionRequest, OPT_ABORT, OPT_GO, OPT_INFO, OPT_LIST, REP_ACK, REP_ERR_UNKNOWN,
};
use crate::IHAVEOPT;
use crate::{
    NbdError, MAX_OPTION_BYTES, TFLAG_CAN_MULTI_CONN, TFLAG_HAS_FLAGS, TFLAG_SEND_FLUSH,
    TFLAG_SEND_FUA, TFLAG_SEND_TRIM, TFLAG_SEND_WRITE_ZEROES,
};

/// How long the handshake may take.
const NEGOTIATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

const FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_CAN_MULTI_CONN;

/// The transmission flags of `export`: every export's, and TRIM and WRITE_ZEROES if it
/// takes them.
fn flags(export: &dyn Export) -> u16 {
    match export.can_zero() {
        true => FLAGS | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES,
        false => FLAGS,
    }
}

/// Serves one client until it disconnects (`Ok`) or breaks the protocol (`Err`).
pub fn serve(mut stream: TcpStream, exports: &[&dyn Export]) -> Result<(), ServeError> {
    stream.set_nodelay(true)?;
    // A client that connects and never negotiates must not hold a connection slot.
    stream.set_read_timeout(Some(NEGOTIATION_TIMEOUT))?;
    let mut out = Vec::with_capacity(256);
    handshake::encode_greeting(&mut out);
    stream.write_all(&out)?;
    let mut flags = [0u8; 4];
    stream.read_exact(&mut flags)?;
    let (no_zeroes, _) = handshake::parse_client_flags(&flags)?.expect("four bytes were read");
    let Some(export) = negotiate(&mut stream, exports, no_zeroes)? else {
        return Ok(());
    };
    // In transmission a client may rightly stay idle for as long as it likes.
    stream.set_read_timeout(None)?;
    crate::pipeline::transmit(&mut stream, export)
}

/// Option haggling; the chosen export, or `None` if the client aborted.
fn negotiate<'a>(
    stream: &mut TcpStream,
    exports: &[&'a dyn Export],
    no_zeroes: bool,
) -> Result<Option<&'a dyn Export>, ServeError> {
    let mut buf = Vec::with_capacity(16 + MAX_OPTION_BYTES as usize);
    let mut out = Vec::with_capacity(512);
    loop {
        buf.resize(16, 0);
        stream.read_exact(&mut buf)?;
        let magic = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
        if magic != IHAVEOPT {
            return Err(NbdError::BadMagic {
                expected: IHAVEOPT,
                found: magic,
            }
            .into());
        }
        let len = u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes"));
        if len > MAX_OPTION_BYTES {
            return Err(NbdError::OptionTooLong(len).into());
        }
        buf.resize(16 + len as usize, 0);
        stream.read_exact(&mut buf[16..])?;
        let (raw, _) = handshake::parse_option(&buf)?.expect("the whole option was read");
        out.clear();
        let find = |name: &str| {
            exports
                .iter()
                .copied()
                .find(|e| e.name() == name || (name.is_empty() && exports.len() == 1))
        };
        match handshake::decode_option(&raw) {
            OptionRequest::ExportName(name) => {
                // No error reply exists for this option: an unknown name ends the session.
                let Some(export) = find(name) else {
                    return Ok(None);
                };
                handshake::encode_export_name_reply(
                    &mut out,
                    export.size_bytes(),
                    flags(export),
                    no_zeroes,
                );
                stream.write_all(&out)?;
                return Ok(Some(export));
            }
            OptionRequest::Abort => {
                handshake::encode_reply(&mut out, OPT_ABORT, REP_ACK, &[]);
                stream.write_all(&out)?;
                return Ok(None);
            }
            OptionRequest::List => {
                exports
                    .iter()
                    .for_each(|e| handshake::encode_server(&mut out, e.name()));
                handshake::encode_reply(&mut out, OPT_LIST, REP_ACK, &[]);
            }
            OptionRequest::Info { go, name, .. } => {
                let option = if go { OPT_GO } else { OPT_INFO };
                match find(name) {
                    Some(export) => {
                        let sizes = handshake::BlockSizes {
                            minimum: export.min_block_size(),
                            preferred: export.block_size(),
                            maximum: export.max_request_bytes(),
                        };
                        let size = export.size_bytes();
                        handshake::encode_info(&mut out, option, size, flags(export), sizes);
                        if go {
                            stream.write_all(&out)?;
                            return Ok(Some(export));
                        }
                    }
                    None => handshake::encode_reply(
                        &mut out,
                        option,
                        REP_ERR_UNKNOWN,
                        b"no such export",
                    ),
                }
            }
            OptionRequest::Refuse { reply, why } => {
                handshake::encode_reply(&mut out, raw.option, reply, why.as_bytes())
            }
        }
        stream.write_all(&out)?;
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::process::Command as Process;

    use super::*;
    use crate::test_export::MemExport;

    /// Serves `export` to one client on a loopback port; returns the port and the thread.
    fn serve_once(
        export: &'static MemExport,
    ) -> (u16, std::thread::JoinHandle<Result<(), String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
            serve(stream, &[export]).map_err(|e| e.to_string())
        });
        (port, thread)
    }

    fn export() -> &'static MemExport {
        MemExport::leaked("vol", 4 << 20, 4096, 1 << 20)
    }

    /// qemu-io (qemu-utils, installed by CI) writes, reads back, flushes, and reads an
    /// unaligned range through qemu's own read-modify-write, over NBD_OPT_GO.
    #[test]
    fn qemu_io_writes_reads_and_flushes() {
        let export = export();
        let (port, server) = serve_once(export);
        let output = Process::new("qemu-io")
            .args(["-f", "raw", &format!("nbd://127.0.0.1:{port}/vol")])
            .args([
                "-c",
                "write -P 0xab 65536 131072",
                "-c",
                "flush",
                "-c",
                "read -P 0xab 65536 131072",
            ])
            .args([
                "-c",
                "write -P 0xcd 1000 100",
                "-c",
                "read -P 0xcd 1000 100",
            ])
            .output()
            .expect("qemu-io runs (apt-get install qemu-utils)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "qemu-io failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!stdout.contains("Pattern verification failed"), "{stdout}");
        server.join().unwrap().expect("the session ends cleanly");
        let data = export.data.lock().unwrap();
        assert!(data[65536..65536 + 131072].iter().all(|&b| b == 0xab));
        assert!(data[1000..1100].iter().all(|&b| b == 0xcd));
        assert_eq!(data[999], 0, "read-modify-write kept the rest of the block");
        assert!(*export.flushes.lock().unwrap() >= 1);
    }

    #[test]
    fn garbage_instead_of_options_ends_the_session_with_an_error() {
        let export = export();
        let (port, server) = serve_once(export);
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut greeting = [0u8; 18];
        client.read_exact(&mut greeting).unwrap();
        client.write_all(&[0, 0, 0, 1]).unwrap();
        client.write_all(&[0x55; 16]).unwrap();
        let error = server.join().unwrap().unwrap_err();
        assert!(error.contains("bad magic"), "{error}");
        assert!(export.data.lock().unwrap().iter().all(|&b| b == 0));
    }
}

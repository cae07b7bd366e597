//! Serving synchronous exports: `Inline` is a poller backend over `Export`s that do
//! their I/O when called (an in-memory disk, a test double), and `serve` runs one client
//! connection on the calling thread with it until the client disconnects. The daemon
//! serves its volumes with `poller::Server` and a backend of its own instead.

use std::net::TcpStream;
use std::time::{Duration, Instant};

pub use crate::export::{Export, ServeError};
use crate::poller::{Backend, ExportInfo, Io, Limits, Server, Tag};

/// How long an idle `serve` waits for the socket before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// A backend that runs each request on its export at once and keeps the outcome until
/// the server takes it (`drain`).
pub struct Inline<'a> {
    exports: &'a [&'a dyn Export],
    done: Vec<(Tag, Result<(), u32>, Vec<u8>)>,
}

impl<'a> Inline<'a> {
    pub fn new(exports: &'a [&'a dyn Export]) -> Inline<'a> {
        Inline {
            exports,
            done: Vec::new(),
        }
    }

    /// Hands every finished request to `server`; true if there was any.
    pub fn drain(&mut self, server: &mut Server) -> bool {
        let any = !self.done.is_empty();
        for (tag, result, buf) in self.done.drain(..) {
            server.complete(tag, result, buf);
        }
        any
    }
}

impl std::fmt::Debug for Inline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inline")
            .field("exports", &self.exports.len())
            .field("done", &self.done.len())
            .finish()
    }
}

impl Backend for Inline<'_> {
    fn start(&mut self, tag: Tag, export: usize, io: Io, mut buf: Vec<u8>) -> Result<(), Vec<u8>> {
        let export = self.exports[export];
        let result = match io {
            Io::Read { offset } => export.read(offset, &mut buf),
            Io::Write { offset, fua } => export.write(offset, &mut buf, fua),
            Io::Flush => export.flush(),
            Io::WriteZeroes {
                offset,
                len,
                may_unmap,
                fua,
            } => export.write_zeroes(offset, len, may_unmap, fua),
            Io::Trim { offset, len } => export.trim(offset, len),
        };
        self.done.push((tag, result, buf));
        Ok(())
    }
}

/// Serves one client until it disconnects (`Ok`) or breaks the protocol (`Err`).
pub fn serve(stream: TcpStream, exports: &[&dyn Export]) -> Result<(), ServeError> {
    let infos = exports.iter().map(|e| ExportInfo::of(*e)).collect();
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let mut server = Server::new(None, infos, limits)?;
    server.adopt(stream)?;
    let mut backend = Inline::new(exports);
    loop {
        let mut work = server.poll(Instant::now(), &mut backend);
        work |= backend.drain(&mut server);
        if let Some(ended) = server.take_ended() {
            return ended.result;
        }
        if !work {
            server.wait(IDLE_WAIT)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
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

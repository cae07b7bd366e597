//! The control socket: a Unix socket each daemon listens on for `ordo status` and
//! `ordo verify`. One request line in, one JSON line out, then the connection closes.
//! Requests are bounded and time out, so a stuck or hostile client cannot hold a daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 4096;
/// Each read and write of a client; a digest's reply is written within this too.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are closed at once, so no client can pile up threads.
const MAX_CLIENTS: usize = 16;

/// Answers one request line with one JSON line.
pub type Handler = dyn Fn(&str) -> String + Send + Sync;

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
    let mut line = String::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_BYTES));
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = handler(line.trim());
    let mut stream = reader.into_inner().into_inner();
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.write_all(b"\n");
}

/// Sends one request to the daemon at `path` and returns its reply. `timeout` bounds the
/// wait (a digest of large volumes takes a while).
pub fn request(path: &Path, line: &str, timeout: Duration) -> Result<String> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to control socket {} (is the daemon running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(line.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .with_context(|| format!("reading the reply from {}", path.display()))?;
    if reply.is_empty() {
        bail!("the daemon at {} closed without replying", path.display());
    }
    Ok(reply)
}

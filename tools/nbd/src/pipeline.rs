//! The transmission phase with requests in flight, as NBD clients expect (QEMU, fio and
//! nbdcopy keep many requests outstanding on one connection). A reader thread parses
//! requests and hands them to `DEPTH` workers, which call the export (each waits for its
//! own request) and pass the outcome to a writer thread that sends the replies, in
//! whatever order they finish: NBD matches them by handle. Buffers come from a pool of
//! `DEPTH`, so at most `DEPTH` requests are in flight and nothing is allocated per
//! request once the pool is warm.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use crossbeam_channel::{Receiver, Sender};

use crate::export::{Export, ServeError};
use crate::transmission::{
    self, Command, Request, CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE,
    REQUEST_HEADER_BYTES,
};
use crate::{EINVAL, ENOTSUP, EOVERFLOW};

/// Requests in flight per connection.
pub const DEPTH: usize = 8;

/// A request on its way to a worker, with its buffer (a write's data, a read's room).
struct Work {
    request: Request,
    buf: Vec<u8>,
}

/// A finished request on its way to the writer.
struct Done {
    handle: u64,
    error: u32,
    /// A successful read's data is sent after the reply header.
    send_data: bool,
    buf: Vec<u8>,
}

/// Serves requests until the client disconnects (`Ok`) or breaks the protocol (`Err`);
/// every request taken is answered before it returns.
pub fn transmit(stream: &mut TcpStream, export: &dyn Export) -> Result<(), ServeError> {
    let replies = stream.try_clone()?;
    let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(DEPTH);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Done>(DEPTH);
    let (pool_tx, pool_rx) = crossbeam_channel::bounded::<Vec<u8>>(DEPTH);
    for _ in 0..DEPTH {
        pool_tx.send(Vec::new()).expect("room for DEPTH buffers");
    }
    std::thread::scope(|scope| {
        for _ in 0..DEPTH {
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            scope.spawn(move || work(export, &work_rx, &done_tx));
        }
        drop(work_rx);
        let writer = scope.spawn(move || write_replies(replies, &done_rx, &pool_tx));
        let read = read_requests(stream, export, &work_tx, &done_tx, &pool_rx);
        // The workers end once the queue is empty, then the writer once they are gone.
        drop((work_tx, done_tx));
        let written = writer.join().expect("the reply writer does not panic");
        read.and(written.map_err(ServeError::from))
    })
}

fn read_requests(
    stream: &mut TcpStream,
    export: &dyn Export,
    work: &Sender<Work>,
    done: &Sender<Done>,
    pool: &Receiver<Vec<u8>>,
) -> Result<(), ServeError> {
    let max = export.max_request_bytes();
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    loop {
        stream.read_exact(&mut header)?;
        let request = transmission::parse_request(&header)?.expect("a whole header was read");
        // A TRIM or WRITE_ZEROES carries no data, so any length keeps the stream whole.
        if request.length > max && request.buffer_len() > 0 {
            return Err(ServeError::RequestTooLarge(request.length));
        }
        if request.command == Command::Disconnect {
            return Ok(());
        }
        // Waits while DEPTH requests are in flight: backpressure on the client.
        let mut buf = pool.recv().expect("the writer returns every buffer");
        // Grows only until the pool is warm, then reuses the capacity.
        buf.resize(request.buffer_len(), 0);
        stream.read_exact(&mut buf[..request.data_len()])?;
        let error = match request.command {
            Command::Read | Command::Write => in_range(export, &request).err(),
            Command::Flush => None,
            Command::Trim | Command::WriteZeroes if !export.can_zero() => Some(ENOTSUP),
            // Not offered (no NBD_FLAG_SEND_FAST_ZERO), so not to be asked for.
            Command::WriteZeroes if request.flags & CMD_FLAG_FAST_ZERO != 0 => Some(EINVAL),
            Command::Trim | Command::WriteZeroes => in_range(export, &request).err(),
            _ => Some(ENOTSUP),
        };
        let handle = request.handle;
        let sent = match error {
            None => work.send(Work { request, buf }).is_ok(),
            Some(error) => {
                let send_data = false;
                done.send(Done {
                    handle,
                    error,
                    send_data,
                    buf,
                })
                .is_ok()
            }
        };
        if !sent {
            return Err(
                io::Error::new(io::ErrorKind::BrokenPipe, "the reply writer stopped").into(),
            );
        }
    }
}

fn in_range(export: &dyn Export, r: &Request) -> Result<(), u32> {
    let block = u64::from(export.min_block_size());
    let end = r.offset.checked_add(u64::from(r.length));
    if end.is_none_or(|end| end > export.size_bytes()) {
        return Err(EOVERFLOW);
    }
    if !r.offset.is_multiple_of(block) || !u64::from(r.length).is_multiple_of(block) {
        return Err(EINVAL);
    }
    Ok(())
}

fn work(export: &dyn Export, queue: &Receiver<Work>, done: &Sender<Done>) {
    for Work { request, mut buf } in queue {
        let result = match request.command {
            Command::Read => export.read(request.offset, &mut buf),
            Command::Write => {
                export.write(request.offset, &mut buf, request.flags & CMD_FLAG_FUA != 0)
            }
            Command::Flush => export.flush(),
            Command::WriteZeroes => export.write_zeroes(
                request.offset,
                request.length,
                request.flags & CMD_FLAG_NO_HOLE == 0,
                request.flags & CMD_FLAG_FUA != 0,
            ),
            Command::Trim => export.trim(request.offset, request.length),
            _ => unreachable!("the reader answers other commands itself"),
        };
        debug_assert!(result.is_err() || buf.len() == request.buffer_len());
        let reply = Done {
            handle: request.handle,
            error: result.err().unwrap_or(0),
            send_data: request.command == Command::Read && result.is_ok(),
            buf,
        };
        if done.send(reply).is_err() {
            return;
        }
    }
}

/// Sends replies as they come; after a socket error it keeps taking them (so workers
/// never block) but sends nothing, and reports the error at the end.
fn write_replies(
    mut stream: TcpStream,
    done: &Receiver<Done>,
    pool: &Sender<Vec<u8>>,
) -> io::Result<()> {
    let mut header = Vec::with_capacity(16);
    let mut failed = None;
    for reply in done {
        if failed.is_none() {
            header.clear();
            transmission::encode_simple_reply(&mut header, reply.error, reply.handle);
            let sent = stream.write_all(&header).and_then(|()| {
                if reply.send_data {
                    stream.write_all(&reply.buf)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = sent {
                // Unblock the reader, which may be waiting on the client.
                let _ = stream.shutdown(std::net::Shutdown::Both);
                failed = Some(e);
            }
        }
        // The pool has room: it holds at most DEPTH buffers and this one came from it.
        let _ = pool.try_send(reply.buf);
    }
    failed.map_or(Ok(()), Err)
}

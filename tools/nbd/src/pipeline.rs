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

use crate::server::{Export, ServeError};
use crate::transmission::{self, Command, Request, CMD_FLAG_FUA, REQUEST_HEADER_BYTES};
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
        if request.length > max {
            return Err(ServeError::RequestTooLarge(request.length));
        }
        if request.command == Command::Disconnect {
            return Ok(());
        }
        // Waits while DEPTH requests are in flight: backpressure on the client.
        let mut buf = pool.recv().expect("the writer returns every buffer");
        // Grows only until the pool is warm, then reuses the capacity.
        buf.resize(request.length as usize, 0);
        stream.read_exact(&mut buf[..request.data_len()])?;
        let error = match request.command {
            Command::Read | Command::Write => in_range(export, &request).err(),
            Command::Flush => None,
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
    let block = u64::from(export.block_size());
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
            _ => unreachable!("the reader answers other commands itself"),
        };
        debug_assert!(result.is_err() || buf.len() == request.length as usize);
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

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::server::serve;
    use crate::{IHAVEOPT, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};

    /// An export whose writes each wait (up to a few seconds) until `want` of them are
    /// in progress at once, and remember the most that ever were.
    struct Gate {
        inside: Mutex<(usize, usize)>,
        moved: Condvar,
        want: usize,
    }

    impl Export for Gate {
        fn name(&self) -> &str {
            "gate"
        }
        fn size_bytes(&self) -> u64 {
            1 << 20
        }
        fn block_size(&self) -> u32 {
            4096
        }
        fn max_request_bytes(&self) -> u32 {
            1 << 16
        }
        fn read(&self, _: u64, _: &mut Vec<u8>) -> Result<(), u32> {
            Ok(())
        }
        fn write(&self, _: u64, _: &mut Vec<u8>, _: bool) -> Result<(), u32> {
            let mut guard = self.inside.lock().unwrap();
            guard.0 += 1;
            guard.1 = guard.1.max(guard.0);
            self.moved.notify_all();
            let (mut guard, _) = self
                .moved
                .wait_timeout_while(guard, Duration::from_secs(5), |g| g.1 < self.want)
                .unwrap();
            guard.0 -= 1;
            Ok(())
        }
        fn flush(&self) -> Result<(), u32> {
            Ok(())
        }
    }

    fn request(command: u16, handle: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&command.to_be_bytes());
        out.extend_from_slice(&handle.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// Four writes sent before any reply is read are all inside the export at once, and
    /// each gets its reply, matched by handle.
    #[test]
    fn requests_on_one_connection_are_served_concurrently() {
        let gate: &'static Gate = Box::leak(Box::new(Gate {
            inside: Mutex::new((0, 0)),
            moved: Condvar::new(),
            want: 4,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream, &[gate]).map_err(|e| e.to_string())
        });
        let mut client = TcpStream::connect(addr).unwrap();
        client.read_exact(&mut [0u8; 18]).unwrap();
        client.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        let mut option = IHAVEOPT.to_be_bytes().to_vec();
        option.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        option.extend_from_slice(&4u32.to_be_bytes());
        option.extend_from_slice(b"gate");
        client.write_all(&option).unwrap();
        client.read_exact(&mut [0u8; 10]).unwrap();
        for handle in 1..=4u64 {
            let write = request(1, handle, handle * 4096, &[handle as u8; 4096]);
            client.write_all(&write).unwrap();
        }
        let mut handles = Vec::new();
        for _ in 0..4 {
            let mut reply = [0u8; 16];
            client.read_exact(&mut reply).unwrap();
            assert_eq!(reply[..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
            assert_eq!(reply[4..8], [0; 4], "no error");
            handles.push(u64::from_be_bytes(reply[8..].try_into().unwrap()));
        }
        handles.sort_unstable();
        assert_eq!(handles, [1, 2, 3, 4]);
        assert_eq!(
            gate.inside.lock().unwrap().1,
            4,
            "the writes were served one by one"
        );
        client.write_all(&request(2, 9, 0, &[])).unwrap(); // NBD_CMD_DISC
        server.join().unwrap().unwrap();
    }
}

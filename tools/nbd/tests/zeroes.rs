//! TRIM and WRITE_ZEROES on the wire: offered only by an export that takes them, their
//! flags (NO_HOLE, FUA, FAST_ZERO) reaching the export as its arguments, and a length
//! past the largest request accepted (no data follows, so nothing is allocated for it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;

use ordo_nbd::server::{serve, Export};
use ordo_nbd::transmission::{
    CMD_FLAG_FAST_ZERO, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_TRIM, CMD_WRITE_ZEROES,
};
use ordo_nbd::{
    EINVAL, ENOTSUP, EOVERFLOW, IHAVEOPT, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, TFLAG_SEND_TRIM,
    TFLAG_SEND_WRITE_ZEROES,
};

const SIZE: u64 = 8 << 30;

#[derive(Debug, PartialEq, Eq)]
enum Call {
    Zero {
        offset: u64,
        len: u32,
        may_unmap: bool,
        fua: bool,
    },
    Trim {
        offset: u64,
        len: u32,
    },
}

struct Recorder {
    zero: bool,
    calls: Mutex<Vec<Call>>,
}

impl Export for Recorder {
    fn name(&self) -> &str {
        "z"
    }
    fn size_bytes(&self) -> u64 {
        SIZE
    }
    fn block_size(&self) -> u32 {
        4096
    }
    fn min_block_size(&self) -> u32 {
        1
    }
    fn max_request_bytes(&self) -> u32 {
        1 << 20
    }
    fn read(&self, _: u64, _: &mut Vec<u8>) -> Result<(), u32> {
        Ok(())
    }
    fn write(&self, _: u64, _: &mut Vec<u8>, _: bool) -> Result<(), u32> {
        Ok(())
    }
    fn flush(&self) -> Result<(), u32> {
        Ok(())
    }
    fn can_zero(&self) -> bool {
        self.zero
    }
    fn write_zeroes(&self, offset: u64, len: u32, may_unmap: bool, fua: bool) -> Result<(), u32> {
        let call = Call::Zero {
            offset,
            len,
            may_unmap,
            fua,
        };
        self.calls.lock().unwrap().push(call);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u32) -> Result<(), u32> {
        self.calls.lock().unwrap().push(Call::Trim { offset, len });
        Ok(())
    }
}

fn request(flags: u16, command: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut out = REQUEST_MAGIC.to_be_bytes().to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Serves `export` to one client; returns the client's stream and the export's
/// transmission flags, after NBD_OPT_EXPORT_NAME.
fn connect(export: &'static Recorder) -> (TcpStream, u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve(stream, &[export]).unwrap();
    });
    let mut client = TcpStream::connect(addr).unwrap();
    client.read_exact(&mut [0u8; 18]).unwrap();
    client.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let mut option = IHAVEOPT.to_be_bytes().to_vec();
    option.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    option.extend_from_slice(&1u32.to_be_bytes());
    option.extend_from_slice(b"z");
    client.write_all(&option).unwrap();
    let mut reply = [0u8; 10];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), SIZE);
    (client, u16::from_be_bytes([reply[8], reply[9]]), server)
}

/// Sends each request, then reads as many replies: (handle, error), by handle.
fn exchange(client: &mut TcpStream, requests: &[Vec<u8>]) -> Vec<(u64, u32)> {
    for r in requests {
        client.write_all(r).unwrap();
    }
    let mut replies: Vec<(u64, u32)> = (0..requests.len())
        .map(|_| {
            let mut reply = [0u8; 16];
            client.read_exact(&mut reply).unwrap();
            assert_eq!(reply[..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
            let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
            (u64::from_be_bytes(reply[8..].try_into().unwrap()), error)
        })
        .collect();
    replies.sort_unstable();
    replies
}

fn disconnect(mut client: TcpStream, server: std::thread::JoinHandle<()>) {
    client.write_all(&request(0, 2, 0, 0, 0)).unwrap();
    server.join().unwrap();
}

#[test]
fn zeroing_commands_reach_the_export_with_their_flags() {
    let export: &'static Recorder = Box::leak(Box::new(Recorder {
        zero: true,
        calls: Mutex::new(Vec::new()),
    }));
    let (mut client, flags, server) = connect(export);
    assert_eq!(flags & TFLAG_SEND_TRIM, TFLAG_SEND_TRIM);
    assert_eq!(flags & TFLAG_SEND_WRITE_ZEROES, TFLAG_SEND_WRITE_ZEROES);
    let three_gib = 3 << 30;
    let replies = exchange(
        &mut client,
        &[
            request(0, CMD_WRITE_ZEROES, 1, 4096, three_gib),
            request(CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, CMD_WRITE_ZEROES, 2, 1, 100),
            request(0, CMD_TRIM, 3, 1 << 20, 1 << 21),
            request(CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 4, 0, 4096),
            request(0, CMD_WRITE_ZEROES, 5, SIZE - 4096, 8192),
            request(0, CMD_TRIM, 6, SIZE, 1),
        ],
    );
    assert_eq!(
        replies,
        [
            (1, 0),
            (2, 0),
            (3, 0),
            (4, EINVAL),
            (5, EOVERFLOW),
            (6, EOVERFLOW)
        ]
    );
    let mut calls = std::mem::take(&mut *export.calls.lock().unwrap());
    calls.sort_by_key(|c| match c {
        Call::Zero { offset, .. } | Call::Trim { offset, .. } => *offset,
    });
    assert_eq!(
        calls,
        [
            Call::Zero {
                offset: 1,
                len: 100,
                may_unmap: false,
                fua: true
            },
            Call::Zero {
                offset: 4096,
                len: three_gib,
                may_unmap: true,
                fua: false
            },
            Call::Trim {
                offset: 1 << 20,
                len: 1 << 21
            },
        ]
    );
    disconnect(client, server);
}

#[test]
fn an_export_that_cannot_zero_neither_offers_nor_takes_it() {
    let export: &'static Recorder = Box::leak(Box::new(Recorder {
        zero: false,
        calls: Mutex::new(Vec::new()),
    }));
    let (mut client, flags, server) = connect(export);
    assert_eq!(flags & (TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES), 0);
    let replies = exchange(
        &mut client,
        &[
            request(0, CMD_WRITE_ZEROES, 1, 0, 4096),
            request(0, CMD_TRIM, 2, 0, 4096),
        ],
    );
    assert_eq!(replies, [(1, ENOTSUP), (2, ENOTSUP)]);
    assert!(export.calls.lock().unwrap().is_empty());
    disconnect(client, server);
}

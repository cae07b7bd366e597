//! The server keeps several requests of one connection in flight at once.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ordo_nbd::server::{serve, Export};
use ordo_nbd::{IHAVEOPT, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};

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

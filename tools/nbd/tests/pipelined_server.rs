//! The poller server keeps many requests of one connection in flight, answers them in
//! completion order, and a client stalled mid-request holds nothing but its own slot.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ordo_nbd::poller::{Backend, ExportInfo, Io, Limits, Server, Tag};
use ordo_nbd::{IHAVEOPT, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC};

const SIZE: u64 = 1 << 20;

/// Holds every write until `release_at` are in flight at once, then completes them all,
/// newest first; remembers the most ever in flight. Reads complete at once, from `data`.
struct Gate {
    release_at: usize,
    held: Vec<(Tag, Vec<u8>)>,
    most: usize,
    done: Vec<(Tag, Vec<u8>)>,
    data: Arc<Mutex<Vec<u8>>>,
}

impl Backend for Gate {
    fn start(&mut self, tag: Tag, _export: usize, io: Io, mut buf: Vec<u8>) -> Result<(), Vec<u8>> {
        let mut data = self.data.lock().unwrap();
        match io {
            Io::Write { offset, .. } => {
                data[offset as usize..offset as usize + buf.len()].copy_from_slice(&buf);
                self.held.push((tag, buf));
                self.most = self.most.max(self.held.len());
                if self.held.len() >= self.release_at {
                    self.done.extend(self.held.drain(..).rev());
                }
            }
            Io::Read { offset } => {
                let len = buf.len();
                buf.copy_from_slice(&data[offset as usize..offset as usize + len]);
                self.done.push((tag, buf));
            }
            _ => self.done.push((tag, buf)),
        }
        Ok(())
    }
}

/// A server of one 1 MiB export "gate" on a loopback port, polled on its own thread until
/// `stop`; returns the address and the thread, which hands back the backend.
fn start(release_at: usize, stop: Arc<AtomicBool>) -> (SocketAddr, std::thread::JoinHandle<Gate>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let export = ExportInfo {
        name: "gate".into(),
        size_bytes: SIZE,
        block_size: 4096,
        min_block_size: 4096,
        max_request_bytes: 1 << 16,
        can_zero: false,
    };
    let mut server = Server::new(Some(listener), vec![export], Limits::default()).unwrap();
    let thread = std::thread::spawn(move || {
        let mut gate = Gate {
            release_at,
            held: Vec::new(),
            most: 0,
            done: Vec::new(),
            data: Arc::new(Mutex::new(vec![0; SIZE as usize])),
        };
        while !stop.load(Ordering::Relaxed) {
            let work = server.poll(Instant::now(), &mut gate);
            let finished = !gate.done.is_empty();
            for (tag, buf) in gate.done.drain(..) {
                server.complete(tag, Ok(()), buf);
            }
            if !work && !finished {
                server.wait(Duration::from_millis(10)).unwrap();
            }
        }
        gate
    });
    (addr, thread)
}

fn request(command: u16, handle: u64, offset: u64, len: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&command.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Connects and chooses "gate" with NBD_OPT_EXPORT_NAME.
fn connect(addr: SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.read_exact(&mut [0u8; 18]).unwrap();
    client.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let mut option = IHAVEOPT.to_be_bytes().to_vec();
    option.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    option.extend_from_slice(&4u32.to_be_bytes());
    option.extend_from_slice(b"gate");
    client.write_all(&option).unwrap();
    client.read_exact(&mut [0u8; 10]).unwrap();
    client
}

/// Reads one simple reply: (handle, error).
fn reply(client: &mut TcpStream) -> (u64, u32) {
    let mut reply = [0u8; 16];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..4], SIMPLE_REPLY_MAGIC.to_be_bytes());
    let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
    (u64::from_be_bytes(reply[8..].try_into().unwrap()), error)
}

/// Thirty-two writes sent before any reply is read are all in the backend at once, and
/// come back in the order they completed (newest first), each matched by its handle.
#[test]
fn requests_on_one_connection_are_in_flight_together_and_answered_as_they_complete() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server) = start(32, Arc::clone(&stop));
    let mut client = connect(addr);
    for handle in 1..=32u64 {
        let write = request(1, handle, handle * 4096, 4096, &[handle as u8; 4096]);
        client.write_all(&write).unwrap();
    }
    let handles: Vec<u64> = (0..32)
        .map(|_| reply(&mut client))
        .map(|(h, e)| {
            assert_eq!(e, 0, "no error");
            h
        })
        .collect();
    assert_eq!(
        handles,
        (1..=32).rev().collect::<Vec<_>>(),
        "completion order"
    );
    client.write_all(&request(2, 99, 0, 0, &[])).unwrap(); // NBD_CMD_DISC
    stop.store(true, Ordering::Relaxed);
    let gate = server.join().unwrap();
    assert_eq!(gate.most, 32, "the writes were in flight together");
    let data = gate.data.lock().unwrap();
    assert!(data[5 * 4096..6 * 4096].iter().all(|&b| b == 5));
}

/// A client that sends half a write and stalls holds its slot, not the poller: another
/// client writes and reads back meanwhile, and the stalled write completes once the rest
/// of its data comes.
#[test]
fn a_client_stalled_mid_request_holds_only_its_own_slot() {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, server) = start(1, Arc::clone(&stop));
    let mut stalled = connect(addr);
    let write = request(1, 7, 0, 4096, &[0xaa; 4096]);
    stalled.write_all(&write[..28 + 1000]).unwrap();

    let mut other = connect(addr);
    other
        .write_all(&request(1, 1, 8192, 4096, &[0xbb; 4096]))
        .unwrap();
    assert_eq!(reply(&mut other), (1, 0));
    other.write_all(&request(0, 2, 8192, 4096, &[])).unwrap();
    assert_eq!(reply(&mut other), (2, 0));
    let mut back = vec![0u8; 4096];
    other.read_exact(&mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 0xbb),
        "the other client was served"
    );

    stalled.write_all(&write[28 + 1000..]).unwrap();
    assert_eq!(reply(&mut stalled), (7, 0));
    stop.store(true, Ordering::Relaxed);
    let gate = server.join().unwrap();
    assert!(gate.data.lock().unwrap()[..4096].iter().all(|&b| b == 0xaa));
}

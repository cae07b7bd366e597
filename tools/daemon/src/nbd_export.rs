//! The primary's volumes as NBD exports: each client connection runs on its own thread and
//! hands its requests to the poller through the request ring, lending its buffer for the
//! trip and waiting for the reply. FLUSH is a consistency point: it closes the data set.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use ordo_core::primary::SubmitError;
use ordo_core::protocol::VolumeId;
use ordo_core::storage::StorageError;
use ordo_runtime::primary_service::{Frontend, Op, Reply, Request, ServiceError};

use ordo_nbd::server::{serve, Export};
use ordo_nbd::{EINVAL, EIO, ENOSPC, EOVERFLOW, ESHUTDOWN};

/// Client connections served at once; more are refused.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug)]
pub struct NbdVolume {
    pub name: String,
    pub volume: VolumeId,
    pub size_bytes: u64,
    pub block_size: u32,
    pub max_request_bytes: u32,
    pub frontend: Frontend,
}

thread_local! {
    /// Each connection thread's reply channel, made once: a thread has one request in
    /// flight at a time.
    static REPLIES: (Sender<Reply>, Receiver<Reply>) = crossbeam_channel::bounded(1);
}

impl NbdVolume {
    fn call(&self, op: Op, buf: &mut Vec<u8>) -> Result<(), u32> {
        REPLIES.with(|(sender, receiver)| {
            let request = Request {
                op,
                buf: std::mem::take(buf),
                user: 0,
                reply: sender.clone(),
            };
            let Some(reply) = self.frontend.call(request, receiver) else {
                return Err(ESHUTDOWN);
            };
            *buf = reply.buf;
            reply.result.map_err(|e| errno(&e))
        })
    }
}

impl NbdVolume {
    /// Zeroes `len` bytes at `offset`: the whole blocks inside as one zeroing, and with
    /// `edges` the partial blocks around them as writes of zeros, in that order of the
    /// volume (head, whole blocks, tail), each acknowledged before the next starts.
    fn zero(&self, offset: u64, len: u32, unmap: bool, fua: bool, edges: bool) -> Result<(), u32> {
        if len == 0 {
            return Err(EINVAL);
        }
        let block = u64::from(self.block_size);
        let end = offset + u64::from(len);
        let (inner_start, inner_end) = (offset.next_multiple_of(block), end - end % block);
        if inner_start >= inner_end {
            return match edges {
                true => self.write(offset, &mut vec![0; len as usize], fua),
                false => Ok(()),
            };
        }
        if edges && offset < inner_start {
            self.write(offset, &mut vec![0; (inner_start - offset) as usize], fua)?;
        }
        let op = Op::Zero {
            volume: self.volume,
            offset: inner_start,
            // Lossless: inside a range of `len: u32` bytes.
            len: (inner_end - inner_start) as u32,
            unmap,
            fua,
        };
        self.call(op, &mut Vec::new())?;
        if edges && inner_end < end {
            self.write(inner_end, &mut vec![0; (end - inner_end) as usize], fua)?;
        }
        Ok(())
    }
}

fn errno(error: &ServiceError) -> u32 {
    match error {
        ServiceError::Submit(SubmitError::TooLarge { .. })
        | ServiceError::Submit(SubmitError::UnknownVolume(_))
        | ServiceError::Submit(SubmitError::Invalid(StorageError::Unaligned { .. }))
        | ServiceError::Submit(SubmitError::Invalid(StorageError::TooLarge { .. })) => EINVAL,
        ServiceError::Submit(SubmitError::Invalid(StorageError::OutOfRange { .. })) => EOVERFLOW,
        ServiceError::Storage(StorageError::Io { kind, .. })
        | ServiceError::Submit(SubmitError::Invalid(StorageError::Io { kind, .. }))
            if *kind == std::io::ErrorKind::StorageFull =>
        {
            ENOSPC
        }
        ServiceError::ShuttingDown => ESHUTDOWN,
        _ => EIO,
    }
}

impl Export for NbdVolume {
    fn name(&self) -> &str {
        &self.name
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Any byte range: the primary merges a partial block with the rest of it.
    fn min_block_size(&self) -> u32 {
        1
    }

    fn max_request_bytes(&self) -> u32 {
        self.max_request_bytes
    }

    fn read(&self, offset: u64, buf: &mut Vec<u8>) -> Result<(), u32> {
        let op = Op::Read {
            volume: self.volume,
            offset,
        };
        self.call(op, buf)
    }

    fn write(&self, offset: u64, data: &mut Vec<u8>, fua: bool) -> Result<(), u32> {
        let write = |offset, data: &mut Vec<u8>| {
            let op = Op::Write {
                volume: self.volume,
                offset,
                fua,
            };
            self.call(op, data)
        };
        // A request of the largest size that starts inside a block touches one block more
        // than a record may hold: it goes as two writes, cut at a block boundary (the
        // first write whole blocks up to the limit, the second at most one block).
        let block = u64::from(self.block_size);
        let start = offset - offset % block;
        let end = offset + data.len() as u64;
        let cut = start + u64::from(self.max_request_bytes);
        if end.next_multiple_of(block) - start <= u64::from(self.max_request_bytes) {
            return write(offset, data);
        }
        let mut tail = data.split_off((cut - offset) as usize);
        let result = write(offset, data).and_then(|()| write(cut, &mut tail));
        data.append(&mut tail);
        result
    }

    fn flush(&self) -> Result<(), u32> {
        self.call(Op::Flush, &mut Vec::new())
    }

    fn can_zero(&self) -> bool {
        true
    }

    /// The whole blocks go as one zeroing record; the partial blocks at its ends (at most
    /// one each) as sub-block writes of zeros.
    fn write_zeroes(&self, offset: u64, len: u32, may_unmap: bool, fua: bool) -> Result<(), u32> {
        self.zero(offset, len, may_unmap, fua, true)
    }

    /// Zeroes the whole blocks of the range, deallocating them, on both sides: what a
    /// trimmed range reads back as is then the same on the replica. The partial blocks at
    /// its ends keep their data, as NBD allows (a TRIM is advisory).
    fn trim(&self, offset: u64, len: u32) -> Result<(), u32> {
        self.zero(offset, len, true, false, false)
    }
}

/// Accepts NBD clients on `addr` on a thread of its own until `closing` is set.
pub fn listen(
    addr: SocketAddr,
    exports: Arc<Vec<NbdVolume>>,
    closing: Arc<AtomicBool>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding NBD on {addr}"))?;
    let local = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("nbd-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(e) = ordo_runtime::lane::detect_dead_peer(&stream) {
                    tracing::warn!("nbd: cannot set keepalive on a client's socket: {e}");
                    continue;
                }
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                // Relaxed: a flag and a counter that order no other memory.
                if closing.load(Ordering::Relaxed) {
                    tracing::info!("nbd: refused {peer}: shutting down");
                    continue;
                }
                if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!("nbd: refused {peer}: {MAX_CONNECTIONS} clients connected");
                    continue;
                }
                let (exports, count) = (Arc::clone(&exports), Arc::clone(&active));
                let spawned =
                    std::thread::Builder::new()
                        .name("nbd-conn".into())
                        .spawn(move || {
                            let refs: Vec<&dyn Export> =
                                exports.iter().map(|e| e as &dyn Export).collect();
                            match serve(stream, &refs) {
                                Ok(()) => tracing::debug!("nbd: {peer} disconnected"),
                                Err(e) => tracing::warn!("nbd: {peer}: {e}"),
                            }
                            count.fetch_sub(1, Ordering::Relaxed);
                        });
                if let Err(e) = spawned {
                    active.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!("nbd: cannot start a thread: {e}");
                }
            }
        })
        .context("starting the NBD thread")?;
    Ok(local)
}

//! The primary's volumes as NBD exports, served on the primary's own poller: the NBD
//! server (ordo-nbd's `poller::Server`) reads requests off non-blocking sockets and starts
//! each one straight in the primary service's pending table, and the service's replies go
//! back to their connections in the same thread, so nothing crosses a thread between a
//! client's socket and the write path. FLUSH is a consistency point: it closes the data
//! set.

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};
use ordo_core::primary::SubmitError;
use ordo_core::protocol::VolumeId;
use ordo_core::storage::{Storage, StorageError};
use ordo_nbd::poller::{Backend, Ended, ExportInfo, Io, Limits, Server, Tag};
use ordo_nbd::server::ServeError;
use ordo_nbd::{EINVAL, EIO, ENOSPC, EOVERFLOW, ESHUTDOWN};
use ordo_runtime::primary_service::{Op, PrimaryService, Reply, ReplyTo, Request, ServiceError};

/// NBD requests that went to the service as several (a split write, a zeroing with
/// partial blocks at its ends) in flight at once; more wait for room.
const MAX_COMPOUNDS: usize = 64;
/// Marks a service request's `user` as a part of a compound (its index below); a simple
/// request's `user` is its NBD tag, whose top bit is clear (connection numbers are small).
const COMPOUND: u64 = 1 << 63;

#[derive(Clone, Debug)]
pub struct NbdVolume {
    pub name: String,
    pub volume: VolumeId,
    pub size_bytes: u64,
    pub block_size: u32,
    pub max_request_bytes: u32,
}

impl NbdVolume {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            name: self.name.clone(),
            size_bytes: self.size_bytes,
            block_size: self.block_size,
            // Any byte range: the primary merges a partial block with the rest of it.
            min_block_size: 1,
            max_request_bytes: self.max_request_bytes,
            can_zero: true,
        }
    }
}

/// An NBD request made of several service requests: answered once every part is.
#[derive(Debug)]
struct Compound {
    tag: Tag,
    parts_left: usize,
    error: Option<u32>,
    /// The buffer handed back to the NBD server: the largest of the parts'.
    keep: Vec<u8>,
}

/// The exports of the primary: the NBD server and what joins it to the service.
#[derive(Debug)]
pub struct Exports {
    server: Server,
    volumes: Vec<NbdVolume>,
    compounds: Vec<Option<Compound>>,
    free_compounds: Vec<usize>,
    /// Requests answered without reaching the service, for the next `complete`.
    early: Vec<(Tag, Result<(), u32>, Vec<u8>)>,
}

impl Exports {
    /// Listens on `addr` for clients of `volumes`.
    pub fn listen(addr: SocketAddr, volumes: Vec<NbdVolume>) -> Result<Exports> {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding NBD on {addr}"))?;
        let infos = volumes.iter().map(NbdVolume::info).collect();
        let mut server = Server::new(Some(listener), infos, Limits::default())
            .context("starting the NBD server")?;
        server.configure_accepted(Box::new(|fd| ordo_runtime::lane::detect_dead_peer(fd)));
        Ok(Exports {
            server,
            volumes,
            compounds: (0..MAX_COMPOUNDS).map(|_| None).collect(),
            free_compounds: (0..MAX_COMPOUNDS).rev().collect(),
            early: Vec::new(),
        })
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Accepts, reads and starts requests on `service`; true if it did any work.
    pub fn poll<S: Storage>(
        &mut self,
        now: std::time::Instant,
        service: &mut PrimaryService<S>,
    ) -> bool {
        let mut backend = Starter {
            service,
            volumes: &self.volumes,
            compounds: &mut self.compounds,
            free_compounds: &mut self.free_compounds,
            early: &mut self.early,
        };
        let work = self.server.poll(now, &mut backend);
        while let Some(Ended { peer, result }) = self.server.take_ended() {
            log_ended(peer, result);
        }
        work
    }

    /// Hands the service's replies (and the requests answered early) to their clients;
    /// true if there were any.
    pub fn complete<S: Storage>(&mut self, service: &mut PrimaryService<S>) -> bool {
        let mut work = !self.early.is_empty();
        for (tag, result, buf) in self.early.drain(..) {
            self.server.complete(tag, result, buf);
        }
        while let Some(reply) = service.take_reply() {
            work = true;
            let result = reply.result.as_ref().map_err(errno).copied();
            if reply.user & COMPOUND == 0 {
                self.server
                    .complete(Tag::from_u64(reply.user), result, reply.buf);
                continue;
            }
            self.part_done(reply, result);
        }
        work
    }

    fn part_done(&mut self, reply: Reply, result: Result<(), u32>) {
        let index = (reply.user & !COMPOUND) as usize;
        let compound = self.compounds[index]
            .as_mut()
            .expect("a compound in flight");
        compound.error = compound.error.or(result.err());
        if reply.buf.capacity() > compound.keep.capacity() {
            compound.keep = reply.buf;
        }
        compound.parts_left -= 1;
        if compound.parts_left == 0 {
            let done = self.compounds[index].take().expect("a compound in flight");
            self.free_compounds.push(index);
            let result = done.error.map_or(Ok(()), Err);
            self.server.complete(done.tag, result, done.keep);
        }
    }
}

fn log_ended(peer: Option<SocketAddr>, result: Result<(), ServeError>) {
    let peer = peer.map_or_else(|| "a client".to_string(), |p| p.to_string());
    match result {
        Ok(()) => tracing::debug!("nbd: {peer} disconnected"),
        Err(ServeError::Io(e)) if is_abrupt(&e) => {
            tracing::info!("nbd: {peer} went away: {e}")
        }
        Err(e @ ServeError::Truncated(_)) => tracing::info!("nbd: {peer}: {e}"),
        Err(e) => tracing::warn!("nbd: {peer}: {e}"),
    }
}

/// A client that vanished without NBD_CMD_DISC (killed, its host gone): not a fault of ours.
fn is_abrupt(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, TimedOut};
    matches!(
        e.kind(),
        ConnectionReset | BrokenPipe | ConnectionAborted | TimedOut
    )
}

/// The NBD server's backend for one round: starts requests on the service.
struct Starter<'a, S: Storage> {
    service: &'a mut PrimaryService<S>,
    volumes: &'a [NbdVolume],
    compounds: &'a mut Vec<Option<Compound>>,
    free_compounds: &'a mut Vec<usize>,
    early: &'a mut Vec<(Tag, Result<(), u32>, Vec<u8>)>,
}

impl<S: Storage> Backend for Starter<'_, S> {
    fn start(&mut self, tag: Tag, export: usize, io: Io, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        let v = &self.volumes[export];
        let volume = v.volume;
        match io {
            Io::Read { offset } => self.one(tag, Op::Read { volume, offset }, buf),
            Io::Write { offset, fua } => self.write(tag, export, offset, fua, buf),
            Io::Flush => self.one(tag, Op::Flush, buf),
            Io::WriteZeroes {
                offset,
                len,
                may_unmap,
                fua,
            } => self.zero(tag, export, (offset, len), (may_unmap, fua), true, buf),
            Io::Trim { offset, len } => {
                self.zero(tag, export, (offset, len), (true, false), false, buf)
            }
        }
    }
}

impl<S: Storage> Starter<'_, S> {
    fn one(&mut self, tag: Tag, op: Op, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        let user = tag.to_u64();
        debug_assert_eq!(user & COMPOUND, 0, "connection numbers are small");
        let request = Request {
            op,
            buf,
            user,
            reply: ReplyTo::Poller,
        };
        self.service.submit(request).map_err(|r| r.buf)
    }

    /// A write; one of the largest size that starts inside a block touches one block more
    /// than a record may hold, so it goes as two, cut at a block boundary (the first whole
    /// blocks up to the limit, the second at most one block).
    fn write(
        &mut self,
        tag: Tag,
        export: usize,
        offset: u64,
        fua: bool,
        mut buf: Vec<u8>,
    ) -> Result<(), Vec<u8>> {
        let v = &self.volumes[export];
        let volume = v.volume;
        let block = u64::from(v.block_size);
        let start = offset - offset % block;
        let end = offset + buf.len() as u64;
        let cut = start + u64::from(v.max_request_bytes);
        if end.next_multiple_of(block) - start <= u64::from(v.max_request_bytes) {
            return self.one(
                tag,
                Op::Write {
                    volume,
                    offset,
                    fua,
                },
                buf,
            );
        }
        if self.service.room() < 2 || self.free_compounds.is_empty() {
            return Err(buf);
        }
        let index = self.compound(tag, 2, Vec::new()).expect("room was checked");
        // Rare (a largest-size write off a block boundary): one allocation for the tail.
        let tail = buf.split_off((cut - offset) as usize);
        self.part(
            index,
            Op::Write {
                volume,
                offset,
                fua,
            },
            buf,
        );
        self.part(
            index,
            Op::Write {
                volume,
                offset: cut,
                fua,
            },
            tail,
        );
        Ok(())
    }

    /// Zeroes `len` bytes at `offset`: the whole blocks inside as one zeroing, and with
    /// `edges` the partial blocks around them as writes of zeros (without, a TRIM leaves
    /// them as they are, which NBD allows: a TRIM is advisory).
    fn zero(
        &mut self,
        tag: Tag,
        export: usize,
        (offset, len): (u64, u32),
        (unmap, fua): (bool, bool),
        edges: bool,
        buf: Vec<u8>,
    ) -> Result<(), Vec<u8>> {
        let v = &self.volumes[export];
        let volume = v.volume;
        if len == 0 {
            self.early.push((tag, Err(EINVAL), buf));
            return Ok(());
        }
        let block = u64::from(v.block_size);
        let end = offset + u64::from(len);
        let (inner_start, inner_end) = (offset.next_multiple_of(block), end - end % block);
        let parts = match inner_start < inner_end {
            true => [
                (edges && offset < inner_start).then_some((offset, inner_start)),
                Some((inner_start, inner_end)),
                (edges && inner_end < end).then_some((inner_end, end)),
            ],
            // No whole block inside: a write of zeros over it all, or (a TRIM) nothing.
            false => [edges.then_some((offset, end)), None, None],
        };
        let count = parts.iter().flatten().count();
        if count == 0 {
            self.early.push((tag, Ok(()), buf));
            return Ok(());
        }
        let index = self.compound(tag, count, buf)?;
        for (part, (at, until)) in parts
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p?)))
        {
            let len = (until - at) as u32; // Lossless: inside a range of `len: u32` bytes.
            match part {
                1 => self.part(
                    index,
                    Op::Zero {
                        volume,
                        offset: at,
                        len,
                        unmap,
                        fua,
                    },
                    Vec::new(),
                ),
                // Rare (a zeroing off block boundaries): the zeros of a partial block.
                _ => self.part(
                    index,
                    Op::Write {
                        volume,
                        offset: at,
                        fua,
                    },
                    vec![0; len as usize],
                ),
            }
        }
        Ok(())
    }

    /// A compound of `parts` requests for `tag`, if there is room for it and its parts;
    /// else `keep` back.
    fn compound(&mut self, tag: Tag, parts: usize, keep: Vec<u8>) -> Result<usize, Vec<u8>> {
        if self.service.room() < parts {
            return Err(keep);
        }
        let Some(index) = self.free_compounds.pop() else {
            return Err(keep);
        };
        self.compounds[index] = Some(Compound {
            tag,
            parts_left: parts,
            error: None,
            keep,
        });
        Ok(index)
    }

    fn part(&mut self, index: usize, op: Op, buf: Vec<u8>) {
        let request = Request {
            op,
            buf,
            user: COMPOUND | index as u64,
            reply: ReplyTo::Poller,
        };
        let taken = self.service.submit(request);
        assert!(taken.is_ok(), "room for every part was checked");
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

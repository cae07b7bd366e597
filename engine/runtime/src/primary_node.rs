//! A primary on real sockets: keeps its lanes connected to the secondary (reconnecting
//! with backoff) and moves the `Primary` state machine's frames over them. The application
//! side (writes, flushes, events) stays with the caller, which owns the node.
//!
//! The poller that owns the node never makes a lane system call: the lane sender thread
//! (`lane_sender`) owns the sockets, and the poller only appends frames to each lane's
//! outgoing ring and decodes what its incoming ring holds. Connecting can block (a
//! secondary whose host drops SYNs holds a connect for its whole timeout), so a connector
//! thread makes the connections and hands them over through a channel.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::lane::LaneError;
use crate::lane_sender::{LaneRings, LaneSender, TX_RING_BYTES};
use ordo_core::primary::tx::TxBatch;
use ordo_core::primary::Primary;
use ordo_core::protocol::{decode, frame_len, HEADER_BYTES};
use ordo_core::storage::Storage;

/// What one lane may take in one round: small enough that every lane gets a share of a
/// busy stream (so each secondary receiver thread gets one), and that a round never keeps
/// the poller from its completions for long; a larger frame still goes, alone.
const ROUND_BYTES: usize = 256 << 10;
const _: () = assert!(TX_RING_BYTES >= 4 * ROUND_BYTES);
/// What the secondary sends (its Hello with resume ranges, acks) fits in this.
const RX_BYTES: usize = 64 << 10;
const _: () = assert!(RX_BYTES >= ordo_core::protocol::MAX_CONTROL_FRAME_BYTES);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_MS_MIN: u64 = 10;
const BACKOFF_MS_MAX: u64 = 1000;

/// The poller's side of a connected lane.
#[derive(Debug)]
struct Lane {
    rings: LaneRings,
    /// What the ring held of frames not yet whole.
    rx: Vec<u8>,
    rx_len: usize,
    /// Bytes of a batch the ring had no room for (a frame larger than the room left),
    /// sent before anything new.
    spill: Vec<u8>,
}

#[derive(Debug)]
struct Slot {
    lane: Option<Lane>,
    /// A connection attempt is with the connector thread.
    connecting: bool,
    next_attempt_ms: u64,
    /// Doubles with every failed attempt or dropped lane; back to the minimum only once
    /// the secondary answered the handshake (a peer that accepts and hangs up, or refuses
    /// us, is not retried in a tight loop).
    backoff_ms: u64,
}

#[derive(Debug)]
struct Connector {
    requests: Sender<usize>,
    results: Receiver<(usize, io::Result<TcpStream>)>,
}

impl Connector {
    /// A thread connecting lanes to `addr` on request; it ends when the node is dropped.
    fn spawn(addr: SocketAddr, lanes: usize) -> io::Result<Connector> {
        let (requests, requested) = crossbeam_channel::bounded::<usize>(lanes);
        let (done, results) = crossbeam_channel::bounded(lanes);
        std::thread::Builder::new()
            .name("lane-connect".into())
            .spawn(move || {
                for index in requested {
                    let result = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT);
                    if done.send((index, result)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Connector { requests, results })
    }
}

#[derive(Debug)]
pub struct PrimaryNode<S: Storage> {
    primary: Primary<S>,
    secondary: SocketAddr,
    slots: Vec<Slot>,
    connector: Connector,
    sender: LaneSender,
    /// Frames for one lane in one round: heads here, payloads named in retention.
    batch: TxBatch,
    last_error: Option<String>,
    lanes_dropped: u64,
}

impl<S: Storage> PrimaryNode<S> {
    /// Starts the connector and lane sender threads (the sender pinned to `sender_core`
    /// if given); `Err` only if no thread can be started.
    pub fn new(primary: Primary<S>, secondary: SocketAddr, lanes: usize) -> io::Result<Self> {
        Self::with_sender_core(primary, secondary, lanes, None)
    }

    /// `new`, with the lane sender pinned to `sender_core`.
    pub fn with_sender_core(
        primary: Primary<S>,
        secondary: SocketAddr,
        lanes: usize,
        sender_core: Option<usize>,
    ) -> io::Result<Self> {
        let slot = || Slot {
            lane: None,
            connecting: false,
            next_attempt_ms: 0,
            backoff_ms: BACKOFF_MS_MIN,
        };
        Ok(PrimaryNode {
            primary,
            secondary,
            slots: (0..lanes).map(|_| slot()).collect(),
            connector: Connector::spawn(secondary, lanes)?,
            sender: LaneSender::spawn(lanes, sender_core)?,
            // A head per frame; 4 KiB frames at least, but for syncs.
            batch: TxBatch::with_capacity(ROUND_BYTES / 16, ROUND_BYTES / 4096),
            last_error: None,
            lanes_dropped: 0,
        })
    }

    pub fn primary(&mut self) -> &mut Primary<S> {
        &mut self.primary
    }

    /// Lanes configured.
    pub fn lanes(&self) -> usize {
        self.slots.len()
    }

    pub fn lanes_up(&self) -> usize {
        self.slots.iter().filter(|s| s.lane.is_some()).count()
    }

    pub fn lanes_dropped(&self) -> u64 {
        self.lanes_dropped
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// One round of link work (connect, receive, transmit, storage, clock); true if it did
    /// any. Never blocks, and makes no lane system call.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let mut work = self.connect(now_ms);
        let mut published = false;
        for index in 0..self.slots.len() {
            let Some(lane) = &mut self.slots[index].lane else {
                continue;
            };
            let primary = &mut self.primary;
            let result =
                receive(lane, |frame| primary.handle_frame(index, frame)).and_then(|frames| {
                    let sent = transmit(lane, primary, &mut self.batch, now_ms, index)?;
                    published |= sent > 0;
                    Ok(frames > 0 || sent > 0)
                });
            match result {
                Ok(did) => {
                    work |= did;
                    if self.primary.lane_ready(index) {
                        self.slots[index].backoff_ms = BACKOFF_MS_MIN;
                    }
                }
                Err(error) => self.drop_lane(index, now_ms, &error),
            }
        }
        if published {
            self.sender.published();
        }
        self.primary.tick(now_ms);
        work |= self.primary.poll_storage() > 0;
        work
    }

    /// Asks the connector for lanes that are due, and takes the connections it made.
    fn connect(&mut self, now_ms: u64) -> bool {
        let mut work = false;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.lane.is_none() && !slot.connecting && now_ms >= slot.next_attempt_ms {
                // The channel holds one request per lane, and each lane has at most one.
                slot.connecting = self.connector.requests.try_send(index).is_ok();
            }
        }
        loop {
            let (index, result) = match self.connector.results.try_recv() {
                Ok(done) => done,
                Err(TryRecvError::Empty) => return work,
                Err(TryRecvError::Disconnected) => {
                    self.last_error = Some("the lane connector thread ended".into());
                    return work;
                }
            };
            work = true;
            let slot = &mut self.slots[index];
            slot.connecting = false;
            match result
                .map_err(LaneError::from)
                .and_then(|stream| self.sender.add(index, stream))
            {
                Ok(rings) => {
                    tracing::info!("lane {index} connected to {}", self.secondary);
                    slot.lane = Some(Lane {
                        rings,
                        rx: vec![0; RX_BYTES],
                        rx_len: 0,
                        spill: Vec::new(),
                    });
                    self.primary.lane_up(index);
                }
                Err(error) => {
                    slot.next_attempt_ms = now_ms + slot.backoff_ms;
                    slot.backoff_ms = (slot.backoff_ms * 2).min(BACKOFF_MS_MAX);
                    self.last_error = Some(format!("connect lane {index}: {error}"));
                }
            }
        }
    }

    fn drop_lane(&mut self, index: usize, now_ms: u64, error: &LaneError) {
        // The sender's reason, if it ended the lane, says more than the abandoned ring.
        let reason = std::iter::from_fn(|| self.sender.take_error())
            .filter(|(i, _)| *i == index)
            .last();
        let error = reason.as_ref().map_or(error, |(_, e)| e);
        let slot = &mut self.slots[index];
        slot.lane = None;
        slot.next_attempt_ms = now_ms + slot.backoff_ms;
        slot.backoff_ms = (slot.backoff_ms * 2).min(BACKOFF_MS_MAX);
        self.primary.lane_down(index);
        self.lanes_dropped += 1;
        tracing::warn!("lane {index} dropped: {error}");
        self.last_error = Some(format!("lane {index}: {error}"));
    }
}

/// Decodes the whole frames the lane's incoming ring holds and hands each to `handle`;
/// returns how many. An abandoned ring (the sender ended the lane) is an error.
fn receive(
    lane: &mut Lane,
    mut handle: impl FnMut(
        &ordo_core::protocol::Frame<'_>,
    ) -> Result<(), ordo_core::protocol::PeerError>,
) -> Result<usize, LaneError> {
    let mut frames = 0;
    loop {
        let (popped, _) = lane.rings.rx.pop_partial_slice(&mut lane.rx[lane.rx_len..]);
        let got = popped.len();
        lane.rx_len += got;
        let mut at = 0;
        while lane.rx_len - at >= HEADER_BYTES {
            let len = frame_len(&lane.rx[at..lane.rx_len])?;
            if len > lane.rx.len() {
                return Err(LaneError::FrameTooLarge {
                    len,
                    max: lane.rx.len(),
                });
            }
            if lane.rx_len - at < len {
                break;
            }
            let (frame, used) = decode(&lane.rx[at..at + len])?;
            debug_assert_eq!(used, len);
            handle(&frame)?;
            frames += 1;
            at += len;
        }
        lane.rx.copy_within(at..lane.rx_len, 0);
        lane.rx_len -= at;
        if got == 0 {
            break;
        }
    }
    if lane.rings.rx.is_abandoned() && lane.rings.rx.is_empty() {
        return Err(LaneError::Closed);
    }
    Ok(frames)
}

/// Appends the lane's next frames to its outgoing ring: what spilled last round first,
/// then, if the ring has room for a round, a new batch. Returns the bytes taken (into the
/// ring, or spilled for the next round).
fn transmit<S: Storage>(
    lane: &mut Lane,
    primary: &mut Primary<S>,
    batch: &mut TxBatch,
    now_ms: u64,
    index: usize,
) -> Result<usize, LaneError> {
    let tx = &mut lane.rings.tx;
    if tx.is_abandoned() {
        return Err(LaneError::Closed);
    }
    let mut published = 0;
    if !lane.spill.is_empty() {
        let (pushed, _) = tx.push_partial_slice(&lane.spill);
        published += pushed.len();
        lane.spill.drain(..published);
        if !lane.spill.is_empty() {
            return Ok(published);
        }
    }
    if tx.slots() < ROUND_BYTES {
        return Ok(published);
    }
    batch.clear();
    if primary.poll_transmit(now_ms, index, batch, ROUND_BYTES) == 0 {
        return Ok(published);
    }
    let primary = &*primary;
    let segments = batch.segments(|seq| {
        let payload = primary.retained_payload(seq);
        payload.expect("a record stays retained while its batch is sent")
    });
    for segment in segments {
        published += segment.len();
        if !lane.spill.is_empty() {
            lane.spill.extend_from_slice(segment);
            continue;
        }
        // Rare: a frame larger than the room a round leaves spills.
        let (_, rest) = tx.push_partial_slice(segment);
        lane.spill.extend_from_slice(rest);
    }
    Ok(published)
}

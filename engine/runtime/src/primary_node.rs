//! A primary on real sockets: keeps its lanes connected to the secondary (reconnecting
//! with backoff) and moves the `Primary` state machine's frames over them. The application
//! side (writes, flushes, events) stays with the caller, which owns the node.
//!
//! Connecting can block (a secondary whose host drops SYNs holds a connect for its whole
//! timeout), so a connector thread makes the connections and hands them over through a
//! channel: the poller never waits on the network.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::lane::{Lane, LaneError};
use ordo_core::primary::tx::TxBatch;
use ordo_core::primary::Primary;
use ordo_core::storage::Storage;

/// Outgoing buffer per lane: several of the largest writes.
const TX_BYTES: usize = 8 << 20;
/// What one lane may take in one round: small enough that every lane gets a share of a
/// busy stream (so each secondary receiver thread gets one), and that a round never keeps
/// the poller from its completions for long; a larger frame still goes, alone.
const ROUND_BYTES: usize = 256 << 10;
/// What the secondary sends (its Hello with resume ranges, acks) fits in this.
const RX_BYTES: usize = 64 << 10;
const _: () = assert!(RX_BYTES >= ordo_core::protocol::MAX_CONTROL_FRAME_BYTES);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_MS_MIN: u64 = 10;
const BACKOFF_MS_MAX: u64 = 1000;

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
    /// Frames for one lane in one round: heads here, payloads named in retention.
    batch: TxBatch,
    last_error: Option<String>,
    lanes_dropped: u64,
}

impl<S: Storage> PrimaryNode<S> {
    /// Starts the connector thread; `Err` only if no thread can be started.
    pub fn new(primary: Primary<S>, secondary: SocketAddr, lanes: usize) -> io::Result<Self> {
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
            // A head per frame; 4 KiB frames at least, but for syncs.
            batch: TxBatch::with_capacity(TX_BYTES / 16, TX_BYTES / 4096),
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
    /// any. Never blocks.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let mut work = self.connect(now_ms);
        for index in 0..self.slots.len() {
            let Some(lane) = &mut self.slots[index].lane else {
                continue;
            };
            let primary = &mut self.primary;
            let batch = &mut self.batch;
            let result = lane
                .receive(|frame| primary.handle_frame(index, frame))
                .and_then(|frames| {
                    // New frames only once what the socket left over has gone.
                    if !lane.send()? {
                        return Ok(frames > 0);
                    }
                    batch.clear();
                    let sent = primary.poll_transmit(now_ms, index, batch, ROUND_BYTES);
                    let primary = &*primary;
                    lane.send_batch(batch, |seq| {
                        let payload = primary.retained_payload(seq);
                        payload.expect("a record stays retained while its batch is sent")
                    })?;
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
            match result.and_then(|stream| Lane::new(stream, RX_BYTES, TX_BYTES)) {
                Ok(lane) => {
                    tracing::info!("lane {index} connected to {}", self.secondary);
                    slot.lane = Some(lane);
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

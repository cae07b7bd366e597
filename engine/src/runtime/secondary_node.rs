//! A secondary on real sockets: accepts the primary's lanes on a listener and drives the
//! `Secondary` state machine with what they carry. One `poll` is one bounded round of work
//! (accept, receive, storage, transmit); the caller loops it under an idle policy.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::idle::IdlePolicy;

use super::lane::{Lane, LaneError};
use crate::protocol::{PeerError, MAX_CONTROL_FRAME_BYTES, RECORD_FRAME_OVERHEAD_BYTES};
use crate::secondary::Secondary;
use crate::storage::Storage;

/// Outgoing buffer per lane: acknowledgements and the watermark are small.
const TX_BYTES: usize = 256 << 10;
/// A connection that has not sent the primary's Hello by then is dropped, so idle or
/// stray connections cannot hold the lane slots.
const HANDSHAKE_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub lanes_accepted: u64,
    /// Connections refused because every lane slot was taken.
    pub lanes_refused: u64,
    /// Lanes dropped for a bad frame, a protocol error or a closed socket.
    pub lanes_dropped: u64,
}

#[derive(Debug)]
pub struct SecondaryNode<S: Storage> {
    secondary: Secondary<S>,
    listener: TcpListener,
    lanes: Vec<Option<Lane>>,
    /// When each lane was accepted (for the handshake deadline).
    accepted_ms: Vec<u64>,
    max_frame_bytes: usize,
    last_error: Option<String>,
    stats: NodeStats,
}

impl<S: Storage> SecondaryNode<S> {
    /// `lanes` slots; a frame may carry up to `max_write_bytes` of payload.
    pub fn new(
        secondary: Secondary<S>,
        listener: TcpListener,
        lanes: usize,
        max_write_bytes: u32,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(SecondaryNode {
            secondary,
            listener,
            lanes: (0..lanes).map(|_| None).collect(),
            accepted_ms: vec![0; lanes],
            max_frame_bytes: (RECORD_FRAME_OVERHEAD_BYTES + max_write_bytes as usize)
                .max(MAX_CONTROL_FRAME_BYTES),
            last_error: None,
            stats: NodeStats::default(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn secondary(&self) -> &Secondary<S> {
        &self.secondary
    }

    /// For reads at quiescence (`verify`); frames and storage stay with `poll`.
    pub fn secondary_mut(&mut self) -> &mut Secondary<S> {
        &mut self.secondary
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    pub fn lanes_up(&self) -> usize {
        self.lanes.iter().filter(|l| l.is_some()).count()
    }

    pub fn into_secondary(self) -> Secondary<S> {
        self.secondary
    }

    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Why the last lane was dropped, for the operator's log.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// One round; true if it did any work.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let mut work = self.accept(now_ms);
        for slot in 0..self.lanes.len() {
            let Some(lane) = &mut self.lanes[slot] else {
                continue;
            };
            if !self.secondary.lane_ready(slot) && now_ms > self.accepted_ms[slot] + HANDSHAKE_MS {
                self.drop_lane(slot, &LaneError::NoHandshake(HANDSHAKE_MS));
                continue;
            }
            let secondary = &mut self.secondary;
            let result = lane
                .receive(|frame| secondary.handle_frame(slot, frame))
                .and_then(|frames| {
                    let (tx, room) = lane.tx_room();
                    let sent = secondary.poll_transmit(slot, tx, room);
                    lane.send()?;
                    Ok(frames > 0 || sent > 0)
                });
            match result {
                Ok(did) => work |= did,
                Err(error) => {
                    if let LaneError::Peer(PeerError::Mismatch { .. }) = error {
                        // Tell the primary who we are, so that it names the mismatch too;
                        // best effort, the lane is dropped either way.
                        let (tx, _) = lane.tx_room();
                        self.secondary.encode_hello(tx);
                        let _ = lane.send();
                    }
                    self.drop_lane(slot, &error);
                }
            }
        }
        self.secondary.tick(now_ms);
        work |= self.secondary.poll_storage() > 0;
        work
    }

    fn accept(&mut self, now_ms: u64) -> bool {
        let mut work = false;
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return work,
                Err(e) => {
                    self.last_error = Some(format!("accept: {e}"));
                    return work;
                }
            };
            work = true;
            let peer = stream.peer_addr().map(|a| a.to_string());
            let peer = peer.unwrap_or_else(|_| "an unknown address".to_string());
            let Some(slot) = self.lanes.iter().position(Option::is_none) else {
                self.stats.lanes_refused += 1;
                tracing::warn!(
                    "refused a connection from {peer}: all {} lanes are taken",
                    self.lanes.len()
                );
                continue;
            };
            match Lane::new(stream, self.max_frame_bytes, TX_BYTES) {
                Ok(lane) => {
                    tracing::info!("lane {slot} connected from {peer}");
                    self.lanes[slot] = Some(lane);
                    self.accepted_ms[slot] = now_ms;
                    self.secondary.lane_up(slot);
                    self.stats.lanes_accepted += 1;
                }
                Err(e) => self.last_error = Some(format!("lane setup: {e}")),
            }
        }
    }

    fn drop_lane(&mut self, slot: usize, error: &LaneError) {
        let peer = self.lanes[slot]
            .take()
            .and_then(|lane| lane.stream().peer_addr().ok());
        self.secondary.lane_down(slot);
        self.stats.lanes_dropped += 1;
        let message = match peer {
            Some(peer) => format!("lane {slot} from {peer}: {error}"),
            None => format!("lane {slot}: {error}"),
        };
        tracing::warn!("dropped {message}");
        self.last_error = Some(message);
    }
}

/// A secondary node polling on its own thread until stopped.
#[derive(Debug)]
pub struct SecondaryThread<S: Storage + Send + 'static> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<SecondaryNode<S>>,
}

impl<S: Storage + Send + 'static> SecondaryThread<S> {
    /// Polls `node` on a new thread, idling as `idle` says, with a millisecond clock that
    /// starts now.
    pub fn spawn(mut node: SecondaryNode<S>, idle: IdlePolicy) -> SecondaryThread<S> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            // Relaxed: the flag orders nothing else; the join below publishes the node.
            while !flag.load(Ordering::Relaxed) {
                let did = node.poll(started.elapsed().as_millis() as u64);
                idle.after_round(did);
            }
            node
        });
        SecondaryThread { stop, thread }
    }

    /// Asks the thread to stop after its current round and hands the node back (its
    /// connections still open); `Err` if the thread panicked.
    pub fn stop(self) -> std::thread::Result<SecondaryNode<S>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        self.thread.join()
    }
}

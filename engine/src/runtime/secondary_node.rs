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
use crate::protocol::HEADER_BYTES;
use crate::secondary::Secondary;
use crate::storage::Storage;

/// Outgoing buffer per lane: acknowledgements and the watermark are small.
const TX_BYTES: usize = 256 << 10;

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
            // A write frame: header, fixed fields, payload.
            max_frame_bytes: HEADER_BYTES + 64 + max_write_bytes as usize,
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
        let mut work = self.accept();
        for slot in 0..self.lanes.len() {
            let Some(lane) = &mut self.lanes[slot] else {
                continue;
            };
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
                Err(error) => self.drop_lane(slot, &error),
            }
        }
        self.secondary.tick(now_ms);
        work |= self.secondary.poll_storage() > 0;
        work
    }

    fn accept(&mut self) -> bool {
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
            let Some(slot) = self.lanes.iter().position(Option::is_none) else {
                self.stats.lanes_refused += 1;
                continue;
            };
            match Lane::new(stream, self.max_frame_bytes, TX_BYTES) {
                Ok(lane) => {
                    self.lanes[slot] = Some(lane);
                    self.secondary.lane_up(slot);
                    self.stats.lanes_accepted += 1;
                }
                Err(e) => self.last_error = Some(format!("lane setup: {e}")),
            }
        }
    }

    fn drop_lane(&mut self, slot: usize, error: &LaneError) {
        self.lanes[slot] = None;
        self.secondary.lane_down(slot);
        self.stats.lanes_dropped += 1;
        self.last_error = Some(format!("lane {slot}: {error}"));
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

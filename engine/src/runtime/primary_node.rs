//! A primary on real sockets: keeps its lanes connected to the secondary (reconnecting
//! with backoff) and moves the `Primary` state machine's frames over them. The application
//! side (writes, flushes, events) stays with the caller, which owns the node.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::lane::{Lane, LaneError};
use crate::primary::Primary;
use crate::storage::Storage;

/// Outgoing buffer per lane: several of the largest writes.
const TX_BYTES: usize = 8 << 20;
/// What the secondary sends (its Hello with resume ranges, acks) fits in this.
const RX_BYTES: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const BACKOFF_MS_MIN: u64 = 10;
const BACKOFF_MS_MAX: u64 = 1000;

#[derive(Debug)]
struct Slot {
    lane: Option<Lane>,
    next_attempt_ms: u64,
    backoff_ms: u64,
}

#[derive(Debug)]
pub struct PrimaryNode<S: Storage> {
    primary: Primary<S>,
    secondary: SocketAddr,
    slots: Vec<Slot>,
    last_error: Option<String>,
    lanes_dropped: u64,
}

impl<S: Storage> PrimaryNode<S> {
    pub fn new(primary: Primary<S>, secondary: SocketAddr, lanes: usize) -> PrimaryNode<S> {
        let slot = || Slot {
            lane: None,
            next_attempt_ms: 0,
            backoff_ms: BACKOFF_MS_MIN,
        };
        PrimaryNode {
            primary,
            secondary,
            slots: (0..lanes).map(|_| slot()).collect(),
            last_error: None,
            lanes_dropped: 0,
        }
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
    /// any. Connecting blocks for at most `CONNECT_TIMEOUT` per lane and attempt.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let mut work = false;
        for index in 0..self.slots.len() {
            if self.slots[index].lane.is_none() && now_ms >= self.slots[index].next_attempt_ms {
                work |= self.connect(index, now_ms);
            }
            let Some(lane) = &mut self.slots[index].lane else {
                continue;
            };
            let primary = &mut self.primary;
            let result = lane
                .receive(|frame| primary.handle_frame(index, frame))
                .and_then(|frames| {
                    let (tx, room) = lane.tx_room();
                    let sent = primary.poll_transmit(now_ms, index, tx, room);
                    lane.send()?;
                    Ok(frames > 0 || sent > 0)
                });
            match result {
                Ok(did) => work |= did,
                Err(error) => self.drop_lane(index, now_ms, &error),
            }
        }
        self.primary.tick(now_ms);
        work |= self.primary.poll_storage() > 0;
        work
    }

    fn connect(&mut self, index: usize, now_ms: u64) -> bool {
        let slot = &mut self.slots[index];
        let lane = TcpStream::connect_timeout(&self.secondary, CONNECT_TIMEOUT)
            .and_then(|stream| Lane::new(stream, RX_BYTES, TX_BYTES));
        match lane {
            Ok(lane) => {
                tracing::info!("lane {index} connected to {}", self.secondary);
                slot.lane = Some(lane);
                slot.backoff_ms = BACKOFF_MS_MIN;
                self.primary.lane_up(index);
                true
            }
            Err(error) => {
                slot.next_attempt_ms = now_ms + slot.backoff_ms;
                slot.backoff_ms = (slot.backoff_ms * 2).min(BACKOFF_MS_MAX);
                self.last_error = Some(format!("connect lane {index}: {error}"));
                false
            }
        }
    }

    fn drop_lane(&mut self, index: usize, now_ms: u64, error: &LaneError) {
        let slot = &mut self.slots[index];
        slot.lane = None;
        slot.next_attempt_ms = now_ms + slot.backoff_ms;
        self.primary.lane_down(index);
        self.lanes_dropped += 1;
        tracing::warn!("lane {index} dropped: {error}");
        self.last_error = Some(format!("lane {index}: {error}"));
    }
}

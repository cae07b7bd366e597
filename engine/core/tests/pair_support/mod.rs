//! A primary and a secondary joined by lanes and driven in one thread, step by step, the
//! way the simulator drives them (storage polls, frames split with `frame_len` and
//! decoded off the wire), with no faults but the ones a test makes: cutting the link,
//! restarting a side. What `histories.rs` and the regressions that need both sides share.
#![allow(dead_code, unused_imports)]

use ordo_core::primary::Primary;
use ordo_core::protocol::{decode, frame_len, Frame, Hello, PeerError};
use ordo_core::secondary::Secondary;
use ordo_core::storage::MemStorage;

/// Bytes each side may put on a lane per step.
const TRANSMIT_BUDGET_BYTES: usize = 1 << 20;
/// A lane dropped after a refusal is tried again this much later.
const RECONNECT_MS: u64 = 10;

pub struct Pair {
    pub p: Primary<MemStorage>,
    pub s: Secondary<MemStorage>,
    /// The clock both sides are ticked with: one millisecond per step.
    pub now_ms: u64,
    /// While false no lane connects (the network between the sides is down).
    pub linked: bool,
    up: Vec<bool>,
    reconnect_at_ms: Vec<u64>,
    /// What each side's `handle_frame` refused, in order.
    pub primary_errors: Vec<PeerError>,
    pub secondary_errors: Vec<PeerError>,
    /// Every Hello the primary sent, as the secondary received it.
    pub primary_hellos: Vec<Hello>,
}

/// The frames in `wire`, each split off with `frame_len` and decoded as the peer would.
pub fn frames(mut wire: &[u8]) -> Vec<Frame<'_>> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let len = frame_len(wire).expect("the engine encodes whole, valid frames");
        let (frame, used) = decode(&wire[..len]).expect("the engine encodes valid frames");
        assert_eq!(used, len);
        out.push(frame);
        wire = &wire[len..];
    }
    out
}

impl Pair {
    /// Joins `p` and `s` by `lanes` lanes, none connected yet, at `now_ms`.
    pub fn new(
        p: Primary<MemStorage>,
        s: Secondary<MemStorage>,
        lanes: usize,
        now_ms: u64,
    ) -> Pair {
        let mut pair = Pair {
            p,
            s,
            now_ms,
            linked: true,
            up: vec![false; lanes],
            reconnect_at_ms: vec![0; lanes],
            primary_errors: Vec::new(),
            secondary_errors: Vec::new(),
            primary_hellos: Vec::new(),
        };
        // Whatever either side thought of its lanes, none is connected now.
        for lane in 0..lanes {
            pair.p.lane_down(lane);
            pair.s.lane_down(lane);
        }
        pair
    }

    /// Takes the pair apart (to restart a side on its storage), with the clock.
    pub fn into_parts(self) -> (Primary<MemStorage>, Secondary<MemStorage>, u64) {
        (self.p, self.s, self.now_ms)
    }

    pub fn lanes(&self) -> usize {
        self.up.len()
    }

    /// Drops every lane; they connect again on the next step if `linked`.
    pub fn break_lanes(&mut self) {
        for lane in 0..self.up.len() {
            self.drop_lane(lane, 0);
        }
    }

    fn drop_lane(&mut self, lane: usize, down_ms: u64) {
        if self.up[lane] {
            self.up[lane] = false;
            self.p.lane_down(lane);
            self.s.lane_down(lane);
        }
        self.reconnect_at_ms[lane] = self.now_ms + down_ms;
    }

    /// Connects the lanes that are down and due, unless the secondary takes none now (a
    /// re-base under way).
    fn reconnect(&mut self) {
        if !self.linked || self.s.rebasing() {
            return;
        }
        for lane in 0..self.up.len() {
            if !self.up[lane] && self.now_ms >= self.reconnect_at_ms[lane] {
                self.up[lane] = true;
                self.p.lane_up(lane);
                self.s.lane_up(lane);
            }
        }
    }

    /// One millisecond: both sides tick and poll their storage, then each lane carries
    /// what the primary has to send, and the secondary's answers back.
    pub fn step(&mut self) {
        self.now_ms += 1;
        let now = self.now_ms;
        self.p.tick(now);
        self.p.poll_storage();
        self.s.tick(now);
        self.s.poll_storage();
        self.reconnect();
        for lane in 0..self.up.len() {
            if self.up[lane] {
                self.carry_to_secondary(lane);
            }
            if self.s.rebasing() {
                // It takes no lane until the re-base is durable; the primary reconnects.
                self.break_lanes();
                return;
            }
            if self.up[lane] {
                self.carry_to_primary(lane);
            }
        }
    }

    fn carry_to_secondary(&mut self, lane: usize) {
        let mut wire = Vec::new();
        self.p
            .poll_transmit(self.now_ms, lane, &mut wire, TRANSMIT_BUDGET_BYTES);
        for frame in frames(&wire) {
            if let Frame::Hello(hello) = &frame {
                self.primary_hellos.push(hello.clone());
            }
            if let Err(error) = self.s.handle_frame(lane, &frame) {
                self.secondary_errors.push(error);
                // The secondary answers a refused Hello with its own, so that the primary
                // can name the refusal too, then drops the lane.
                let mut reply = Vec::new();
                self.s.encode_hello(&mut reply);
                for frame in frames(&reply) {
                    if let Err(error) = self.p.handle_frame(lane, &frame) {
                        self.primary_errors.push(error);
                    }
                }
                self.drop_lane(lane, RECONNECT_MS);
                return;
            }
            if self.s.rebasing() {
                return;
            }
        }
    }

    fn carry_to_primary(&mut self, lane: usize) {
        let mut wire = Vec::new();
        self.s.poll_transmit(lane, &mut wire, TRANSMIT_BUDGET_BYTES);
        for frame in frames(&wire) {
            if let Err(error) = self.p.handle_frame(lane, &frame) {
                self.primary_errors.push(error);
                self.drop_lane(lane, RECONNECT_MS);
                return;
            }
        }
    }

    /// Steps until `done` holds (checked before each step), at most `max_steps` times.
    pub fn run_until(&mut self, what: &str, max_steps: u64, mut done: impl FnMut(&Pair) -> bool) {
        for _ in 0..max_steps {
            if done(self) {
                return;
            }
            self.step();
        }
        assert!(
            done(self),
            "{what}: not after {max_steps} steps: {}",
            self.describe()
        );
    }

    /// Steps `n` times.
    pub fn run(&mut self, n: u64) {
        (0..n).for_each(|_| self.step());
    }

    /// Both sides' state, for a failed assertion.
    pub fn describe(&self) -> String {
        let (p, s) = (&self.p, &self.s);
        format!(
            "primary: {} last closed {} peer applied {} retention {} bytes, {:?}, resync {:?}, stalled {:?}; secondary: follows {} applied {} replica {:?} at {:?} rebasing {} failure {:?}, {:?}; errors {:?} / {:?}",
            p.generation(),
            p.last_closed(),
            p.peer_applied(),
            p.retention_bytes(),
            p.stats(),
            p.resync_stats(),
            p.stalled(),
            s.history(),
            s.applied(),
            s.replica_state(),
            s.replica_point(),
            s.rebasing(),
            s.failure(),
            s.stats(),
            self.primary_errors,
            self.secondary_errors,
        )
    }
}

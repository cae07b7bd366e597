//! A simulated link of several lanes between primary and secondary. Every frame is a
//! packet with its own delay, so frames arrive in any order; packets can be dropped,
//! duplicated or held back, and a lane (or the whole link) can break: a broken lane loses
//! what was in flight on it, as a closed TCP connection does.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToSecondary,
    ToPrimary,
}

#[derive(Debug)]
struct Packet {
    deliver_at_us: u64,
    lane: usize,
    epoch: u64,
    direction: Direction,
    bytes: Vec<u8>,
}

/// Fault rates, in parts per 10,000 per packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetFaults {
    pub drop: u32,
    pub duplicate: u32,
    /// Held back far longer than usual (reordered well past its neighbours).
    pub delay: u32,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub packets: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
    /// Packets lost because their lane broke while they were in flight.
    pub lost_in_breaks: u64,
}

#[derive(Debug)]
pub struct Network {
    packets: Vec<Packet>,
    /// Per lane: connection generation; packets of an older one are lost.
    epochs: Vec<u64>,
    /// Per lane: connected right now.
    up: Vec<bool>,
    latency_us_max: u64,
    pub faults: NetFaults,
    pub stats: NetStats,
}

impl Network {
    pub fn new(lanes: usize, latency_us_max: u64, faults: NetFaults) -> Network {
        Network {
            packets: Vec::new(),
            epochs: vec![0; lanes],
            up: vec![false; lanes],
            latency_us_max,
            faults,
            stats: NetStats::default(),
        }
    }

    pub fn lanes(&self) -> usize {
        self.up.len()
    }

    pub fn is_up(&self, lane: usize) -> bool {
        self.up[lane]
    }

    pub fn connect(&mut self, lane: usize) {
        assert!(!self.up[lane]);
        self.up[lane] = true;
        self.epochs[lane] += 1;
    }

    /// Breaks the lane: everything in flight on it is lost.
    pub fn disconnect(&mut self, lane: usize) {
        self.up[lane] = false;
        self.epochs[lane] += 1;
    }

    fn one_in(rng: &mut ChaCha8Rng, per_10k: u32) -> bool {
        per_10k > 0 && rng.random_ratio(per_10k.min(10_000), 10_000)
    }

    /// Sends one encoded frame on `lane`.
    pub fn send(
        &mut self,
        rng: &mut ChaCha8Rng,
        now_us: u64,
        lane: usize,
        direction: Direction,
        frame: &[u8],
    ) {
        assert!(self.up[lane], "send on a connected lane");
        self.stats.packets += 1;
        if Self::one_in(rng, self.faults.drop) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if Self::one_in(rng, self.faults.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = rng.random_range(0..=self.latency_us_max);
            if Self::one_in(rng, self.faults.delay) {
                self.stats.delayed += 1;
                delay += rng.random_range(0..=50 * self.latency_us_max.max(100));
            }
            self.packets.push(Packet {
                deliver_at_us: now_us + delay,
                lane,
                epoch: self.epochs[lane],
                direction,
                bytes: frame.to_vec(),
            });
        }
    }

    /// Removes and returns one packet due by `now_us` (a random one of those due), with
    /// its lane and direction; packets of broken connections are discarded on the way.
    pub fn next_due(
        &mut self,
        rng: &mut ChaCha8Rng,
        now_us: u64,
    ) -> Option<(usize, Direction, Vec<u8>)> {
        loop {
            let due: usize = self
                .packets
                .iter()
                .filter(|p| p.deliver_at_us <= now_us)
                .count();
            if due == 0 {
                return None;
            }
            let pick = rng.random_range(0..due);
            let index = self
                .packets
                .iter()
                .enumerate()
                .filter(|(_, p)| p.deliver_at_us <= now_us)
                .nth(pick)
                .map(|(i, _)| i)
                .expect("pick < due");
            let packet = self.packets.swap_remove(index);
            if packet.epoch != self.epochs[packet.lane] {
                self.stats.lost_in_breaks += 1;
                continue;
            }
            return Some((packet.lane, packet.direction, packet.bytes));
        }
    }
}

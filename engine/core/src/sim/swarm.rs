//! Swarm testing: every seed draws its own configuration (lanes, volumes, data-set
//! policy, window and journal sizes, fault rates), so a thousand seeds explore a thousand
//! corners instead of one.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::net::NetFaults;
use crate::primary::{DataSetPolicy, PrimaryConfig, Replication, WindowFull};
use crate::protocol::GroupId;
use crate::secondary::journal::required_bytes;
use crate::secondary::{InjectedBug, SecondaryConfig};
use crate::storage::Geometry;

/// What the volumes hold when the world starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// All zeros on both sides (volumes ordo created): no initial sync.
    Zero,
    /// The primary's volumes hold data and the replicas were seeded with a copy (`dd`):
    /// an initial sync that finds nothing to send.
    Seeded,
    /// The primary's volumes hold data and the replicas hold other data (a replaced
    /// disk): an initial sync.
    Fresh,
}

/// The lifecycle a seed lives through, drawn apart from the rest of its configuration.
#[derive(Clone, Copy, Debug)]
pub struct Lifecycle {
    pub origin: Origin,
    /// Primary crashes (its disks keep, drop or tear what was not flushed), per 10,000
    /// steps.
    pub primary_crash: u32,
    /// Secondaries started again on a new journal over their old replicas, per 10,000
    /// steps.
    pub state_lost: u32,
    /// How long the operator leaves a held resync before letting it go on without a
    /// consistent image (`allow_inconsistent`).
    pub consent_after_us: u64,
}

#[derive(Clone, Debug)]
pub struct SwarmConfig {
    pub primary: PrimaryConfig,
    pub secondary: SecondaryConfig,
    pub volumes: Vec<Geometry>,
    pub journal: Geometry,
    pub disk_complete_percent: u32,
    pub latency_us_max: u64,
    pub step_us_max: u64,
    pub net_faults: NetFaults,
    /// Per 10,000 steps.
    pub lane_break: u32,
    pub partition: u32,
    pub crash: u32,
    /// Recovery checks (a copy of the secondary crashed and recovered on the side), per
    /// 10,000 steps between data sets; ten times as many mid-apply.
    pub fork_check: u32,
    /// Per 100 steps.
    pub write_percent: u32,
    /// Per 1,000 steps.
    pub flush_per_mille: u32,
    pub writes: u64,
    pub lifecycle: Lifecycle,
}

impl SwarmConfig {
    pub fn draw(rng: &mut ChaCha8Rng, bug: Option<InjectedBug>) -> SwarmConfig {
        let lanes = rng.random_range(1..=8);
        let max_write_bytes = 4096 * rng.random_range(1..=8u32);
        let max_in_flight = rng.random_range(2..=32);
        let volumes: Vec<Geometry> = (0..rng.random_range(1..=3))
            .map(|_| {
                let block_size = if rng.random_bool(0.3) { 512 } else { 4096 };
                let size_bytes = 4096 * rng.random_range(8..=48u64);
                Geometry {
                    size_bytes,
                    block_size,
                    max_io_bytes: 1 << 20,
                    max_in_flight,
                }
            })
            .collect();
        let policy = DataSetPolicy {
            interval_ms: if rng.random_bool(0.3) {
                0
            } else {
                rng.random_range(1..=30)
            },
            max_writes: rng.random_range(1..=32),
            max_bytes: 4096 * rng.random_range(1..=64),
        };
        let data_set_max = policy.max_stream_bytes(max_write_bytes);
        // The secondary may accept larger writes than the primary sends.
        let secondary_max_write = max_write_bytes * rng.random_range(1..=2);
        // The secondary's staging arena claims whole 512-byte granules.
        let window_bytes = (data_set_max * rng.random_range(1..=3))
            .max(u64::from(secondary_max_write) + 2 * 4096)
            .next_multiple_of(512);
        let retention_floor = 2 * (u64::from(max_write_bytes) + 2 * 4096);
        let journal_block = if rng.random_bool(0.3) { 512 } else { 4096 };
        let journal_bytes = required_bytes(window_bytes, secondary_max_write, journal_block)
            + u64::from(journal_block) * rng.random_range(0..64);
        let names: Vec<String> = (0..volumes.len()).map(|i| format!("vol{i}")).collect();
        let group = GroupId(rng.random_range(1..=1000));
        let faulty = rng.random_bool(0.85);
        // Drawn from a stream of its own, so every other draw of a seed stays as it was
        // before the mode existed (the regression seeds replay the same runs).
        let mut modes = rng.clone();
        modes.set_stream(1);
        let replication = if modes.random_bool(0.25) {
            Replication::GroupOrdered
        } else {
            Replication::Pipelined
        };
        let mut lives = rng.clone();
        lives.set_stream(2);
        let (lifecycle, on_window_full, resync_rate_bytes) = draw_lifecycle(&mut lives, faulty);
        let rate =
            |rng: &mut ChaCha8Rng, max: u32| if faulty { rng.random_range(0..=max) } else { 0 };
        SwarmConfig {
            primary: PrimaryConfig {
                group,
                volume_names: names.clone(),
                policy,
                window_bytes: retention_floor * rng.random_range(1..=16),
                max_write_bytes,
                lanes,
                retransmit_ms: rng.random_range(5..=60),
                max_pending_flushes: 8,
                replication,
                on_window_full,
                resync_rate_bytes,
                bug,
            },
            secondary: SecondaryConfig {
                group,
                volume_names: names,
                window_bytes,
                max_write_bytes: secondary_max_write,
                lanes,
                applied_interval_ms: rng.random_range(5..=100),
                bug,
            },
            volumes,
            journal: Geometry {
                size_bytes: journal_bytes,
                block_size: journal_block,
                max_io_bytes: 1 << 20,
                max_in_flight: rng.random_range(4..=64),
            },
            disk_complete_percent: rng.random_range(20..=100),
            latency_us_max: rng.random_range(0..=2000),
            step_us_max: rng.random_range(20..=400),
            net_faults: NetFaults {
                drop: rate(rng, 500),
                duplicate: rate(rng, 300),
                delay: rate(rng, 300),
            },
            lane_break: rate(rng, 30),
            partition: rate(rng, 5),
            crash: rate(rng, 10),
            fork_check: rng.random_range(100..=500),
            write_percent: rng.random_range(5..=60),
            flush_per_mille: rng.random_range(0..=30),
            writes: rng.random_range(50..=400),
            lifecycle,
        }
    }
}

fn draw_lifecycle(rng: &mut ChaCha8Rng, faulty: bool) -> (Lifecycle, WindowFull, u64) {
    let origin = match rng.random_range(0..10) {
        0 | 1 => Origin::Seeded,
        2 | 3 => Origin::Fresh,
        _ => Origin::Zero,
    };
    let rate = |rng: &mut ChaCha8Rng, max: u32| {
        if faulty && rng.random_bool(0.5) {
            rng.random_range(1..=max)
        } else {
            0
        }
    };
    let lifecycle = Lifecycle {
        origin,
        primary_crash: rate(rng, 8),
        state_lost: if rng.random_bool(0.2) {
            rate(rng, 2)
        } else {
            0
        },
        consent_after_us: rng.random_range(200_000..=3_000_000),
    };
    let on_window_full = if rng.random_bool(0.5) {
        WindowFull::Track {
            timeout_ms: rng.random_range(1..=40),
        }
    } else {
        WindowFull::Block
    };
    let resync_rate_bytes = if rng.random_bool(0.5) {
        0
    } else {
        rng.random_range(256 << 10..=4 << 20)
    };
    (lifecycle, on_window_full, resync_rate_bytes)
}

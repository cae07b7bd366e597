//! The deterministic simulator, ordo's main test. One seed drives everything: the
//! configuration (swarm testing), the workload, disk completion order, network delays and
//! faults (drop, duplicate, reorder, delay, broken lanes, partitions) and secondary crashes
//! with torn journal writes. After every step the checker compares the secondary with an
//! independent model of the primary (see `World::check`). A failing seed replays exactly.

mod disk;
mod model;
mod net;
mod swarm;
mod world;

use std::fmt;

pub use disk::SimDisk;
pub use swarm::{Lifecycle, Origin, SwarmConfig};
pub use world::World;

use crate::secondary::InjectedBug;

/// What one or more seeds exercised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub seeds: u64,
    pub steps: u64,
    pub writes: u64,
    /// Of the writes, those that started or ended inside a block; and those refused (to be
    /// retried) because the volume's queue was too full to read the rest of a block.
    pub partial_writes: u64,
    pub partial_queue_full: u64,
    /// Ranges zeroed (NBD's WRITE_ZEROES and TRIM).
    pub zeroes: u64,
    pub flushes: u64,
    /// Application reads on the primary.
    pub reads: u64,
    pub data_sets: u64,
    pub window_full: u64,
    pub packets: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub lost_in_breaks: u64,
    pub retransmits: u64,
    pub lane_breaks: u64,
    pub partitions: u64,
    pub crashes: u64,
    /// Of the crashes, those that lost the process but not the disks' unflushed writes.
    pub process_crashes: u64,
    pub torn_writes: u64,
    pub recovered_records: u64,
    pub recovery_checks: u64,
    /// I/O errors injected into the secondary's disks, and the failures they caused.
    pub io_errors: u64,
    pub io_failures: u64,
    /// Primary crashes (and restarts on a new generation), windows dropped (it stayed full
    /// in `WindowFull::Track`, or a secondary could not be served), secondaries started on a
    /// new journal over their replicas,
    /// re-bases, resyncs that reached their end point, bytes a resync compared and sent,
    /// held resyncs that kept their room in the secondary's window and the times writes
    /// waited for it, and held resyncs the operator let go on inconsistent.
    pub primary_crashes: u64,
    pub window_drops: u64,
    pub states_lost: u64,
    pub rebases: u64,
    pub resyncs_done: u64,
    pub resync_compared: u64,
    pub resync_sent: u64,
    pub rooms_kept: u64,
    pub room_waits: u64,
    pub consents: u64,
}

impl SimStats {
    pub fn add(&mut self, other: &SimStats) {
        self.seeds += other.seeds;
        self.steps += other.steps;
        self.writes += other.writes;
        self.partial_writes += other.partial_writes;
        self.partial_queue_full += other.partial_queue_full;
        self.zeroes += other.zeroes;
        self.flushes += other.flushes;
        self.reads += other.reads;
        self.data_sets += other.data_sets;
        self.window_full += other.window_full;
        self.packets += other.packets;
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.delayed += other.delayed;
        self.lost_in_breaks += other.lost_in_breaks;
        self.retransmits += other.retransmits;
        self.lane_breaks += other.lane_breaks;
        self.partitions += other.partitions;
        self.crashes += other.crashes;
        self.process_crashes += other.process_crashes;
        self.torn_writes += other.torn_writes;
        self.recovered_records += other.recovered_records;
        self.recovery_checks += other.recovery_checks;
        self.io_errors += other.io_errors;
        self.io_failures += other.io_failures;
        self.primary_crashes += other.primary_crashes;
        self.window_drops += other.window_drops;
        self.states_lost += other.states_lost;
        self.rebases += other.rebases;
        self.resyncs_done += other.resyncs_done;
        self.resync_compared += other.resync_compared;
        self.resync_sent += other.resync_sent;
        self.rooms_kept += other.rooms_kept;
        self.room_waits += other.room_waits;
        self.consents += other.consents;
    }
}

impl fmt::Display for SimStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "steps {} writes {} (partial blocks {}, retried for a full queue {}) zeroings {} flushes {} reads {} data sets {} window-full waits {} | packets {} dropped {} duplicated {} delayed {} lost-in-breaks {} retransmits {} | lane breaks {} partitions {} crashes {} (process only {}) torn writes {} records recovered {} recovery checks {} | I/O errors {} (secondary restarts after one {}) | primary crashes {} window drops {} states lost {} re-bases {} resyncs done {} (compared {} B, sent {} B) room kept {} (writes waited {} times) consents {}",
            self.steps,
            self.writes,
            self.partial_writes,
            self.partial_queue_full,
            self.zeroes,
            self.flushes,
            self.reads,
            self.data_sets,
            self.window_full,
            self.packets,
            self.dropped,
            self.duplicated,
            self.delayed,
            self.lost_in_breaks,
            self.retransmits,
            self.lane_breaks,
            self.partitions,
            self.crashes,
            self.process_crashes,
            self.torn_writes,
            self.recovered_records,
            self.recovery_checks,
            self.io_errors,
            self.io_failures,
            self.primary_crashes,
            self.window_drops,
            self.states_lost,
            self.rebases,
            self.resyncs_done,
            self.resync_compared,
            self.resync_sent,
            self.rooms_kept,
            self.room_waits,
            self.consents
        )
    }
}

/// A broken invariant: the seed and step replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: {}\nreplay: cargo run --release -p ordo-tools -- sim --seed {}",
            self.seed, self.step, self.what, self.seed
        )
    }
}

/// Runs one seed to the end (workload, healing, liveness, final image).
pub fn run_seed(seed: u64, bug: Option<InjectedBug>) -> (SimStats, Result<(), Violation>) {
    let mut world = World::new(seed, bug);
    let result = world.run();
    let mut stats = world.stats;
    stats.seeds = 1;
    world.add_link_stats(&mut stats);
    (stats, result)
}

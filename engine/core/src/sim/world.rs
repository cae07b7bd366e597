//! One simulated world: a primary and a secondary on simulated disks, joined by a faulty
//! multi-lane network, driven step by step from one seeded PRNG, with the invariant
//! checked after every step.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use std::cell::Cell;
use std::rc::Rc;

mod lifecycle;
mod workload;

use super::disk::{SimDisk, INJECTED_ERROR};
use super::model::Model;
use super::net::{Direction, Network};
use super::swarm::SwarmConfig;
use super::{SimStats, Violation};
use crate::primary::{Primary, PrimaryEvent};
use crate::protocol::{decode, frame_len, DataSetId, GenerationId};
use crate::secondary::{InjectedBug, ReplicaState, Secondary};
use crate::storage::Storage;

/// Simulated time allowed after the workload ends for the secondary to reach the last
/// closed data set: generous next to the longest fault (a 100 ms partition).
const LIVENESS_US: u64 = 20_000_000;
/// Simulated time the workload may take, faults included.
const WORKLOAD_US: u64 = 300_000_000;
const TRANSMIT_BUDGET_BYTES: usize = 64 << 10;

#[derive(Debug)]
pub struct World {
    seed: u64,
    rng: ChaCha8Rng,
    config: SwarmConfig,
    now_us: u64,
    step: u64,
    primary: Primary<SimDisk>,
    secondary: Option<Secondary<SimDisk>>,
    crashed: Option<(SimDisk, Vec<SimDisk>)>,
    restart_at_us: u64,
    net: Network,
    reconnect_at_us: Vec<u64>,
    partition_until_us: u64,
    faults_on: bool,
    /// I/O errors of the secondary's disks, per 10,000 completions (0 once faults stop),
    /// and how many of those its disks have injected that the checker has seen.
    io_errors: Rc<Cell<u32>>,
    errors_seen: u64,
    model: Model,
    /// The newest image the secondary's replica has shown (a history and a data set of
    /// it); it must never go back to an older one.
    reported: Option<(GenerationId, DataSetId)>,
    checked: Option<(GenerationId, DataSetId)>,
    /// The replica may be inconsistent now (an initial sync, or a resync the operator let
    /// go on without a consistent image), until it is consistent again.
    inconsistency_allowed: bool,
    /// Since when the secondary's resync has been held (for the operator's consent).
    held_since_us: Option<u64>,
    /// The lifecycle's own draws (primary crashes, lost states, consents), apart from the
    /// rest so that seeds without them run as before.
    life_rng: ChaCha8Rng,
    /// Seeds for the primary's generation ids, one per start.
    primary_seed: u64,
    writes_left: u64,
    /// Application reads on the primary, drawn apart from everything else so that every
    /// seed's other draws stay as they were before reads existed: how often, and where.
    reads_rng: ChaCha8Rng,
    read_percent: u32,
    /// Writes that start or end inside a block (the primary merges them), drawn apart in
    /// the same way: how often, and how much of the drawn write's first and last block is
    /// cut away.
    partial_rng: ChaCha8Rng,
    partial_percent: u32,
    /// Ranges zeroed (NBD's WRITE_ZEROES and TRIM), drawn apart in the same way: how
    /// often, and where.
    zero_rng: ChaCha8Rng,
    zero_percent: u32,
    next_token: u64,
    buf: Vec<u8>,
    pub stats: SimStats,
}

impl World {
    pub fn new(seed: u64, bug: Option<InjectedBug>) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let config = SwarmConfig::draw(&mut rng, bug);
        let disk = |rng: &mut ChaCha8Rng, geometry| {
            SimDisk::new(geometry, config.disk_complete_percent, rng.next_u64())
        };
        let primary_disks: Vec<SimDisk> =
            config.volumes.iter().map(|&g| disk(&mut rng, g)).collect();
        let replicas: Vec<SimDisk> = config.volumes.iter().map(|&g| disk(&mut rng, g)).collect();
        let journal = disk(&mut rng, config.journal);
        let journal_id = rng.next_u64();
        let mut life_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x11FE_C7C1);
        let (primary, replicas, model) =
            lifecycle::origin(&config, &mut life_rng, primary_disks, replicas);
        // The secondary's disks fail at a rate drawn apart from the swarm config, so seeds
        // without I/O errors (half of them) run exactly as before errors could be
        // injected; and only once the journal is formatted.
        let io_errors = Rc::new(Cell::new(0));
        let (mut journal, mut replicas): (SimDisk, Vec<SimDisk>) = (journal, replicas);
        journal.fail_at(&io_errors);
        replicas.iter_mut().for_each(|r| r.fail_at(&io_errors));
        let zeroed = config.lifecycle.origin == super::Origin::Zero;
        let secondary = Secondary::create(
            config.secondary.clone(),
            journal_id,
            journal,
            replicas,
            zeroed,
        )
        .expect("swarm draws a valid secondary");
        let mut errors_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10E_0E44);
        if errors_rng.random_bool(0.5) {
            io_errors.set(errors_rng.random_range(1..=30));
        }
        let lanes = config.primary.lanes;
        let inconsistency_allowed = config.lifecycle.origin != super::Origin::Zero;
        let mut reads_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EAD_5EAD);
        let read_percent = if reads_rng.random_bool(0.5) {
            reads_rng.random_range(1..=30)
        } else {
            0
        };
        let mut partial_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5AB_B10C);
        let partial_percent = if partial_rng.random_bool(0.5) {
            partial_rng.random_range(1..=50)
        } else {
            0
        };
        let mut zero_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x2E80_2E80);
        let zero_percent = if zero_rng.random_bool(0.5) {
            zero_rng.random_range(1..=10)
        } else {
            0
        };
        World {
            seed,
            reads_rng,
            read_percent,
            partial_rng,
            partial_percent,
            zero_rng,
            zero_percent,
            net: Network::new(lanes, config.latency_us_max, config.net_faults),
            writes_left: config.writes,
            model,
            reported: None,
            checked: None,
            inconsistency_allowed,
            held_since_us: None,
            primary_seed: life_rng.next_u64(),
            life_rng,
            rng,
            config,
            now_us: 0,
            step: 0,
            primary,
            secondary: Some(secondary),
            crashed: None,
            restart_at_us: 0,
            reconnect_at_us: vec![0; lanes],
            partition_until_us: 0,
            faults_on: true,
            io_errors,
            errors_seen: 0,
            next_token: 0,
            buf: Vec::with_capacity(TRANSMIT_BUDGET_BYTES * 2),
            stats: SimStats::default(),
        }
    }

    /// Adds what the network, the primary and the secondary's re-bases counted to `stats`.
    pub fn add_link_stats(&mut self, stats: &mut SimStats) {
        self.add_resync_stats();
        stats.resync_compared = self.stats.resync_compared;
        stats.window_drops = self.stats.window_drops;
        stats.resync_sent = self.stats.resync_sent;
        stats.rooms_kept = self.stats.rooms_kept;
        stats.room_waits = self.stats.room_waits;
        stats.resyncs_done = self.stats.resyncs_done;
        let running = self.secondary.as_ref().map_or(0, |s| s.stats().rebases);
        stats.rebases = self.stats.rebases + running;
        let net = self.net.stats;
        stats.packets += net.packets;
        stats.dropped += net.dropped;
        stats.duplicated += net.duplicated;
        stats.delayed += net.delayed;
        stats.lost_in_breaks += net.lost_in_breaks;
        stats.retransmits += self.primary.stats().retransmits;
    }

    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            step: self.step,
            what,
        }
    }

    /// Runs the workload with faults, then heals everything and waits for the secondary to
    /// reach the last closed data set.
    pub fn run(&mut self) -> Result<(), Violation> {
        while self.writes_left > 0 {
            self.step()?;
            if self.now_us >= WORKLOAD_US {
                return Err(self.violation(format!(
                    "liveness: {} writes still to go after {} s: {}",
                    self.writes_left,
                    WORKLOAD_US / 1_000_000,
                    self.describe()
                )));
            }
        }
        self.flush_primary()?;
        self.faults_on = false;
        self.io_errors.set(0);
        self.partition_until_us = 0;
        self.reconnect_at_us.fill(0);
        self.restart_at_us = 0;
        let deadline_us = self.now_us + LIVENESS_US;
        loop {
            self.step()?;
            let target = (self.model.current(), self.model.last_closed());
            if let Some(secondary) = &self.secondary {
                if secondary.replica_point() == Some(target) && secondary.is_between_data_sets() {
                    break;
                }
            }
            if self.now_us >= deadline_us {
                return Err(self.violation(format!(
                    "liveness: {} s after the workload the secondary has not reached {} of {}: {}",
                    LIVENESS_US / 1_000_000,
                    target.1,
                    target.0,
                    self.describe()
                )));
            }
        }
        self.check_final_image()
    }

    /// The state of both sides, for a violation report.
    pub(super) fn describe(&self) -> String {
        let primary = format!(
            "primary: {} last closed {}, peer applied {}, retention {} bytes from {:?}, {:?}, resync {:?}, stalled {:?}",
            self.primary.generation(),
            self.primary.last_closed(),
            self.primary.peer_applied(),
            self.primary.retention_bytes(),
            self.primary.retention_front(),
            self.primary.stats(),
            self.primary.resync_stats(),
            self.primary.stalled()
        );
        let secondary = match &self.secondary {
            Some(s) => format!(
                "secondary: follows {} cursor {:?} applied {}, replica {:?} at {:?}, between data sets {}, rebasing {}, journal use {:?}, {:?}",
                s.history(),
                s.cursor_state(),
                s.applied(),
                s.replica_state(),
                s.replica_point(),
                s.is_between_data_sets(),
                s.rebasing(),
                s.journal_use(),
                s.stats()
            ),
            None => "secondary: crashed".to_string(),
        };
        let lanes: Vec<bool> = (0..self.net.lanes()).map(|l| self.net.is_up(l)).collect();
        format!(
            "{primary}; {secondary}; lanes up {lanes:?}; world: {:?} {}",
            self.config.lifecycle, self.stats
        )
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.step += 1;
        self.stats.steps += 1;
        self.now_us += self.rng.random_range(1..=self.config.step_us_max);
        let now_ms = self.now_us / 1000;
        self.workload()?;
        self.primary.tick(now_ms);
        self.primary.poll_storage();
        self.drain_primary_events()?;
        self.transmit();
        self.deliver()?;
        // A frame may have made the primary begin a new generation.
        self.drain_primary_events()?;
        if let Some(secondary) = &mut self.secondary {
            secondary.tick(now_ms);
            secondary.poll_storage();
        }
        if self.faults_on {
            self.inject_faults();
            self.lifecycle_faults()?;
        }
        self.check_room()?;
        self.operator();
        self.reconnect()?;
        self.check()
    }

    fn drain_primary_events(&mut self) -> Result<(), Violation> {
        while let Some(event) = self.primary.next_event() {
            match event {
                PrimaryEvent::DataSetClosed {
                    data_set, sync_seq, ..
                } => {
                    self.stats.data_sets += 1;
                    self.model
                        .close(data_set, sync_seq)
                        .map_err(|e| self.violation(e))?;
                }
                PrimaryEvent::WriteDone { result: Err(e), .. }
                | PrimaryEvent::FlushDone { result: Err(e), .. } => {
                    return Err(self.violation(format!("primary I/O failed: {e}")));
                }
                PrimaryEvent::WriteDone { .. } | PrimaryEvent::FlushDone { .. } => {}
            }
        }
        Ok(())
    }

    fn transmit(&mut self) {
        let now_ms = self.now_us / 1000;
        for lane in 0..self.net.lanes() {
            if !self.net.is_up(lane) {
                continue;
            }
            self.buf.clear();
            self.primary
                .poll_transmit(now_ms, lane, &mut self.buf, TRANSMIT_BUDGET_BYTES);
            send_frames(
                &mut self.net,
                &mut self.rng,
                self.now_us,
                lane,
                Direction::ToSecondary,
                &self.buf,
            );
            if let Some(secondary) = &mut self.secondary {
                self.buf.clear();
                secondary.poll_transmit(lane, &mut self.buf, TRANSMIT_BUDGET_BYTES);
                send_frames(
                    &mut self.net,
                    &mut self.rng,
                    self.now_us,
                    lane,
                    Direction::ToPrimary,
                    &self.buf,
                );
            }
        }
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        for _ in 0..256 {
            let Some((lane, direction, bytes)) = self.net.next_due(&mut self.rng, self.now_us)
            else {
                break;
            };
            let (frame, used) =
                decode(&bytes).map_err(|e| self.violation(format!("undecodable frame: {e}")))?;
            assert_eq!(used, bytes.len());
            let result = match direction {
                Direction::ToPrimary => self.primary.handle_frame(lane, &frame),
                Direction::ToSecondary => match &mut self.secondary {
                    Some(secondary) => secondary.handle_frame(lane, &frame),
                    None => Ok(()),
                },
            };
            result.map_err(|e| {
                self.violation(format!("peer error on lane {lane} ({direction:?}): {e}"))
            })?;
            if self.secondary.as_ref().is_some_and(Secondary::rebasing) {
                // It takes no lane until the re-base is durable; the primary reconnects.
                (0..self.net.lanes()).for_each(|lane| self.break_lane(lane, 0));
                break;
            }
        }
        Ok(())
    }

    fn break_lane(&mut self, lane: usize, down_us: u64) {
        if self.net.is_up(lane) {
            self.net.disconnect(lane);
            self.primary.lane_down(lane);
            if let Some(secondary) = &mut self.secondary {
                secondary.lane_down(lane);
            }
        }
        self.reconnect_at_us[lane] = self.reconnect_at_us[lane].max(self.now_us + down_us);
    }

    fn inject_faults(&mut self) {
        let lanes = self.net.lanes();
        if self.rng.random_ratio(self.config.lane_break, 10_000) {
            let lane = self.rng.random_range(0..lanes);
            let down_us = self.rng.random_range(0..=20_000);
            self.break_lane(lane, down_us);
            self.stats.lane_breaks += 1;
        }
        if self.rng.random_ratio(self.config.partition, 10_000) {
            let down_us = self.rng.random_range(5_000..=100_000);
            (0..lanes).for_each(|lane| self.break_lane(lane, down_us));
            self.partition_until_us = self.now_us + down_us;
            self.stats.partitions += 1;
        }
        if self.secondary.is_some() && self.rng.random_ratio(self.config.crash, 10_000) {
            self.crash_secondary(false);
        }
    }

    /// Errors injected so far into a secondary's journal and replicas.
    fn injected_errors(secondary: &Secondary<SimDisk>) -> u64 {
        let (journal, replicas) = secondary.storages();
        journal.injected_errors + replicas.iter().map(|r| r.injected_errors).sum::<u64>()
    }

    fn crash_secondary(&mut self, power_loss: bool) {
        (0..self.net.lanes()).for_each(|lane| self.break_lane(lane, 0));
        let secondary = self.secondary.take().expect("running");
        self.stats.rebases += secondary.stats().rebases;
        let (mut journal, mut replicas) = secondary.into_storages();
        if power_loss || self.rng.random_bool(0.5) {
            // Power loss: what was not flushed may be lost or torn.
            journal.crash();
            replicas.iter_mut().for_each(SimDisk::crash);
        } else {
            // The process died; the disks keep every write.
            self.stats.process_crashes += 1;
        }
        self.crashed = Some((journal, replicas));
        self.restart_at_us = self.now_us + self.rng.random_range(0..=50_000);
        self.stats.crashes += 1;
    }

    fn reconnect(&mut self) -> Result<(), Violation> {
        if self.now_us >= self.restart_at_us {
            if let Some((journal, replicas)) = self.crashed.take() {
                self.stats.torn_writes +=
                    journal.torn_writes + replicas.iter().map(|r| r.torn_writes).sum::<u64>();
                // Recovery itself runs on healthy disks: errors resume once it is done.
                let rate = self.io_errors.replace(0);
                let opened = Secondary::open(self.config.secondary.clone(), journal, replicas);
                self.io_errors.set(rate);
                let restarted =
                    opened.map_err(|e| self.violation(format!("restart failed: {e}")))?;
                // Errors injected into requests dropped by the crash were never seen by a
                // running secondary: count from here.
                self.errors_seen = Self::injected_errors(&restarted);
                self.stats.recovered_records += restarted.stats().recovered_records;
                self.secondary = Some(restarted);
                self.checked = None;
            }
        }
        let rebasing = self.secondary.as_ref().is_some_and(Secondary::rebasing);
        if self.secondary.is_none() || self.now_us < self.partition_until_us || rebasing {
            return Ok(());
        }
        for lane in 0..self.net.lanes() {
            if !self.net.is_up(lane) && self.now_us >= self.reconnect_at_us[lane] {
                self.net.connect(lane);
                self.primary.lane_up(lane);
                self.secondary.as_mut().expect("running").lane_up(lane);
            }
        }
        Ok(())
    }

    /// The invariant: the watermark never goes back; between data sets the replica is the
    /// image of the data set it reports; and a crash now would recover to a closed data
    /// set no older than that.
    fn check(&mut self) -> Result<(), Violation> {
        let Some(secondary) = &self.secondary else {
            return Ok(());
        };
        // Every injected error reaches the secondary in the poll that completes it, and it
        // must stop: a secondary that went on after a failed write or flush would ack or
        // apply what may not be on its disk.
        let injected = Self::injected_errors(secondary);
        let new_errors = injected - self.errors_seen;
        if new_errors > 0 && secondary.failure().is_none() {
            return Err(self.violation(format!(
                "the secondary went on after {new_errors} injected I/O error(s)"
            )));
        }
        self.errors_seen = injected;
        self.stats.io_errors += new_errors;
        if let Some(why) = secondary.failure() {
            if !why.contains(INJECTED_ERROR) {
                return Err(self.violation(format!("secondary stopped: {why}")));
            }
            // A disk failed: the operator restarts the secondary, which recovers as from a
            // power loss (what the failed request did is unknown).
            self.stats.io_failures += 1;
            self.crash_secondary(true);
            return Ok(());
        }
        let point = secondary.replica_point();
        let between = secondary.is_between_data_sets();
        let digest = (between && point.is_some() && self.checked != point)
            .then(|| World::replica_digest(secondary.replicas()));
        self.check_point(point, digest, "replica")?;
        if point.is_some() {
            self.reported = point;
            // Consistent again, with no consent waiting to be written.
            if secondary.replica_state() == ReplicaState::Consistent && !secondary.edit_pending() {
                self.inconsistency_allowed = false;
            }
            if digest.is_some() {
                self.checked = point;
            }
        }
        // Crashing mid-apply is where an applier can go wrong: check those instants ten
        // times as often.
        let rate = if secondary.is_between_data_sets() {
            self.config.fork_check
        } else {
            (self.config.fork_check * 10).min(10_000)
        };
        if self.rng.random_ratio(rate, 10_000) {
            self.check_recovery_now()?;
        }
        Ok(())
    }

    /// Crashes a copy of the secondary's disks now, recovers it and checks what it holds.
    fn check_recovery_now(&mut self) -> Result<(), Violation> {
        let Some(secondary) = &self.secondary else {
            return Ok(());
        };
        self.stats.recovery_checks += 1;
        let (journal, replicas) = secondary.storages();
        let mut journal = journal.clone();
        let mut replicas: Vec<SimDisk> = replicas.to_vec();
        journal.never_fail();
        replicas.iter_mut().for_each(SimDisk::never_fail);
        if self.rng.random_bool(0.5) {
            journal.crash();
            replicas.iter_mut().for_each(SimDisk::crash);
        }
        let mut copy = Secondary::open(self.config.secondary.clone(), journal, replicas)
            .map_err(|e| self.violation(format!("recovery of a crashed copy failed: {e}")))?;
        loop {
            let handled = copy.poll_storage();
            if (handled == 0 && copy.is_between_data_sets()) || copy.failure().is_some() {
                break;
            }
        }
        if let Some(why) = copy.failure() {
            return Err(self.violation(format!("recovered copy stopped: {why}")));
        }
        let digest = World::replica_digest(copy.replicas());
        self.check_point(
            copy.replica_point(),
            Some(digest),
            "replica recovered from a crash now",
        )
    }

    fn check_final_image(&self) -> Result<(), Violation> {
        let primary = self.primary.volumes().iter().zip(self.model.image());
        for (index, (volume, expected)) in primary.enumerate() {
            if let Some(at) = volume
                .contents()
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
            {
                return Err(self.violation(format!(
                    "final image: the primary's own volume {index} differs from the model at byte {at}"
                )));
            }
        }
        let secondary = self.secondary.as_ref().expect("running after healing");
        for (index, (replica, expected)) in secondary
            .replicas()
            .iter()
            .zip(self.model.image())
            .enumerate()
        {
            let actual = replica.contents();
            if let Some(at) = actual.iter().zip(expected).position(|(a, b)| a != b) {
                return Err(self.violation(format!(
                    "final image: volume {index} differs from the primary at byte {at} (block {})",
                    at / replica.geometry().block_size as usize
                )));
            }
        }
        Ok(())
    }
}

/// Splits a transmit buffer into frames, each its own packet.
fn send_frames(
    net: &mut Network,
    rng: &mut ChaCha8Rng,
    now_us: u64,
    lane: usize,
    direction: Direction,
    mut bytes: &[u8],
) {
    while !bytes.is_empty() {
        let len = frame_len(bytes).expect("the engine encodes whole, valid frames");
        net.send(rng, now_us, lane, direction, &bytes[..len]);
        bytes = &bytes[len..];
    }
}

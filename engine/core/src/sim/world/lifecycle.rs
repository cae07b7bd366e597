//! What a deployment lives through, in the simulated world: how it starts (zeroed
//! volumes, a seeded copy, or a replica holding other data), the primary crashing and
//! starting again on a new generation, a secondary started on a new journal over its old
//! replica, and the operator who lets a resync that does not fit go on without a
//! consistent image. The checker's side: the replica is always the image of a closed data
//! set of a history the model knows (or inconsistent where that was allowed), never older
//! than one it showed before, and a held resync that kept its room is never stuck.

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

#[allow(unused_imports)]
use super::*;
use super::{World, LIVENESS_US};
use crate::primary::intent::{required_bytes, WriteIntent};
use crate::primary::{format_record, Primary, ResyncPhase, ResyncRoom, Start};
use crate::protocol::{DataSetId, GenerationId, VolumeInfo};
use crate::secondary::{ReplicaState, Secondary};
use crate::sim::disk::SimDisk;
use crate::sim::model::{digest, Model};
use crate::sim::swarm::{Origin, SwarmConfig};
use crate::sim::Violation;
use crate::storage::Geometry;

/// What the volumes of `config` are, as a handshake describes them.
fn volume_infos(config: &SwarmConfig) -> Vec<VolumeInfo> {
    config
        .volumes
        .iter()
        .zip(&config.primary.volume_names)
        .map(|(g, name)| VolumeInfo {
            name: name.clone(),
            size_bytes: g.size_bytes,
            block_size: g.block_size,
        })
        .collect()
}

/// Starts the primary on `volumes` (filled as the seed's origin says) and says what the
/// replicas hold; returns the primary, the replicas and the model of its first history.
pub(super) fn origin(
    config: &SwarmConfig,
    rng: &mut ChaCha8Rng,
    mut volumes: Vec<SimDisk>,
    mut replicas: Vec<SimDisk>,
) -> (Primary<SimDisk>, Vec<SimDisk>, Model) {
    let origin = config.lifecycle.origin;
    for (volume, replica) in volumes.iter_mut().zip(&mut replicas) {
        if origin == Origin::Zero {
            continue;
        }
        let mut data = vec![0u8; volume.contents().len()];
        rng.fill_bytes(&mut data);
        volume.preset(&data);
        if origin == Origin::Fresh {
            // Another disk's contents, sharing some of it (most blocks differ).
            for byte in data.iter_mut().step_by(3) {
                *byte = rng.random();
            }
        }
        replica.preset(&data);
    }
    let infos = volume_infos(config);
    let size = required_bytes(&infos).next_multiple_of(4096);
    let geometry = Geometry {
        size_bytes: size,
        block_size: if rng.random_bool(0.5) { 512 } else { 4096 },
        max_io_bytes: 1 << 20,
        max_in_flight: rng.random_range(2..=16),
    };
    let disk = SimDisk::new(geometry, config.disk_complete_percent, rng.next_u64());
    let generation = GenerationId(rng.next_u64().max(1));
    let record = format_record(disk, &infos, generation, origin == Origin::Zero)
        .expect("a fresh record on a healthy disk");
    let primary = Primary::new(config.primary.clone(), volumes, record, rng.next_u64())
        .expect("swarm draws a valid primary config");
    let image = primary
        .volumes()
        .iter()
        .map(|v| v.contents().to_vec())
        .collect();
    let model = Model::new(primary.generation(), image);
    (primary, replicas, model)
}

impl World {
    /// The lifecycle's faults: a primary crash, a secondary on a new journal.
    pub(super) fn lifecycle_faults(&mut self) -> Result<(), Violation> {
        let life = self.config.lifecycle;
        if self.life_rng.random_ratio(life.primary_crash, 10_000) {
            self.crash_primary()?;
        }
        if self.secondary.is_some() && self.life_rng.random_ratio(life.state_lost, 10_000) {
            self.lose_secondary_state()?;
        }
        Ok(())
    }

    /// The primary dies (its disks keep, drop or tear what was not flushed, its
    /// write-intent record too) and starts again on its disks: a new generation, whose
    /// image is what the disks kept.
    fn crash_primary(&mut self) -> Result<(), Violation> {
        (0..self.net.lanes()).for_each(|lane| self.break_lane(lane, 0));
        self.add_resync_stats();
        let mut volumes: Vec<SimDisk> = self.primary.volumes().to_vec();
        let mut record = self.primary.intent_storage().clone();
        volumes.iter_mut().for_each(SimDisk::crash);
        record.crash();
        let infos = volume_infos(&self.config);
        let record = WriteIntent::open(record, &infos)
            .map_err(|e| self.violation(format!("the primary's record after a crash: {e}")))?;
        self.primary_seed = self.life_rng.next_u64();
        let primary = Primary::new(
            self.config.primary.clone(),
            volumes,
            record,
            self.primary_seed,
        )
        .map_err(|e| self.violation(format!("primary restart: {e}")))?;
        let image = primary
            .volumes()
            .iter()
            .map(|v| v.contents().to_vec())
            .collect();
        match primary.start() {
            Start::NewGeneration { .. } => self.model.begin(primary.generation(), Some(image)),
            Start::Resumed { data_set } => {
                self.model.resume(primary.generation(), data_set, image);
            }
        }
        self.primary = primary;
        self.stats.primary_crashes += 1;
        Ok(())
    }

    /// The secondary starts on a new journal over its old replicas (its state directory
    /// made anew): an initial sync, inconsistent until its end point.
    fn lose_secondary_state(&mut self) -> Result<(), Violation> {
        (0..self.net.lanes()).for_each(|lane| self.break_lane(lane, 0));
        let secondary = self.secondary.take().expect("running");
        self.stats.rebases += secondary.stats().rebases;
        // An error the old secondary polled this step is its own: it must have stopped
        // on it (as `check` would say), and the new one counts from here.
        let injected = Self::injected_errors(&secondary);
        if injected > self.errors_seen && secondary.failure().is_none() {
            return Err(self.violation(format!(
                "the secondary went on after {} injected I/O error(s)",
                injected - self.errors_seen
            )));
        }
        self.stats.io_errors += injected - self.errors_seen;
        self.errors_seen = injected;
        let (journal, replicas) = secondary.into_storages();
        let created = Secondary::create(
            self.config.secondary.clone(),
            self.life_rng.next_u64(),
            journal,
            replicas,
            false,
        );
        let secondary =
            created.map_err(|e| self.violation(format!("a new journal failed: {e}")))?;
        self.secondary = Some(secondary);
        self.inconsistency_allowed = true;
        self.checked = None;
        self.stats.states_lost += 1;
        Ok(())
    }

    /// A held resync that kept its room in the secondary's window (its worst case fit as
    /// it began, and the application's writes leave it that room) can never fill the
    /// window: the secondary must not report it stuck.
    pub(super) fn check_room(&self) -> Result<(), Violation> {
        let Some(secondary) = &self.secondary else {
            return Ok(());
        };
        let resync = self.primary.resync_stats();
        let running = matches!(
            resync.phase,
            ResyncPhase::Scanning | ResyncPhase::Ending { .. }
        );
        if running
            && resync.room == ResyncRoom::Kept
            && secondary.history() == self.primary.generation()
            && secondary.held_resync_full()
        {
            return Err(self.violation(format!(
                "a held resync that kept its room was reported stuck: {resync:?}"
            )));
        }
        Ok(())
    }

    /// The operator: a resync held for longer than the seed's patience is let go on
    /// without a consistent image (it may not fit the journal window at all).
    pub(super) fn operator(&mut self) {
        let Some(secondary) = &mut self.secondary else {
            return;
        };
        if secondary.replica_state() != ReplicaState::Held {
            self.held_since_us = None;
            return;
        }
        let since = *self.held_since_us.get_or_insert(self.now_us);
        let patience = self.config.lifecycle.consent_after_us.min(LIVENESS_US / 4);
        if self.now_us >= since + patience && secondary.allow_inconsistent().is_ok() {
            self.inconsistency_allowed = true;
            self.held_since_us = None;
            self.stats.consents += 1;
        }
    }

    /// What the primary's resync did, into the run's stats (before it is replaced).
    pub(super) fn add_resync_stats(&mut self) {
        let resync = self.primary.resync_stats();
        self.stats.window_drops += self.primary.stats().window_drops;
        self.stats.resync_compared += resync.bytes_compared;
        self.stats.resync_sent += resync.bytes_sent;
        self.stats.rooms_kept += u64::from(resync.room == ResyncRoom::Kept);
        self.stats.room_waits += resync.room_waits;
        if matches!(resync.phase, ResyncPhase::Done { .. }) {
            self.stats.resyncs_done += 1;
        }
    }

    /// The image a replica shows (`what`: the running one, or a recovered copy) is one the
    /// model knows, no older than what was shown before, and inconsistent only where that
    /// is allowed; `digest` (when given) must be that image's.
    pub(super) fn check_point(
        &self,
        point: Option<(GenerationId, DataSetId)>,
        digest: Option<u64>,
        what: &str,
    ) -> Result<(), Violation> {
        let Some((history, data_set)) = point else {
            if self.inconsistency_allowed {
                return Ok(());
            }
            return Err(self.violation(format!(
                "the {what} is inconsistent, but nothing allowed that (no initial sync, no consent): {}",
                self.describe()
            )));
        };
        let Some(expected) = self.model.digest_at(history, data_set) else {
            return Err(self.violation(format!(
                "the {what} shows {data_set} of {history}, which the primary never closed"
            )));
        };
        if let Some((seen, seen_data_set)) = self.reported {
            let older = if seen == history {
                data_set < seen_data_set
            } else {
                !self.model.descends(history, seen)
            };
            if older {
                return Err(self.violation(format!(
                    "the {what} went back to {data_set} of {history} after showing {seen_data_set} of {seen}"
                )));
            }
        }
        if let Some(actual) = digest {
            if actual != expected {
                return Err(self.violation(format!(
                    "the {what} shows {data_set} of {history} but differs from the primary's image of it (digest {actual:#x}, expected {expected:#x})"
                )));
            }
        }
        Ok(())
    }

    /// The replica's digest now.
    pub(super) fn replica_digest(replicas: &[SimDisk]) -> u64 {
        digest(replicas.iter().map(|r| r.contents()))
    }
}

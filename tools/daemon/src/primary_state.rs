//! The primary's state directory: its write-intent record (`primary.meta`: the history it
//! writes, where a clean stop left the stream, and the extents that may differ from the
//! secondary) and a lock, so one primary runs on it. Without `--state-dir` the record is
//! in memory: a restart then begins a history no secondary follows.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use anyhow::{bail, Context, Result};
use ordo_core::primary::format_record;
use ordo_core::primary::intent::{required_bytes, WriteIntent};
use ordo_core::protocol::{GenerationId, VolumeInfo};
use ordo_core::storage::{Geometry, MemStorage};

use crate::shared::{lock_state_dir, sync_dir};
use crate::volume::{Backend, Volume, VolumeSpec};

/// The record in the state directory.
pub const RECORD_FILE: &str = "primary.meta";
/// The record's block size and largest request.
const RECORD_BLOCK_BYTES: u32 = 4096;
const RECORD_IO_BYTES: u32 = 1 << 20;

/// A random, non-zero number: a generation id, a seed.
pub fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish() | 1
}

/// The record and what holds the state directory for this process.
#[derive(Debug)]
pub struct PrimaryState {
    pub record: WriteIntent<Volume>,
    /// Held while the primary runs (`None` without a state directory).
    pub lock: Option<std::fs::File>,
    /// The record was made now (a new history).
    pub created: bool,
}

/// Whether `spec` names a volume this start creates, all zeros: memory, or a file that
/// does not exist yet (`file:PATH:SIZE` creates it sparse). Decided before it is opened.
pub fn created_now(spec: &VolumeSpec) -> bool {
    match &spec.backend {
        Backend::Mem { .. } => true,
        Backend::File { path, .. } => !path.exists(),
        Backend::Spdk { .. } => false,
    }
}

/// Opens the record of `state_dir`, or creates one for a new history whose first image is
/// the volumes as they are (all zeros if `created` says every one was created now).
pub fn open_or_create(
    state_dir: Option<&Path>,
    specs: &[VolumeSpec],
    created: &[bool],
    infos: &[VolumeInfo],
) -> Result<PrimaryState> {
    let zero = created.iter().all(|&c| c);
    let Some(dir) = state_dir else {
        tracing::warn!(
            "no --state-dir: the primary keeps no state, so after a restart it cannot resume replication to a secondary that followed it (the secondary refuses the new history)"
        );
        let size = required_bytes(infos).next_multiple_of(u64::from(RECORD_BLOCK_BYTES));
        let memory = MemStorage::new(Geometry::new(size, RECORD_BLOCK_BYTES)?)?;
        let record = format_record(Volume::Mem(memory), infos, new_generation(), zero)
            .context("formatting the write-intent record in memory")?;
        return Ok(PrimaryState {
            record,
            lock: None,
            created: true,
        });
    };
    for spec in specs {
        if let Backend::Mem { .. } = spec.backend {
            bail!(
                "volume {spec} is in memory: it does not outlive the process, so a state directory would describe data that is gone; use file: volumes with --state-dir"
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = lock_state_dir(dir, "primary")?;
    let path = dir.join(RECORD_FILE);
    if path.exists() {
        if let Some((spec, _)) = specs.iter().zip(created).find(|(_, &c)| c) {
            bail!(
                "{} holds the state of a history, but volume {spec} was created just now: the data that history wrote is gone; restore the volume, or start over with a new --state-dir (the secondary then needs a full resync)",
                dir.display()
            );
        }
        let storage = Volume::open_file(&path, None, RECORD_BLOCK_BYTES, RECORD_IO_BYTES)
            .with_context(|| format!("opening {}", path.display()))?;
        let record = WriteIntent::open(storage, infos)
            .with_context(|| format!("reading the write-intent record {}", path.display()))?;
        return Ok(PrimaryState {
            record,
            lock: Some(lock),
            created: false,
        });
    }
    // Formatted under another name and renamed once durable, so a crash mid-creation
    // leaves no half record.
    let fresh = dir.join(format!("{RECORD_FILE}.new"));
    let _ = std::fs::remove_file(&fresh);
    let size = required_bytes(infos).next_multiple_of(u64::from(RECORD_BLOCK_BYTES));
    let storage = Volume::open_file(&fresh, Some(size), RECORD_BLOCK_BYTES, RECORD_IO_BYTES)
        .with_context(|| format!("creating {}", fresh.display()))?;
    let generation = new_generation();
    let record = format_record(storage, infos, generation, zero)
        .context("formatting the write-intent record")?;
    std::fs::rename(&fresh, &path).context("naming the new write-intent record")?;
    sync_dir(dir)?;
    tracing::info!(
        "created {} for a new history {generation} ({})",
        path.display(),
        if zero {
            "its volumes were created now, all zeros: a zeroed secondary needs no initial sync"
        } else {
            "its volumes held data: a secondary gets an initial sync"
        }
    );
    Ok(PrimaryState {
        record,
        lock: Some(lock),
        created: true,
    })
}

fn new_generation() -> GenerationId {
    GenerationId(random_u64())
}

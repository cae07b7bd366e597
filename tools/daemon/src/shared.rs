//! What both daemons share: the volumes' reports, the status channel between the control
//! socket and the poller, signal handling, logging, and digests for `verify`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};

use crate::control::{ControlReply, DigestRange, DigestRequest, MAX_DIGEST_CHUNKS};
use crate::report::{Digest, Status, VolumeDigest, VolumeReport};

use crate::volume::{Volume, VolumeSpec};
use ordo_core::storage::Storage;

/// What status says of each volume, and the largest request all of them take (the digest
/// reads in pieces of that size).
pub fn describe_volumes(specs: &[VolumeSpec], volumes: &[Volume]) -> (Vec<VolumeReport>, u32) {
    let reports = specs
        .iter()
        .zip(volumes)
        .map(|(spec, volume)| VolumeReport {
            name: spec.name.clone(),
            spec: spec.to_string(),
            size_bytes: volume.geometry().size_bytes,
            block_size: volume.geometry().block_size,
        })
        .collect();
    let max_io = volumes
        .iter()
        .map(|v| v.geometry().max_io_bytes)
        .min()
        .unwrap_or(0);
    (reports, max_io)
}

/// A request for the daemon's status, answered by its poller on its next round, so the
/// reply reflects every request acknowledged before it was asked.
pub type StatusAsk = Sender<Status>;

/// Status asks waiting at once; more are refused.
const MAX_STATUS_ASKS: usize = 16;
/// How long a status waits for the poller.
const STATUS_WAIT: Duration = Duration::from_secs(5);

pub fn status_channel() -> (Sender<StatusAsk>, Receiver<StatusAsk>) {
    crossbeam_channel::bounded(MAX_STATUS_ASKS)
}

/// Asks the poller for its status; `None` if it is busy or gone.
pub fn ask_status(asks: &Sender<StatusAsk>) -> Option<Status> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    asks.try_send(reply).ok()?;
    answer.recv_timeout(STATUS_WAIT).ok()
}

/// The status reply of the control socket.
pub fn status_reply(asks: &Sender<StatusAsk>) -> ControlReply {
    match ask_status(asks) {
        Some(status) => ControlReply::Status(Box::new(status)),
        None => ControlReply::error("the daemon's poller did not answer"),
    }
}

/// Sets the returned flag on SIGTERM or SIGINT; a second one, while the daemon drains,
/// ends the process at once (exit status 1).
pub fn termination_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so it sees the flag as the first signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&flag))
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&flag))
            .context("installing the signal handler")?;
    }
    Ok(flag)
}

/// Logs to stderr, so stdout keeps the effective configuration alone.
pub fn init_logging() {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// A digest request's volumes and ranges: `(index, offset, len)` of each volume to digest.
pub fn digest_plan(
    request: &DigestRequest,
    volumes: &[VolumeReport],
) -> Result<Vec<(usize, u64, u64)>, String> {
    // Checked when decoded; again here, where a zero chunk would divide by zero.
    request.check().map_err(|e| e.to_string())?;
    let DigestRequest { range, chunk_bytes } = request;
    if let Some(v) = volumes
        .iter()
        .find(|v| chunk_bytes % u64::from(v.block_size) != 0)
    {
        return Err(format!(
            "chunk {chunk_bytes} is not a multiple of {:?}'s {}-byte block",
            v.name, v.block_size
        ));
    }
    let plan = digest_ranges(range, volumes)?;
    let chunks: u64 = plan
        .iter()
        .map(|(_, _, len)| len.div_ceil(*chunk_bytes))
        .sum();
    if chunks > MAX_DIGEST_CHUNKS {
        return Err(format!(
            "{chunks} chunks of {chunk_bytes} bytes is over the {MAX_DIGEST_CHUNKS} a digest may have: ask for larger chunks"
        ));
    }
    Ok(plan)
}

fn digest_ranges(
    range: &Option<DigestRange>,
    volumes: &[VolumeReport],
) -> Result<Vec<(usize, u64, u64)>, String> {
    match range {
        None => Ok(volumes
            .iter()
            .enumerate()
            .map(|(i, v)| (i, 0, v.size_bytes))
            .collect()),
        Some(DigestRange {
            volume: name,
            offset,
            len,
        }) => {
            let index = volumes
                .iter()
                .position(|v| &v.name == name)
                .ok_or_else(|| format!("no volume {name:?}"))?;
            let (size, block) = (
                volumes[index].size_bytes,
                u64::from(volumes[index].block_size),
            );
            let end = offset.checked_add(*len).filter(|&end| end <= size);
            if end.is_none() || offset % block != 0 || len % block != 0 || *len == 0 {
                return Err(format!(
                    "range {offset}+{len} is not block-aligned inside {name:?} ({size} bytes)"
                ));
            }
            Ok(vec![(index, *offset, *len)])
        }
    }
}

/// Digests `plan` in chunks of `chunk_bytes`, reading at most `max_io` bytes at a time
/// through `read(volume, offset, buf)`.
pub fn digest(
    data_set: u64,
    chunk_bytes: u64,
    max_io: u64,
    volumes: &[VolumeReport],
    plan: &[(usize, u64, u64)],
    mut read: impl FnMut(usize, u64, &mut [u8]) -> Result<(), String>,
) -> Result<Digest, String> {
    let piece_bytes = chunk_bytes.min(max_io);
    let mut buf = vec![0u8; piece_bytes as usize];
    let mut digests = Vec::with_capacity(plan.len());
    for &(index, start, len) in plan {
        let mut crcs = Vec::with_capacity(len.div_ceil(chunk_bytes) as usize);
        let mut chunk_at = start;
        while chunk_at < start + len {
            let chunk_end = (chunk_at + chunk_bytes).min(start + len);
            let mut crc = 0;
            let mut at = chunk_at;
            while at < chunk_end {
                let n = (chunk_end - at).min(piece_bytes) as usize;
                read(index, at, &mut buf[..n])?;
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                at += n as u64;
            }
            crcs.push(crc);
            chunk_at = chunk_end;
        }
        digests.push(VolumeDigest {
            name: volumes[index].name.clone(),
            offset: start,
            crc32c: crcs,
        });
    }
    Ok(Digest {
        data_set,
        chunk_bytes,
        volumes: digests,
    })
}

/// Locks the state directory for this process (released when the returned file is
/// dropped, or the process dies): two secondaries on one journal would corrupt it.
pub fn lock_state_dir(dir: &Path, role: &str) -> Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another ordo {role} is running on state directory {}",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

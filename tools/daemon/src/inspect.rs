//! `ordo status` and `ordo verify`: ask a running daemon (or both) over their control
//! sockets what state replication is in, and whether the replica equals the primary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::control::{self, DigestRange, DigestRequest, MAX_DIGEST_CHUNKS, MAX_DIGEST_CHUNK_BYTES};
use crate::report::{Digest, Link, PrimaryReport, RoleStatus, SecondaryReport, Status, Usage};

/// A digest of large volumes takes a while; a status never should.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
const DIGEST_TIMEOUT: Duration = Duration::from_secs(600);
/// The first pass compares chunks of this size; a differing chunk is then compared block
/// by block.
const CHUNK_BYTES: u64 = 1 << 20;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's control socket.
    #[arg(long)]
    control: PathBuf,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The primary's control socket.
    #[arg(long)]
    primary: PathBuf,
    /// The secondary's control socket.
    #[arg(long)]
    secondary: PathBuf,
}

pub fn status(args: &StatusArgs) -> Result<ExitCode> {
    let status = control::status(&args.control, STATUS_TIMEOUT)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        write_status(&mut out, &status)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_status(out: &mut impl Write, s: &Status) -> Result<()> {
    writeln!(
        out,
        "role        {} (group {}, pid {}, ordo {}, up {:.1} s)",
        s.role_name(),
        s.group,
        s.pid,
        s.version,
        s.uptime_ms as f64 / 1000.0
    )?;
    match &s.role {
        RoleStatus::Primary(p) => write_primary(out, p)?,
        RoleStatus::Secondary(r) => write_secondary(out, r)?,
    }
    for v in &s.volumes {
        writeln!(
            out,
            "volume      {} ({} bytes, {}-byte blocks)",
            v.spec, v.size_bytes, v.block_size
        )?;
    }
    Ok(())
}

fn write_primary(out: &mut impl Write, p: &PrimaryReport) -> Result<()> {
    write_lanes(out, &p.link.lanes)?;
    if let Some(why) = &p.link.stalled {
        writeln!(out, "STALLED     {why}")?;
    }
    let h = &p.history;
    writeln!(
        out,
        "history     {} ({}, {} ancestors), {} bytes may differ from the secondary",
        h.generation,
        h.started.replace('_', " "),
        h.ancestors.len(),
        h.out_of_sync_bytes
    )?;
    let r = &p.resync;
    if r.state != "idle" {
        let eta = r.eta_s.map_or_else(String::new, |s| format!(", ETA {s} s"));
        let end = r
            .end_data_set
            .map_or_else(String::new, |d| format!(", ends at data set {d}"));
        writeln!(
            out,
            "resync      {}: {:.1}% compared ({} of {} bytes, {} to go) at {} bytes/s{eta}, {} bytes sent{end}",
            r.state, r.percent, r.bytes_compared, r.bytes_total, r.bytes_to_go, r.rate_bytes_per_s, r.bytes_sent
        )?;
        match (r.room.as_str(), r.room_needed_bytes, r.room_free_bytes) {
            ("kept", ..) => writeln!(
                out,
                "            held by the secondary: room kept in its journal window; writes waited for it {} times",
                r.room_waits
            )?,
            ("may_not_fit", Some(needed), Some(free)) => writeln!(
                out,
                "            held by the secondary: MAY NOT FIT its journal window (up to {needed} bytes, {free} free); it is reported STUCK there if what differs does not fit"
            )?,
            _ => {}
        }
    }
    let w = &p.window_full;
    writeln!(
        out,
        "window full {} (timeout {} ms), dropped {} times{}",
        w.mode,
        w.timeout_ms,
        w.drops,
        if w.full_for_ms > 0 && w.for_resync_room {
            format!(
                "; writes WAIT for the room a held resync keeps, for {} ms",
                w.full_for_ms
            )
        } else if w.full_for_ms > 0 {
            format!("; FULL for {} ms", w.full_for_ms)
        } else {
            String::new()
        }
    )?;
    let d = &p.data_sets;
    writeln!(
        out,
        "data sets   closed {} sent {} applied {}",
        d.last_closed, d.last_sent, d.applied
    )?;
    writeln!(
        out,
        "lag         {} data sets, {} bytes, {} ms",
        d.lag_data_sets, d.lag_bytes, d.lag_ms
    )?;
    write_usage(out, "retention", &p.retention)?;
    let w = &p.writes;
    writeln!(
        out,
        "writes      {} accepted, {} flushes, {} errors, {} in flight; {} waited for the window ({} ms total, {} ms max){}",
        w.accepted,
        w.flushes,
        w.errors,
        w.in_flight,
        w.waited,
        w.wait_ms_total,
        w.wait_ms_max,
        if w.waiting_now { "; WAITING NOW" } else { "" }
    )?;
    write_counters(out, &p.counters)
}

fn write_secondary(out: &mut impl Write, r: &SecondaryReport) -> Result<()> {
    write_lanes(out, &r.link)?;
    if let Some(failure) = &r.failure {
        writeln!(out, "FAILED      {failure}")?;
    }
    let replica = &r.replica;
    let image = replica.image.as_ref().map_or_else(String::new, |i| {
        if i.generation.is_empty() {
            " (the all-zero image)".to_string()
        } else {
            format!(
                " (the image of data set {} of {})",
                i.data_set, i.generation
            )
        }
    });
    writeln!(
        out,
        "replica     {}{image}, follows {}{}{}",
        replica.state.to_uppercase(),
        if replica.follows.is_empty() {
            "no history yet"
        } else {
            &replica.follows
        },
        if replica.rebasing { "; RE-BASING" } else { "" },
        if replica.discard_pending {
            "; the next primary may overwrite it (discard-my-data)"
        } else {
            ""
        }
    )?;
    if replica.held_full {
        writeln!(
            out,
            "STUCK       the held resync fills the journal window before its end point, so it cannot be applied as one unit; the replica stays the image above. `ordo resync --allow-inconsistent` lets it go on (the replica INCONSISTENT until it ends)"
        )?;
    }
    let d = &r.data_sets;
    writeln!(out, "data sets   staged {} applied {}", d.staged, d.applied)?;
    writeln!(out, "lag         {} data sets", d.lag_data_sets)?;
    write_usage(out, "journal", &r.journal)?;
    write_counters(out, &r.counters)
}

fn write_lanes(out: &mut impl Write, link: &Link) -> Result<()> {
    writeln!(
        out,
        "lanes       {} of {} up, {} dropped",
        link.lanes_up, link.lanes, link.lanes_dropped
    )?;
    if let Some(error) = &link.last_error {
        writeln!(out, "last error  {error}")?;
    }
    Ok(())
}

fn write_usage(out: &mut impl Write, name: &str, u: &Usage) -> Result<()> {
    let percent = 100.0 * u.used_bytes as f64 / u.size_bytes.max(1) as f64;
    writeln!(
        out,
        "{name:<11} {} of {} bytes ({percent:.1}%)",
        u.used_bytes, u.size_bytes
    )?;
    Ok(())
}

/// One line of a role's counters, each under its field's name in the JSON, so a counter
/// added to the struct shows here without a second list of names.
fn write_counters(out: &mut impl Write, counters: &impl serde::Serialize) -> Result<()> {
    let serde_json::Value::Object(fields) = serde_json::to_value(counters)? else {
        bail!("counters serialise as an object");
    };
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(out, "counters    {}", fields.join(", "))?;
    Ok(())
}

fn digest(path: &Path, who: &str, request: DigestRequest) -> Result<Digest> {
    control::digest(path, request, DIGEST_TIMEOUT).with_context(|| format!("a digest of {who}"))
}

/// The first chunk where the two digests differ: (volume, offset of the chunk).
fn first_difference(primary: &Digest, replica: &Digest) -> Result<Option<(String, u64, u64)>> {
    if primary.volumes.len() != replica.volumes.len() {
        bail!(
            "the primary has {} volumes, the secondary {}",
            primary.volumes.len(),
            replica.volumes.len()
        );
    }
    for (p, r) in primary.volumes.iter().zip(&replica.volumes) {
        if p.name != r.name || p.crc32c.len() != r.crc32c.len() {
            bail!(
                "volume {:?} on the primary does not match {:?} on the secondary",
                p.name,
                r.name
            );
        }
        if let Some(i) = p.crc32c.iter().zip(&r.crc32c).position(|(a, b)| a != b) {
            let offset = p.offset + i as u64 * primary.chunk_bytes;
            return Ok(Some((p.name.clone(), offset, primary.chunk_bytes)));
        }
    }
    Ok(None)
}

/// A replica verify can compare: consistent, and on the primary's history. Anything else
/// is said as it is (an initial sync, a held resync) rather than found as a difference.
fn check_comparable(primary: &Status, secondary: &Status) -> Result<()> {
    let (Some(p), RoleStatus::Secondary(s)) = (primary.primary(), &secondary.role) else {
        bail!("--primary must be a primary's control socket and --secondary a secondary's");
    };
    let r = &s.replica;
    match r.state.as_str() {
        "consistent" => {}
        "inconsistent" => bail!(
            "the replica is INCONSISTENT: a resync (an initial sync, or one the operator allowed) is under way and its end point is not applied yet; `ordo status` on the primary shows its progress. Verify once it is done."
        ),
        "held" => {
            let image = r.image.as_ref().map_or_else(String::new, |i| {
                format!(" (it is still the image of data set {} of {})", i.data_set, i.generation)
            });
            bail!(
                "a resync of the primary's history is held on the secondary{image}: the replica moves to the primary's image once the resync's end point is applied; `ordo status` on the primary shows its progress. Verify once it is done."
            )
        }
        other => bail!(
            "the secondary's replica is {other}: it has not joined the primary's history yet (is it connected?)"
        ),
    }
    if r.follows != p.history.generation {
        bail!(
            "the secondary follows history {} but the primary writes {}: it has not re-based yet (is it connected?)",
            r.follows,
            p.history.generation
        );
    }
    Ok(())
}

pub fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let status =
        control::status(&args.primary, STATUS_TIMEOUT).context("the status of the primary")?;
    let secondary =
        control::status(&args.secondary, STATUS_TIMEOUT).context("the status of the secondary")?;
    check_comparable(&status, &secondary)?;
    let whole = DigestRequest {
        chunk_bytes: first_pass_chunk(&status)?,
        range: None,
    };
    let primary = digest(&args.primary, "the primary", whole.clone())?;
    let replica = digest(&args.secondary, "the secondary", whole)?;
    let data_set = primary.data_set;
    if replica.data_set != data_set {
        bail!(
            "the secondary is at data set {} but the primary's image is data set {data_set}: \
             verify needs both quiet (no writes while it runs)",
            replica.data_set
        );
    }
    let Some((volume, chunk_at, chunk_len)) = first_difference(&primary, &replica)? else {
        writeln!(out, "replica matches primary at data set {data_set}")?;
        return Ok(ExitCode::SUCCESS);
    };
    // Narrow the chunk down to blocks.
    let block = status
        .volumes
        .iter()
        .find(|v| v.name == volume)
        .map_or(4096, |v| u64::from(v.block_size));
    let narrow = DigestRequest {
        chunk_bytes: block,
        range: Some(DigestRange {
            volume: volume.clone(),
            offset: chunk_at,
            len: chunk_len,
        }),
    };
    let p = digest(&args.primary, "the primary", narrow.clone())?;
    let r = digest(&args.secondary, "the secondary", narrow)?;
    if p.data_set != data_set || r.data_set != data_set {
        bail!(
            "writes arrived while verifying (data sets {data_set}, {} and {}): verify needs both quiet",
            p.data_set,
            r.data_set
        );
    }
    let (pv, rv) = (&p.volumes[0], &r.volumes[0]);
    let differs: Vec<bool> = pv
        .crc32c
        .iter()
        .zip(&rv.crc32c)
        .map(|(a, b)| a != b)
        .collect();
    let Some(first) = differs.iter().position(|&d| d) else {
        bail!("{volume} bytes {chunk_at}+{chunk_len} differed, then matched block by block: was something writing?");
    };
    let run = differs[first..].iter().take_while(|&&d| d).count();
    let start = chunk_at + first as u64 * block;
    let end = start + run as u64 * block;
    writeln!(
        out,
        "replica differs from primary at data set {data_set}: volume {volume} bytes {start}..{end} (first differing range)"
    )?;
    Ok(ExitCode::FAILURE)
}

/// The first pass's chunk: 1 MiB, or larger for volumes so big that the reply would have
/// more chunks than a digest may.
fn first_pass_chunk(status: &Status) -> Result<u64> {
    let total: u64 = status.volumes.iter().map(|v| v.size_bytes).sum();
    let chunk = total
        .div_ceil(MAX_DIGEST_CHUNKS)
        .next_multiple_of(CHUNK_BYTES)
        .max(CHUNK_BYTES);
    if chunk > MAX_DIGEST_CHUNK_BYTES {
        bail!(
            "{total} bytes of volumes is more than verify compares ({} bytes)",
            MAX_DIGEST_CHUNKS * MAX_DIGEST_CHUNK_BYTES
        );
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use crate::report::tests::{primary_status, secondary_status};

    fn text(status: &crate::report::Status) -> String {
        let mut out = Vec::new();
        super::write_status(&mut out, status).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn status_text_says_a_held_resync_may_not_fit_and_a_stuck_one_is_stuck() {
        let primary = text(&primary_status());
        assert!(
            primary.contains("resync      comparing: 33.3% compared")
                && primary
                    .contains("MAY NOT FIT its journal window (up to 9437184 bytes, 8388608 free)")
                && primary.contains("writes WAIT for the room a held resync keeps, for 17 ms"),
            "{primary}"
        );
        let secondary = text(&secondary_status());
        assert!(secondary.contains("STUCK"), "{secondary}");
    }
}

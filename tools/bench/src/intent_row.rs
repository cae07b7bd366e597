//! P15 of `ordo bench compare`: what the primary's write-intent record costs the write
//! path when it is on a file (`--state-dir`, where it must be for a restart to resume)
//! rather than in memory. 4 KiB random writes at queue depth 32 through the NBD export
//! with fio's nbd engine (as P10), both primaries on `file:` volumes created new and
//! replicating to a secondary on a new `file:` replica, so they differ in nothing but
//! where the record is.

use anyhow::{bail, Result};

use crate::daemons::{OrdoPair, PairSpec, Store};
use crate::nbd_rows::{fio_nbd, EXPORT};
use crate::rows::{output, row, Goal, Row, Settings};

/// fio's write IOPS through a fresh pair whose primary keeps its record on a file
/// (`state_dir`) or in memory, and the pair's commands.
fn measure(settings: &Settings, state_dir: bool) -> Result<(f64, String)> {
    let spec = PairSpec {
        size: EXPORT,
        primary: Store::NewFile,
        secondary: Store::NewFile,
        primary_state_dir: state_dir,
        primary_flags: Vec::new(),
    };
    let mut pair = OrdoPair::launch(&settings.dir, "p15", &spec)?;
    pair.wait_lanes_up()?;
    // Both volumes begin as zeros: the secondary adopts the stream, nothing to resync
    // (which would share the link and the disks with the writes measured).
    let resync = pair.status()?.resync.state;
    if resync != "idle" {
        bail!("a resync is {resync} before the writes ({})", pair.commands);
    }
    let (iops, fio) = fio_nbd("p15", &pair.uri, 1, settings.runtime)?;
    pair.check_running()?;
    Ok((iops, format!("{}, then {fio}", pair.commands)))
}

/// Each run measures both primaries, in turn which goes first (a file system that is
/// still writing back the last run's files slows the next one alike, on average).
pub(crate) fn p15(settings: &Settings) -> Result<Vec<Row>> {
    let mut runs = Vec::new();
    let mut how = (String::new(), String::new());
    if let Err(why) = output("fio", &["--version".to_string()]) {
        return Ok(vec![p15_row(&runs, how, Some(format!("fio: {why:#}")))]);
    }
    for run in 0..settings.runs {
        let (ours, base) = if run % 2 == 0 {
            let ours = measure(settings, true)?;
            (ours, measure(settings, false)?)
        } else {
            let base = measure(settings, false)?;
            (measure(settings, true)?, base)
        };
        runs.push((ours.0, base.0));
        how = (ours.1, base.1);
    }
    Ok(vec![p15_row(&runs, how, None)])
}

fn p15_row(runs: &[(f64, f64)], how: (String, String), note: Option<String>) -> Row {
    row(
        "P15",
        "4K randwrite qd32 via NBD (fio): write-intent record on a file / in memory",
        Goal::AtLeast,
        (0.95, 1.0),
        "IOPS",
        runs,
        how,
        note,
    )
}

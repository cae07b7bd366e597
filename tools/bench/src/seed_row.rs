//! P1nbd of `ordo bench compare`: seeding a volume the way a user does, nbdcopy of an
//! image file into an `ordo primary`'s export, the primary replicating to an `ordo
//! secondary` (both started here, `mem` volumes), timed until the secondary has applied
//! the last data set, against iperf3's one stream on the same loopback (as P1).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ordo_daemon::volume::ByteSize;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::baselines::iperf3_noted;
use crate::daemons::{OrdoPair, LANES};
use crate::rows::{mb, output, row, Goal, Row, Settings};

const IMAGE_BYTES: ByteSize = ByteSize(1 << 30);
const QUICK_IMAGE_BYTES: ByteSize = ByteSize(256 << 20);
/// How long the secondary may take to apply what nbdcopy wrote, after it returned.
const APPLY_LIMIT: Duration = Duration::from_secs(120);

/// An image file a row made (nbdcopy's source, a resync's volume), removed when dropped.
pub(crate) struct Image(pub(crate) PathBuf);

impl Drop for Image {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

/// `size` bytes of pseudo-random data (incompressible, and no zero blocks, which nbdcopy
/// would send as zeroings rather than writes) at `path`, on disk when this returns.
pub(crate) fn image(path: &Path, size: ByteSize) -> Result<Image> {
    let made = Image(path.to_path_buf());
    let mut file =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut chunk = vec![0u8; 1 << 20];
    assert!(size.0.is_multiple_of(chunk.len() as u64));
    for _ in 0..size.0 / chunk.len() as u64 {
        rng.fill_bytes(&mut chunk);
        file.write_all(&chunk)?;
    }
    file.into_inner()?.sync_all()?;
    Ok(made)
}

/// nbdcopy of `image` into a fresh pair's export, until applied on the secondary: bytes
/// per second, and the command.
fn seed(settings: &Settings, image: &Path, size: ByteSize) -> Result<(f64, String)> {
    let mut pair = OrdoPair::start(&settings.dir, "p1nbd", size)?;
    let args = vec![
        "--flush".to_string(),
        image.display().to_string(),
        pair.uri.clone(),
    ];
    let begun = Instant::now();
    output("nbdcopy", &args)?;
    // nbdcopy's flush closed the last data set.
    pair.wait_applied(APPLY_LIMIT)?;
    let seconds = begun.elapsed().as_secs_f64();
    let how = format!(
        "ordo primary --lanes {LANES} (mem {size}, journal in {}), then nbdcopy --flush IMAGE({size}) URI, until applied",
        pair.state().display()
    );
    Ok((size.0 as f64 / seconds, how))
}

/// Each run: iperf3, then a fresh pair seeded from the same image. A missing nbdcopy or
/// iperf3 leaves the row unmeasured, with a note saying so.
pub(crate) fn p1nbd(settings: &Settings) -> Result<Vec<Row>> {
    let size = if settings.quick {
        QUICK_IMAGE_BYTES
    } else {
        IMAGE_BYTES
    };
    let mut runs = Vec::new();
    let mut how = (String::new(), String::new());
    if let Err(why) = output("nbdcopy", &["--version".to_string()]) {
        return Ok(vec![p1nbd_row(
            &runs,
            how,
            Some(format!("nbdcopy: {why:#}")),
        )]);
    }
    let made = image(&settings.dir.join("ordo-compare-seed.img"), size)?;
    let mut note = None;
    for _ in 0..settings.runs {
        let Some(link) = iperf3_noted(settings.runtime, &mut note) else {
            break;
        };
        let ours = seed(settings, &made.0, size)?;
        runs.push((mb(ours.0), mb(link.bytes_per_s)));
        how = (ours.1, link.how);
    }
    Ok(vec![p1nbd_row(&runs, how, note)])
}

fn p1nbd_row(runs: &[(f64, f64)], how: (String, String), note: Option<String>) -> Row {
    row(
        "P1nbd",
        "nbdcopy 1 GiB (256 MiB --quick) via NBD, until applied (MB/s) / iperf3 loopback",
        Goal::AtLeast,
        (0.6, 0.8),
        "MB/s",
        runs,
        how,
        note,
    )
}

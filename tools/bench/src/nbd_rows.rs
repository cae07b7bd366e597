//! The rows of `ordo bench compare` that send 4 KiB random writes at queue depth 32
//! through an `ordo primary`'s NBD export, the primary replicating to an `ordo secondary`
//! (both started here, `mem` volumes, on loopback). P10: with fio's nbd engine as the
//! client, against nbdkit's `memory` plugin, a plain NBD server that replicates nothing,
//! through the same client, one connection, then four. P11: with `ordo bench --target`
//! (ordo's own pipelined client) as the client, against the in-process `ordo bench`.

use anyhow::{Context, Result};
use ordo_daemon::volume::ByteSize;
use serde_json::Value;

use crate::daemons::{nbdkit, OrdoPair, LANES};
use crate::rows::{bench, output, row, Goal, Row, Settings};

/// The export's size on every server: what the writes land on, at random.
pub(crate) const EXPORT: ByteSize = ByteSize(256 << 20);
/// The load of P11, on both sides.
pub(crate) const LOAD: &str = "--rw randwrite --bs 4K --iodepth 32 --size 256M";

/// fio's nbd engine (job `name`): 4 KiB random writes at depth 32 on `jobs` connections
/// for `seconds`; write IOPS of all of them, and the command.
pub(crate) fn fio_nbd(name: &str, uri: &str, jobs: usize, seconds: f64) -> Result<(f64, String)> {
    let args: Vec<String> = vec![
        format!("--name={name}"),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--iodepth=32".into(),
        format!("--numjobs={jobs}"),
        "--group_reporting".into(),
        format!("--size={EXPORT}"),
        "--time_based".into(),
        format!("--runtime={}", seconds.ceil().max(1.0)),
        "--output-format=json".into(),
    ];
    let text = output("fio", &args)?;
    // The nbd engine says "fio: connected to NBD server" on stdout before the JSON.
    let json = text.find('{').map_or("", |at| &text[at..]);
    let json: Value = serde_json::from_str(json).context("fio's JSON")?;
    let iops = json["jobs"][0]["write"]["iops"]
        .as_f64()
        .context("no jobs[0].write.iops in fio's JSON")?;
    Ok((iops, format!("fio {}", args.join(" ").replace(uri, "URI"))))
}

/// P10, one connection and four: each run measures nbdkit, then a fresh ordo pair.
pub(crate) fn p10(settings: &Settings) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (id, what, jobs) in [
        (
            "P10",
            "4K randwrite qd32 via NBD (fio), 1 conn: ordo replicating / nbdkit memory",
            1,
        ),
        (
            "P10c4",
            "4K randwrite qd32 via NBD (fio), 4 conns: ordo replicating / nbdkit memory",
            4,
        ),
    ] {
        let mut runs = Vec::new();
        let mut how = (String::new(), String::new());
        let mut note = None;
        for _ in 0..settings.runs {
            let baseline = match nbdkit(EXPORT).and_then(|(server, uri)| {
                let measured = fio_nbd("p10", &uri, jobs, settings.runtime);
                drop(server);
                measured
            }) {
                Ok(found) => found,
                Err(why) => {
                    note = Some(format!("nbdkit or fio: {why:#}"));
                    break;
                }
            };
            let pair = OrdoPair::start(&settings.dir, "p10", EXPORT)?;
            let journal = pair.state().display().to_string();
            let ours = fio_nbd("p10", &pair.uri, jobs, settings.runtime);
            drop(pair);
            let ours = ours?;
            runs.push((ours.0, baseline.0));
            how = (
                format!(
                    "ordo primary --lanes {LANES} (mem {EXPORT}, journal in {journal}), then {}",
                    ours.1
                ),
                format!("nbdkit memory size={EXPORT}, then {}", baseline.1),
            );
        }
        rows.push(row(
            id,
            what,
            Goal::AtLeast,
            (0.8, 1.0),
            "IOPS",
            &runs,
            how,
            note,
        ));
    }
    Ok(rows)
}

/// P11: `ordo bench --target` through a fresh ordo pair's export, then the in-process
/// `ordo bench` with its own pair, the same load on the same size: write IOPS.
pub(crate) fn p11(settings: &Settings) -> Result<Vec<Row>> {
    let mut runs = Vec::new();
    let mut how = (String::new(), String::new());
    for _ in 0..settings.runs {
        let pair = OrdoPair::start(&settings.dir, "p11", EXPORT)?;
        let uri = pair.uri.clone();
        let journal = pair.state().display().to_string();
        let ours = bench(settings, &format!("--target {uri} {LOAD}"));
        drop(pair);
        let (ours, ours_how) = ours?;
        let options = format!("{LOAD} --backend mem --mode replicated --lanes {LANES}");
        let (base, base_how) = bench(settings, &options)?;
        runs.push((ours.write_iops(), base.write_iops()));
        how = (
            format!(
                "ordo primary --lanes {LANES} (mem {EXPORT}, journal in {journal}), then {}",
                ours_how.replace(&uri, "URI")
            ),
            base_how,
        );
    }
    Ok(vec![row(
        "P11",
        "4K randwrite qd32 via NBD, ordo bench --target / in-process, both replicating",
        Goal::AtLeast,
        (0.7, 0.7),
        "IOPS",
        &runs,
        how,
        None,
    )])
}

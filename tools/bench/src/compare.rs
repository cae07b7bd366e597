//! `ordo bench compare`: a fixed suite, each measurement next to its baseline measured in
//! the same run (iperf3 on the same loopback, fio on the same file system, replication
//! off, one data set at a time, nbdkit through the same NBD client, the in-process bench,
//! the write-intent record in memory), as ratios, the median of several runs. Ends with
//! one line, the rows by number: `compare: P1=<ratio> P1nbd=<ratio> P2=<ratio>
//! P2c=<ratio> P3=<ratio> P5=<ratio> P6=<ratio> P6s=<ratio> P9=<ratio> P10=<ratio>
//! P10c4=<ratio> P11=<ratio> P13=<ratio> P14=<ratio> P15=<ratio>` (`n/a` for a row whose
//! tool is missing; only the rows asked for with `--rows`, in the same order).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::baselines::{fio, iperf3_noted};
use crate::rows::{bench, mb, row, Goal, Measured, Row, Settings};

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// One short run of each (about 3 minutes in all): a smoke test, not a measurement.
    #[arg(long)]
    quick: bool,
    /// Runs of each measurement (the median is reported); 1 with --quick.
    #[arg(long, default_value_t = 3, default_value_if("quick", "true", "1"))]
    runs: usize,
    /// Seconds measured per run; 3 with --quick.
    #[arg(long, default_value_t = 10.0, default_value_if("quick", "true", "3"))]
    runtime: f64,
    /// Where P6 puts its files (the file system measured), P1nbd its image, the resync
    /// rows (P13, P14) their volumes, and P15 its daemons' volumes and state. The daemons
    /// on `mem` volumes (P1nbd, P10, P11) keep their journal on /dev/shm where it is a
    /// tmpfs, as the in-process bench on `mem` keeps it in memory; here otherwise.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Where the JSON report goes.
    #[arg(long, default_value = "ordo-compare.json")]
    output: PathBuf,
    /// Only these rows (comma-separated ids, e.g. P13,P14,P15); every row without it. Rows
    /// measured from the same runs (P2, P2c, P5 and P9; P6 and P6s; P10 and P10c4) are
    /// measured together, but only those asked for are reported.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    rows: Vec<String>,
}

/// Measures some rows of the suite.
type Measure = fn(&Settings) -> Result<Vec<Row>>;

/// The suite, in the order it runs: each measurement and the rows it reports, in order.
const SUITE: &[(&[&str], Measure)] = &[
    (&["P1"], p1),
    (&["P1nbd"], crate::seed_row::p1nbd),
    (&["P2", "P2c", "P5", "P9"], crate::randwrite_rows::p2_p5_p9),
    (&["P3"], p3),
    (&["P6", "P6s"], p6),
    (&["P10", "P10c4"], crate::nbd_rows::p10),
    (&["P11"], crate::nbd_rows::p11),
    (&["P13"], crate::resync_rows::p13),
    (&["P14"], crate::resync_rows::p14),
    (&["P15"], crate::intent_row::p15),
];

/// The row ids `--rows` names, as the suite spells them (every row when it names none); an
/// error names an id the suite does not have.
fn chosen_rows(given: &[String]) -> Result<Vec<&'static str>> {
    let every = SUITE.iter().flat_map(|(ids, _)| ids.iter().copied());
    if given.is_empty() {
        return Ok(every.collect());
    }
    let mut chosen = Vec::new();
    for id in given {
        let Some(known) = every
            .clone()
            .find(|known| known.eq_ignore_ascii_case(id.trim()))
        else {
            let all: Vec<&str> = every.collect();
            anyhow::bail!("--rows: no row {id:?} (the rows: {})", all.join(","));
        };
        if !chosen.contains(&known) {
            chosen.push(known);
        }
    }
    Ok(chosen)
}

pub fn run(args: &CompareArgs) -> Result<ExitCode> {
    let chosen = chosen_rows(&args.rows)?;
    let settings = Settings {
        runs: args.runs.max(1),
        runtime: args.runtime,
        ramp: if args.quick { 0.5 } else { 2.0 },
        dir: args.dir.clone(),
        quick: args.quick,
    };
    anyhow::ensure!(
        settings.runtime > 0.0 && settings.runtime <= 3600.0,
        "--runtime must be in (0, 3600]"
    );
    anyhow::ensure!(
        settings.dir.is_dir(),
        "--dir {}: not a directory",
        settings.dir.display()
    );
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "compare: {} run(s) of {} s each (ramp {} s), median ratio per row; rows {}",
        settings.runs,
        settings.runtime,
        settings.ramp,
        chosen.join(",")
    )?;
    let mut rows = Vec::new();
    for (ids, measure) in SUITE {
        if !ids.iter().any(|id| chosen.contains(id)) {
            continue;
        }
        let measured = measure(&settings)?;
        let made: Vec<&str> = measured.iter().map(|r| r.id).collect();
        assert_eq!(
            made, *ids,
            "a measurement reports the rows the suite lists for it"
        );
        for done in measured.into_iter().filter(|r| chosen.contains(&r.id)) {
            print_row(&mut out, &done)?;
            rows.push(done);
        }
    }
    assert_eq!(
        rows.len(),
        chosen.len(),
        "every row asked for is reported once"
    );
    // By row number (P2 before P10), then id (P1 before P1nbd, P10 before P10c4).
    rows.sort_by_key(|r| {
        let digits: String = r.id[1..].chars().take_while(char::is_ascii_digit).collect();
        (digits.parse::<u32>().unwrap_or(u32::MAX), r.id)
    });
    let summary: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r.id,
                r.ratio.map_or("n/a".into(), |x| format!("{x:.2}"))
            )
        })
        .collect();
    let report = serde_json::json!({
        "ordo_version": env!("CARGO_PKG_VERSION"),
        "quick": args.quick,
        "runs": settings.runs,
        "runtime_s": settings.runtime,
        "rows_asked": if args.rows.is_empty() { None } else { Some(&chosen) },
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        },
        "rows": rows,
    });
    std::fs::write(&args.output, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.output.display()))?;
    writeln!(out, "report written to {}", args.output.display())?;
    writeln!(out, "compare: {}", summary.join(" "))?;
    Ok(ExitCode::SUCCESS)
}

fn print_row(out: &mut impl Write, row: &Row) -> Result<()> {
    let show = |m: &Option<Measured>| {
        m.as_ref()
            .map_or("n/a".to_string(), |m| format!("{:.1} {}", m.value, m.unit))
    };
    let goal = match row.goal {
        Goal::AtLeast => ">=",
        Goal::AtMost => "<=",
    };
    let verdict = match row.met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    };
    writeln!(
        out,
        "{:<3} {:<66} ours {:>14}  baseline {:>14}  ratio {:>6}  target {goal} {} (aim {})  {verdict}{}",
        row.id,
        row.what,
        show(&row.ours),
        show(&row.baseline),
        row.ratio.map_or("n/a".into(), |r| format!("{r:.3}")),
        row.target,
        row.aim,
        row.note.as_deref().map_or(String::new(), |n| format!(" ({n})")),
    )?;
    Ok(())
}

/// P1: replicated 1 MiB sequential writes over loopback against iperf3, one stream.
fn p1(settings: &Settings) -> Result<Vec<Row>> {
    const WHAT: &str = "1M seq writes replicated (applied MB/s) / iperf3 loopback";
    let options = "--rw write --bs 1M --iodepth 8 --size 1G --backend mem";
    let mut runs = Vec::new();
    let mut how = (String::new(), String::new());
    let mut note = None;
    for _ in 0..settings.runs {
        let Some(iperf) = iperf3_noted(settings.runtime, &mut note) else {
            break;
        };
        let (results, command) = bench(settings, options)?;
        runs.push((mb(results.applied_bytes_per_s()), mb(iperf.bytes_per_s)));
        how = (command, iperf.how);
    }
    Ok(vec![row(
        "P1",
        WHAT,
        Goal::AtLeast,
        (0.6, 0.8),
        "MB/s",
        &runs,
        how,
        note,
    )])
}

/// P3: at RTT 4 ms (2 ms each way) with 1 ms data sets, pipelined against one data set
/// at a time: bytes applied per second.
fn p3(settings: &Settings) -> Result<Vec<Row>> {
    let options = "--rw write --bs 64K --iodepth 16 --size 1G --backend mem \
                   --link-delay-ms 2 --data-set-interval-ms 1 --window 64M";
    let mut runs = Vec::new();
    let mut how = (String::new(), String::new());
    for _ in 0..settings.runs {
        let (ours, ours_how) = bench(settings, &format!("{options} --mode replicated"))?;
        let (base, base_how) = bench(settings, &format!("{options} --mode group-ordered"))?;
        runs.push((
            mb(ours.applied_bytes_per_s()),
            mb(base.applied_bytes_per_s()),
        ));
        how = (ours_how, base_how);
    }
    Ok(vec![row(
        "P3",
        "RTT 4 ms, 1 ms data sets: applied MB/s, pipelined / group-ordered",
        Goal::AtLeast,
        (5.0, 10.0),
        "MB/s",
        &runs,
        how,
        None,
    )])
}

/// The streams the replicated P6 run writes to the one file system: the primary's volume,
/// the secondary's journal and its replica, each byte applied written once to each.
const P6_STREAMS: usize = 3;

/// P6 and P6s: replicated 1 MiB sequential writes on files (io_uring, O_DIRECT), applied
/// MB/s, against fio on the same file system with the same block size and depth.
///
/// P6's baseline is fair to one disk: every byte ordo applies costs that file system
/// three writes (volume, journal, replica) in three streams at once, so the most ordo
/// could apply is what fio achieves per stream when it writes three streams at once: the
/// aggregate of three concurrent fio jobs (each its own 1 GiB file) divided by three.
/// P6s keeps the older baseline, one fio stream alone, which asks ordo to apply at the
/// rate the disk writes one stream.
fn p6(settings: &Settings) -> Result<Vec<Row>> {
    let dir = settings.dir.canonicalize()?;
    let options = format!(
        "--rw write --bs 1M --iodepth 8 --size 1G --backend file:{}",
        dir.display()
    );
    let (mut fair, mut single) = (Vec::new(), Vec::new());
    let (mut fair_how, mut single_how) = Default::default();
    let mut note = None;
    for _ in 0..settings.runs {
        let baselines = fio(&dir, P6_STREAMS, settings.runtime)
            .and_then(|streams| Ok((streams, fio(&dir, 1, settings.runtime)?)));
        let (streams, one) = match baselines {
            Ok(found) => found,
            Err(why) => {
                note = Some(format!("fio: {why:#}"));
                break;
            }
        };
        let (results, command) = bench(settings, &options)?;
        let applied = mb(results.applied_bytes_per_s());
        fair.push((applied, mb(streams.0) / P6_STREAMS as f64));
        single.push((applied, mb(one.0)));
        fair_how = (
            command.clone(),
            format!("{} (MB/s ÷ {P6_STREAMS})", streams.1),
        );
        single_how = (command, one.1);
    }
    Ok(vec![
        row(
            "P6",
            "1M seq writes on files: replicated (applied MB/s) / fio per stream, 3 at once",
            Goal::AtLeast,
            (0.8, 0.8),
            "MB/s",
            &fair,
            fair_how,
            note.clone(),
        ),
        row(
            "P6s",
            "1M seq writes on files: replicated (applied MB/s) / fio, one stream",
            Goal::AtLeast,
            (0.8, 0.8),
            "MB/s",
            &single,
            single_how,
            note,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::rows::Bench;

    #[test]
    fn a_row_takes_the_median_ratio_and_judges_it_by_its_goal() {
        let runs = [(10.0, 20.0), (30.0, 20.0), (14.0, 20.0)];
        let how = (String::new(), String::new());
        let r = row(
            "P9",
            "x",
            Goal::AtLeast,
            (0.6, 0.8),
            "MB/s",
            &runs,
            how.clone(),
            None,
        );
        assert_eq!(r.ratio, Some(0.7));
        assert_eq!(r.met, Some(true));
        assert_eq!(r.ours.as_ref().map(|m| m.value), Some(14.0));
        let r = row(
            "P9",
            "x",
            Goal::AtMost,
            (0.6, 0.8),
            "us",
            &runs,
            how.clone(),
            None,
        );
        assert_eq!(r.met, Some(false));
        let none = row("P9", "x", Goal::AtLeast, (1.0, 1.0), "MB/s", &[], how, None);
        assert_eq!((none.ratio, none.met), (None, None));
    }

    /// `ordo bench compare` as the binary parses it.
    #[derive(Debug, Parser)]
    struct Compare {
        #[command(flatten)]
        args: CompareArgs,
    }

    fn compare(flags: &[&str]) -> CompareArgs {
        Compare::try_parse_from(std::iter::once("compare").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn quick_shortens_the_defaults_and_a_flag_given_still_wins() {
        let help = <Compare as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        for shown in ["[default: 3]", "[default: 10]", "[default: .]"] {
            assert!(help.contains(shown), "{shown}:\n{help}");
        }
        let plain = compare(&[]);
        assert_eq!((plain.runs, plain.runtime), (3, 10.0), "as --help shows");
        let quick = compare(&["--quick"]);
        assert_eq!((quick.runs, quick.runtime), (1, 3.0));
        let given = compare(&["--quick", "--runs", "5", "--runtime", "7"]);
        assert_eq!((given.runs, given.runtime), (5, 7.0));
    }

    #[test]
    fn rows_are_chosen_by_id_in_the_suites_order_and_an_unknown_one_is_refused() {
        let every = chosen_rows(&[]).unwrap();
        let tail = ["P10", "P10c4", "P11", "P13", "P14", "P15"];
        assert_eq!(every[..2], ["P1", "P1nbd"]);
        assert_eq!(every[every.len() - tail.len()..], tail);
        assert_eq!(every.len(), 15);
        // P12 is reserved: no row has it yet.
        assert!(!every.contains(&"P12"));
        let given = compare(&["--rows", "p15,P13", "--rows", "P15"]).rows;
        assert_eq!(chosen_rows(&given).unwrap(), ["P15", "P13"]);
        let error = chosen_rows(&["P12".to_string()]).unwrap_err().to_string();
        assert!(
            error.contains("\"P12\"") && error.contains("P1,P1nbd,P2"),
            "{error}"
        );
        assert!(compare(&[]).rows.is_empty(), "every row by default");
    }

    #[test]
    fn every_suite_command_parses_as_bench_options() {
        let random = crate::randwrite_rows::LOAD;
        let nbd = crate::nbd_rows::LOAD;
        for options in [
            "--rw write --bs 1M --iodepth 8 --size 1G --backend mem".to_string(),
            "--rw write --bs 64K --iodepth 16 --size 1G --backend mem --link-delay-ms 2 \
             --data-set-interval-ms 1 --window 64M --mode group-ordered"
                .to_string(),
            format!("{random} --mode local-only"),
            format!("{random} --rate 75000 --mode replicated"),
            format!("--target nbd://127.0.0.1:10809/data {nbd}"),
            format!("{nbd} --backend mem --mode replicated --lanes 4"),
        ] {
            let command = format!("ordo bench {options} --runtime 3 --ramp 0.5");
            let parsed = Bench::try_parse_from(command.split_whitespace().skip(1))
                .unwrap_or_else(|e| panic!("{command}: {e}"));
            parsed.args.validate().unwrap();
        }
    }
}

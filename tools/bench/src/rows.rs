//! What every row of `ordo bench compare` is made of: the settings of the suite, a row
//! (ours against its baseline, run by run, judged by its goal), one `ordo bench` run, and
//! running a baseline tool.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

use crate::args::BenchArgs;
use crate::results::Results;
use crate::{driver, target};

/// Which way a ratio is better.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Goal {
    AtLeast,
    AtMost,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Measured {
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    /// What produced it: the `ordo bench` options, or the baseline tool's command.
    pub(crate) how: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) what: &'static str,
    pub(crate) goal: Goal,
    pub(crate) target: f64,
    pub(crate) aim: f64,
    /// Medians over the runs (`None` when the baseline could not be measured).
    pub(crate) ours: Option<Measured>,
    pub(crate) baseline: Option<Measured>,
    pub(crate) ratio: Option<f64>,
    /// Each run's ratio.
    pub(crate) ratios: Vec<f64>,
    pub(crate) met: Option<bool>,
    pub(crate) note: Option<String>,
}

pub(crate) struct Settings {
    pub(crate) runs: usize,
    pub(crate) runtime: f64,
    pub(crate) ramp: f64,
    pub(crate) dir: PathBuf,
    /// `--quick`: a smoke test; rows that move a fixed amount of data move less.
    pub(crate) quick: bool,
}

/// `ordo bench` options parsed the way a user would type them.
#[derive(Debug, Parser)]
pub(crate) struct Bench {
    #[command(flatten)]
    pub(crate) args: BenchArgs,
}

/// One `ordo bench` run with these options (on top of the suite's runtime and ramp), in
/// this process: a pair of its own, or with `--target` a running primary's export.
pub(crate) fn bench(settings: &Settings, options: &str) -> Result<(Results, String)> {
    let how = format!(
        "ordo bench {options} --runtime {} --ramp {}",
        settings.runtime, settings.ramp
    );
    let argv = how.split_whitespace().skip(1);
    let parsed = Bench::try_parse_from(argv).with_context(|| format!("parsing {how:?}"))?;
    parsed.args.validate()?;
    // On a thread of its own: a run with --cores pins the thread it runs on, and the
    // suite's own thread must keep every core for the rows after it.
    let results = std::thread::scope(|scope| {
        let run = scope.spawn(|| {
            if parsed.args.target.is_some() {
                target::run(&parsed.args, false)
            } else {
                driver::run(&parsed.args, false)
            }
        });
        run.join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the run's thread panicked")))
    });
    Ok((results.with_context(|| format!("running {how}"))?, how))
}

pub(crate) fn mb(bytes_per_s: f64) -> f64 {
    bytes_per_s / 1e6
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A row from per-run (ours, baseline) pairs; ratio = ours / baseline per run.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row(
    id: &'static str,
    what: &'static str,
    goal: Goal,
    (target, aim): (f64, f64),
    unit: &'static str,
    runs: &[(f64, f64)],
    how: (String, String),
    note: Option<String>,
) -> Row {
    if runs.is_empty() {
        return Row {
            id,
            what,
            goal,
            target,
            aim,
            ours: None,
            baseline: None,
            ratio: None,
            ratios: vec![],
            met: None,
            note,
        };
    }
    let mut ratios: Vec<f64> = runs
        .iter()
        .map(|&(ours, base)| if base > 0.0 { ours / base } else { f64::NAN })
        .collect();
    let ratio = median(&mut ratios.clone());
    let mut ours: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let mut base: Vec<f64> = runs.iter().map(|r| r.1).collect();
    ratios
        .iter_mut()
        .for_each(|r| *r = (*r * 1000.0).round() / 1000.0);
    let met = ratio.is_finite().then_some(match goal {
        Goal::AtLeast => ratio >= target,
        Goal::AtMost => ratio <= target,
    });
    Row {
        id,
        what,
        goal,
        target,
        aim,
        ours: Some(Measured {
            value: median(&mut ours),
            unit,
            how: how.0,
        }),
        baseline: Some(Measured {
            value: median(&mut base),
            unit,
            how: how.1,
        }),
        ratio: ratio.is_finite().then_some(ratio),
        ratios,
        met,
        note,
    }
}

/// That `program` is not installed, and the Debian package that has it.
pub(crate) fn not_installed(program: &str) -> anyhow::Error {
    let package = match program {
        "nbdcopy" => "libnbd-bin",
        other => other,
    };
    anyhow::anyhow!("not installed (apt-get install {package})")
}

/// Runs `program` and returns its stdout; an error says if it is not installed.
pub(crate) fn output(program: &str, args: &[String]) -> Result<String> {
    let result = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    let output = match result {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_installed(program)),
        Err(e) => return Err(e).with_context(|| format!("running {program}")),
    };
    if !output.status.success() {
        bail!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

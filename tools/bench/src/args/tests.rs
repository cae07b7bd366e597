//! `ordo bench`'s `--help` shows every default, and a run with no flags is configured as
//! it says.

use clap::{Arg, Command, CommandFactory, Parser};

use super::*;

/// `ordo bench` as the binary parses it.
#[derive(Debug, Parser)]
struct Bench {
    #[command(flatten)]
    args: BenchArgs,
}

/// `-h` (one line an option) and `--help` (paragraphs).
fn helps() -> [String; 2] {
    let mut command = Bench::command();
    [
        command.render_help().to_string(),
        command.render_long_help().to_string(),
    ]
}

/// The args taking a value, SPDK's (documented in ordo-daemon's spdk.rs) left out.
fn valued_args(command: &Command) -> Vec<&Arg> {
    let spdk = SpdkArgs::augment_args(Command::new("spdk"));
    let spdk: Vec<_> = spdk.get_arguments().map(|a| a.get_id().clone()).collect();
    command
        .get_arguments()
        .filter(|a| a.get_action().takes_values() && !spdk.contains(a.get_id()))
        .collect()
}

/// The `[default: ...]` in `help` of the option `--long`, if it shows one: in the lines from
/// the option's to the next one as little indented.
fn shown_default<'h>(help: &'h str, long: &str) -> Option<&'h str> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut lines = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&format!("{long} ")));
    let first = lines.next()?;
    let more = lines.take_while(|l| l.trim().is_empty() || indent(l) > indent(first));
    std::iter::once(first).chain(more).find_map(|line| {
        let default = &line[line.find("[default: ")? + "[default: ".len()..];
        Some(&default[..default.find(']')?])
    })
}

#[test]
fn help_shows_the_defaults() {
    for help in helps() {
        for (long, default) in [
            ("--lanes", "4"),
            ("--window", "256M"),
            ("--idle", "yield"),
            ("--iodepth", "32"),
            ("--bs", "4K"),
            ("--runtime", "10"),
            ("--data-set-interval-ms", "10"),
            ("--secondary-window", "twice that"),
        ] {
            assert_eq!(shown_default(&help, long), Some(default), "{long}:\n{help}");
        }
        let size = shown_default(&help, "--size").unwrap();
        let default = format!("{}; ", ByteSize(DEFAULT_SIZE));
        assert!(size.starts_with(&default), "{size}");
    }
}

#[test]
fn every_option_with_a_default_shows_it() {
    // Off, or the stream, left out (each help says so in words).
    let no_default = [
        "rate",
        "cores",
        "link_rate",
        "output",
        "hdr_log",
        "plot",
        "target",
        "target_control",
    ];
    let command = Bench::command();
    for help in helps() {
        for arg in valued_args(&command) {
            let long = format!("--{}", arg.get_long().unwrap());
            let shown = shown_default(&help, &long).is_some();
            let none = no_default.contains(&arg.get_id().as_str());
            assert_eq!(shown, !none, "{long}:\n{help}");
        }
    }
}

/// With no flags, the configuration a run reports (its header) has the defaults `--help`
/// shows.
#[test]
fn the_defaults_resolved_are_the_defaults_shown() {
    let args = Bench::try_parse_from(["bench"]).unwrap().args;
    args.validate().unwrap();
    let described = args.describe();
    let help = &helps()[0];
    // Shown in other parts of the report, or only with another option.
    let elsewhere = ["rwmixwrite", "seed", "output_format"];
    let mut compared = 0;
    for arg in valued_args(&Bench::command()) {
        let id = arg.get_id().as_str();
        let Some(default) = arg.get_default_values().first() else {
            continue;
        };
        if elsewhere.contains(&id) {
            continue;
        }
        let key = match id {
            "runtime" | "ramp" => format!("{id}_s"),
            _ => id.to_string(),
        };
        let long = format!("--{}", arg.get_long().unwrap());
        let described = described.get(&key).unwrap_or_else(|| panic!("{key}"));
        assert_eq!(default.to_str(), Some(described.as_str()), "{id}");
        assert_eq!(shown_default(help, &long), Some(described.as_str()), "{id}");
        compared += 1;
    }
    assert_eq!(compared, 15);
    assert_eq!(described["size"], ByteSize(DEFAULT_SIZE).to_string());
    assert_eq!(described["rate"], "closed loop");
    assert_eq!(described["link_rate"], "unlimited");
}

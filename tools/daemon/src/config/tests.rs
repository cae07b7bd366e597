//! The layering rule (flags over the file over the defaults), the defaults `--help` shows
//! against those a daemon resolves, and the errors a bad file or flag gets.

use clap::{Arg, Command, CommandFactory, Parser};
use serde_json::Value;

use super::*;

/// `ordo primary` as the binary parses it.
#[derive(Debug, Parser)]
struct Primary {
    #[command(flatten)]
    options: PrimaryOptions,
}

/// `ordo secondary` as the binary parses it.
#[derive(Debug, Parser)]
struct Secondary {
    #[command(flatten)]
    options: SecondaryOptions,
}

fn primary(flags: &[&str]) -> PrimaryOptions {
    Primary::try_parse_from(std::iter::once("primary").chain(flags.iter().copied()))
        .unwrap()
        .options
}

fn secondary(flags: &[&str]) -> SecondaryOptions {
    Secondary::try_parse_from(std::iter::once("secondary").chain(flags.iter().copied()))
        .unwrap()
        .options
}

/// A config file in a directory of its own (kept while the guard lives).
fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ordo.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

#[test]
fn flags_override_the_file_and_the_file_overrides_defaults() {
    let (_dir, path) = config_file(
        "connect = \"127.0.0.1:7410\"\nvolume = [\"data=mem:64M\"]\nlanes = 8\n\
         window_bytes = \"64M\"\ndata_set_interval_ms = 5\nidle = \"spin\"\nblock_size = 512\n",
    );
    // --idle park is the default too: given, it still wins over the file.
    let flags = ["--config", &path, "--lanes", "2", "--idle", "park"];
    let settings = primary(&flags).resolve().unwrap();
    assert_eq!(settings.lanes, 2, "the flag wins");
    assert_eq!(
        settings.idle,
        Idle::Park,
        "the flag wins, though it is the default"
    );
    assert_eq!(settings.window_bytes, ByteSize(64 << 20), "the file wins");
    assert_eq!(settings.data_set_interval_ms, 5);
    assert_eq!(settings.block_size, 512);
    assert_eq!(settings.max_write_bytes, ByteSize(1 << 20), "the default");
    assert_eq!(settings.group, 1, "the default");
    assert_eq!(settings.volume[0].name, "data", "the file's volumes");
    let rendered = render(&settings);
    assert!(rendered.contains("lanes = 2"), "{rendered}");
    assert!(rendered.contains("window_bytes = \"64M\""), "{rendered}");
    // Volumes on the command line replace the file's; a u64 beyond TOML's reach survives.
    let flags = [
        "--config",
        &path,
        "--volume",
        "other=mem:1M",
        "--data-set-max-writes",
        "18446744073709551615",
    ];
    let settings = primary(&flags).resolve().unwrap();
    assert_eq!(settings.volume.len(), 1);
    assert_eq!(settings.volume[0].name, "other");
    assert_eq!(settings.data_set_max_writes, u64::MAX);
    assert_eq!(settings.lanes, 8, "the file, no flag given");
    assert_eq!(settings.idle, Idle::Spin, "the file, no flag given");
}

#[test]
fn the_secondary_layers_alike_and_derives_its_control_socket() {
    let (_dir, path) = config_file(
        "state_dir = \"/tmp/from-file\"\nvolume = [\"a=mem:1M\"]\nwindow_bytes = \"256M\"\n\
         applied_interval_ms = 7\n",
    );
    let settings = secondary(&["--config", &path, "--applied-interval-ms", "9"])
        .resolve()
        .unwrap();
    assert_eq!(settings.applied_interval_ms, 9, "the flag wins");
    assert_eq!(settings.window_bytes, ByteSize(256 << 20), "the file wins");
    assert_eq!(settings.lanes, 4, "the default");
    assert_eq!(settings.journal_bytes, None, "the least the window needs");
    assert_eq!(
        settings.control,
        PathBuf::from("/tmp/from-file/control.sock"),
        "STATE_DIR/control.sock"
    );
    let flags = [
        "--config",
        &path,
        "--state-dir",
        "/tmp/flag",
        "--control",
        "/c.sock",
    ];
    let settings = secondary(&flags).resolve().unwrap();
    assert_eq!(settings.state_dir, PathBuf::from("/tmp/flag"));
    assert_eq!(settings.control, PathBuf::from("/c.sock"));
}

/// The args of `command` that take a value, with the ids SPDK's flags (documented in
/// spdk.rs) left out.
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
    let block = std::iter::once(first)
        .chain(lines.take_while(|l| l.trim().is_empty() || indent(l) > indent(first)));
    block.into_iter().find_map(|line| {
        let default = &line[line.find("[default: ")? + "[default: ".len()..];
        Some(&default[..default.find(']')?])
    })
}

/// `-h` (one line an option) and `--help` (paragraphs) of `command`.
fn helps(mut command: Command) -> [String; 2] {
    [
        command.render_help().to_string(),
        command.render_long_help().to_string(),
    ]
}

#[test]
fn help_shows_the_defaults() {
    for help in helps(Primary::command()) {
        for (long, default) in [
            ("--lanes", "4"),
            ("--window-bytes", "256M"),
            ("--idle", "park"),
            ("--nbd", "127.0.0.1:10809"),
            ("--data-set-interval-ms", "10"),
            ("--drain-timeout-s", "30"),
        ] {
            assert_eq!(shown_default(&help, long), Some(default), "{long}:\n{help}");
        }
        assert_eq!(shown_default(&help, "--connect"), None, "required: {help}");
    }
    for help in helps(Secondary::command()) {
        for (long, default) in [
            ("--lanes", "4"),
            ("--window-bytes", "128M"),
            ("--idle", "park"),
            ("--listen", "0.0.0.0:7410"),
            ("--control", "STATE_DIR/control.sock"),
            ("--journal-bytes", "the least the window needs"),
        ] {
            assert_eq!(shown_default(&help, long), Some(default), "{long}:\n{help}");
        }
    }
}

/// Every option that takes a value shows its default in `--help`, but for those `no_default`
/// names (required, or meaning nothing when left out).
fn every_default_is_shown(command: Command, no_default: &[&str]) {
    for help in helps(command.clone()) {
        for arg in valued_args(&command) {
            let id = arg.get_id().as_str();
            let long = format!("--{}", arg.get_long().unwrap());
            let shown = shown_default(&help, &long);
            assert_eq!(shown.is_none(), no_default.contains(&id), "{long}:\n{help}");
        }
    }
}

#[test]
fn every_option_with_a_default_shows_it() {
    every_default_is_shown(
        Primary::command(),
        &["config", "connect", "volume", "cores", "state_dir"],
    );
    every_default_is_shown(
        Secondary::command(),
        &["config", "state_dir", "volume", "cores", "journal_bdev"],
    );
}

/// With only the required flags given, each setting a daemon resolves equals the default
/// its `--help` shows, for every flag with a clap default (`count` of them).
fn resolved_defaults_are_shown(command: Command, settings: Value, count: usize) {
    let help = command.clone().render_help().to_string();
    let mut compared = 0;
    for arg in valued_args(&command) {
        let Some(default) = arg.get_default_values().first() else {
            continue;
        };
        let id = arg.get_id().as_str();
        let resolved = match &settings[id] {
            Value::String(text) => text.clone(),
            Value::Null => panic!("{id} is not a setting"),
            value => value.to_string(),
        };
        assert_eq!(default.to_str(), Some(resolved.as_str()), "{id}");
        let long = format!("--{}", arg.get_long().unwrap());
        assert_eq!(shown_default(&help, &long), Some(resolved.as_str()), "{id}");
        compared += 1;
    }
    assert_eq!(compared, count);
}

#[test]
fn the_defaults_resolved_are_the_defaults_shown() {
    let settings = primary(&["--connect", "127.0.0.1:7410", "--volume", "a=mem:1M"])
        .resolve()
        .unwrap();
    assert_eq!(settings.lanes, 4);
    assert_eq!(settings.window_bytes, ByteSize(256 << 20));
    assert_eq!(settings.idle, Idle::Park);
    let settings = serde_json::to_value(settings).unwrap();
    resolved_defaults_are_shown(Primary::command(), settings, 17);
    let settings = secondary(&["--state-dir", "/tmp/x", "--volume", "a=mem:1M"])
        .resolve()
        .unwrap();
    assert_eq!(settings.control, PathBuf::from("/tmp/x/control.sock"));
    let settings = serde_json::to_value(settings).unwrap();
    resolved_defaults_are_shown(Secondary::command(), settings, 8);
    // A file's missing key takes the same defaults.
    let file: PrimaryOptions = toml::from_str("connect = \"127.0.0.1:1\"").unwrap();
    let parsed = primary(&["--connect", "127.0.0.1:1"]);
    assert_eq!(render(&file), render(&parsed));
    assert_eq!(file.lanes, 4);
}

/// The README's example configurations stay valid.
#[test]
fn the_example_configurations_parse() {
    let primary: PrimaryOptions =
        toml::from_str(include_str!("../../../../examples/primary.toml")).unwrap();
    assert_eq!(primary.volume.len(), 2);
    assert_eq!(primary.idle, Idle::Spin);
    let secondary: SecondaryOptions =
        toml::from_str(include_str!("../../../../examples/secondary.toml")).unwrap();
    assert_eq!(secondary.window_bytes, ByteSize(512 << 20));
    assert_eq!(secondary.group, 7);
    assert_eq!(secondary.group, primary.group);
    let names = |v: &[VolumeSpec]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&primary.volume), names(&secondary.volume));
}

#[test]
fn bad_config_is_a_clear_error() {
    let (_dir, path) = config_file("state_dir = \"/tmp/x\"\nlanez = 3\n");
    let error = format!(
        "{:#}",
        secondary(&["--config", &path]).resolve().unwrap_err()
    );
    assert!(error.contains("lanez"), "{error}");
    assert!(error.contains(&path), "{error}");
    // A wrong value in the file is refused even when the flag overrides it.
    let (_dir, path) = config_file("state_dir = \"/tmp/x\"\nlanes = \"many\"\n");
    let error = secondary(&["--config", &path, "--lanes", "2"]).resolve();
    let error = format!("{:#}", error.unwrap_err());
    assert!(error.contains("lanes") && error.contains(&path), "{error}");
    let error = format!(
        "{:#}",
        secondary(&["--config", "/nonexistent.toml"])
            .resolve()
            .unwrap_err()
    );
    assert!(
        error.contains("reading config file /nonexistent.toml"),
        "{error}"
    );
    let missing = PrimaryOptions::default().resolve().unwrap_err().to_string();
    assert!(missing.contains("--connect"), "{missing}");
    let missing = secondary(&["--volume", "a=mem:1M"]).resolve().unwrap_err();
    assert!(missing.to_string().contains("--state-dir"), "{missing}");
    let missing = secondary(&["--state-dir", "/tmp/x"]).resolve().unwrap_err();
    assert!(missing.to_string().contains("--volume"), "{missing}");
    let twice = [
        "--state-dir",
        "/tmp/x",
        "--volume",
        "a=mem:1M",
        "--volume",
        "a=mem:2M",
    ];
    let error = secondary(&twice).resolve().unwrap_err().to_string();
    assert!(error.contains("twice"), "{error}");
    let far = [
        "--state-dir",
        "/tmp/x",
        "--volume",
        "a=mem:1M",
        "--cores",
        "100000",
    ];
    let error = secondary(&far).resolve().unwrap_err().to_string();
    assert!(error.contains("core 100000 is not available"), "{error}");
    let long = [
        "--connect",
        "127.0.0.1:1",
        "--volume",
        "a=mem:1M",
        "--drain-timeout-s",
        "18446744073709551615",
    ];
    let error = primary(&long).resolve().unwrap_err().to_string();
    assert!(
        error.contains("--drain-timeout-s must be at most"),
        "{error}"
    );
    let lanes = [
        "--connect",
        "127.0.0.1:1",
        "--volume",
        "a=mem:1M",
        "--lanes",
        "65",
    ];
    let error = primary(&lanes).resolve().unwrap_err().to_string();
    assert!(error.contains("--lanes must be 1 to 64"), "{error}");
}

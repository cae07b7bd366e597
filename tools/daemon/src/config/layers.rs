//! Settings in three layers: clap's defaults (declared once, on the flags, and shown by
//! `--help`), a TOML file over them, and the flags the command line gave over both. clap
//! fills in a flag left out with its default, so which flags were given is read from
//! clap's value sources while it parses (`GivenFlags`).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The ids (the field names, which are also the file's keys) of the flags the command line
/// gave. Flattened into an options struct as its first field: clap's derived parser takes
/// each field's value out of the matches, so the fields after it would be gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GivenFlags(BTreeSet<String>);

impl GivenFlags {
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

impl FromArgMatches for GivenFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = GivenFlags::default();
        given.update_from_arg_matches(matches)?;
        Ok(given)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let given = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine));
        self.0.extend(given.map(|id| id.as_str().to_string()));
        Ok(())
    }
}

/// No flags of its own: it only reads the others' value sources.
impl Args for GivenFlags {
    fn augment_args(command: Command) -> Command {
        command
    }

    fn augment_args_for_update(command: Command) -> Command {
        command
    }
}

/// `T` as clap builds it from an empty command line: every flag's default (`None` or
/// empty for a flag without one). What a file's missing key takes.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let matches = T::augment_args(Command::new("defaults"))
        .try_get_matches_from(["defaults"])
        .expect("no flag is required (a missing one is refused when resolving)");
    T::from_arg_matches(&matches).expect("every default parses")
}

/// `flags` (the command line's values, clap's defaults for the rest) over the TOML file at
/// `path`: a flag `given` on the command line wins, otherwise the file's key, otherwise the
/// default (`T`'s serde default must be `defaults::<T>()`). A key the file has and `T` does
/// not, or a value of the wrong type, is refused with the file named. The fields serde
/// skips come back as their defaults.
pub fn overlay<T: Serialize + DeserializeOwned>(
    flags: &T,
    given: &GivenFlags,
    path: &Path,
) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let file: T =
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    // Fields are picked by name in serde_json's values, which hold each typed value exactly
    // (a u64 beyond TOML's i64 too); both sides were typed already, so this only moves them.
    let file = serde_json::to_value(file).context("the config file's settings")?;
    let flags = serde_json::to_value(flags).context("the flags' settings")?;
    let (Value::Object(mut merged), Value::Object(flags)) = (file, flags) else {
        unreachable!("a struct of settings serializes to an object");
    };
    for (key, value) in flags {
        if given.contains(&key) {
            merged.insert(key, value);
        }
    }
    serde_json::from_value(Value::Object(merged))
        .with_context(|| format!("the flags over config file {}", path.display()))
}

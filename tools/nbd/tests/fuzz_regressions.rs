//! The fuzz targets' inputs kept in the tree, replayed on stable through the same checks
//! cargo-fuzz runs (`ordo_nbd::fuzzing`): every crash the fuzzer found, kept under
//! `fuzz/regressions/<target>/` once fixed, and the seed corpus `fuzz/seeds/<target>/`.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ordo_nbd::fuzzing;

type Check = fn(&[u8]) -> usize;

/// The files of `fuzz/<kind>/<target>/`, sorted; dotfiles (`.gitkeep`) are not inputs.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error} (a fuzz target's inputs)", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes =
                std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            (path, bytes)
        })
        .collect()
}

/// The inputs of `fuzz/<kind>/<target>/` that make `check` panic.
fn crashing(kind: &str, target: &str, check: Check) -> Vec<String> {
    inputs(kind, target)
        .into_iter()
        .filter(|(_, bytes)| panic::catch_unwind(AssertUnwindSafe(|| check(bytes))).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect()
}

fn replay(target: &str, check: Check) {
    let crashing = crashing("regressions", target, check);
    assert!(
        crashing.is_empty(),
        "{target}: these inputs still crash: {crashing:?}"
    );
}

/// Each seed is a valid stream: a preamble (flags or greeting) and at least one message
/// in one direction, so fuzzing starts past the magic numbers.
fn seeds_are_whole_streams(target: &str, check: Check) {
    let seeds = inputs("seeds", target);
    assert!(seeds.len() >= 2, "{target}: only {} seeds", seeds.len());
    for (path, bytes) in seeds {
        let messages = check(&bytes);
        assert!(
            messages >= 2,
            "{}: {messages} whole messages",
            path.display()
        );
    }
}

#[test]
fn the_option_crashes_found_stay_fixed() {
    replay("options", fuzzing::options);
}

#[test]
fn the_request_crashes_found_stay_fixed() {
    replay("requests", fuzzing::requests);
}

#[test]
fn the_option_seeds_are_whole_handshakes() {
    seeds_are_whole_streams("options", fuzzing::options);
}

#[test]
fn the_request_seeds_are_whole_requests_and_replies() {
    seeds_are_whole_streams("requests", fuzzing::requests);
}

#[test]
fn a_check_that_panics_is_caught() {
    // The replay runs each input and counts a panic as a crash rather than missing it.
    let broken: Check = |bytes| panic!("a deliberately broken check ({} bytes)", bytes.len());
    let seeds = inputs("seeds", "requests").len();
    assert_eq!(crashing("seeds", "requests", broken).len(), seeds);
    assert_eq!(
        crashing("seeds", "requests", fuzzing::requests),
        Vec::<String>::new()
    );
}

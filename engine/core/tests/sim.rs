//! The deterministic simulation as a cargo test. `ORDO_SIM_SEEDS=N` runs seeds 0..N
//! (default 200), `ORDO_SIM_SEED=S` replays one seed.

use ordo_core::secondary::InjectedBug;
use ordo_core::sim::{run_seed, SimStats};

/// Seeds that once found a bug, kept so the bug stays fixed. (A seed draws its whole
/// configuration, so when the swarm's draws change a seed explores a different corner;
/// the bugs below also have scenario tests in secondary.rs and regressions.rs.)
/// 37: a journal record acked behind an unfinished one was lost in a crash;
/// 124: a primary flush meeting a full device queue failed instead of waiting;
/// 400, 952: a dropped `Applied` frame left the primary waiting for credit forever;
/// 994: an `Applied` frame overtaking the `Hello` on its lane was treated as an error;
/// 214, 445, 448, 988: after a process crash, journal records (and a superblock) written
/// but never flushed were trusted as durable, and a later power loss took them away;
/// 461: the recovery scan jumped over a lost record that ended a lap exactly (it took the
/// hole for the writer's skip to the next lap), so a data set applied to the replica was
/// not found again in the journal;
/// 51: a read on the primary dropped the device completions polled after its own, so
/// writes were never acknowledged and the primary never caught up;
/// 942: a sub-block write whose merge found the volume's queue full was refused for good
/// instead of retried after a poll;
/// 447: a held re-base decided while the operator's consent to go on inconsistent waited
/// was written after it, with no consistent image left to hold (a panic).
const REGRESSION_SEEDS: [u64; 13] = [
    37, 124, 400, 952, 994, 214, 445, 448, 988, 461, 51, 942, 447,
];

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

fn run(seeds: impl IntoIterator<Item = u64>, bug: Option<InjectedBug>) -> (SimStats, Vec<String>) {
    let mut total = SimStats::default();
    let mut violations = Vec::new();
    for seed in seeds {
        let (stats, result) = run_seed(seed, bug);
        total.add(&stats);
        if let Err(violation) = result {
            violations.push(violation.to_string());
        }
    }
    (total, violations)
}

#[test]
fn simulation_holds_the_invariant() {
    let seeds: Vec<u64> = match env_u64("ORDO_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("ORDO_SIM_SEEDS").unwrap_or(200)).collect(),
    };
    let (stats, violations) = run(seeds.iter().copied(), None);
    eprintln!("sim: {} seeds: {stats}", seeds.len());
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(
        stats.data_sets > 0 && stats.writes > 0,
        "the simulation did work"
    );
    if seeds.len() >= 200 {
        // Seeds 77 and 169, for one, fail `check_room` when the room is not kept.
        assert!(
            stats.rooms_kept > 0 && stats.room_waits > 0,
            "held resyncs kept their room and writes waited for it: {stats}"
        );
    }
}

#[test]
fn regression_seeds_stay_fixed() {
    let (_, violations) = run(REGRESSION_SEEDS, None);
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn seeds_replay_identically() {
    let (first, a) = run_seed(7, None);
    let (second, b) = run_seed(7, None);
    assert_eq!(first, second);
    assert_eq!(a, b);
}

#[test]
fn the_checker_catches_a_resync_applied_before_its_end_point() {
    let (stats, violations) = run(0..300, Some(InjectedBug::EagerResync));
    assert!(
        violations.len() >= 10,
        "a secondary that applies a held resync before its end point was caught only {} times in 300 seeds ({stats})",
        violations.len()
    );
}

#[test]
fn the_checker_catches_a_held_resync_that_keeps_no_room() {
    // Seeds that broke `check_room` when the room was taken out by hand (of 1000); the
    // swarm's draws may move them, so the test asks for one of the four.
    let (stats, violations) = run([77, 169, 680, 826], Some(InjectedBug::ResyncWithoutRoom));
    assert!(
        violations
            .iter()
            .any(|v| v.contains("a held resync that kept its room was reported stuck")),
        "a primary that keeps no room for a held resync was not caught ({stats}): {violations:?}"
    );
}

#[test]
fn the_checker_catches_a_broken_applier() {
    let (stats, violations) = run(0..300, Some(InjectedBug::UnflushedWatermark));
    assert!(
        violations.len() >= 10,
        "an applier that persists its watermark before the replicas are durable was caught only {} times in 300 seeds ({stats})",
        violations.len()
    );
}

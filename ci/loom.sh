#!/usr/bin/env bash
# Model-checks ordo-lockfree under loom: every interleaving of the small models in
# lockfree/tests/loom.rs, preemptions bounded by LOOM_MAX_PREEMPTIONS (3 unless set).
# On a 2-core box: about a minute of checking after a cold build of about 30 s. The
# `--cfg loom` build gets its own target dir (LOOM_TARGET_DIR, default target/loom) so it
# does not invalidate the normal one. Runs from any directory; needs only cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"

# One model at a time: loom maps a fresh stack per thread per iteration, and models run
# in parallel spend more in the kernel than they gain (measured 58 s serial, 89 s on two
# test threads).
cargo test -p ordo-lockfree --release --locked --test loom -- --test-threads=1

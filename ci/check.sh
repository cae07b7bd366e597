#!/usr/bin/env bash
# What CI runs, in order: toolchain check, format, lints, the README's test command, loom
# and miri on the lock-free crate, a thousand simulation seeds, the demo, a benchmark
# smoke run, and the SPDK tests where SPDK is installed (a line saying they were skipped
# otherwise). Each step must pass; the script stops at the first failure. Runs from any
# directory; needs a Rust toolchain (cargo, rustfmt, clippy), crates.io, and apt-get for
# the NBD clients the daemon tests use and the benchmark's baselines.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
cargo --version
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

step "system packages"
# The real NBD clients the tests drive the primary with: qemu-io and qemu-img
# (qemu-utils), nbdcopy and nbdinfo (libnbd-bin), and fio with its nbd engine; fio and
# iperf3 are also the benchmark's baselines.
missing=()
command -v qemu-io >/dev/null || missing+=(qemu-utils)
command -v nbdcopy >/dev/null || missing+=(libnbd-bin)
command -v fio >/dev/null || missing+=(fio)
# A filesystem on the export (tools/tests/filesystem.rs): nbdfuse, FUSE, mkfs and fsck.
command -v nbdfuse >/dev/null || missing+=(nbdfuse)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v losetup >/dev/null || missing+=(mount)
# What `ordo bench compare` measures its baselines with, and what checks its report.
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v jq >/dev/null || missing+=(jq)
# P10's baseline: nbdkit's memory plugin, through fio's nbd engine.
command -v nbdkit >/dev/null || missing+=(nbdkit)
# The import-cycle check (ci/check-cycles.py).
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
qemu-io --version | sed -n 1p
nbdcopy --version | sed -n 1p
fio --version
iperf3 --version | sed -n 1p
jq --version

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "crate boundaries: the sans-I/O core and the NBD crate, on cargo tree"
ci/check-deps.sh

step "import cycles: none between the files of any crate"
python3 ci/check-cycles.py

step "tests (the README's test command)"
cargo test --workspace --locked

step "micro-benchmarks: each once, as a smoke test (criterion's test mode; no timing)"
cargo test -p ordo-benches --benches --locked

step "loom: every interleaving of the lock-free models"
ci/loom.sh

step "miri: the lock-free crate's tests"
# Nightly and its miri component come from rustup; where rustup cannot reach them, say so.
if rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal; then
    ci/miri.sh
else
    echo "miri: no nightly toolchain could be installed here; skipped"
fi

step "fuzzing: each NBD parser for 60 s (cargo-fuzz on nightly)"
if rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal; then
    ci/fuzz.sh
else
    echo "fuzzing: no nightly toolchain could be installed here; skipped"
fi

step "simulation: 1000 seeds"
cargo build --release --locked -p ordo-tools
sim_log=$(mktemp)
./target/release/ordo sim --seeds 1000 | tee "$sim_log"
tail -n 1 "$sim_log" | grep -qx 'sim: 1000 seeds, 0 violations'

step "demo"
demo_log=$(mktemp)
./target/release/ordo demo | tee "$demo_log"
tail -n 1 "$demo_log" | grep -qE '^replica verified at data set [0-9]+$'

step "benchmark: ordo bench compare --quick, as a smoke test (the report is complete)"
ci/bench-smoke.sh

step "SPDK: the tests on malloc bdevs (cargo test --features spdk), where SPDK is installed"
# SPDK is not packaged and CI cannot build it (README, section SPDK): these run where a
# developer built it and set SPDK_DIR, or installed it where pkg-config finds it.
if { [ -n "${SPDK_DIR:-}" ] && [ -f "$SPDK_DIR/build/lib/pkgconfig/spdk_bdev.pc" ]; } \
    || pkg-config --exists spdk_bdev 2>/dev/null; then
    echo "SPDK found (${SPDK_DIR:-through pkg-config})"
    # bindgen reads SPDK's headers through libclang.
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev; }
    cargo clippy --workspace --all-targets --locked --features spdk -- -D warnings
    cargo test --locked --features spdk -p ordo-spdk
    cargo test --locked --features spdk -p ordo-tools --test spdk
else
    echo "SPDK not found: skipping the SPDK tests (set SPDK_DIR to a built SPDK to run them)"
fi

step "done"

#!/usr/bin/env bash
# Runs ordo-lockfree's unit, model and stress tests under miri (undefined behaviour, data
# races, leaks), with fewer cases and seqs than the normal build (`cfg(miri)` in the
# tests). Needs the nightly toolchain with the miri and rust-src components; installs the
# components if nightly is there. On a 2-core box: about 20 s to build miri's sysroot
# once, then about a minute. Runs from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "miri needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    rustup component add --toolchain nightly miri rust-src
fi

export CARGO_TARGET_DIR="${MIRI_TARGET_DIR:-target/miri}"
cargo +nightly miri test -p ordo-lockfree --locked --lib --test model --test stress

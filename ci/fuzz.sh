#!/usr/bin/env bash
# Fuzzes ordo-nbd's parsers (tools/nbd/fuzz: cargo-fuzz and libFuzzer, on nightly) for
# FUZZ_SECONDS per target, 60 unless set. Each target starts from its committed seeds
# (fuzz/seeds/<target>) and an emptied scratch corpus (fuzz/corpus/<target>, ignored by
# git, where libFuzzer writes), so a run never grows the tree. Prints per target the runs,
# the corpus size and the crashes; a crash fails the script, which then says how to keep
# it as a test (tests/fuzz_regressions.rs). Installs cargo-fuzz if missing. On a 2-core
# box about 3 minutes at the default: a 45 s build, reused from fuzz/target after that.
# Runs from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_seconds="${FUZZ_SECONDS:-60}"
if ! [[ "$fuzz_seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "FUZZ_SECONDS must be a whole number of seconds, not '$fuzz_seconds'" >&2
    exit 1
fi
fuzz=tools/nbd/fuzz
targets=(options requests)
# The longest input tried: for the handshake, an option of MAX_OPTION_BYTES and the next
# one's header; for transmission, a few requests and a write's data.
declare -A max_len=([options]=16448 [requests]=4096)

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked
fi
cargo +nightly fuzz --version

# cargo-fuzz has no --locked: refuse a stale committed Cargo.lock here instead.
cargo +nightly fetch --locked --manifest-path "$fuzz/Cargo.toml"
# Release, with debug assertions and overflow checks, under AddressSanitizer; built once.
build=(--fuzz-dir "$fuzz" --release --debug-assertions)
cargo +nightly fuzz build "${build[@]}"

# libFuzzer's limits: a slow input (10 s) and any single allocation of 64 MB or more (a
# length field trusted) are failures too, with an artifact like a crash's.
limits=(-timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=64)

keep_steps() { # target artifact...: how to turn each crash into a regression test
    local target=$1
    shift
    echo "To keep a crash as a test (tools/nbd/tests/fuzz_regressions.rs replays the directory):"
    for artifact in "$@"; do
        echo "  cargo +nightly fuzz run ${build[*]} $target $artifact   # reproduce"
        echo "  cargo +nightly fuzz tmin ${build[*]} $target $artifact   # optional: minimise"
        echo "  cp $artifact $fuzz/regressions/$target/   # or the minimised-from-* file"
    done
    echo "  cargo test -p ordo-nbd --test fuzz_regressions   # fails until the parser is fixed"
    echo "then fix the parser in tools/nbd/src (bad input is a typed error, never a panic)"
    echo "until that test and ci/fuzz.sh pass, and commit the input with the fix."
}

failed=0
for target in "${targets[@]}"; do
    corpus="$fuzz/corpus/$target"
    seeds="$fuzz/seeds/$target"
    artifacts="$fuzz/artifacts/$target"
    log="$fuzz/target/fuzz-$target.log"
    rm -rf "$corpus"
    mkdir -p "$corpus" "$artifacts"
    # Artifacts of earlier runs stay where they are; only this run's count.
    since=$(mktemp)
    status=0
    cargo +nightly fuzz run "${build[@]}" "$target" "$corpus" "$seeds" -- \
        -max_total_time="$fuzz_seconds" -max_len="${max_len[$target]}" "${limits[@]}" \
        >"$log" 2>&1 || status=$?
    mapfile -t crashes < <(find "$artifacts" -type f -newer "$since" ! -name 'slow-unit-*' | sort)
    rm -f "$since"
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log")
    corpus_files=$(find "$corpus" -type f | wc -l)
    seed_files=$(find "$seeds" -type f | wc -l)
    echo "fuzz $target: ${runs:-stopped early}, corpus $corpus_files files" \
        "(from $seed_files seeds), crashes ${#crashes[@]}${crashes[*]:+: ${crashes[*]}}"
    if [ "${#crashes[@]}" -gt 0 ] || [ "$status" -ne 0 ] || [ -z "$runs" ]; then
        failed=$((failed + 1))
        echo "fuzz $target failed (status $status); from $log:"
        # The panic (or sanitizer report) and libFuzzer's verdict, not the input's dump.
        grep -E -A1 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY:' "$log" \
            || tail -n 20 "$log"
        if [ "${#crashes[@]}" -gt 0 ]; then
            keep_steps "$target" "${crashes[@]}"
        fi
    fi
done

echo "fuzz: ${#targets[@]} targets of ${fuzz_seconds} s, $failed failed"
[ "$failed" -eq 0 ]

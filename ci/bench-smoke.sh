#!/usr/bin/env bash
# `ordo bench compare --quick` once, as a smoke test: every row of the suite ran and its
# JSON report is complete. It asserts nothing about the figures (this machine is shared
# and noisy); the README's Performance section has the measured ones.
set -euo pipefail
cd "$(dirname "$0")/.."
ordo=${ORDO:-target/release/ordo}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$work/compare.log"
"$ordo" bench compare --quick --dir "$work" --output "$work/compare.json" | tee "$log"
tail -n 1 "$log" | grep -qE '^compare: P1=[0-9.]+ P1nbd=[0-9.]+ P2=[0-9.]+ P2c=[0-9.]+ P3=[0-9.]+ P5=[0-9.]+ P6=[0-9.]+ P6s=[0-9.]+ P9=[0-9.]+ P10=[0-9.]+ P10c4=[0-9.]+ P11=[0-9.]+ P13=[0-9.]+ P14=[0-9.]+ P15=[0-9.]+$'
# Each row: its id, both measurements with their commands, per-run ratios and a verdict.
jq -e '
  (.rows | map(.id)) == ["P1", "P1nbd", "P2", "P2c", "P3", "P5", "P6", "P6s", "P9", "P10", "P10c4", "P11", "P13", "P14", "P15"]
  and all(.rows[];
    (.ours.value | type) == "number" and .ours.value > 0
    and (.baseline.value | type) == "number" and .baseline.value > 0
    and (.ours.how | startswith("ordo "))
    and (.baseline.how | length) > 0
    and (.ratio | type) == "number"
    and (.ratios | length) == 1
    and (.met | type) == "boolean")
' "$work/compare.json" >/dev/null || { echo "incomplete compare report:"; cat "$work/compare.json"; exit 1; }
# A single run's JSON report: fio's sections, percentiles and bins, intervals, memory.
"$ordo" bench --runtime 1 --ramp 0 --quiet --output-format json --output "$work/run.json" \
    --hdr-log "$work/run.hlog" --plot "$work/run.svg"
jq -e '
  .jobs[0].write.total_ios > 0
  and .jobs[0].write.lat_ns.percentile["99.000000"] > 0
  and (.jobs[0].write.lat_ns.bins | length) > 0
  and .jobs[0].replication.lag_ns.N > 0
  and (.intervals | length) >= 1
  and .memory.secondary_peak_rss_bytes > 0
  and .cpu.primary.user_s + .cpu.primary.system_s > 0
  and .cpu.secondary.cpu_us_per_write > 0
  and .config.mode == "replicated"
' "$work/run.json" >/dev/null || { echo "incomplete run report:"; cat "$work/run.json"; exit 1; }
grep -q '^#\[StartTime' "$work/run.hlog"
grep -q '<svg' "$work/run.svg"
echo "bench smoke: compare and a single run reported completely"

#!/usr/bin/env bash
# P7: ordo's replicated 4 KiB write IOPS on an SPDK malloc bdev against SPDK's bdevperf on
# the same bdev config, the same memory mode and the same first core, in one session.
# Runs each RUNS times (default 3) for RUN_SECONDS (default 10), alternating, and prints each
# run, the medians and the ratio. Needs SPDK built at $SPDK_DIR (README, section SPDK) and
# ordo built with `--features spdk` (ORDO, default target/release/ordo).
#   SPDK_DIR=/opt/spdk benches/p7-bdevperf.sh
set -euo pipefail
: "${SPDK_DIR:?set SPDK_DIR to a built SPDK (README, section SPDK)}"
ORDO=${ORDO:-target/release/ordo}
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${RUN_SECONDS:-10}
BDEVPERF="$SPDK_DIR/build/examples/bdevperf"
[[ -x "$BDEVPERF" ]] || { echo "p7: no bdevperf at $BDEVPERF (build SPDK's examples)" >&2; exit 1; }
[[ -x "$ORDO" ]] || { echo "p7: no $ORDO (cargo build --release --features spdk)" >&2; exit 1; }
command -v jq >/dev/null || { echo "p7: needs jq" >&2; exit 1; }
# bdevperf from SPDK's build tree finds its shared libraries here.
export LD_LIBRARY_PATH="$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/malloc.json" <<'JSON'
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_malloc_create",
   "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}}]}]}
JSON
echo "# P7: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# SPDK $(cat "$SPDK_DIR/VERSION" 2>/dev/null || echo '?'), ordo $("$ORDO" --version | cut -d' ' -f2)"
echo "# both: malloc bdev 256 MiB (4 KiB blocks), no hugepages, 1 GiB for SPDK, no PCI,"
echo "#       4 KiB sequential writes, queue depth 32, ${SECONDS_PER_RUN} s; first core 0"
echo "# bdevperf: -q 32 -o 4096 -w write -m 0x1"
echo "# ordo: bench --rw write --bs 4K --iodepth 32 --cores 0,1 (primary poller on core 0,"
echo "#       the secondary process on core 1, its replica and journal in memory), replicated;"
echo "#       and --mode local-only --cores 0 (replication off, the same write path)"

ours=() theirs=() local=()
for run in $(seq 1 "$RUNS"); do
  "$BDEVPERF" --json "$work/malloc.json" -q 32 -o 4096 -w write -t "$SECONDS_PER_RUN" \
      --no-huge -s 1024 --no-pci -m 0x1 > "$work/bdevperf.out" 2>&1 \
    || { cat "$work/bdevperf.out" >&2; exit 1; }
  iops=$(tr '\r' '\n' < "$work/bdevperf.out" | awk '$1 == "Total" && $2 == ":" {print $3}')
  [[ -n "$iops" ]] || { cat "$work/bdevperf.out" >&2; echo "p7: bdevperf printed no Total line" >&2; exit 1; }
  theirs+=("$iops")
  "$ORDO" bench --backend spdk:Malloc0 --spdk-config "$work/malloc.json" --spdk-no-huge \
      --spdk-mem-mb 1024 --spdk-no-pci --rw write --bs 4K --iodepth 32 --size 256M \
      --runtime "$SECONDS_PER_RUN" --ramp 2 --cores 0,1 --quiet \
      --output-format json --output "$work/ordo.json" 2> "$work/ordo.err" \
    || { cat "$work/ordo.err" >&2; exit 1; }
  ours+=("$(jq '.jobs[0].write.iops | floor' "$work/ordo.json")")
  # The same with replication off: what the primary's write path alone does on that core.
  "$ORDO" bench --backend spdk:Malloc0 --spdk-config "$work/malloc.json" --spdk-no-huge \
      --spdk-mem-mb 1024 --spdk-no-pci --rw write --bs 4K --iodepth 32 --size 256M \
      --runtime "$SECONDS_PER_RUN" --ramp 2 --cores 0 --mode local-only --quiet \
      --output-format json --output "$work/ordo.json" 2> "$work/ordo.err" \
    || { cat "$work/ordo.err" >&2; exit 1; }
  local+=("$(jq '.jobs[0].write.iops | floor' "$work/ordo.json")")
  echo "run $run: bdevperf ${theirs[-1]} IOPS, ordo replicated ${ours[-1]} IOPS, ordo local-only ${local[-1]} IOPS"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
m_ours=$(median "${ours[@]}") m_theirs=$(median "${theirs[@]}") m_local=$(median "${local[@]}")
ratio=$(awk -v a="$m_ours" -v b="$m_theirs" 'BEGIN {printf "%.2f", a / b}')
echo "replication off: ordo ${m_local} IOPS, $(awk -v a="$m_local" -v b="$m_theirs" 'BEGIN {printf "%.2f", a / b}') of bdevperf (median)"
echo "P7: ordo ${m_ours} IOPS, bdevperf ${m_theirs} IOPS, ratio ${ratio} (target >= 0.5, aim 0.8; medians of $RUNS)"

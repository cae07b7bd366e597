#!/usr/bin/env bash
# A rough replicated MB/s for 1 MiB writes over loopback, next to iperf3 measured in the
# same run: a primary and a secondary on mem volumes, fio's nbd engine writing SIZE_G GiB
# through JOBS connections at queue depth 8, timed until the secondary applied the last
# data set. Not CI: it needs iperf3 and fio (apt-get install iperf3 fio), a release build
# (cargo build --release -p ordo-tools) and a quiet machine. `ordo bench compare` (the
# benchmark issue) is to replace it with the precise figures.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/ordo}
D=$(mktemp -d)
SIZE_G=${SIZE_G:-2}
JOBS=${JOBS:-4}
iperf3 -s -p 15201 -D --logfile $D/iperf.log; sleep 0.5
iperf=$(iperf3 -c 127.0.0.1 -p 15201 -t 5 -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e6)')
pkill -f "iperf3 -s -p 15201"
$B secondary --listen 127.0.0.1:17490 --state-dir $D/sec --volume data=mem:${SIZE_G}G --window-bytes 256M --idle ${IDLE:-park} >/dev/null 2>$D/sec.err &
SP=$!
until $B status --control $D/sec/control.sock >/dev/null 2>&1; do sleep 0.2; done
$B primary --connect 127.0.0.1:17490 --volume data=mem:${SIZE_G}G --nbd 127.0.0.1:11890 --control $D/pri.sock --window-bytes 512M --idle ${IDLE:-park} >/dev/null 2>$D/pri.err &
PP=$!
st() { $B status --control $D/pri.sock --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
until [ "$(st 'd["link"]["lanes_up"]')" = 4 ]; do sleep 0.2; done
per=$(( SIZE_G * 1024 / JOBS ))
start=$(date +%s.%N)
fio --name=w --ioengine=nbd --uri=nbd://127.0.0.1:11890/data --rw=write --bs=1M --iodepth=8 --numjobs=$JOBS --size=${per}M --offset_increment=${per}M --group_reporting > $D/fio.out
acked=$(date +%s.%N)
until [ "$(st 'd["data_sets"]["applied"]==d["data_sets"]["last_closed"]')" = True ]; do sleep 0.02; done
done_t=$(date +%s.%N)
python3 - <<PY
import json
size=$SIZE_G*1024**3
ack=$acked-$start; rep=$done_t-$start
print(f"iperf3 {$iperf:.0f} MB/s | primary acked (fio nbd, 1M, {$JOBS} conns x qd8) {size/ack/1e6:.0f} MB/s | replicated {size/rep/1e6:.0f} MB/s = {size/rep/1e6/$iperf:.2f} x iperf3")
PY
kill $PP $SP; wait 2>/dev/null
rm -rf $D

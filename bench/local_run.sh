#!/usr/bin/env bash
# The 2-core measurements of docs/performance.md: same commands as device_run.sh, scaled to a
# small machine (2 ranks; 4 ranks oversubscribed for latency). Writes JSON and a log to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/shardcore-bench-local}
PY=${PYTHON:-python3}
mkdir -p "$OUT/img"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
SC="$PY -m shardcore.cli bench"
echo "== machine"; nproc; lscpu | grep -E "Model name|L3"; uptime
step() { echo "== $1 (load: $(cut -d' ' -f1-3 /proc/loadavg))"; shift; "$@"; echo "== exit $?, load $(cut -d' ' -f1-3 /proc/loadavg)"; }
step stream $SC stream -p 1,2 --size 256M --json "$OUT/stream.json"
step compare-n2 $SC compare --op all_reduce -n 2 --sizes 8,64,512,4K,32K,256K,512K,1M,2M,8M,32M,256M \
  --symmetric --json "$OUT/compare_all_reduce_n2.json" --plots "$OUT/img"
step compare-n4 $SC compare --op all_reduce -n 4 --sizes 8,4K,1M --symmetric --json "$OUT/compare_all_reduce_n4.json"
step compare-gather-a2a $SC compare --op all_gather,all_to_all -n 2 --sizes 1K:64M --factor 8 \
  --peers gloo,mpi --symmetric --json "$OUT/compare_gather_a2a.json" --plots "$OUT/img"
step model $SC model --op all_reduce,all_gather -n 2 --algorithm ring --sizes 8:64M --factor 4 \
  --plots "$OUT/img" --prefix model_ --json "$OUT/model.json"
uptime

#!/usr/bin/env bash
# The many-core measurements of docs/performance.md in one command: builds shardcore in place,
# installs carried wheels (DeepSpeed and what it needs), then runs stream, compare, model and
# tp-vs-pp, and the 2-rank comparisons again pinned to two cores (taskset -c 0,1: a quiet
# 2-core machine); writes the log and results.tar (every JSON and plot) to $OUT.
#   OUT=/tmp/out WHL=/path/to/wheels bash bench/device_run.sh        (QUICK=1: tiny sizes)
# Every step has its own time limit so that the whole run ends inside ten minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/shardcore-bench-out}
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
RES=$OUT/res
mkdir -p "$RES/img"
exec > >(tee "$OUT/log.txt") 2>&1
. bench/device_setup.sh
echo "== machine"; nproc; lscpu | grep -E "Model name|Socket|Core|Thread|L3|NUMA node0"; free -g | head -2
$PY -c "import sys, numpy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__)"
$PY -c "import mpi4py.MPI as M; print(M.Get_library_version().splitlines()[0])" || true
$PY -c "import deepspeed; print('deepspeed', deepspeed.__version__)" || true

echo "== build"
start=$(date +%s)
build_in_place
echo "built in $(( $(date +%s) - start )) s"
SC="$PY -m shardcore.cli bench"
step() {  # step SECONDS NAME COMMAND...: run with a limit, report how long it took
  local limit=$1 name=$2; shift 2
  echo "== $name: $*"; local t0=$(date +%s)
  timeout "$limit" "$@"; echo "== $name: exit $? after $(( $(date +%s) - t0 )) s"
}

if [ "$QUICK" = 1 ]; then
  step 60 stream $SC stream -p 1,2 --size 32M --json "$RES/stream.json"
  step 150 compare-allreduce $SC compare --op all_reduce -n 2,4 --sizes 8:64K --factor 64 \
    --json "$RES/compare_all_reduce.json" --plots "$RES/img"
  step 60 model $SC model --op all_reduce -n 2 --sizes 8:64K --factor 8 --plots "$RES/img" \
    --prefix model_ --json "$RES/model.json"
  step 60 tp-vs-pp $SC tp-vs-pp --tp 2 --pp 2 --ep 2 --json "$RES/tp_vs_pp.json"
else
  SIZES=8,64,512,4K,32K,256K,512K,1M,2M,8M,32M,256M
  # what a user does first on a new host: measure the all-reduce crossovers (cached per host)
  step 120 tune $PY -m shardcore.cli tune -n 2,4,8
  step 40 stream $SC stream -p 1,2,4,8,16 --size 256M --json "$RES/stream.json"
  step 230 compare-allreduce $SC compare --op all_reduce -n 2,4,8 --sizes $SIZES --symmetric \
    --json "$RES/compare_all_reduce.json" --plots "$RES/img"
  step 90 compare-gather-a2a $SC compare --op all_gather,all_to_all -n 2,8 --sizes 1K:64M \
    --factor 8 --peers gloo,mpi --symmetric --json "$RES/compare_gather_a2a.json" --plots "$RES/img"
  step 40 compare-bf16 $SC compare --op all_reduce -n 8 --sizes 8,64K,1M,16M --dtype bfloat16 \
    --peers gloo,deepspeed --json "$RES/compare_bf16.json"
  step 120 model $SC model --op all_reduce,all_gather,reduce_scatter,all_to_all -n 2,4,8 \
    --algorithm ring --sizes 8:256M --factor 4 --plots "$RES/img" --prefix model_ \
    --json "$RES/model.json"
  step 30 tp-vs-pp $SC tp-vs-pp --hidden 4096 --blocks 8 --tokens 16 --tp 2,4,8 --pp 2,4,8 \
    --ep 2,4,8 --json "$RES/tp_vs_pp.json"
  step 30 tp-vs-pp-auto $SC tp-vs-pp --hidden 4096 --blocks 8 --tokens 16 --tp 2,4,8 --pp 2 \
    --ep 2 --algorithm auto --json "$RES/tp_vs_pp_auto.json"
  PIN="env XDG_CACHE_HOME=/tmp/no-tune taskset -c 0,1"  # built-in thresholds, as on the dev machine
  step 20 pin2-stream $PIN $SC stream -p 1,2 --size 256M --json "$RES/pin2_stream.json"
  step 120 pin2-compare-n2 $PIN $SC compare --op all_reduce -n 2 --sizes $SIZES --symmetric \
    --json "$RES/pin2_compare_all_reduce_n2.json" --plots "$RES/img/pin2"
  step 60 pin2-compare-n4 $PIN $SC compare --op all_reduce -n 4 --sizes 8,4K,1M \
    --json "$RES/pin2_compare_all_reduce_n4.json"
  step 60 pin2-gather-a2a $PIN $SC compare --op all_gather,all_to_all -n 2 --sizes 1K:64M \
    --factor 8 --peers gloo,mpi --symmetric --json "$RES/pin2_compare_gather_a2a.json" --plots "$RES/img/pin2"
fi
tar cf "$OUT/results.tar" -C "$RES" . && rm -rf "$RES"
ls -la "$OUT"

#!/usr/bin/env bash
# The wait policy's A/B runs (docs/performance.md, "Waiting"): 2 ranks on two cores that each also
# run a busy loop (a machine shared with other work), and 4 ranks on 2 cores, under different
# SHARDCORE_SPIN_US / SHARDCORE_YIELD_US settings, Open MPI in the same runs.
#   bash bench/wait_policy.sh            (needs two free cores: 0 and 1)
set -u
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
SC="${PYTHON:-python3} -m shardcore.cli bench"
for v in "-1 1000" "0 200" "2 200"; do
  set -- $v
  echo "== 4 ranks on cores 0,1: spin $1 us (-1: default), yield $2 us"
  SHARDCORE_SPIN_US=$1 SHARDCORE_YIELD_US=$2 timeout 100 taskset -c 0,1 $SC compare --op all_reduce \
    -n 4 --sizes 8,4K --peers mpi 2>&1 | grep -E "^ +(8 B|4 KiB)|size"
done
echo "== 2 ranks on cores 0,1 with a busy loop on each core"
taskset -c 0 sh -c 'while :; do :; done' & H1=$!
taskset -c 1 sh -c 'while :; do :; done' & H2=$!
trap 'kill $H1 $H2 2>/dev/null' EXIT
for v in "50 1000" "50 0" "200 0"; do
  set -- $v
  echo "-- spin $1 us, yield $2 us"
  SHARDCORE_SPIN_US=$1 SHARDCORE_YIELD_US=$2 timeout 100 taskset -c 0,1 $SC compare --op all_reduce \
    -n 2 --sizes 8,64K --peers mpi 2>&1 | grep -E "^ +(8 B|64 KiB)|size"
done

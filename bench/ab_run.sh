#!/usr/bin/env bash
# Same-run A/B of forced algorithms against the peers on a many-core host:
# builds shardcore in place, then runs each `shardcore bench compare` of $AB_STEPS (a file of
# "NAME|PREFIX|ARGS" lines; PREFIX e.g. "taskset -c 0,1" or "-") with JSON into $OUT, twice,
# alternating, so that drifts of a shared host show up as a spread, not as a difference.
#   OUT=/tmp/out WHL=/path/to/wheels AB_STEPS=bench/ab_steps_xeon16.txt bash bench/ab_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/shardcore-ab-out}
PY=${PYTHON:-python3}
REPEAT=${REPEAT:-2}
mkdir -p "$OUT/json"
exec > >(tee "$OUT/log.txt") 2>&1
. bench/device_setup.sh
nproc; lscpu | grep -E "Model name|L2|L3"
build_in_place
[ -n "${TUNE:-}" ] && timeout 150 env XDG_CACHE_HOME=/tmp/tune-cache $PY -m shardcore.cli tune $TUNE
for rep in $(seq 1 "$REPEAT"); do
  while IFS='|' read -r name prefix args; do
    [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
    [ "$prefix" = "-" ] && prefix=""
    echo "== $name (run $rep): $prefix shardcore bench compare $args"
    # shellcheck disable=SC2086
    timeout "${STEP_LIMIT:-90}" env XDG_CACHE_HOME=/tmp/no-tune $prefix $PY -m shardcore.cli bench compare \
      $args --json "$OUT/json/${name}_$rep.json" < /dev/null 2>&1 | grep -v "^$"
  done < "${AB_STEPS:?a steps file}"
done
tar cf "$OUT/json.tar" -C "$OUT" json && rm -rf "$OUT/json"

#!/usr/bin/env bash
# One command for the quality checks: ruff (lint and format) and mypy on python/shardcore, the
# extension built with -Wall -Wextra -Werror, the C++ core tests (csrc/tests) plain, under
# AddressSanitizer + UndefinedBehaviorSanitizer and under ThreadSanitizer, and the pytest suite.
#
#   tools/check.sh                 every step
#   tools/check.sh lint cpp        only some: lint format mypy build cpp asan tsan pytest
#
# Every step runs even if an earlier one fails; the summary lists the failures and the exit
# status is 1 if there were any. Environment: PYTHON (the interpreter with ruff, mypy, pytest and
# the build requirements; default python3), JOBS (parallel compile jobs; default 2), CXX.
# Build trees: build/dev (the extension, as tools/devbuild.sh), build/check-{plain,asan,tsan}.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
jobs=${JOBS:-2}
all_steps=(lint format mypy build cpp asan tsan pytest)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=("${all_steps[@]}")
for s in "${steps[@]}"; do
  case " ${all_steps[*]} " in *" $s "*) ;; *) echo "unknown step '$s' (steps: ${all_steps[*]})" >&2; exit 2 ;; esac
done

failed=()
run_step() {
  local name=$1 start=$SECONDS
  shift
  echo "==> $name"
  if "$@"; then
    echo "<== $name ok ($((SECONDS - start)) s)"
  else
    echo "<== $name FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

py_step() {  # a step that runs a Python tool; missing the tool fails the step, with the fix
  local name=$1 module=$2
  shift 2
  if "$py" -c "import $module" 2>/dev/null; then
    run_step "$name" "$py" -m "$module" "$@"
  else
    echo "==> $name: $py has no $module ($py -m pip install $module)"
    failed+=("$name")
  fi
}

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

# The C++ test driver alone (no Python, no pybind11) with extra compiler flags: the plain build
# runs the CTest registration (every case); the sanitizer builds run --quick (fewer sizes and
# rank counts, since instrumentation makes each check several times slower).
cpp_tests() {
  local dir=build/check-$1 type=$2 flags=$3
  cmake -S . -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE="$type" -DSHARDCORE_BUILD_MODULE=OFF \
    -DSHARDCORE_BUILD_TESTS=ON -DSHARDCORE_WERROR=ON -DCMAKE_CXX_FLAGS="$flags" >/dev/null &&
    cmake --build "$dir" -j"$jobs" || return 1
  if [ "$1" = plain ]; then
    (cd "$dir" && ctest --output-on-failure)
  else
    "$dir/shardcore_core_tests" --quick
  fi
}
# Sanitizer builds: Debug adds only -g, so these optimisation levels stand.
san="-fno-omit-frame-pointer"

pytest_step() {
  env PYTHON="$py" JOBS="$jobs" tools/devbuild.sh >/dev/null &&
    env PYTHONPATH=python "$py" -m pytest -q
}

for step in "${steps[@]}"; do
  case $step in
    lint) py_step "ruff check" ruff check python/shardcore tests/test_cpp_core.py ;;
    format) py_step "ruff format --check" ruff format --check python/shardcore tests/test_cpp_core.py ;;
    mypy) py_step mypy mypy ;;  # what and how: [tool.mypy] in pyproject.toml
    build) run_step "build -Werror" env PYTHON="$py" JOBS="$jobs" tools/devbuild.sh ;;
    cpp) run_step "C++ tests" cpp_tests plain Release "" ;;
    asan) run_step "C++ tests ASan+UBSan" cpp_tests asan Debug \
            "-O0 $san -fsanitize=address,undefined -fno-sanitize-recover=all" ;;
    tsan) run_step "C++ tests TSan" cpp_tests tsan Debug "-O1 $san -fsanitize=thread" ;;
    pytest) run_step pytest pytest_step ;;
  esac
done
echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "check: all of ${steps[*]} passed"
else
  echo "check: FAILED: ${failed[*]}"
  exit 1
fi

#!/usr/bin/env bash
# Builds the extension in build/dev and links it into python/shardcore so that
# `PYTHONPATH=python pytest` runs against the working tree (development only).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ ! -f build/dev/CMakeCache.txt ]; then
  cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARDCORE_WERROR=ON \
    -DPython_EXECUTABLE="$($py -c 'import sys; print(sys.executable)')" \
    -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" >/dev/null
fi
cmake --build build/dev -j"${JOBS:-2}"
so=$(ls build/dev/_core*.so)
ln -sf "$(pwd)/$so" python/shardcore/

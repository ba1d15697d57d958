# Sourced by bench/device_run.sh and bench/ab_run.sh (not run by itself): the environment of a
# device run, the carried wheels ($WHL: DeepSpeed and what it needs) and an in-place Release
# build of shardcore linked into python/, with PYTHONPATH set to use it. Needs $PY.
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -n "${WHL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHL"/*.whl && export PYTHONPATH=/tmp/site
fi

build_in_place() {  # build_in_place: Release build in build/dev, linked into python/shardcore
  cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$($PY -c 'import sys; print(sys.executable)')" \
    -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" >/dev/null &&
    cmake --build build/dev -j"${JOBS:-16}" >/dev/null || { echo "build failed"; exit 1; }
  ln -sf "$(pwd)/$(ls build/dev/_core*.so)" python/shardcore/
  export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
}

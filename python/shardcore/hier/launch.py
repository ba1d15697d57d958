"""``shardcore run --nnodes N --node-rank R --master-addr A --master-port P -n L script.py``.

One launcher per host. The launcher of node 0 serves a torch.distributed TCPStore at A:P; every
launcher registers its rank count there, so hosts may have different counts (global ranks are
numbered host by host in node-rank order). Each worker gets the environment of both
``shardcore.init()`` and torch's ``env://`` rendezvous, so a script may use either.

A failing rank, or a launcher that can no longer reach the store, stops the ranks of every host:
the failure is published in the store and every launcher watches for it.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta

from ..launcher import GRACE_SECONDS, _describe_exit, interrupt_all, kill_and_reap

# A launcher looks at the store this often for a failure published by another host.
_WATCH_SECONDS = 0.25
_FAILED = "shardcore/launch/failed"
_DONE = "shardcore/launch/done"


def run_nodes(
    nproc: int,
    target: Sequence[str],
    *,
    nnodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int,
    module: bool = False,
    timeout: float | None = None,
    comm_timeout: float | None = None,
    rendezvous_timeout: float = 300.0,
) -> int:
    """Start this host's ``nproc`` ranks of a job over ``nnodes`` hosts; returns the exit status."""
    if nnodes < 1:
        raise ValueError(f"--nnodes must be >= 1, got {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"--node-rank must be in [0, {nnodes}), got {node_rank}")
    if nproc < 1:
        raise ValueError(f"-n must be >= 1, got {nproc}")
    from torch.distributed import TCPStore

    tag = f"shardcore run (node {node_rank})"
    store = TCPStore(
        master_addr,
        int(master_port),
        None,
        node_rank == 0,
        timeout=timedelta(seconds=rendezvous_timeout),
        wait_for_workers=False,
    )
    store.set(f"shardcore/launch/nproc/{node_rank}", str(nproc))
    counts = [int(store.get(f"shardcore/launch/nproc/{r}")) for r in range(nnodes)]
    offset, world = sum(counts[:node_rank]), sum(counts)
    cmd = [sys.executable] + (["-m"] if module else []) + list(target)
    events: queue.Queue = queue.Queue()
    procs: list[subprocess.Popen] = []
    status = 0
    try:
        for local in range(nproc):
            rank = offset + local
            env = dict(os.environ)
            env.pop("SHARDCORE_SEGMENT", None)
            env.update(
                SHARDCORE_RANK=str(rank),
                SHARDCORE_WORLD_SIZE=str(world),
                SHARDCORE_LOCAL_RANK=str(local),
                SHARDCORE_NODE_RANK=str(node_rank),
                SHARDCORE_MASTER_ADDR=master_addr,
                SHARDCORE_MASTER_PORT=str(master_port),
                # torch's env:// rendezvous, as torchrun sets it (the launcher holds the store)
                MASTER_ADDR=master_addr,
                MASTER_PORT=str(master_port),
                RANK=str(rank),
                WORLD_SIZE=str(world),
                LOCAL_RANK=str(local),
                LOCAL_WORLD_SIZE=str(nproc),
                GROUP_RANK=str(node_rank),
                TORCHELASTIC_USE_AGENT_STORE="True",
                TORCHELASTIC_RESTART_COUNT="0",
            )
            if comm_timeout is not None:
                env["SHARDCORE_TIMEOUT"] = str(comm_timeout)
            p = subprocess.Popen(cmd, env=env)
            procs.append(p)
            threading.Thread(
                target=lambda r=rank, q=p: events.put((r, q.wait())), daemon=True
            ).start()
        stop_watching = threading.Event()
        threading.Thread(target=_watch, args=(store, events, stop_watching), daemon=True).start()
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining, kill_at = nproc, None
        while remaining:
            now = time.monotonic()
            if deadline is not None and now >= deadline and status == 0:
                alive = [offset + i for i, p in enumerate(procs) if p.poll() is None]
                print(
                    f"{tag}: timed out after {timeout:g} s; ranks still running: {alive}",
                    file=sys.stderr,
                )
                status, kill_at = 124, now
                _bounded(_publish, store, f"node {node_rank} timed out")
            if kill_at is not None and now >= kill_at:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            limits = [t - now for t in (deadline, kill_at) if t is not None]
            try:
                rank, code = events.get(timeout=max(0.0, min(limits)) if limits else None)
            except queue.Empty:
                continue
            if rank == "remote":
                if status == 0:
                    print(f"{tag}: stopping: {code}", file=sys.stderr)
                    status, kill_at = 1, time.monotonic() + GRACE_SECONDS
                continue
            remaining -= 1
            if code != 0 and status == 0:
                print(f"{tag}: rank {rank} failed: {_describe_exit(code)}", file=sys.stderr)
                status = 128 - code if code < 0 else code
                kill_at = time.monotonic() + GRACE_SECONDS
                _bounded(
                    _publish,
                    store,
                    f"rank {rank} on node {node_rank} failed: {_describe_exit(code)}",
                )
        stop_watching.set()
    except KeyboardInterrupt:
        interrupt_all(procs)
        raise
    finally:
        kill_and_reap(procs)
    if status == 0:
        _bounded(_finish, store, node_rank, nnodes, rendezvous_timeout, limit=rendezvous_timeout)
    return status


def _bounded(fn, *args, limit: float = 2.0) -> None:
    """Run a store call on a thread and give up after ``limit`` s: a store behind a cut link
    must not keep a launcher from exiting."""
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    t.join(limit)


def _watch(store, events: queue.Queue, stop: threading.Event) -> None:
    """Report a failure another launcher published, or a store that went away."""
    while not stop.wait(_WATCH_SECONDS):
        why = _failure_elsewhere(store)
        if why is not None:
            events.put(("remote", why))
            return


def _publish(store, why: str) -> None:
    try:
        store.set(_FAILED, why)
    except RuntimeError:
        pass  # the store's host is gone; the other launchers notice that by themselves


def _failure_elsewhere(store) -> str | None:
    try:
        if store.check([_FAILED]):
            return store.get(_FAILED).decode()
    except RuntimeError as exc:
        return f"the store's host cannot be reached ({exc})"
    return None


def _finish(store, node_rank: int, nnodes: int, limit: float) -> None:
    """Node 0 serves the store: it stays until every launcher is done (or a failure)."""
    try:
        store.add(_DONE, 1)
        if node_rank != 0:
            return
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if int(store.add(_DONE, 0)) >= nnodes or store.check([_FAILED]):
                return
            time.sleep(_WATCH_SECONDS)  # polling the store this process serves; nothing to wake on
    except RuntimeError:
        return

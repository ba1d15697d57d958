"""Runs a function on ranks grouped into simulated hosts on this machine.

Each rank is a forked process with its own $SHARDCORE_HOST_ID, so ranks of different "hosts"
talk through gloo over loopback and ranks of one host through shared memory: the algorithms of
the multi-host communicator, without network namespaces (tests/test_hier_netns.py has those).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from datetime import timedelta


def host_ranks(layout, order=None):
    """Host index of each rank: hosts of ``layout`` sizes, contiguous, or as ``order`` says."""
    if order is not None:
        return list(order)
    return [h for h, n in enumerate(layout) for _ in range(n)]


def _rank_main(fn, rank, size, host, timeout, conn, args):
    try:
        os.environ["SHARDCORE_HOST_ID"] = f"simulated-host-{host}"
        from torch.distributed import TCPStore

        # Rank 0 serves the store (the parent forks every rank before any store thread runs:
        # forking a process whose store threads hold a lock can hang the child).
        wait = timedelta(seconds=timeout)
        if rank == 0:
            store = TCPStore("127.0.0.1", 0, size, True, timeout=wait, wait_for_workers=False)
            conn.send(("port", store.port))
            port = store.port
        else:
            port = conn.recv()
            store = None
        if fn is None:  # args = (function, ...): it makes its own connections
            conn.send(("ok", args[0](rank, size, port, *args[1:])))
        else:
            from shardcore.hier import connect

            if store is None:
                store = TCPStore("127.0.0.1", port, size, False, timeout=wait)
            comm = connect(store, rank, size, timeout=timeout, address="127.0.0.1")
            try:
                result = fn(comm, *args)
            finally:
                comm.close()
            conn.send(("ok", result))
        if rank == 0:
            conn.recv()  # keep serving the store until every rank has reported
    except BaseException as exc:  # reported to the parent, which raises
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()
        os._exit(0)


def run_hosts(fn, layout, *, order=None, timeout=120.0, args=()):
    """Results of ``fn(comm, *args)`` on every rank, in rank order; raises on any rank's error."""
    outcomes = run_hosts_raw(fn, layout, order=order, timeout=timeout, args=args)
    errors = [f"rank {r}: {v}" for r, (status, v) in enumerate(outcomes) if status != "ok"]
    if errors:
        raise RuntimeError("\n".join(errors))
    return [v for _, v in outcomes]


def run_hosts_raw(fn, layout, *, order=None, timeout=120.0, args=()):
    """Each rank's ("ok", result), ("error", text), ("died", None) or ("hung", None)."""
    hosts = host_ranks(layout, order)
    size = len(hosts)
    ctx = mp.get_context("fork")
    procs, pipes = [], []
    for rank in range(size):
        parent, child = ctx.Pipe(duplex=True)
        p = ctx.Process(
            target=_rank_main, args=(fn, rank, size, hosts[rank], timeout, child, args)
        )
        p.start()
        child.close()
        procs.append(p)
        pipes.append(parent)
    outcomes = []
    try:
        port = None
        if pipes[0].poll(timeout):
            try:
                kind, port = pipes[0].recv()
            except EOFError:
                kind = "died"
            if kind != "port":  # rank 0 failed before serving the store
                port = None
        for conn in pipes[1:]:
            conn.send(port)
        for conn in pipes:
            if not conn.poll(timeout * 2):
                outcomes.append(("hung", None))
                continue
            try:
                outcomes.append(conn.recv())
            except EOFError:
                outcomes.append(("died", None))
        try:
            pipes[0].send("exit")
        except OSError:
            pass
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    return outcomes

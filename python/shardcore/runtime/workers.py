"""Long-lived worker ranks: forked once, each with its Communicator, serving many calls.

``launch`` (shardcore.launcher) runs one function and lets the workers exit; an engine needs
workers that keep their loaded weights between requests. A ``WorkerPool`` forks ``world``
processes that connect one communicator, build their state with ``setup(comm)`` and then answer
calls: ``pool.call(payloads)`` sends every rank its payload and returns every rank's reply.

Failures follow ``launch``: a rank that raises aborts the communicator (its peers raise
PeerFailureError at once instead of waiting), a rank that dies is noticed through its process
sentinel, and the caller gets the launcher's LaunchError naming the rank that caused it. After
a failure the communicator is unusable, so the pool is broken: every rank is stopped and every
later call raises at once. Nothing is left in /dev/shm (the core's memory has no name; the
pool's segment names are swept on close as the launcher does). A worker whose parent dies sees
its pipe close and exits.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
import threading
import time
import traceback
import warnings
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from ..errors import LaunchError
from ..launcher import (
    GRACE_SECONDS,
    RankFailure,
    _combined_error_class,
    _make_error,
    _root_cause,
    cleanup_segments,
)

Handler = Callable[[Any], Any]  # payload -> reply, on a worker
Setup = Callable[..., Handler]  # setup(comm) -> the worker's handler


def _error_message(exc: BaseException, tb: str) -> bytes:
    exc_bytes: bytes | None
    try:
        exc_bytes = pickle.dumps(exc)
        pickle.loads(exc_bytes)
    except Exception:
        exc_bytes = None
    return pickle.dumps(("err", type(exc).__name__, str(exc), tb, exc_bytes))


def _worker_main(
    rank: int, size: int, name: str, conn: Connection, others: list, setup: Setup, options: dict
) -> None:
    """A worker: connect, build the handler, answer one message per call until told to stop."""
    for c in others:  # the parent's ends of the pipes, inherited by the fork
        c.close()
    comm = None
    status = 1
    try:
        from ..comm import Communicator

        comm = Communicator.connect(name, rank, size, **options)
        handler = setup(comm)
        conn.send_bytes(pickle.dumps(("ok", None)))
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):  # the parent is gone
                break
            kind, payload = pickle.loads(message)
            if kind == "stop":
                status = 0
                break
            reply = handler(payload)
            try:
                data = pickle.dumps(("ok", reply), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise TypeError(f"the reply of rank {rank} cannot be pickled: {exc}") from exc
            conn.send_bytes(data)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        tb = traceback.format_exc()
        if comm is not None:
            comm.abort(f"{type(exc).__name__}: {exc}")
        try:
            conn.send_bytes(_error_message(exc, tb))
        except Exception:
            pass
    finally:
        if comm is not None:
            comm.close()
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


class WorkerPool:
    """``world`` forked ranks, each running ``setup(comm)`` once and its handler per call."""

    def __init__(
        self,
        setup: Setup,
        world: int,
        *,
        timeout: float | None = None,
        comm_timeout: float | None = None,
    ):
        from ..comm import new_segment_name

        self.world = world
        self._name = new_segment_name()
        self._lock = threading.Lock()
        self._broken: LaunchError | None = None
        self._closed = False
        options = {"timeout": comm_timeout}
        ctx: Any = mp.get_context("fork")
        self._procs: list = []
        self._conns: list[Connection | None] = []
        self._finalizer = weakref.finalize(self, _stop_now, self._procs, self._conns, self._name)
        try:
            for rank in range(world):
                parent_end, child_end = ctx.Pipe(duplex=True)
                others = [c for c in self._conns if c is not None] + [parent_end]
                p = ctx.Process(
                    target=_worker_main,
                    name=f"shardcore-engine-rank{rank}",
                    args=(rank, world, self._name, child_end, others, setup, options),
                )
                with warnings.catch_warnings():
                    # Python >= 3.12 warns when a multi-threaded process forks; a worker only
                    # runs its handler and exits with os._exit (as in shardcore.launch).
                    warnings.filterwarnings(
                        "ignore", "This process .* is multi-threaded", DeprecationWarning
                    )
                    p.start()
                child_end.close()
                self._procs.append(p)
                self._conns.append(parent_end)
            self._exchange([None] * world, timeout, send=False)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """The process id of every rank."""
        return [int(p.pid) for p in self._procs]

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def call(self, payloads: list, timeout: float | None = None) -> list:
        """Send rank r ``payloads[r]``; return every rank's reply, in rank order.

        Calls from several threads run one at a time. Raises the LaunchError of the rank that
        failed (this call's or an earlier one's); ``timeout`` bounds this call.
        """
        if len(payloads) != self.world:
            raise ValueError(f"{len(payloads)} payloads for {self.world} ranks")
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            try:
                return self._exchange(payloads, timeout, send=True)
            except LaunchError:
                raise
            except BaseException as exc:  # e.g. KeyboardInterrupt: replies would be out of step
                err = LaunchError(
                    f"the call was interrupted ({type(exc).__name__}); the workers were stopped"
                )
                err.rank, err.traceback, err.exitcode, err.failures = -1, None, None, []
                self._break(err)
                raise

    def _exchange(self, payloads: list, timeout: float | None, send: bool) -> list:
        world = self.world
        replies: list[Any] = [None] * world
        answered = [False] * world
        failures: list[RankFailure] = []

        def fail(rank: int, **kw) -> None:
            answered[rank] = True
            failures.append(RankFailure(rank, len(failures), **kw))

        if send:
            for rank, payload in enumerate(payloads):
                conn = self._conns[rank]
                try:
                    assert conn is not None
                    conn.send_bytes(pickle.dumps(("call", payload), pickle.HIGHEST_PROTOCOL))
                except (OSError, AssertionError):  # a dead rank: its sentinel tells how
                    pass
        deadline = None if timeout is None else time.monotonic() + timeout
        kill_at = None
        while not all(answered):
            now = time.monotonic()
            if failures and kill_at is None:
                kill_at = now + GRACE_SECONDS
            limits = [t - now for t in (deadline, kill_at) if t is not None]
            waiting = [r for r in range(world) if not answered[r]]
            waitables: dict[Any, int] = {}
            for r in waiting:
                conn = self._conns[r]
                if conn is not None:
                    waitables[conn] = r
                waitables[self._procs[r].sentinel] = r
            ready = wait(list(waitables), timeout=max(0.0, min(limits)) if limits else None)
            for obj in ready:
                r = waitables[obj]
                if answered[r]:
                    continue
                conn = self._conns[r]
                if conn is not None and conn.poll():
                    try:
                        msg = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):  # closed without a reply: it is dying
                        conn.close()
                        self._conns[r] = None
                        msg = None
                    if msg is not None and msg[0] == "ok":
                        replies[r], answered[r] = msg[1], True
                        continue
                    if msg is not None:
                        _, exc_type, message, tb, exc_bytes = msg
                        exc = None
                        if exc_bytes is not None:
                            try:
                                exc = pickle.loads(exc_bytes)
                            except Exception:
                                exc = None
                        fail(
                            r,
                            exitcode=None,
                            exc_type=exc_type,
                            message=message,
                            traceback=tb,
                            exc=exc,
                        )
                        continue
                if not self._procs[r].is_alive():
                    self._procs[r].join()
                    fail(r, exitcode=self._procs[r].exitcode)
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                for r in range(world):
                    if not answered[r]:
                        fail(r, exitcode=None, killed=True)
            elif deadline is not None and now >= deadline:
                stuck = [r for r in range(world) if not answered[r]]
                cls = _combined_error_class(TimeoutError) or LaunchError
                err = cls(
                    f"the engine's call timed out after {timeout} s; ranks still running: {stuck}"
                )
                err.rank, err.traceback, err.exitcode, err.failures = stuck[0], None, None, failures
                self._break(err)
                raise err
        if failures:
            err = _make_error(_root_cause(failures), failures)
            self._break(err)
            raise err
        return replies

    def _break(self, err: LaunchError) -> None:
        self._broken = err
        self._stop(graceful=False)

    def _stop(self, graceful: bool) -> None:
        if graceful:
            for conn in self._conns:
                if conn is not None:
                    try:
                        conn.send_bytes(pickle.dumps(("stop", None)))
                    except OSError:
                        pass
            deadline = time.monotonic() + GRACE_SECONDS
            for p in self._procs:
                p.join(max(0.0, deadline - time.monotonic()))
        self._finalizer()

    def close(self) -> None:
        """Stop every rank (idempotent); a call in flight in another thread finishes first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop(graceful=self._broken is None)


def _stop_now(procs: list, conns: list, name: str) -> None:
    """Kill the ranks still running, close the pipes, sweep the segment names (also run when
    a pool is garbage-collected or the interpreter exits without close)."""
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    for i, conn in enumerate(conns):
        if conn is not None:
            conn.close()
            conns[i] = None
    cleanup_segments(name)

"""Starting ranks: ``launch`` (a function in forked workers), ``init`` and ``run_script`` (scripts)."""

from __future__ import annotations

import atexit
import glob
import multiprocessing as mp
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from .errors import LaunchError

# After the first failure the other ranks get this long to notice (they raise PeerFailureError
# within ~0.1 s) and report, before the launcher kills them.
GRACE_SECONDS = 10.0


@dataclass
class RankFailure:
    """What the launcher knows about one failed rank."""

    rank: int
    order: int
    exitcode: int | None
    exc_type: str | None = None
    message: str = ""
    traceback: str | None = None
    exc: BaseException | None = None
    killed: bool = False

    def describe(self) -> str:
        if self.exc_type is not None:
            return f"rank {self.rank} raised {self.exc_type}: {self.message}"
        if self.killed:
            return f"rank {self.rank} was stopped by the launcher after another rank failed"
        return f"rank {self.rank} died: {_describe_exit(self.exitcode)}"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def cleanup_segments(name: str) -> list[str]:
    """Unlink every /dev/shm entry of segment ``name`` and its sub-communicators."""
    removed = []
    for path in glob.glob("/dev/shm/" + glob.escape(name.lstrip("/")) + "*"):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _combined_error_class(base: type) -> type | None:
    """A class that is both LaunchError and ``base``, so ``except ValueError`` still works."""
    if not (isinstance(base, type) and issubclass(base, Exception)) or issubclass(
        base, LaunchError
    ):
        return None
    try:
        return type(
            f"LaunchError[{base.__name__}]",
            (LaunchError, base),
            {"__module__": __name__, "__str__": LaunchError.__str__},
        )
    except TypeError:  # incompatible layouts (OSError and friends)
        return None


def _make_error(failure: RankFailure, failures: list[RankFailure]) -> LaunchError:
    lines = [failure.describe()]
    others = [f for f in failures if f is not failure]
    if others:
        lines.append("other ranks: " + "; ".join(f.describe().splitlines()[0] for f in others))
    if failure.traceback:
        lines.append(f"\ntraceback of rank {failure.rank}:\n{failure.traceback.rstrip()}")
    message = "\n".join(lines)
    cls = _combined_error_class(type(failure.exc)) if failure.exc is not None else None
    err: LaunchError | None = None
    if cls is not None:
        try:
            err = cls(message)
        except Exception:
            err = None
    if err is None:
        err = LaunchError(message)
    err.rank = failure.rank
    err.traceback = failure.traceback
    err.exitcode = failure.exitcode
    err.failures = failures
    return err


def _root_cause(failures: list[RankFailure]) -> RankFailure:
    """The failure that explains the others: a death, a real error, a timeout, a peer's report.

    A rank whose wait timed out aborts the communicator, so its peers raise PeerFailureError
    about it, and their reports may arrive first: the timeout is the cause, whatever the order.
    """

    def priority(f: RankFailure) -> int:
        if f.killed:
            return 4
        if f.exc_type is None:
            return 0
        if f.exc_type == "CommTimeoutError":
            return 2
        if f.exc_type == "PeerFailureError":
            return 3
        return 1

    return min(failures, key=lambda f: (priority(f), f.order))


def _worker(
    rank: int, size: int, name: str, conn, fn: Callable, args: tuple, kwargs: dict, options: dict
) -> None:
    status = 1
    comm = None
    try:
        from .comm import Communicator

        comm = Communicator.connect(name, rank, size, **options)
        result = fn(comm, *args, **kwargs)
        try:
            payload = pickle.dumps(("ok", result), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(f"the return value of rank {rank} cannot be pickled: {exc}") from exc
        conn.send_bytes(payload)
        status = 0
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        tb = traceback.format_exc()
        if comm is not None:
            comm.abort(f"{type(exc).__name__}: {exc}")
        try:
            exc_bytes = pickle.dumps(exc)
            pickle.loads(exc_bytes)
        except Exception:
            exc_bytes = None
        try:
            conn.send_bytes(pickle.dumps(("err", type(exc).__name__, str(exc), tb, exc_bytes)))
        except Exception:
            pass
    finally:
        if comm is not None:
            comm.close()
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def launch(
    fn: Callable,
    world_size: int,
    args: Sequence[Any] = (),
    kwargs: dict | None = None,
    timeout: float | None = None,
    *,
    comm_timeout: float | None = None,
    slot_bytes: int | None = None,
    p2p_bytes: int | None = None,
    start_method: str = "fork",
) -> list:
    """Run ``fn(comm, *args, **kwargs)`` on ``world_size`` worker processes; return their results.

    Results come back in rank order. If a rank raises or dies, the others are stopped and a
    LaunchError naming that rank, with its traceback, is raised; when the rank raised an ordinary
    exception the error is also an instance of that exception's type. ``timeout`` bounds the whole
    run; ``comm_timeout``, ``slot_bytes`` and ``p2p_bytes`` go to ``Communicator.connect``.
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    kwargs = dict(kwargs or {})
    from .comm import new_segment_name

    name = new_segment_name()
    options = {"timeout": comm_timeout, "slot_bytes": slot_bytes, "p2p_bytes": p2p_bytes}
    ctx: Any = mp.get_context(start_method)
    procs: list = []
    conns: list = []
    results: list[Any] = [None] * world_size
    failures: list[RankFailure] = []
    reported = [False] * world_size
    try:
        for rank in range(world_size):
            reader, writer = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=_worker,
                name=f"shardcore-rank{rank}",
                args=(rank, world_size, name, writer, fn, tuple(args), kwargs, options),
            )
            with warnings.catch_warnings():
                # Python >= 3.12 warns when a multi-threaded process forks; the workers only run
                # fn and exit with os._exit, so the parent's other threads are never relied on.
                warnings.filterwarnings(
                    "ignore", "This process .* is multi-threaded", DeprecationWarning
                )
                p.start()
            writer.close()
            procs.append(p)
            conns.append(reader)
        deadline = None if timeout is None else time.monotonic() + timeout
        kill_at = None
        running = set(range(world_size))

        def take_message(rank: int) -> None:
            try:
                msg = pickle.loads(conns[rank].recv_bytes())
            except (EOFError, OSError):
                conns[rank].close()
                conns[rank] = None
                return
            reported[rank] = True
            if msg[0] == "ok":
                results[rank] = msg[1]
            else:
                _, exc_type, message, tb, exc_bytes = msg
                exc = None
                if exc_bytes is not None:
                    try:
                        exc = pickle.loads(exc_bytes)
                    except Exception:
                        exc = None
                failures.append(RankFailure(rank, len(failures), None, exc_type, message, tb, exc))

        while running:
            now = time.monotonic()
            if failures and kill_at is None:
                kill_at = now + GRACE_SECONDS
            limits = [t - now for t in (deadline, kill_at) if t is not None]
            wait_for = max(0.0, min(limits)) if limits else None
            waitables = {procs[r].sentinel: r for r in running}
            waitables.update({conns[r]: r for r in running if conns[r] is not None})
            ready = mp.connection.wait(list(waitables), timeout=wait_for)
            for obj in ready:
                rank = waitables[obj]
                if obj is conns[rank]:
                    take_message(rank)
                elif rank in running:
                    while conns[rank] is not None and conns[rank].poll():
                        take_message(rank)
                    procs[rank].join()
                    running.discard(rank)
                    if not reported[rank]:
                        failures.append(RankFailure(rank, len(failures), procs[rank].exitcode))
                    elif procs[rank].exitcode and not any(f.rank == rank for f in failures):
                        failures.append(RankFailure(rank, len(failures), procs[rank].exitcode))
            now = time.monotonic()
            if running and kill_at is not None and now >= kill_at:
                for r in sorted(running):
                    procs[r].kill()
                    procs[r].join()
                    failures.append(RankFailure(r, len(failures), procs[r].exitcode, killed=True))
                running.clear()
            if running and deadline is not None and now >= deadline:
                stuck = sorted(running)
                for r in stuck:
                    procs[r].kill()
                    procs[r].join()
                running.clear()
                cls = _combined_error_class(TimeoutError) or LaunchError
                err = cls(f"launch timed out after {timeout} s; ranks still running: {stuck}")
                err.rank, err.traceback, err.exitcode, err.failures = stuck[0], None, None, failures
                raise err
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        for c in conns:
            if c is not None:
                c.close()
        cleanup_segments(name)
    if failures:
        raise _make_error(_root_cause(failures), failures)
    return results


# --- scripts: shardcore run / shardcore.init ------------------------------------------------

_ENV_RANK, _ENV_SIZE, _ENV_SEGMENT = "SHARDCORE_RANK", "SHARDCORE_WORLD_SIZE", "SHARDCORE_SEGMENT"
_initialized = None


def init(
    *, timeout: float | None = None, slot_bytes: int | None = None, p2p_bytes: int | None = None
):
    """The communicator of a script started by ``shardcore run`` (size 1 when run on its own).

    Reads SHARDCORE_RANK, SHARDCORE_WORLD_SIZE and SHARDCORE_SEGMENT, as torchrun's RANK and
    WORLD_SIZE; under ``shardcore run --nnodes`` (SHARDCORE_MASTER_ADDR) or torchrun (MASTER_ADDR,
    RANK) it meets the other ranks through the store, and ranks on several hosts get a
    ``HierCommunicator``. An uncaught exception aborts the communicator so that the peers raise at once.
    """
    global _initialized
    if _initialized is not None and not _initialized.closed:
        return _initialized
    from .comm import Communicator, new_segment_name

    env = os.environ
    comm: Any
    if "SHARDCORE_MASTER_ADDR" in env or (
        _ENV_SEGMENT not in env and "MASTER_ADDR" in env and "RANK" in env
    ):
        # several hosts (shardcore run --nnodes) or torchrun: rendezvous through the store
        from .hier.rendezvous import init_from_env

        comm = init_from_env(timeout=timeout, slot_bytes=slot_bytes, p2p_bytes=p2p_bytes)
    else:
        if _ENV_SEGMENT in env:
            try:
                rank, size = int(env[_ENV_RANK]), int(env[_ENV_SIZE])
            except (KeyError, ValueError):
                raise ValueError(
                    f"{_ENV_RANK} and {_ENV_SIZE} must be set to integers when {_ENV_SEGMENT} is set"
                ) from None
            name = env[_ENV_SEGMENT]
        else:
            rank, size, name = 0, 1, new_segment_name()
        comm = Communicator.connect(
            name, rank, size, timeout=timeout, slot_bytes=slot_bytes, p2p_bytes=p2p_bytes
        )
    previous_hook = sys.excepthook

    def abort_then_report(exc_type, exc, tb):
        comm.abort(f"uncaught {exc_type.__name__}: {exc}")
        previous_hook(exc_type, exc, tb)

    sys.excepthook = abort_then_report
    atexit.register(comm.close)
    _initialized = comm
    return comm


def interrupt_all(procs: Sequence[subprocess.Popen]) -> None:
    """Pass a Ctrl-C on to every rank still running."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)


def kill_and_reap(procs: Sequence[subprocess.Popen]) -> None:
    """Kill every rank still running and wait for all of them."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def run_script(
    nproc: int,
    target: Sequence[str],
    *,
    module: bool = False,
    timeout: float | None = None,
    comm_timeout: float | None = None,
) -> int:
    """Start ``nproc`` copies of a script (or ``-m`` module); returns the exit status to use.

    Exits 0 when every rank does; otherwise the first failing rank's status, after stopping the
    others. Each rank finds its communicator with ``shardcore.init()``.
    """
    if nproc < 1:
        raise ValueError(f"-n must be >= 1, got {nproc}")
    from .comm import new_segment_name

    name = new_segment_name()
    cmd = [sys.executable] + (["-m"] if module else []) + list(target)
    events: queue.Queue = queue.Queue()
    procs = []
    try:
        for rank in range(nproc):
            env = dict(
                os.environ,
                **{
                    _ENV_RANK: str(rank),
                    _ENV_SIZE: str(nproc),
                    _ENV_SEGMENT: name,
                    "SHARDCORE_LOCAL_RANK": str(rank),
                },
            )
            if comm_timeout is not None:
                env["SHARDCORE_TIMEOUT"] = str(comm_timeout)
            p = subprocess.Popen(cmd, env=env)
            procs.append(p)
            threading.Thread(
                target=lambda r=rank, q=p: events.put((r, q.wait())), daemon=True
            ).start()
        deadline = None if timeout is None else time.monotonic() + timeout
        first_failure = None
        kill_at = None
        remaining = nproc
        while remaining:
            limits = [t - time.monotonic() for t in (deadline, kill_at) if t is not None]
            try:
                rank, code = events.get(timeout=max(0.0, min(limits)) if limits else None)
            except queue.Empty:
                alive = [r for r, p in enumerate(procs) if p.poll() is None]
                if kill_at is None:
                    why = f"--timeout {timeout:g} s passed; ranks still running: {alive}"
                else:
                    why = f"stopping the remaining ranks: {alive}"
                print(f"shardcore run: {why}", file=sys.stderr)
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                if first_failure is None:
                    first_failure = (-1, 124)
                kill_at = None
                deadline = None
                continue
            remaining -= 1
            if code != 0 and first_failure is None:
                first_failure = (rank, code)
                print(f"shardcore run: rank {rank} failed: {_describe_exit(code)}", file=sys.stderr)
                kill_at = time.monotonic() + GRACE_SECONDS
    except KeyboardInterrupt:
        interrupt_all(procs)
        raise
    finally:
        kill_and_reap(procs)
        cleanup_segments(name)
    if first_failure is None:
        return 0
    code = first_failure[1]
    return 128 - code if code < 0 else code

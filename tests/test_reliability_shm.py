"""Nothing outlives the processes: SIGKILL every rank at every step of set-up and allocation.

A rank stops itself (SIGSTOP, the core's SHARDCORE_FAULT_AT hook) at a chosen step; the test
waits for that stop with waitpid, so it knows where the rank is without timing anything, then
SIGKILLs every rank and checks that /dev/shm holds nothing of theirs and that no rendezvous
address is left.
"""

from __future__ import annotations

import os
import secrets
import signal
import warnings

import numpy as np
import pytest

from shardcore.comm import Communicator


def _abstract_addresses() -> set[str]:
    """Abstract Unix socket addresses bound in this network namespace (without the '@')."""
    with open("/proc/net/unix") as f:
        next(f)
        return {
            parts[-1][1:]
            for parts in (line.split() for line in f)
            if len(parts) >= 8 and parts[-1][0] == "@"
        }


def _shm_names(stem: str) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(stem)}


def _fork() -> int:
    with warnings.catch_warnings():
        # Python >= 3.12 warns when a multi-threaded process forks; a child here only connects,
        # allocates and exits with os._exit (as launch()'s workers do).
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        return os.fork()


def _rank_main(name: str, rank: int, size: int, fault: str, buffers: int) -> None:
    """A rank in a forked child: connect, split, allocate; never returns."""
    code = 1
    try:
        os.environ["SHARDCORE_FAULT_AT"] = fault
        comm = Communicator.connect(name, rank, size, timeout=60)
        sub = comm.split(0, key=-rank)
        for _ in range(buffers):
            comm.empty(1 << 16, np.float32)
            sub.empty(1 << 12, np.float64)
        comm.barrier()
        code = 0
    finally:
        os._exit(code)


def _kill_all_at(name: str, size: int, fault: str, stopped_rank: int, buffers: int = 1) -> set:
    """Starts `size` ranks, waits until `stopped_rank` stops at its fault step, SIGKILLs them all.

    Returns the abstract addresses of this name that existed while the rank was stopped.
    """
    pids = []
    for rank in range(size):
        pid = _fork()
        if pid == 0:
            _rank_main(name, rank, size, fault, buffers)
        pids.append(pid)
    try:
        _, status = os.waitpid(pids[stopped_rank], os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"rank {stopped_rank} did not stop at {fault}: {status}"
        during = {a for a in _abstract_addresses() if name in a}
        assert not _shm_names(name.lstrip("/")), "a named segment exists during set-up"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            os.waitpid(pid, 0)
    return during


def _fresh_name() -> str:
    return f"/shardcore-{os.getpid()}-rel-{secrets.token_hex(6)}"


# (step, rank that stops there, world size): every step of connecting (rank 0 creating,
# listening, after serving the first of two joiners; a joiner after receiving and mapping) and of
# allocating a symmetric buffer (rank 0 after creating and sending it; a joiner after receiving;
# any rank after mapping).
STEPS = [
    ("created", 0, 2),
    ("listening", 0, 2),
    ("served", 0, 3),
    ("joined", 1, 2),
    ("mapped", 1, 3),
    ("mapped", 0, 2),
    ("buffer-created", 0, 2),
    ("buffer-sent", 0, 3),
    ("buffer-received", 1, 2),
    ("buffer-received", 2, 3),
    ("buffer-mapped", 0, 2),
    ("buffer-mapped", 1, 3),
]


@pytest.mark.parametrize("step,rank,size", STEPS)
def test_sigkill_of_every_rank_at_every_step_leaves_nothing(step, rank, size):
    name = _fresh_name()
    during = _kill_all_at(name, size, f"{step}:{rank}:stop", rank)
    if step in ("listening", "served"):
        assert during, "rank 0 should be listening at this step"  # the window is real
    assert not _shm_names(name.lstrip("/"))
    assert not {a for a in _abstract_addresses() if name in a}


def test_rank0_killed_while_waiting_for_rank1_leaves_nothing():
    """The issue's repro: connect('/x...', 0, 2) waits for a rank 1 that never comes."""
    name = "/x" + secrets.token_hex(8)
    before = set(os.listdir("/dev/shm"))
    pid = _fork()
    if pid == 0:
        try:
            os.environ["SHARDCORE_FAULT_AT"] = "listening:0:stop"
            Communicator.connect(name, 0, 2, timeout=60)
        finally:
            os._exit(1)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        assert any(name in a for a in _abstract_addresses())
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not os.path.exists("/dev/shm" + name)
    assert {n for n in set(os.listdir("/dev/shm")) - before if name[1:] in n} == set()
    assert not any(name in a for a in _abstract_addresses())


def _connect_and_close(name: str, rank: int, size: int) -> int:
    comm = Communicator.connect(name, rank, size, timeout=60)
    buf = comm.empty(1000, np.int64)
    buf[:] = rank + 1
    comm.all_reduce(buf)
    total = int(buf[0])
    comm.close()
    return total


@pytest.mark.parametrize("suffix", ["", ".0c1" * 40])  # a name too long for sun_path: hashed
def test_unrelated_processes_meet_by_name_and_leave_no_address(suffix):
    """connect() needs nothing but the name; once connected, nothing is bound or named."""
    name = _fresh_name() + suffix
    pid = _fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if _connect_and_close(name, 1, 2) == 3 else 2
        finally:
            os._exit(code)
    got = _connect_and_close(name, 0, 2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert got == 3
    assert not {a for a in _abstract_addresses() if name in a}
    assert not _shm_names(name.lstrip("/"))


def test_a_name_in_use_is_refused():
    """Two rank 0s under one name: the second is told, as O_EXCL used to."""
    name = _fresh_name()
    pid = _fork()
    if pid == 0:
        try:
            os.environ["SHARDCORE_FAULT_AT"] = "listening:0:stop"
            Communicator.connect(name, 0, 2, timeout=60)
        finally:
            os._exit(1)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        with pytest.raises(RuntimeError, match="in use"):
            Communicator.connect(name, 0, 2, timeout=5)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_ctrl_c_reaches_a_rank_waiting_for_its_peers_to_connect():
    """SIGINT while rank 0 waits for a rank that never comes: KeyboardInterrupt, not a hang."""
    name = _fresh_name()
    pid = _fork()
    if pid == 0:
        code = 1
        try:
            os.environ["SHARDCORE_FAULT_AT"] = "listening:0:stop"
            Communicator.connect(name, 0, 2, timeout=600)
        except KeyboardInterrupt:
            code = 42
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        os.kill(pid, signal.SIGINT)  # pending until it runs again, in its wait for rank 1
        os.kill(pid, signal.SIGCONT)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 42
    assert not {a for a in _abstract_addresses() if name in a}

"""Shared fixtures: every test must leave /dev/shm, and the rendezvous addresses, as it found them."""

from __future__ import annotations

import os

import pytest


def shm_entries() -> set[str]:
    """Segments in /dev/shm named by this test process (shardcore-<pid>-...), and the abstract
    socket addresses of its communicators still bound (a rank 0 still waiting for its ranks).

    The core's memory never has a name (csrc/comm/rendezvous.h), so a name here is a leak: a
    segment of an older design or of a regression, or a rank 0 that outlived its test. Only this
    process's names: other test runs on the machine may come and go meanwhile.
    """
    prefix = f"shardcore-{os.getpid()}-"
    found = set()
    try:
        found |= {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}
    except FileNotFoundError:
        pass
    try:
        with open("/proc/net/unix") as f:
            paths = (line.split()[-1] for line in f)
            found |= {p for p in paths if p.startswith("@shardcore:/" + prefix)}
    except OSError:
        pass
    return found


@pytest.fixture(autouse=True)
def no_shm_leftovers():
    """Fail a test that leaves a shardcore segment or rendezvous address behind."""
    before = shm_entries()
    yield
    left = shm_entries() - before
    assert not left, f"segments left in /dev/shm: {sorted(left)}"

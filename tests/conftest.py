"""Shared fixtures: every test must leave /dev/shm as it found it."""

from __future__ import annotations

import os

import pytest


def shm_entries() -> set[str]:
    """Segments in /dev/shm named by this test process (shardcore-<pid>-...).

    Only this process's names: other test runs on the machine may come and go meanwhile.
    """
    prefix = f"shardcore-{os.getpid()}-"
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_shm_leftovers():
    """Fail a test that leaves a shardcore segment behind in /dev/shm."""
    before = shm_entries()
    yield
    left = shm_entries() - before
    assert not left, f"segments left in /dev/shm: {sorted(left)}"

"""Shared fixtures: every test must leave /dev/shm as it found it."""

from __future__ import annotations

import os

import pytest


def shm_entries() -> set[str]:
    """shardcore's segments currently in /dev/shm."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("shardcore")}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_shm_leftovers():
    """Fail a test that leaves a shardcore segment behind in /dev/shm."""
    before = shm_entries()
    yield
    left = shm_entries() - before
    assert not left, f"segments left in /dev/shm: {sorted(left)}"

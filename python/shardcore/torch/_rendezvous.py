"""Agreeing on a shared-memory segment through a torch.distributed store."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from typing import Any


def segment_name() -> str:
    """A fresh segment name; the ``shardcore`` prefix lets leak checks find it in /dev/shm."""
    return f"shardcore-torch-{os.getpid()}-{secrets.token_hex(6)}"


def connect_from_store(store: Any, rank: int, size: int, timeout: timedelta | None) -> Any:
    """Rank 0 publishes a new segment name in ``store``; every rank connects to it.

    ``store`` is the group's own (prefixed) store. A per-rank counter numbers the connections
    made through it, so a group re-created over the same store never reads a stale name.
    """
    from shardcore.comm import Communicator

    generation = store.add(f"shardcore/connects/{rank}", 1)
    key = f"shardcore/segment/{generation}"
    if rank == 0:
        name = segment_name()
        store.set(key, name)
    else:
        name = store.get(key).decode()
    seconds = None
    if timeout is not None and timeout > timedelta(0):
        seconds = timeout.total_seconds()
    return Communicator.connect(name, rank, size, timeout=seconds)

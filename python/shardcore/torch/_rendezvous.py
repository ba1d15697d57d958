"""Agreeing on shared-memory segments through a torch.distributed store."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from typing import Any

# The point-to-point communicator never runs a collective: small slots keep its segment small.
_P2P_SLOT_BYTES = 4096


def segment_name(role: str) -> str:
    """A fresh segment name; the ``shardcore`` prefix lets leak checks find it in /dev/shm."""
    return f"/shardcore-torch-{role}-{os.getpid()}-{secrets.token_hex(6)}"


def connect_from_store(
    store: Any, rank: int, size: int, timeout: timedelta | None
) -> tuple[Any, Any]:
    """Rank 0 publishes fresh segment names in ``store``; every rank connects to them.

    Returns ``(collectives, point_to_point)``: two communicators, because send and recv run on
    their own threads while collectives run on the caller's, and a communicator is used by one
    thread at a time. ``store`` is the group's own (prefixed) store; a per-rank counter numbers
    the connections made through it, so a group re-created over the same store never reads a
    stale name.
    """
    from shardcore.comm import Communicator

    generation = store.add(f"shardcore/connects/{rank}", 1)
    key = f"shardcore/segments/{generation}"
    if rank == 0:
        names = f"{segment_name('coll')} {segment_name('p2p')}"
        store.set(key, names)
    else:
        names = store.get(key).decode()
    coll_name, p2p_name = names.split()
    seconds = None
    if timeout is not None and timeout > timedelta(0):
        seconds = timeout.total_seconds()
    coll = Communicator.connect(coll_name, rank, size, timeout=seconds)
    p2p = Communicator.connect(p2p_name, rank, size, timeout=seconds, slot_bytes=_P2P_SLOT_BYTES)
    return coll, p2p

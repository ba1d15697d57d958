"""Connecting the backend's communicators through a torch.distributed store."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

# The point-to-point communicator never runs a collective: small slots keep its segment small.
_P2P_SLOT_BYTES = 4096


def connect_from_store(
    store: Any, rank: int, size: int, timeout: timedelta | None
) -> tuple[Any, Any]:
    """Every rank meets the others in ``store`` and connects its two communicators.

    Returns ``(collectives, point_to_point)``: two communicators, because send and recv run on
    their own threads while collectives run on the caller's, and a communicator is used by one
    thread at a time. Ranks that share one host get plain shared-memory communicators; ranks on
    several hosts (torchrun --nnodes) get ``HierCommunicator``s: shared memory inside each host,
    gloo between hosts. ``store`` is the group's own (prefixed) store; a per-rank counter
    numbers the connections made through it, so a group re-created over the same store never
    reads a stale name.
    """
    from shardcore.comm import _DEFAULT_TIMEOUT, _env_number
    from shardcore.hier.rendezvous import connect

    generation = store.add(f"shardcore/connects/{rank}", 1)
    prefix = f"shardcore/g{generation}"
    seconds = _env_number("SHARDCORE_TIMEOUT", _DEFAULT_TIMEOUT)
    if timeout is not None and timeout > timedelta(0):
        seconds = timeout.total_seconds()
    coll = connect(store, rank, size, timeout=seconds, prefix=f"{prefix}/coll")
    p2p = connect(
        store, rank, size, timeout=seconds, prefix=f"{prefix}/p2p", slot_bytes=_P2P_SLOT_BYTES
    )
    return coll, p2p

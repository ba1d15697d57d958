"""Building a communicator over a torch.distributed store: one host or several."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .topology import Topology, host_identity


def connect(
    store: Any,
    rank: int,
    size: int,
    *,
    timeout: float,
    prefix: str = "shardcore",
    address: str | None = None,
    slot_bytes: int | None = None,
    p2p_bytes: int | None = None,
):
    """Join ``size`` ranks through ``store``: a ``Communicator`` when they share one host, else
    a ``HierCommunicator``. Every rank calls it with the same ``prefix``.

    ``address`` is the address other hosts reach this one at (default: $SHARDCORE_IFADDR, else
    the interface that routes to $MASTER_ADDR, else gloo's default for the hostname).
    """
    store.set(f"{prefix}/id/{rank}", host_identity())
    identities = [store.get(f"{prefix}/id/{r}").decode() for r in range(size)]
    topology = Topology.from_identities(identities)
    return build(
        store,
        prefix,
        rank,
        topology,
        timeout=timeout,
        address=address,
        group_ranks=list(range(size)),
        slot_bytes=slot_bytes,
        p2p_bytes=p2p_bytes,
    )


def default_address() -> str | None:
    """The address gloo binds to for other hosts: $SHARDCORE_IFADDR, or the route to $MASTER_ADDR."""
    env = os.environ
    if env.get("SHARDCORE_IFADDR"):
        return env["SHARDCORE_IFADDR"]
    master = env.get("SHARDCORE_MASTER_ADDR") or env.get("MASTER_ADDR")
    if master:
        from .interhost import local_address

        port = env.get("SHARDCORE_MASTER_PORT") or env.get("MASTER_PORT") or "1"
        try:
            return local_address(master, int(port))
        except (OSError, ValueError):
            return None
    return None


def build(
    store: Any,
    prefix: str,
    rank: int,
    topology: Topology,
    *,
    timeout: float,
    address: str | None,
    group_ranks: Sequence[int],
    slot_bytes: int | None = None,
    p2p_bytes: int | None = None,
):
    """The communicator of ``rank`` in ``topology``, its segments and links agreed in ``store``."""
    from ..comm import Communicator, new_segment_name

    host = topology.host_of(rank)
    index = topology.local_index(rank)
    members = topology.hosts[host]
    key = f"{prefix}/segment/{host}"
    if index == 0:
        name = new_segment_name()
        store.set(key, name)
    else:
        name = store.get(key).decode()
    local = Communicator.connect(
        name,
        index,
        len(members),
        timeout=timeout,
        slot_bytes=slot_bytes,
        p2p_bytes=p2p_bytes,
        group_ranks=[group_ranks[r] for r in members],
    )
    if topology.nhosts == 1:
        return local  # one host: today's shared-memory communicator, nothing else on its path
    from .communicator import HierCommunicator
    from .interhost import Link

    if address is None:
        address = default_address()
    try:
        rail = None
        if index < topology.nrails:
            rail = Link(store, f"{prefix}/rail{index}/", host, topology.nhosts, timeout, address)
        world = Link(store, f"{prefix}/world/", rank, topology.size, timeout, address)
    except BaseException:
        local.abort("connecting to the other hosts failed")
        local.close()
        raise
    return HierCommunicator(
        topology,
        rank,
        local,
        rail,
        world,
        store=store,
        prefix=prefix,
        timeout=timeout,
        address=address,
        group_ranks=group_ranks,
        slot_bytes=slot_bytes,
    )


def init_from_env(
    *, timeout: float | None = None, slot_bytes: int | None = None, p2p_bytes: int | None = None
):
    """The communicator of a rank started by ``shardcore run --nnodes`` or torchrun.

    Reads SHARDCORE_MASTER_ADDR/PORT, SHARDCORE_RANK and SHARDCORE_WORLD_SIZE (or torch's
    MASTER_ADDR/PORT, RANK and WORLD_SIZE) and meets the other ranks in the store there.
    """
    from torch.distributed import TCPStore

    env = os.environ

    def pick(*names: str) -> str:
        for n in names:
            if env.get(n):
                return env[n]
        raise ValueError(f"{' or '.join(names)} must be set to join a job across hosts")

    addr = pick("SHARDCORE_MASTER_ADDR", "MASTER_ADDR")
    try:
        port = int(pick("SHARDCORE_MASTER_PORT", "MASTER_PORT"))
        rank = int(pick("SHARDCORE_RANK", "RANK"))
        size = int(pick("SHARDCORE_WORLD_SIZE", "WORLD_SIZE"))
    except ValueError as exc:
        raise ValueError(f"rendezvous environment: {exc}") from None
    if timeout is None:
        from ..comm import _DEFAULT_TIMEOUT, _env_number

        timeout = _env_number("SHARDCORE_TIMEOUT", _DEFAULT_TIMEOUT)
    from datetime import timedelta

    store = TCPStore(addr, port, None, False, timeout=timedelta(seconds=timeout))
    # torchrun's agent also keeps its own keys in this store: ours live under their own prefix
    return connect(
        store,
        rank,
        size,
        timeout=timeout,
        prefix="shardcore/init",
        address=default_address(),
        slot_bytes=slot_bytes,
        p2p_bytes=p2p_bytes,
    )

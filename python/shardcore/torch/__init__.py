"""shardcore as a torch.distributed backend for CPU tensors.

``import shardcore.torch`` registers the ``"shardcore"`` backend, after which

    dist.init_process_group("shardcore")                  # env:// under torchrun, or a store
    tp = dist.new_group([0, 1], backend="shardcore")      # sub-groups get their own segment

run collectives through POSIX shared memory. The rendezvous store only carries the name of the
shared-memory segment; no tensor data goes through it.
"""

from __future__ import annotations

import torch.distributed as dist

from ._rendezvous import connect_from_store
from .process_group import BACKEND_NAME, ShardcoreProcessGroup, UnsupportedError

__all__ = ["BACKEND_NAME", "ShardcoreProcessGroup", "UnsupportedError", "create_process_group"]


def create_process_group(store, rank: int, size: int, timeout) -> ShardcoreProcessGroup:
    """The backend factory torch calls for ``init_process_group``/``new_group``."""
    coll, p2p = connect_from_store(store, rank, size, timeout)
    return ShardcoreProcessGroup(coll, rank, size, p2p_comm=p2p)


if not dist.is_available():
    raise ImportError("shardcore.torch needs a torch build with torch.distributed")

dist.Backend.register_backend(BACKEND_NAME, create_process_group, devices=["cpu"])

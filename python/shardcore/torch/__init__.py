"""shardcore as a torch.distributed backend for CPU tensors.

``import shardcore.torch`` registers the ``"shardcore"`` backend (an installed shardcore also
registers it when torch is imported, through the ``torch.backends`` entry point), after which

    dist.init_process_group("shardcore")                  # env:// under torchrun, or a store
    tp = dist.new_group([0, 1], backend="shardcore")      # sub-groups get their own segments

run collectives through POSIX shared memory. The rendezvous store only carries the names of
the shared-memory segments (and, with ``SHARDCORE_TORCH_ANY_SOURCE=1``, which rank sent which
tag, so that ``recv(src=None)`` works); no tensor data goes through it. This module stays light (it may
run while torch itself is being imported); the backend loads when a group is created.
"""

from __future__ import annotations

import importlib

import torch.distributed as dist

BACKEND_NAME = "shardcore"

__all__ = ["BACKEND_NAME", "ShardcoreProcessGroup", "UnsupportedError", "create_process_group"]

_LAZY = {
    "ShardcoreProcessGroup": ".process_group",
    "UnsupportedError": ".process_group",
}


def create_process_group(store, rank: int, size: int, timeout):
    """The backend factory torch calls for ``init_process_group``/``new_group``."""
    import os

    from ._anysource import ENV, AnySource
    from ._rendezvous import connect_from_store
    from .process_group import ShardcoreProcessGroup

    any_source = None
    if size > 1 and os.environ.get(ENV, "") not in ("", "0"):
        seconds = (
            timeout.total_seconds()
            if timeout is not None and timeout.total_seconds() > 0
            else 600.0
        )
        any_source = AnySource(store, rank, size, seconds)  # before the ranks meet, see there
    coll, p2p = connect_from_store(store, rank, size, timeout)
    return ShardcoreProcessGroup(
        coll, rank, size, p2p_comm=p2p, any_source=any_source, timeout=timeout
    )


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardcore.torch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


if dist.is_available() and BACKEND_NAME.upper() not in dist.Backend._plugins:
    dist.Backend.register_backend(BACKEND_NAME, create_process_group, devices=["cpu"])

"""Communicators over several hosts: shared memory inside each host, gloo between hosts.

Loaded lazily, so that a launcher (``shardcore run --nnodes``) never loads the C++ core.
"""

from __future__ import annotations

_LAZY = {
    "HierCommunicator": "shardcore.hier.communicator",
    "Topology": "shardcore.hier.topology",
    "host_identity": "shardcore.hier.topology",
    "build": "shardcore.hier.rendezvous",
    "connect": "shardcore.hier.rendezvous",
    "init_from_env": "shardcore.hier.rendezvous",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardcore.hier' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

"""shardcore: TP/PP/DP/EP model parallelism across shared-memory worker processes on one host.

The communication layer (``launch``, ``init``, ``Communicator``) loads the C++ core on first use,
so that ``shardcore.plan`` stays pure Python.
"""

from __future__ import annotations

from .errors import (
    CollectiveMismatchError,
    CommError,
    CommTimeoutError,
    LaunchError,
    PeerFailureError,
    PlanError,
    ShardcoreError,
)

__version__ = "0.1.0"

# (the launcher lives in shardcore.launcher, not shardcore.launch: importing a submodule named
# like a package attribute would replace the function by the module)
_LAZY = {
    "Communicator": "shardcore.comm",
    "launch": "shardcore.launcher",
    "init": "shardcore.launcher",
}

__all__ = [
    "CollectiveMismatchError",
    "CommError",
    "CommTimeoutError",
    "Communicator",
    "LaunchError",
    "PeerFailureError",
    "PlanError",
    "ShardcoreError",
    "init",
    "launch",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardcore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

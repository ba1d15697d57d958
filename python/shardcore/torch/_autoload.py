"""Target of the ``torch.backends`` entry point: torch calls ``register()`` while it imports.

A module of its own because ``import shardcore.torch`` itself imports torch: when a program
imports shardcore.torch first, torch runs this while shardcore.torch is half-initialised, and
must find nothing missing here. That import then finishes and registers the backend itself.
"""

from __future__ import annotations

import sys


def register() -> None:
    """Register the "shardcore" torch.distributed backend (by importing shardcore.torch)."""
    if "shardcore.torch" in sys.modules:
        return  # being imported (it registers the backend when it finishes) or already done
    import shardcore.torch  # noqa: F401

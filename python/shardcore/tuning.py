"""All-reduce algorithm thresholds: built-in defaults, a per-host cache written by
``shardcore tune``, or SHARDCORE_ONE_SHOT_MAX / SHARDCORE_TWO_SHOT_MAX (bytes)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path


def cache_path() -> Path:
    """Where ``shardcore tune`` keeps this host's measured crossovers."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "shardcore" / f"tune-{socket.gethostname()}.json"


def thresholds(world_size: int) -> tuple[int, int]:
    """(one_shot_max, two_shot_max) in bytes for this world size; 0 means the core's default."""
    one = two = 0
    try:
        data = json.loads(cache_path().read_text())
        entry = data.get("world_sizes", {}).get(str(world_size))
        if entry:
            one, two = int(entry.get("one_shot_max", 0)), int(entry.get("two_shot_max", 0))
    except (OSError, ValueError, AttributeError):
        pass
    one = int(os.environ.get("SHARDCORE_ONE_SHOT_MAX", one) or 0)
    two = int(os.environ.get("SHARDCORE_TWO_SHOT_MAX", two) or 0)
    return one, two

"""Run a decoder checkpoint sharded by TP, PP, DP and EP on shardcore worker processes.

``Engine(checkpoint_dir, tp=2, pp=2)`` loads each rank's shard of a Hugging Face Qwen3 /
Qwen3-MoE / Llama-style checkpoint once, on long-lived workers, and serves ``generate``
requests (token ids or text, greedy or sampled) or, with ``submit``, sequences that join and
leave a continuously batched decode; ``generate(checkpoint_dir, input_ids, tp=2)`` is the
one-call form. Both return the tokens, the logits of every step and each rank's traffic
beside the traffic predicted for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# Loaded on first use, so that ``shardcore generate --help`` does not import NumPy, ml_dtypes and
# the core: name -> submodule that defines it.
_LAZY = {
    "Checkpoint": "checkpoint",
    "Engine": "server",
    "Sampling": "sampling",
    "TextTokenizer": "text",
    "ModelConfig": "config",
    "FailureInjection": "engine",
    "RankLayout": "layout",
    "build_layouts": "layout",
    "host_plan": "layout",
    "layouts_from_plan": "layout",
    "GenerateResult": "runner",
    "generate": "runner",
}

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .config import ModelConfig
    from .engine import FailureInjection
    from .layout import RankLayout, build_layouts, host_plan, layouts_from_plan
    from .runner import GenerateResult, generate
    from .sampling import Sampling
    from .server import Engine
    from .text import TextTokenizer

__all__ = [
    "Checkpoint",
    "Engine",
    "FailureInjection",
    "GenerateResult",
    "ModelConfig",
    "RankLayout",
    "Sampling",
    "TextTokenizer",
    "build_layouts",
    "generate",
    "host_plan",
    "layouts_from_plan",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardcore.runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

"""Run a decoder checkpoint sharded by TP, PP, DP and EP on shardcore worker processes.

``generate(checkpoint_dir, input_ids, tp=2, pp=2)`` loads each rank's shard of a Hugging Face
Qwen3 / Qwen3-MoE / Llama-style checkpoint, prefills and decodes greedily, and returns the
tokens, the logits of every step and each rank's traffic beside the traffic predicted for it.
"""

from __future__ import annotations

from .checkpoint import Checkpoint
from .config import ModelConfig
from .engine import FailureInjection
from .layout import RankLayout, build_layouts, host_plan, layouts_from_plan
from .runner import GenerateResult, generate

__all__ = [
    "Checkpoint",
    "FailureInjection",
    "GenerateResult",
    "ModelConfig",
    "RankLayout",
    "build_layouts",
    "generate",
    "host_plan",
    "layouts_from_plan",
]

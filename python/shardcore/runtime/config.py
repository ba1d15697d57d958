"""The architecture of a decoder checkpoint, read from a Hugging Face config.json."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..plan.specs import ModelSpec

# model_type -> whether its attention has per-head q/k RMSNorm (Qwen3) or not (Llama-style).
SUPPORTED_MODEL_TYPES = {"qwen3": True, "qwen3_moe": True, "llama": False, "mistral": False}


@dataclass(frozen=True)
class ModelConfig:
    """What the runtime needs to know about a decoder: sizes, MoE layout, RoPE and norms.

    Vocabulary: "heads" are query heads, "kv_heads" key/value heads, "intermediate" the dense
    SwiGLU width, "expert_intermediate" the width of one expert's SwiGLU.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qk_norm: bool
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    norm_topk_prob: bool = True
    moe_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) is not a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.moe_layers:
            if not 0 < self.experts_per_token <= self.num_experts:
                raise ValueError(
                    f"experts_per_token ({self.experts_per_token}) must be in "
                    f"[1, num_experts={self.num_experts}]"
                )
            if self.expert_intermediate_size <= 0:
                raise ValueError("expert_intermediate_size must be positive in a MoE model")

    @property
    def is_moe(self) -> bool:
        """Whether any layer's MLP is a mixture of experts."""
        return bool(self.moe_layers)

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf_config(cls, source: str | os.PathLike | Mapping[str, Any]) -> ModelConfig:
        """Build from a config.json path, a checkpoint directory or an already parsed dict."""
        if isinstance(source, Mapping):
            cfg = dict(source)
        else:
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; the runtime runs "
                f"{sorted(SUPPORTED_MODEL_TYPES)}"
            )
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"unsupported hidden_act {act!r}: the runtime's MLP is SwiGLU (silu)")
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ValueError("attention_bias/mlp_bias checkpoints are not supported")
        if cfg.get("use_sliding_window") or (model_type == "mistral" and cfg.get("sliding_window")):
            raise ValueError("sliding-window attention is not supported")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"unsupported rope_type {rope_type!r}; only the default RoPE is")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        # The shapes and the MoE layer rule are the planner's reading of the same file, so the
        # plan and the model it runs cannot disagree about them.
        spec = ModelSpec.from_hf_config(cfg)
        moe_layers: tuple[int, ...] = ()
        if model_type == "qwen3_moe":
            moe_layers = tuple(i for i in range(spec.num_layers) if spec.is_moe_layer(i))
        return cls(
            model_type=model_type,
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            num_heads=spec.num_heads,
            num_kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            intermediate_size=int(cfg["intermediate_size"]),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            tie_word_embeddings=spec.tie_embeddings,
            qk_norm=SUPPORTED_MODEL_TYPES[model_type],
            num_experts=spec.num_experts if moe_layers else 0,
            experts_per_token=spec.experts_per_token if moe_layers else 0,
            expert_intermediate_size=int(cfg.get("moe_intermediate_size", 0)) if moe_layers else 0,
            norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
            moe_layers=moe_layers,
        )

"""What is being planned: the model (``ModelSpec``), one device (``DeviceSpec``) and the cluster.

Vocabulary used across ``shardcore.plan``: *device* is one unit that holds a rank (a GPU, or one
processing element of a FuriosaAI RNGD card); *node* is a group of devices that share the fast
intra-node links; *axis* is a mesh axis (tp, pp, dp, ep); *dim* is a tensor dimension.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

GB = 1e9
GIB = float(2**30)

#: bytes per element of the dtypes the planner knows
DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8": 1,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype`` (a name from ``DTYPE_BYTES``)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer (Llama / Qwen3 / Qwen3-MoE / Mixtral family).

    ``ffn_size`` is the dense MLP's intermediate size; MoE layers use ``num_experts`` experts of
    ``expert_ffn_size`` each, ``experts_per_token`` of them per token, plus ``shared_experts``
    always-on experts fused into one MLP of ``shared_experts * expert_ffn_size`` (or
    ``shared_expert_ffn_size`` when given). A layer ``i`` is an MoE layer when the model has
    experts, ``i`` is not in ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0`` (the
    Qwen3-MoE rule).
    """

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    num_experts: int = 0
    experts_per_token: int = 0
    expert_ffn_size: int = 0
    shared_experts: int = 0
    shared_expert_ffn_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple = ()
    tie_embeddings: bool = False
    qk_norm: bool = False
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelSpec.{name} must be a positive int, got {value!r}")
        for name in (
            "ffn_size",
            "num_experts",
            "experts_per_token",
            "expert_ffn_size",
            "shared_experts",
            "shared_expert_ffn_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ModelSpec.{name} must be an int >= 0, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.num_experts:
            if not 1 <= self.experts_per_token <= self.num_experts:
                raise ValueError(
                    f"experts_per_token={self.experts_per_token} must be in "
                    f"[1, num_experts={self.num_experts}]"
                )
            if self.expert_ffn_size < 1:
                raise ValueError("an MoE model needs expert_ffn_size >= 1")
        if self.decoder_sparse_step < 1:
            raise ValueError(f"decoder_sparse_step must be >= 1, got {self.decoder_sparse_step}")
        object.__setattr__(
            self, "mlp_only_layers", tuple(sorted(int(i) for i in self.mlp_only_layers))
        )
        dtype_bytes(self.dtype)
        if any(not self.is_moe_layer(i) for i in range(self.num_layers)) and self.ffn_size < 1:
            raise ValueError("the model has dense layers but ffn_size is 0")

    # -- derived shapes -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """True when at least one layer is an MoE layer."""
        return self.num_experts > 0 and any(self.is_moe_layer(i) for i in range(self.num_layers))

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based) has routed experts (the Qwen3-MoE rule)."""
        return (
            self.num_experts > 0
            and layer not in self.mlp_only_layers
            and (layer + 1) % self.decoder_sparse_step == 0
        )

    @property
    def moe_layers(self) -> tuple:
        """Indices of the MoE layers."""
        return tuple(i for i in range(self.num_layers) if self.is_moe_layer(i))

    @property
    def q_size(self) -> int:
        """Output features of q_proj (num_heads * head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Output features of k_proj and of v_proj (num_kv_heads * head_dim)."""
        return self.num_kv_heads * self.head_dim

    @property
    def shared_ffn_size(self) -> int:
        """Intermediate size of the fused shared-expert MLP (0 without shared experts)."""
        if self.shared_expert_ffn_size:
            return self.shared_expert_ffn_size
        return self.shared_experts * self.expert_ffn_size

    @property
    def weight_bytes_per_element(self) -> float:
        """Bytes per weight element in ``dtype``."""
        return dtype_bytes(self.dtype)

    def layer_params(self, layer: int) -> int:
        """Parameters of decoder layer ``layer`` (attention, norms, MLP or experts and router)."""
        h = self.hidden_size
        n = 2 * h + self.q_size * h * 2 + self.kv_size * h * 2
        if self.qk_norm:
            n += 2 * self.head_dim
        if self.is_moe_layer(layer):
            n += self.num_experts * h + self.num_experts * 3 * h * self.expert_ffn_size
            n += 3 * h * self.shared_ffn_size
        else:
            n += 3 * h * self.ffn_size
        return n

    def active_layer_params(self, layer: int) -> int:
        """Parameters one token touches in layer ``layer`` (top-k experts only)."""
        if not self.is_moe_layer(layer):
            return self.layer_params(layer)
        h = self.hidden_size
        unused = (self.num_experts - self.experts_per_token) * 3 * h * self.expert_ffn_size
        return self.layer_params(layer) - unused

    @property
    def embedding_params(self) -> int:
        """Parameters of embed_tokens plus lm_head (once when tied) plus the final norm."""
        n = self.vocab_size * self.hidden_size
        return (n if self.tie_embeddings else 2 * n) + self.hidden_size

    @property
    def num_params(self) -> int:
        """Total parameters."""
        return self.embedding_params + sum(self.layer_params(i) for i in range(self.num_layers))

    @property
    def num_active_params(self) -> int:
        """Parameters touched per token (all dense weights, top-k experts)."""
        return self.embedding_params + sum(
            self.active_layer_params(i) for i in range(self.num_layers)
        )

    def kv_bytes_per_token(self, kv_dtype: str | None = None) -> float:
        """KV cache bytes per token for the whole model on one copy (K and V, every layer)."""
        b = dtype_bytes(kv_dtype or self.dtype)
        return 2 * self.num_layers * self.kv_size * b

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> ModelSpec:
        """A model preset by name (see ``MODEL_PRESETS``)."""
        try:
            return MODEL_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown model preset {name!r}; presets: {', '.join(sorted(MODEL_PRESETS))}"
            ) from None

    @classmethod
    def from_hf_config(
        cls, config: str | os.PathLike | Mapping[str, Any], name: str | None = None
    ) -> ModelSpec:
        """Read a Hugging Face ``config.json`` (a path, a directory holding one, or a dict).

        Understands the Llama, Qwen3, Qwen3-MoE and Mixtral keys: ``head_dim`` when present
        (Qwen3 sets it independently of hidden/heads), ``num_experts`` / ``num_local_experts``,
        ``moe_intermediate_size`` (Qwen3-MoE: dense layers keep ``intermediate_size``; Mixtral:
        ``intermediate_size`` is the expert size), ``decoder_sparse_step`` and
        ``mlp_only_layers``, ``shared_expert_intermediate_size``, ``tie_word_embeddings``,
        ``torch_dtype``/``dtype``.
        """
        if isinstance(config, Mapping):
            cfg = dict(config)
            default_name = cfg.get("_name_or_path") or cfg.get("model_type") or "hf-model"
        else:
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
            default_name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
        if cfg.get("attention_bias"):
            raise ValueError(
                "attention_bias=true is not supported by the planner "
                "(Qwen3/Llama/Mixtral checkpoints have no attention bias)"
            )

        def need(key: str) -> int:
            if key not in cfg:
                raise ValueError(f"config.json lacks {key!r}")
            return int(cfg[key])

        model_type = str(cfg.get("model_type", ""))
        hidden = need("hidden_size")
        heads = need("num_attention_heads")
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
        top_k = int(cfg.get("num_experts_per_tok") or 0) if experts else 0
        intermediate = int(cfg.get("intermediate_size") or 0)
        if experts and "moe_intermediate_size" in cfg:
            expert_ffn, dense_ffn = int(cfg["moe_intermediate_size"]), intermediate
        elif experts:  # Mixtral: every layer is sparse, intermediate_size is the expert size
            expert_ffn, dense_ffn = intermediate, 0
        else:
            expert_ffn, dense_ffn = 0, intermediate
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
        if dtype not in DTYPE_BYTES:
            dtype = "bfloat16"
        return cls(
            name=name or str(default_name),
            hidden_size=hidden,
            num_layers=need("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            ffn_size=dense_ffn,
            vocab_size=need("vocab_size"),
            num_experts=experts,
            experts_per_token=top_k,
            expert_ffn_size=expert_ffn,
            shared_expert_ffn_size=int(cfg.get("shared_expert_intermediate_size") or 0),
            decoder_sparse_step=int(cfg.get("decoder_sparse_step") or 1),
            mlp_only_layers=tuple(cfg.get("mlp_only_layers") or ()),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
            dtype=dtype,
        )

    def with_dtype(self, dtype: str) -> ModelSpec:
        """The same model with weights in ``dtype``."""
        return replace(self, dtype=dtype)


# Values from each model's published config.json on the Hugging Face hub.
MODEL_PRESETS: dict[str, ModelSpec] = {
    "qwen3-235b-a22b": ModelSpec(
        name="qwen3-235b-a22b",
        hidden_size=4096,
        num_layers=94,
        num_heads=64,
        num_kv_heads=4,
        head_dim=128,
        ffn_size=12288,
        vocab_size=151936,
        num_experts=128,
        experts_per_token=8,
        expert_ffn_size=1536,
        qk_norm=True,
    ),
    "qwen3-30b-a3b": ModelSpec(
        name="qwen3-30b-a3b",
        hidden_size=2048,
        num_layers=48,
        num_heads=32,
        num_kv_heads=4,
        head_dim=128,
        ffn_size=6144,
        vocab_size=151936,
        num_experts=128,
        experts_per_token=8,
        expert_ffn_size=768,
        qk_norm=True,
    ),
    "qwen3-32b": ModelSpec(
        name="qwen3-32b",
        hidden_size=5120,
        num_layers=64,
        num_heads=64,
        num_kv_heads=8,
        head_dim=128,
        ffn_size=25600,
        vocab_size=151936,
        qk_norm=True,
    ),
    "qwen3-8b": ModelSpec(
        name="qwen3-8b",
        hidden_size=4096,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        ffn_size=12288,
        vocab_size=151936,
        qk_norm=True,
    ),
    "llama-3-70b": ModelSpec(
        name="llama-3-70b",
        hidden_size=8192,
        num_layers=80,
        num_heads=64,
        num_kv_heads=8,
        head_dim=128,
        ffn_size=28672,
        vocab_size=128256,
    ),
    "llama-3-8b": ModelSpec(
        name="llama-3-8b",
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        ffn_size=14336,
        vocab_size=128256,
    ),
    "mixtral-8x7b": ModelSpec(
        name="mixtral-8x7b",
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        ffn_size=0,
        vocab_size=32000,
        num_experts=8,
        experts_per_token=2,
        expert_ffn_size=14336,
    ),
}


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator as the planner sees it.

    ``memory_bytes`` is the capacity the device really reports (an "80 GB" H100 reports 81559
    MiB = 79.6 GiB); ``nominal_memory_bytes`` is the marketing figure (80e9) kept for the seed's
    back-of-envelope arithmetic. ``peak_flops`` is dense bf16 FLOP/s, ``memory_bandwidth`` bytes/s.
    ``processing_elements`` > 1 means one card is split into that many planning devices (RNGD:
    8 PEs, each with 1/8 of the card's memory, compute and bandwidth), linked on the card at
    ``on_card_bandwidth``. ``allowed_tp_sizes`` restricts TP degrees (None: any).
    """

    name: str
    memory_bytes: int
    peak_flops: float
    memory_bandwidth: float
    nominal_memory_bytes: int = 0
    processing_elements: int = 1
    on_card_bandwidth: float = 0.0
    allowed_tp_sizes: tuple | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0 or self.peak_flops <= 0 or self.memory_bandwidth <= 0:
            raise ValueError(f"DeviceSpec {self.name!r}: memory, flops and bandwidth must be > 0")
        if self.processing_elements < 1:
            raise ValueError("processing_elements must be >= 1")
        if not self.nominal_memory_bytes:
            object.__setattr__(self, "nominal_memory_bytes", self.memory_bytes)
        if self.allowed_tp_sizes is not None:
            object.__setattr__(
                self, "allowed_tp_sizes", tuple(int(t) for t in self.allowed_tp_sizes)
            )

    def unit(self) -> DeviceSpec:
        """The planning device: the card itself, or one of its processing elements."""
        pe = self.processing_elements
        if pe == 1:
            return self
        return DeviceSpec(
            name=f"{self.name}-pe",
            memory_bytes=self.memory_bytes // pe,
            peak_flops=self.peak_flops / pe,
            memory_bandwidth=self.memory_bandwidth / pe,
            nominal_memory_bytes=self.nominal_memory_bytes // pe,
            allowed_tp_sizes=self.allowed_tp_sizes,
        )

    @classmethod
    def preset(cls, name: str) -> DeviceSpec:
        """A device preset by name (see ``DEVICE_PRESETS``)."""
        try:
            return DEVICE_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown device preset {name!r}; presets: {', '.join(sorted(DEVICE_PRESETS))}"
            ) from None


MIB = 2**20
DEVICE_PRESETS: dict[str, DeviceSpec] = {
    # H100 SXM5 80GB: nvidia-smi reports 81559 MiB; 989 TFLOP/s dense bf16; 3.35 TB/s HBM3.
    "h100-80gb": DeviceSpec(
        name="h100-80gb",
        memory_bytes=81559 * MIB,
        peak_flops=989e12,
        memory_bandwidth=3.35e12,
        nominal_memory_bytes=80 * 10**9,
    ),
    # H200 SXM 141GB: nvidia-smi reports 143771 MiB; same compute as H100; 4.8 TB/s HBM3e.
    "h200-141gb": DeviceSpec(
        name="h200-141gb",
        memory_bytes=143771 * MIB,
        peak_flops=989e12,
        memory_bandwidth=4.8e12,
        nominal_memory_bytes=141 * 10**9,
    ),
    # FuriosaAI RNGD card: 48 GB HBM3, 1.5 TB/s, 256 TFLOP/s bf16, 8 processing elements.
    # Furiosa LLM runs TP inside a card (tensor_parallel_size <= 8 PEs), PP/DP across cards.
    # The on-card PE-to-PE bandwidth is not published; 1.5 TB/s/8 per PE is our assumption.
    # A placeholder for shardcore's own one-host CPU runs (the runtime's plans): the memory,
    # compute and bandwidth figures only feed the memory table and the search, not the run.
    "cpu": DeviceSpec(name="cpu", memory_bytes=64 * 2**30, peak_flops=1e12, memory_bandwidth=50e9),
    "rngd": DeviceSpec(
        name="rngd",
        memory_bytes=48 * 10**9,
        peak_flops=256e12,
        memory_bandwidth=1.5e12,
        processing_elements=8,
        on_card_bandwidth=187.5e9,
        allowed_tp_sizes=(1, 2, 4, 8),
    ),
}


@dataclass(frozen=True)
class ClusterSpec:
    """``nodes`` x ``devices_per_node`` devices (cards), with per-device link bandwidths.

    Bandwidths are bytes/s per device per direction (the β of the α–β model); latencies are the
    α per message hop in seconds. Ranks are numbered node by node, so a group of consecutive
    ranks stays inside a node when it fits. With a multi-PE device every planning rank is one
    processing element and ``world_size`` counts PEs.
    """

    device: DeviceSpec
    nodes: int = 1
    devices_per_node: int = 8
    intra_node_bandwidth: float = 450e9
    inter_node_bandwidth: float = 50e9
    intra_node_latency: float = 3e-6
    inter_node_latency: float = 10e-6

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.devices_per_node < 1:
            raise ValueError(
                f"ClusterSpec needs nodes >= 1 and devices_per_node >= 1, got "
                f"{self.nodes} x {self.devices_per_node}"
            )
        if self.intra_node_bandwidth <= 0 or self.inter_node_bandwidth <= 0:
            raise ValueError("ClusterSpec bandwidths must be > 0")

    @property
    def ranks_per_card(self) -> int:
        """Planning ranks per physical device (PEs per card, 1 for a GPU)."""
        return self.device.processing_elements

    @property
    def ranks_per_node(self) -> int:
        """Planning ranks per node."""
        return self.devices_per_node * self.ranks_per_card

    @property
    def world_size(self) -> int:
        """Number of planning ranks (devices, or processing elements)."""
        return self.nodes * self.ranks_per_node

    @property
    def unit(self) -> DeviceSpec:
        """The DeviceSpec of one planning rank."""
        return self.device.unit()

    def node_of(self, rank: int) -> int:
        """The node that holds ``rank``."""
        return rank // self.ranks_per_node

    def card_of(self, rank: int) -> int:
        """The physical device (card) that holds ``rank``, numbered across the cluster."""
        return rank // self.ranks_per_card

    def link(self, a: int, b: int) -> tuple:
        """(bandwidth, latency, kind) of the link between ranks ``a`` and ``b``."""
        if self.ranks_per_card > 1 and self.card_of(a) == self.card_of(b):
            return self.device.on_card_bandwidth, self.intra_node_latency, "card"
        if self.node_of(a) == self.node_of(b):
            return self.intra_node_bandwidth, self.intra_node_latency, "node"
        return self.inter_node_bandwidth, self.inter_node_latency, "network"

    def group_link(self, ranks) -> tuple:
        """(bandwidth, latency, kind) of the slowest link of a ring over ``ranks``."""
        ranks = list(ranks)
        worst = (float("inf"), 0.0, "self")
        for i, a in enumerate(ranks):
            if len(ranks) == 1:
                break
            bw, lat, kind = self.link(a, ranks[(i + 1) % len(ranks)])
            if bw < worst[0] or (bw == worst[0] and lat > worst[1]):
                worst = (bw, lat, kind)
        return worst

    @classmethod
    def make(
        cls, device: str | DeviceSpec, devices: int, devices_per_node: int | None = None, **kw: Any
    ) -> ClusterSpec:
        """A cluster of ``devices`` cards of ``device``, ``devices_per_node`` per node."""
        dev = DeviceSpec.preset(device) if isinstance(device, str) else device
        per_node = devices_per_node or devices
        if devices < 1 or devices % per_node:
            raise ValueError(
                f"--devices {devices} is not a multiple of --devices-per-node {per_node}"
            )
        if dev.name == "rngd" and not kw:
            # RNGD cards talk over PCIe Gen5 x16 (~64 GB/s per direction) inside a server.
            kw = {
                "intra_node_bandwidth": 64e9,
                "inter_node_bandwidth": 25e9,
                "intra_node_latency": 5e-6,
                "inter_node_latency": 10e-6,
            }
        return cls(device=dev, nodes=devices // per_node, devices_per_node=per_node, **kw)

    def to_dict(self) -> dict:
        """Plain-data form (JSON)."""
        return {
            "device": {k: getattr(self.device, k) for k in self.device.__dataclass_fields__},
            "nodes": self.nodes,
            "devices_per_node": self.devices_per_node,
            "intra_node_bandwidth": self.intra_node_bandwidth,
            "inter_node_bandwidth": self.inter_node_bandwidth,
            "intra_node_latency": self.intra_node_latency,
            "inter_node_latency": self.inter_node_latency,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterSpec:
        """Inverse of ``to_dict``."""
        dev = dict(d["device"])
        if dev.get("allowed_tp_sizes") is not None:
            dev["allowed_tp_sizes"] = tuple(dev["allowed_tp_sizes"])
        rest = {k: v for k, v in d.items() if k != "device"}
        return cls(device=DeviceSpec(**dev), **rest)

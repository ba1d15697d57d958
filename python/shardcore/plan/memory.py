"""Memory per rank before any weight is loaded: weights, KV cache, activations, buffers."""

from __future__ import annotations

from dataclasses import dataclass

from .specs import GB, GIB, dtype_bytes

#: shared-memory bytes assumed per communicator a rank belongs to (TP, EP, PP link); an estimate
DEFAULT_COMM_BUFFER_BYTES = 64 * 2**20
#: tokens of one forward micro-batch whose activations must fit (a prefill chunk)
DEFAULT_ACTIVATION_TOKENS = 2048


@dataclass(frozen=True)
class MemoryReport:
    """Bytes on one rank. ``free`` is what is left for the KV cache after weights, activations
    and communication buffers on the device's real capacity; ``left_after_weights_nominal`` is
    the seed's back-of-envelope figure (nominal capacity minus weights)."""

    rank: int
    device_bytes: int
    nominal_bytes: int
    weights: float
    kv_per_token: float
    activations: float
    comm_buffers: float
    free: float
    kv_capacity_tokens: int
    kv_heads_per_rank: int
    kv_replication: int

    @property
    def left_after_weights(self) -> float:
        """Real capacity minus weights."""
        return self.device_bytes - self.weights

    @property
    def left_after_weights_nominal(self) -> float:
        """Nominal capacity (e.g. 80e9 for an "80 GB" H100) minus weights."""
        return self.nominal_bytes - self.weights

    @property
    def fits(self) -> bool:
        """Whether weights, activations and buffers fit with room for at least one KV token."""
        return self.kv_capacity_tokens > 0

    def lines(self) -> list:
        """Human-readable lines, GB (1e9) and GiB (2**30) side by side."""

        def both(x: float) -> str:
            return f"{x / GB:8.2f} GB  {x / GIB:8.2f} GiB"

        return [
            f"device capacity     {both(self.device_bytes)}  "
            f"(nominal {self.nominal_bytes / GB:.0f} GB)",
            f"weights             {both(self.weights)}",
            f"left after weights  {both(self.left_after_weights)}  "
            f"(nominal: {self.left_after_weights_nominal / GB:.2f} GB)",
            f"activations         {both(self.activations)}",
            f"comm buffers        {both(self.comm_buffers)}",
            f"free for KV cache   {both(self.free)}",
            f"KV cache per token  {self.kv_per_token:.0f} B ({self.kv_heads_per_rank} KV head(s) "
            f"per rank, each stored {self.kv_replication}x)",
            f"KV capacity         {self.kv_capacity_tokens} tokens",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def kv_bytes_per_token(plan, rank: int, kv_dtype: str | None = None) -> float:
    """KV cache bytes per token on ``rank``: its layers x (K and V) x its KV heads x head_dim.

    When tp exceeds the KV heads a rank still stores one whole head, so this does not shrink
    past tp = num_kv_heads.
    """
    r, m = plan.ranks[rank], plan.model
    heads = r.kv_heads[1] - r.kv_heads[0]
    return r.num_layers * 2 * heads * m.head_dim * dtype_bytes(kv_dtype or m.dtype)


def activation_bytes(
    plan, rank: int, tokens: int = DEFAULT_ACTIVATION_TOKENS, dtype: str | None = None
) -> float:
    """Peak live activations of one layer for ``tokens`` tokens (flash attention: no score
    matrix; residual + normed input, local q/k/v and attention output, gate and up outputs of
    the local MLP or of the top-k expert rows, and the EP dispatch/combine buffers)."""
    r, m, c = plan.ranks[rank], plan.model, plan.config
    b = dtype_bytes(dtype or m.dtype)
    h, d = m.hidden_size, m.head_dim
    q = (r.q_heads[1] - r.q_heads[0]) * d
    kv = (r.kv_heads[1] - r.kv_heads[0]) * d
    mlp = 2 * (r.ffn[1] - r.ffn[0])
    if m.is_moe:
        rows = m.experts_per_token / c.ep if c.ep > 1 else m.experts_per_token
        expert = 2 * (r.expert_ffn[1] - r.expert_ffn[0]) * rows
        expert += 2 * (r.shared_ffn[1] - r.shared_ffn[0])
        if c.ep > 1:
            expert += 2 * m.experts_per_token * h  # dispatch and combine rows
        mlp = max(mlp, expert)
    return tokens * b * (2 * h + 2 * q + 2 * kv + mlp)


def memory_report(
    plan,
    rank: int = 0,
    *,
    kv_dtype: str | None = None,
    activation_tokens: int = DEFAULT_ACTIVATION_TOKENS,
    activation_dtype: str | None = None,
    comm_buffer_bytes: int = DEFAULT_COMM_BUFFER_BYTES,
) -> MemoryReport:
    """Memory of ``rank`` under ``plan`` (see ``MemoryReport``)."""
    c, m, r = plan.config, plan.model, plan.ranks[rank]
    unit = plan.cluster.unit
    weights = plan.weight_bytes(rank)
    groups = (c.tp > 1) + (c.pp > 1) + (c.ep > 1 and m.is_moe)
    comm = groups * comm_buffer_bytes
    act = activation_bytes(plan, rank, activation_tokens, activation_dtype)
    kv = kv_bytes_per_token(plan, rank, kv_dtype)
    free = unit.memory_bytes - weights - act - comm
    capacity = int(free // kv) if free > 0 and kv > 0 else 0
    return MemoryReport(
        rank=rank,
        device_bytes=unit.memory_bytes,
        nominal_bytes=unit.nominal_memory_bytes,
        weights=weights,
        kv_per_token=kv,
        activations=act,
        comm_buffers=comm,
        free=free,
        kv_capacity_tokens=capacity,
        kv_heads_per_rank=r.kv_heads[1] - r.kv_heads[0],
        kv_replication=max(1, c.tp // m.num_kv_heads),
    )

"""``ParallelConfig`` (tp, pp, dp, ep) and the checks that decide whether it fits a model/cluster.

Rank layout (Megatron order, tp fastest): ``rank = (pp_idx * dp + dp_idx) * tp + tp_idx``. A TP
group is ``tp`` consecutive ranks, so it stays inside a node whenever tp divides the ranks per
node; a pipeline stage is the ``tp * dp`` consecutive ranks ``[pp_idx*tp*dp, (pp_idx+1)*tp*dp)``.

EP is laid over the ``tp * dp`` ranks of a stage (as vLLM and Megatron do): with the stage-local
index ``s = dp_idx * tp + tp_idx``, EP group ``s // ep`` is ``ep`` consecutive ranks and the EP
rank is ``s % ep``. With ``ep == 1`` every expert is tensor-parallel like a dense MLP; with
``ep > 1`` each EP rank holds ``num_experts / ep`` whole experts, replicated ``tp * dp / ep``
times across the stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import PlanError
from .specs import ClusterSpec, ModelSpec


@dataclass(frozen=True)
class ParallelConfig:
    """Degrees of tensor, pipeline, data and expert parallelism; ep lives inside tp*dp."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        for axis in ("tp", "pp", "dp", "ep"):
            value = getattr(self, axis)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PlanError(f"{axis} must be a positive int, got {value!r}")

    @property
    def world_size(self) -> int:
        """tp * pp * dp (ep does not multiply: it reuses the tp*dp ranks of a stage)."""
        return self.tp * self.pp * self.dp

    def rank(self, dp: int, pp: int, tp: int) -> int:
        """Global rank of the coordinates (dp, pp, tp)."""
        return (pp * self.dp + dp) * self.tp + tp

    def coords(self, rank: int) -> tuple:
        """(dp, pp, tp) of ``rank``."""
        tp = rank % self.tp
        rest = rank // self.tp
        return rest % self.dp, rest // self.dp, tp

    def __str__(self) -> str:
        return f"tp={self.tp} pp={self.pp} dp={self.dp} ep={self.ep}"


def split_sizes(total: int, parts: int) -> list:
    """Contiguous split of ``total`` into ``parts`` blocks: the first ``total % parts`` blocks
    get one element more (the rule for every uneven split in shardcore)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def split_range(total: int, parts: int, index: int) -> tuple:
    """(start, stop) of block ``index`` of ``split_sizes(total, parts)``."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def default_layer_partition(num_layers: int, pp: int) -> tuple:
    """Layers per stage, the remainder going to the middle stages: 94 over 4 -> (23, 24, 24, 23).

    The first and last stages also hold the embedding and the LM head, so they get the smaller
    share; the extra layers go to the stages nearest the middle (ties: the earlier stage).
    """
    if pp > num_layers:
        raise PlanError(f"pp={pp} exceeds the {num_layers} layers")
    base, extra = divmod(num_layers, pp)
    centre = (pp - 1) / 2
    order = sorted(range(pp), key=lambda s: (abs(s - centre), s))
    sizes = [base] * pp
    for s in order[:extra]:
        sizes[s] += 1
    return tuple(sizes)


def divisors(n: int) -> list:
    """Positive divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_config(
    model: ModelSpec,
    cluster: ClusterSpec | int,
    config: ParallelConfig,
    layer_partition: Sequence[int] | None = None,
) -> list:
    """Raise ``PlanError`` if ``config`` cannot run ``model`` on ``cluster``; else return notes.

    The notes (strings) flag what is allowed but costs something: KV heads replicated when tp
    exceeds them, a TP group that spans nodes or cards, an uneven layer split.
    """
    problem = first_violation(model, cluster, config, layer_partition)
    if problem is not None:
        world = cluster if isinstance(cluster, int) else cluster.world_size
        alternatives = nearest_first(feasible_configs(model, cluster), config)
        shown = ", ".join(
            f"(tp={c.tp}, pp={c.pp}, dp={c.dp}, ep={c.ep})" for c in alternatives[:32]
        )
        more = f" and {len(alternatives) - 32} more" if len(alternatives) > 32 else ""
        raise PlanError(
            f"{config} is infeasible for {model.name} on {world} devices: {problem}. "
            f"Configurations that would work: {shown or 'none'}{more}"
        )
    return config_notes(model, cluster, config, layer_partition)


def nearest_first(configs: list, wanted: ParallelConfig) -> list:
    """``configs`` ordered by how few degrees differ from ``wanted``, then by how far."""

    def distance(c: ParallelConfig) -> tuple:
        pairs = [(c.tp, wanted.tp), (c.pp, wanted.pp), (c.dp, wanted.dp), (c.ep, wanted.ep)]
        return (
            sum(a != b for a, b in pairs),
            sum(abs(math.log2(a) - math.log2(b)) for a, b in pairs),
            c.tp,
            c.pp,
            c.ep,
        )

    return sorted(configs, key=distance)


def first_violation(
    model: ModelSpec,
    cluster: ClusterSpec | int,
    config: ParallelConfig,
    layer_partition: Sequence[int] | None = None,
) -> str | None:
    """The first constraint ``config`` breaks, as a sentence, or None when it is feasible."""
    tp, pp, dp, ep = config.tp, config.pp, config.dp, config.ep
    world = cluster if isinstance(cluster, int) else cluster.world_size
    if config.world_size != world:
        return (
            f"tp*pp*dp = {tp}*{pp}*{dp} = {config.world_size} must equal the number of "
            f"devices ({world})"
        )
    if not isinstance(cluster, int):
        allowed = cluster.unit.allowed_tp_sizes
        if allowed is not None and tp not in allowed:
            return f"tp={tp} is not a TP size {cluster.device.name} allows ({list(allowed)})"
    if model.num_heads % tp:
        return f"tp={tp} must divide the {model.num_heads} attention heads"
    kv = model.num_kv_heads
    if tp > kv and tp % kv:
        return (
            f"tp={tp} exceeds the {kv} KV heads, so it must be a multiple of them "
            f"(each KV head replicated tp/kv times)"
        )
    if tp <= kv and kv % tp:
        return f"tp={tp} must divide the {kv} KV heads (kv % tp == 0)"
    if pp > model.num_layers:
        return f"pp={pp} exceeds the {model.num_layers} layers"
    if layer_partition is not None:
        parts = list(layer_partition)
        if len(parts) != pp or any(int(p) < 1 for p in parts) or sum(parts) != model.num_layers:
            return (
                f"layer partition {parts} must have pp={pp} entries >= 1 summing to "
                f"{model.num_layers} layers"
            )
    if ep > 1:
        if not model.is_moe:
            return f"ep={ep} needs an MoE model; {model.name} has no experts"
        if (tp * dp) % ep:
            return (
                f"ep={ep} must divide tp*dp = {tp * dp} (EP is laid over a stage's TP x DP ranks)"
            )
        if model.num_experts % ep:
            return f"ep={ep} must divide the {model.num_experts} experts"
    return None


def config_notes(
    model: ModelSpec,
    cluster: ClusterSpec | int,
    config: ParallelConfig,
    layer_partition: Sequence[int] | None = None,
) -> list:
    """What the feasible ``config`` costs beyond the plain split (see ``check_config``)."""
    notes = []
    kv = model.num_kv_heads
    if config.tp > kv:
        copies = config.tp // kv
        per_copy = 2 * model.num_layers * model.head_dim * model.weight_bytes_per_element
        notes.append(
            f"KV heads replicated: tp={config.tp} > {kv} KV heads, so every KV head "
            f"(its k_proj/v_proj rows and its KV cache) is stored {copies} times; "
            f"a rank holds 1 KV head, KV cache {per_copy:.0f} B/token/rank for the "
            f"whole model depth, the same as at tp={kv}"
        )
    if not isinstance(cluster, int):
        per_node = cluster.ranks_per_node
        if config.tp > 1 and (config.tp > per_node or per_node % config.tp):
            notes.append(
                f"TP group spans nodes: tp={config.tp} with {per_node} devices per "
                f"node puts all-reduces on the inter-node network "
                f"({cluster.inter_node_bandwidth / 1e9:.0f} GB/s per device)"
            )
        per_card = cluster.ranks_per_card
        if per_card > 1 and config.tp > 1 and (config.tp > per_card or per_card % config.tp):
            notes.append(f"TP group spans cards: tp={config.tp} with {per_card} PEs per card")
    parts = (
        tuple(layer_partition)
        if layer_partition is not None
        else default_layer_partition(model.num_layers, config.pp)
    )
    if len(set(parts)) > 1:
        notes.append(f"uneven layer split over {config.pp} stages: {list(parts)}")
    return notes


def feasible_configs(model: ModelSpec, cluster: ClusterSpec | int) -> list:
    """Every feasible (tp, pp, dp, ep) for ``model`` on ``cluster``, tp-major order."""
    world = cluster if isinstance(cluster, int) else cluster.world_size
    out = []
    for tp in divisors(world):
        for pp in divisors(world // tp):
            dp = world // (tp * pp)
            for ep in divisors(tp * dp):
                config = ParallelConfig(tp, pp, dp, ep)
                if first_violation(model, cluster, config) is None:
                    out.append(config)
    return out

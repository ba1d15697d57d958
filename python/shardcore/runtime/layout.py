"""What one rank holds and whom it talks to: the runtime's view of a plan.

Vocabulary (as in shardcore.plan): tp/pp/dp/ep are the parallel degrees, a rank's coordinates
are its index on each axis, a stage is one pipeline step's layers, a shard is the part of a
tensor a rank holds. Ranges are half-open ``(begin, end)`` pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .config import ModelConfig

Range = Tuple[int, int]


@dataclass(frozen=True)
class RankLayout:
    """One rank's coordinates, layers, weight shards and groups."""

    rank: int
    world_size: int
    tp: int
    pp: int
    dp: int
    ep: int
    tp_index: int
    pp_index: int
    dp_index: int
    ep_index: int
    layers: Tuple[int, ...]
    heads: Range  # query heads held
    kv_heads: Range  # key/value heads held (copies of one head when tp > kv heads)
    intermediate: Range  # dense SwiGLU columns held
    experts: Tuple[int, ...]  # experts held
    expert_intermediate: Range  # columns of each held expert's SwiGLU
    tp_group: Tuple[int, ...]  # world ranks of this rank's TP group, in TP order
    ep_group: Tuple[int, ...]  # world ranks of this rank's EP group, in EP order
    expert_owner: Tuple[int, ...]  # expert -> EP index of the rank in ep_group holding it
    prev_stage_rank: int  # world rank sending this rank its activations, -1 on the first stage
    next_stage_rank: int  # world rank receiving this rank's activations, -1 on the last stage
    first_stage_rank: int  # the rank of the first stage with this rank's dp and tp indices
    last_stage_rank: int  # the rank of the last stage with this rank's dp and tp indices

    @property
    def is_first_stage(self) -> bool:
        return self.pp_index == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_index == self.pp - 1


def split_even(n: int, parts: int) -> Tuple[Range, ...]:
    """``n`` items in ``parts`` contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(n, parts)
    out, begin = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((begin, begin + size))
        begin += size
    return tuple(out)


def world_rank(tp_index: int, pp_index: int, dp_index: int, tp: int, pp: int) -> int:
    """The rank at these coordinates: TP innermost, then PP, then DP."""
    return (dp_index * pp + pp_index) * tp + tp_index


def check_degrees(config: ModelConfig, tp: int, pp: int, dp: int, ep: int) -> None:
    """Raise ValueError naming the first constraint (tp, pp, dp, ep) break for this model."""
    for name, value in (("tp", tp), ("pp", pp), ("dp", dp), ("ep", ep)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.num_heads % tp:
        raise ValueError(f"tp={tp} does not divide the {config.num_heads} attention heads")
    kv = config.num_kv_heads
    if tp <= kv and kv % tp:
        raise ValueError(f"tp={tp} does not divide the {kv} KV heads")
    if tp > kv and tp % kv:
        raise ValueError(f"tp={tp} exceeds the {kv} KV heads but is not a multiple of them")
    if config.intermediate_size % tp:
        raise ValueError(f"tp={tp} does not divide intermediate_size={config.intermediate_size}")
    if pp > config.num_layers:
        raise ValueError(f"pp={pp} exceeds the {config.num_layers} layers")
    if ep > 1:
        if not config.is_moe:
            raise ValueError(f"ep={ep} but the model has no experts")
        if (tp * dp) % ep:
            raise ValueError(f"ep={ep} must divide tp*dp={tp * dp}: EP is laid over the TP x DP "
                             "ranks of a stage")
    if config.is_moe:
        if config.num_experts % ep:
            raise ValueError(f"ep={ep} does not divide the {config.num_experts} experts")
        if ep == 1 and config.expert_intermediate_size % tp:
            raise ValueError(f"tp={tp} does not divide moe_intermediate_size="
                             f"{config.expert_intermediate_size}")


def build_layouts(config: ModelConfig, tp: int = 1, pp: int = 1, dp: int = 1, ep: int = 1,
                  stage_layers: Tuple[int, ...] | None = None) -> Tuple[RankLayout, ...]:
    """Every rank's layout for these degrees (world size tp*pp*dp)."""
    check_degrees(config, tp, pp, dp, ep)
    if stage_layers is None:
        stage_layers = tuple(e - b for b, e in split_even(config.num_layers, pp))
    if len(stage_layers) != pp or sum(stage_layers) != config.num_layers or min(stage_layers) < 1:
        raise ValueError(f"stage_layers {stage_layers} must be {pp} positive counts adding up to "
                         f"{config.num_layers}")
    bounds = [sum(stage_layers[:i]) for i in range(pp + 1)]
    g = config.kv_group
    heads_per_rank = config.num_heads // tp
    inter = split_even(config.intermediate_size, tp)
    world = tp * pp * dp
    layouts = []
    for rank in range(world):
        tp_i = rank % tp
        pp_i = (rank // tp) % pp
        dp_i = rank // (tp * pp)
        h0 = tp_i * heads_per_rank
        h1 = h0 + heads_per_rank
        kv = (h0 // g, (h1 - 1) // g + 1)
        # EP groups: consecutive runs of ep ranks among the stage's tp*dp ranks, in (dp, tp) order.
        stage_pos = dp_i * tp + tp_i
        group_id, ep_i = divmod(stage_pos, ep)
        ep_group = tuple(world_rank(p % tp, pp_i, p // tp, tp, pp)
                         for p in range(group_id * ep, group_id * ep + ep))
        if config.is_moe:
            per = config.num_experts // ep
            experts = tuple(range(ep_i * per, (ep_i + 1) * per))
            owner = tuple(e // per for e in range(config.num_experts))
            e_inter = ((0, config.expert_intermediate_size) if ep > 1
                       else split_even(config.expert_intermediate_size, tp)[tp_i])
        else:
            experts, owner, e_inter = (), (), (0, 0)
        layouts.append(RankLayout(
            rank=rank, world_size=world, tp=tp, pp=pp, dp=dp, ep=ep,
            tp_index=tp_i, pp_index=pp_i, dp_index=dp_i, ep_index=ep_i,
            layers=tuple(range(bounds[pp_i], bounds[pp_i + 1])),
            heads=(h0, h1), kv_heads=kv, intermediate=inter[tp_i],
            experts=experts, expert_intermediate=e_inter,
            tp_group=tuple(world_rank(t, pp_i, dp_i, tp, pp) for t in range(tp)),
            ep_group=ep_group, expert_owner=owner,
            prev_stage_rank=world_rank(tp_i, pp_i - 1, dp_i, tp, pp) if pp_i > 0 else -1,
            next_stage_rank=world_rank(tp_i, pp_i + 1, dp_i, tp, pp) if pp_i < pp - 1 else -1,
            first_stage_rank=world_rank(tp_i, 0, dp_i, tp, pp),
            last_stage_rank=world_rank(tp_i, pp - 1, dp_i, tp, pp),
        ))
    return tuple(layouts)

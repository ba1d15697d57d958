"""What one rank holds and whom it talks to: the runtime's reading of a ``shardcore.plan.Plan``.

The plan decides everything (rank order, layers per stage, head/ffn/vocab ranges, KV heads
replicated when tp exceeds them, expert placement, EP groups); this module only turns a
``RankPlan`` into the world ranks a rank exchanges data with. Ranges are half-open pairs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .config import ModelConfig

Range = tuple[int, int]


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
    layers: tuple[int, ...]
    heads: Range  # query heads held
    kv_heads: Range  # key/value heads held (one head's copy when tp > kv heads)
    intermediate: Range  # dense SwiGLU columns held
    experts: tuple[int, ...]  # experts held
    expert_intermediate: Range  # columns of each held expert's SwiGLU
    vocab: Range  # embedding / LM head rows held (first / last stage)
    has_embedding: bool
    has_lm_head: bool
    tp_group: tuple[int, ...]  # world ranks of this rank's TP group, in TP order
    ep_group: tuple[int, ...]  # world ranks of this rank's EP group, in EP order
    expert_owner: tuple[int, ...]  # expert -> EP index of the rank of ep_group holding it
    prev_stage_rank: int  # the rank sending this one its activations, -1 on the first stage
    next_stage_rank: int  # the rank receiving this one's activations, -1 on the last stage
    first_stage_rank: int  # first-stage rank with this rank's dp and tp indices
    last_stage_rank: int  # last-stage rank with this rank's dp and tp indices

    @property
    def is_first_stage(self) -> bool:
        return self.pp_index == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_index == self.pp - 1


def split_even(n: int, parts: int) -> tuple[Range, ...]:
    """``n`` items in ``parts`` contiguous ranges, the first ``n % parts`` one longer."""
    base, extra = divmod(n, parts)
    out, begin = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((begin, begin + size))
        begin += size
    return tuple(out)


def host_plan(
    checkpoint_dir: str, tp: int = 1, pp: int = 1, dp: int = 1, ep: int = 1, dtype: str = "float32"
):
    """The plan of a run of ``checkpoint_dir`` on tp*pp*dp worker processes of this host."""
    from ..plan import ClusterSpec, DeviceSpec, ModelSpec, make_plan

    model = dataclasses.replace(ModelSpec.from_hf_config(checkpoint_dir), dtype=dtype)
    world = tp * pp * dp
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(world, 1)
    except (ValueError, OSError, AttributeError):
        memory = 1 << 30
    # One worker process per planning device; its compute and bandwidth figures only matter to
    # the planner's search, which a fixed run does not use.
    device = DeviceSpec(
        name="host-process", memory_bytes=int(memory), peak_flops=1e11, memory_bandwidth=1e10
    )
    cluster = ClusterSpec(device=device, nodes=1, devices_per_node=world)
    return make_plan(model, cluster, tp=tp, pp=pp, dp=dp, ep=ep)


def check_plan_matches(config: ModelConfig, plan) -> None:
    """Raise ValueError when ``plan`` was made for a model other than ``config``'s."""
    m = plan.model
    pairs = [
        ("hidden_size", m.hidden_size, config.hidden_size),
        ("num_layers", m.num_layers, config.num_layers),
        ("num_heads", m.num_heads, config.num_heads),
        ("num_kv_heads", m.num_kv_heads, config.num_kv_heads),
        ("head_dim", m.head_dim, config.head_dim),
        ("vocab_size", m.vocab_size, config.vocab_size),
        ("num_experts", m.num_experts, config.num_experts),
        (
            "moe layers",
            tuple(i for i in range(m.num_layers) if m.is_moe_layer(i)),
            config.moe_layers,
        ),
    ]
    for name, planned, actual in pairs:
        if planned != actual:
            raise ValueError(
                f"the plan is for another model: its {name} is {planned}, the "
                f"checkpoint's is {actual}"
            )
    if m.shared_ffn_size:
        raise ValueError("shared experts are not supported by the runtime")


def layouts_from_plan(config: ModelConfig, plan) -> tuple[RankLayout, ...]:
    """Every rank's RankLayout, as ``plan`` places it."""
    check_plan_matches(config, plan)
    c = plan.config
    per = config.num_experts // c.ep if config.is_moe else 0
    out = []
    for r in plan.ranks:
        prev, nxt = plan.pp_peers(r.rank)
        out.append(
            RankLayout(
                rank=r.rank,
                world_size=plan.world_size,
                tp=c.tp,
                pp=c.pp,
                dp=c.dp,
                ep=c.ep,
                tp_index=r.tp,
                pp_index=r.pp,
                dp_index=r.dp,
                ep_index=r.ep,
                layers=tuple(range(*r.layers)),
                heads=tuple(r.q_heads),
                kv_heads=tuple(r.kv_heads),
                intermediate=tuple(r.ffn),
                experts=tuple(range(*r.experts)) if config.is_moe else (),
                expert_intermediate=tuple(r.expert_ffn),
                vocab=tuple(r.vocab),
                has_embedding=r.has_embedding,
                has_lm_head=r.has_lm_head,
                tp_group=plan.tp_group(r.rank),
                ep_group=plan.ep_group(r.rank),
                expert_owner=tuple(e // per for e in range(config.num_experts)) if per else (),
                prev_stage_rank=-1 if prev is None else prev,
                next_stage_rank=-1 if nxt is None else nxt,
                first_stage_rank=c.rank(r.dp, 0, r.tp),
                last_stage_rank=c.rank(r.dp, c.pp - 1, r.tp),
            )
        )
    return tuple(out)


def build_layouts(
    config: ModelConfig,
    checkpoint_dir: str,
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    ep: int = 1,
    dtype: str = "float32",
) -> tuple[RankLayout, ...]:
    """Layouts of the host plan for these degrees (raises PlanError when infeasible)."""
    return layouts_from_plan(config, host_plan(checkpoint_dir, tp, pp, dp, ep, dtype))

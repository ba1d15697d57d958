"""ParallelConfig validation: every rule, and PlanError naming it and listing alternatives."""

import re

import pytest

from shardcore.errors import PlanError
from shardcore.plan import (
    MODEL_PRESETS,
    ClusterSpec,
    ModelSpec,
    ParallelConfig,
    default_layer_partition,
    feasible_configs,
    make_plan,
)

QWEN = MODEL_PRESETS["qwen3-235b-a22b"]
H100x8 = ClusterSpec.make("h100-80gb", 8)


def alternatives(msg):
    return set(re.findall(r"\(tp=(\d+), pp=(\d+), dp=(\d+), ep=(\d+)\)", msg))


@pytest.mark.parametrize(
    "kw, constraint, near",
    [
        (
            dict(tp=4, pp=1, dp=1),
            r"tp\*pp\*dp = 4\*1\*1 = 4 must equal the number of devices \(8\)",
            ("4", "1", "2", "1"),
        ),
        (dict(tp=8, pp=2, dp=1), r"= 16 must equal", ("8", "1", "1", "1")),
        (dict(tp=1, pp=1, dp=8, ep=3), r"ep=3 must divide tp\*dp = 8", ("1", "1", "8", "4")),
    ],
)
def test_rejections_name_constraint_and_list_alternatives(kw, constraint, near):
    with pytest.raises(PlanError, match=constraint) as info:
        make_plan(QWEN, H100x8, ParallelConfig(**kw))
    alts = alternatives(str(info.value))
    # every alternative listed is valid, and the nearest valid one is among them
    assert near in alts
    for tp, pp, dp, ep in alts:
        make_plan(QWEN, H100x8, ParallelConfig(int(tp), int(pp), int(dp), int(ep)))


def small(heads=12, kv=4, layers=5, experts=0):
    return ModelSpec(
        name="small",
        hidden_size=48,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=4,
        ffn_size=20,
        vocab_size=50,
        num_experts=experts,
        experts_per_token=2 if experts else 0,
        expert_ffn_size=8 if experts else 0,
    )


def test_head_rules():
    m = small(heads=12, kv=4)
    with pytest.raises(PlanError, match="tp=8 must divide the 12 attention heads"):
        make_plan(m, ClusterSpec.make("h100-80gb", 8), ParallelConfig(tp=8))
    with pytest.raises(PlanError, match="tp=6 exceeds the 4 KV heads"):
        make_plan(m, ClusterSpec.make("h100-80gb", 6), ParallelConfig(tp=6))
    m2 = small(heads=12, kv=6)
    with pytest.raises(PlanError, match=r"kv % tp == 0"):
        make_plan(m2, ClusterSpec.make("h100-80gb", 4), ParallelConfig(tp=4))
    # tp=12 > 4 KV heads and a multiple of them: valid, replicated 3x, and said so
    plan = make_plan(m, ClusterSpec.make("h100-80gb", 12), ParallelConfig(tp=12))
    assert any("replicated" in n and "3 times" in n for n in plan.notes)
    assert [r.kv_heads for r in plan.ranks] == [(i // 3, i // 3 + 1) for i in range(12)]


def test_pp_and_layer_partitions():
    assert default_layer_partition(94, 4) == (23, 24, 24, 23)
    assert default_layer_partition(10, 3) == (3, 4, 3)
    assert default_layer_partition(8, 4) == (2, 2, 2, 2)
    m = small(layers=5)
    with pytest.raises(PlanError, match="pp=6 exceeds the 5 layers"):
        make_plan(m, ClusterSpec.make("h100-80gb", 6), ParallelConfig(pp=6))
    plan = make_plan(
        m, ClusterSpec.make("h100-80gb", 2), ParallelConfig(pp=2), layer_partition=[4, 1]
    )
    assert [r.layers for r in plan.ranks] == [(0, 4), (4, 5)]
    with pytest.raises(PlanError, match="layer partition"):
        make_plan(m, ClusterSpec.make("h100-80gb", 2), ParallelConfig(pp=2), layer_partition=[3, 3])
    qplan = make_plan(QWEN, ClusterSpec.make("h100-80gb", 16, 8), ParallelConfig(tp=4, pp=4))
    assert qplan.layer_partition == (23, 24, 24, 23)
    assert [qplan.ranks[4 * s].layers for s in range(4)] == [(0, 23), (23, 47), (47, 71), (71, 94)]


def test_ep_rules():
    m = small(experts=6)
    cl = ClusterSpec.make("h100-80gb", 4)
    with pytest.raises(PlanError, match="ep=4 must divide the 6 experts"):
        make_plan(m, cl, ParallelConfig(tp=2, dp=2, ep=4))
    plan = make_plan(m, ClusterSpec.make("h100-80gb", 6), ParallelConfig(tp=1, dp=6, ep=3))
    assert [r.experts for r in plan.ranks] == [(0, 2), (2, 4), (4, 6)] * 2
    with pytest.raises(PlanError, match="needs an MoE model"):
        make_plan(small(), cl, ParallelConfig(tp=2, dp=2, ep=2))


def test_tp_spanning_nodes_is_flagged():
    cl = ClusterSpec.make("h100-80gb", 16, 8)
    plan = make_plan(QWEN, cl, ParallelConfig(tp=16))
    assert any(n.startswith("TP group spans nodes") for n in plan.notes)
    plan = make_plan(QWEN, cl, ParallelConfig(tp=8, pp=2))
    assert not any(n.startswith("TP group spans nodes") for n in plan.notes)
    assert {r.node for r in plan.ranks if r.pp == 0} == {0}


def test_rngd_32_pes():
    cl = ClusterSpec.make("rngd", 4)
    assert cl.world_size == 32
    m = MODEL_PRESETS["llama-3-70b"]
    a = make_plan(m, cl, ParallelConfig(tp=8, pp=4, dp=1))
    assert a.world_size == 32
    # The issue also names tp=4/pp=2/dp=2, whose product is 16, not 32: it is valid on 2 cards
    # (16 PEs) and rejected on 4 cards, where tp=4/pp=4/dp=2 fills the 32 PEs.
    b = make_plan(m, ClusterSpec.make("rngd", 2), ParallelConfig(tp=4, pp=2, dp=2))
    assert b.world_size == 16
    make_plan(m, cl, ParallelConfig(tp=4, pp=4, dp=2))
    with pytest.raises(PlanError, match=r"4\*2\*2 = 16 must equal the number of devices \(32\)"):
        make_plan(m, cl, ParallelConfig(tp=4, pp=2, dp=2))
    # TP groups stay on one card (8 PEs)
    assert all(len({a.ranks[r].card for r in a.tp_group(i)}) == 1 for i in range(32))
    with pytest.raises(PlanError, match="must equal the number of devices \\(32\\)") as info:
        make_plan(m, cl, ParallelConfig(tp=8, pp=2, dp=1))
    alts = alternatives(str(info.value))
    assert ("8", "4", "1", "1") in alts and ("4", "4", "2", "1") in alts
    assert all(int(t) * int(p) * int(d) == 32 for t, p, d, _ in alts)
    with pytest.raises(PlanError, match="tp=16 is not a TP size"):
        make_plan(m, cl, ParallelConfig(tp=16, pp=2))


def test_rank_layout_and_groups():
    m = small(experts=6)
    cl = ClusterSpec.make("h100-80gb", 8)
    plan = make_plan(m, cl, ParallelConfig(tp=2, pp=2, dp=2, ep=2))
    c = plan.config
    for r in plan.ranks:
        assert c.rank(r.dp, r.pp, r.tp) == r.rank
        assert plan.tp_group(r.rank) == tuple(c.rank(r.dp, r.pp, t) for t in range(2))
        assert r.rank in plan.ep_group(r.rank)
    assert plan.ep_group(0) == (0, 1) and plan.ep_group(6) == (6, 7)
    assert plan.pp_peers(1) == (None, 5) and plan.pp_peers(5) == (1, None)
    assert plan.dp_group(0) == (0, 2)


def test_feasible_configs_all_valid():
    for m in MODEL_PRESETS.values():
        cfgs = feasible_configs(m, ClusterSpec.make("h100-80gb", 16, 8))
        assert cfgs and all(c.world_size == 16 for c in cfgs)
        assert ParallelConfig(1, 1, 16, 1) in cfgs


def test_runtime_helpers():
    m = small(experts=6)
    plan = make_plan(m, ClusterSpec.make("h100-80gb", 12), ParallelConfig(tp=2, pp=2, dp=3, ep=3))
    # stage 1 is ranks 6..11; EP groups (6, 7, 8) and (9, 10, 11); 2 experts per EP rank
    assert plan.ep_group(10) == (9, 10, 11)
    assert [plan.expert_owner(10, e) for e in range(6)] == [9, 9, 10, 10, 11, 11]
    for r in plan.ranks:
        for e in range(6):
            owner = plan.ranks[plan.expert_owner(r.rank, e)]
            assert owner.experts[0] <= e < owner.experts[1] and owner.pp == r.pp
    assert plan.owned_tokens(7, 5) == (3, 5) and plan.owned_tokens(6, 5) == (0, 3)
    assert plan.replica_batches(7) == [3, 2, 2]
    assert [plan.stage_of_layer(i) for i in range(5)] == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="expert 6"):
        plan.expert_owner(0, 6)

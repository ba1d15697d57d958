"""auto_plan: the 2 nodes x 8 H100 search, explanations, TP across nodes never preferred."""

import pytest

from shardcore.errors import PlanError
from shardcore.plan import MODEL_PRESETS, ClusterSpec, auto_plan, feasible_configs

TWO_NODES = ClusterSpec.make("h100-80gb", 16, 8)
QWEN = MODEL_PRESETS["qwen3-235b-a22b"]


def key(c):
    return (c.config.tp, c.config.pp, c.config.dp, c.config.ep)


def test_throughput_search_qwen3_235b_two_nodes():
    res = auto_plan(QWEN, TWO_NODES, "throughput")
    fitting = [c for c in res.candidates if c.fits]
    assert len(res.candidates) == len(feasible_configs(QWEN, TWO_NODES))
    order = [key(c) for c in fitting]
    # TP=4 inside a node, PP=4 across the nodes: at or near the top
    assert order.index((4, 4, 1, 1)) < 5
    # among TP/PP/DP configurations (no EP: the seed's setting) it wins outright
    no_ep = auto_plan(QWEN, TWO_NODES, "throughput", ep=1)
    assert key(no_ep.best) == (4, 4, 1, 1)
    assert "wins on throughput" in no_ep.why()
    best = no_ep.best
    assert best.plan.ranks[4 * 4 - 1].node == 1 and best.plan.ranks[0].node == 0
    # why TP=8 loses: KV heads stored twice, and fewer tokens per weight read
    for c in no_ep.candidates:
        if c.config.tp == 8 and c.fits:
            assert c.throughput < best.throughput
            assert "KV head 2x" in c.why and "tok/s" in c.why
    tp8pp2 = next(c for c in no_ep.candidates if key(c) == (8, 2, 1, 1))
    # one (replicated) KV head per rank either way; 47 layers per stage vs at most 24
    assert tp8pp2.kv_per_token == 47 * 2 * 1 * 128 * 2
    assert best.kv_per_token == 24 * 2 * 1 * 128 * 2
    assert tp8pp2.sequences < best.sequences


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
@pytest.mark.parametrize("objective", ["throughput", "latency"])
def test_tp_spanning_nodes_never_preferred(name, objective):
    res = auto_plan(MODEL_PRESETS[name], TWO_NODES, objective)
    fitting = [c for c in res.candidates if c.fits]
    assert not res.best.tp_spans_nodes
    index = {key(c): i for i, c in enumerate(fitting)}
    spanning = [c for c in fitting if c.tp_spans_nodes]
    assert spanning
    for c in spanning:
        assert "spans nodes" in c.why
        # keeping TP inside a node and crossing nodes with PP instead always ranks higher
        tp, pp, dp, ep = key(c)
        alt = (tp // 2, pp * 2, dp, ep if (tp // 2 * dp) % ep == 0 else 1)
        assert alt in index and index[alt] < index[key(c)]
        assert 2 * len(fitting) // 3 <= index[key(c)]  # and in the bottom third


def test_candidates_show_their_numbers():
    res = auto_plan(MODEL_PRESETS["llama-3-70b"], ClusterSpec.make("h100-80gb", 8), "latency")
    for c in res.candidates:
        row = c.row()
        assert set(row) >= {"tp", "pp", "dp", "ep", "tok/s", "latency ms", "KV B/tok/rank"}
        if c.fits:
            assert c.latency > 0 and c.throughput > 0 and c.stage.step > 0
    lat = [c.latency for c in res.candidates if c.fits]
    assert lat == sorted(lat)
    # latency: one sequence cannot use DP, and the weights of 70B need at least 2 GPUs' memory
    assert res.best.config.dp == 1


def test_nothing_fits():
    with pytest.raises(PlanError, match="no configuration"):
        auto_plan(QWEN, ClusterSpec.make("h100-80gb", 2), "throughput")
    with pytest.raises(ValueError, match="objective"):
        auto_plan(QWEN, TWO_NODES, "cost")

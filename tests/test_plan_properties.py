"""Property tests: for random valid specs, every weight element is held by exactly the right
number of ranks, and shard sizes add up."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shardcore.plan import ClusterSpec, ModelSpec, feasible_configs, make_plan, weight_tensors


@st.composite
def model_and_config(draw):
    kv = draw(st.sampled_from([1, 2, 3, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 4]))
    experts = draw(st.sampled_from([0, 0, 2, 4, 6]))
    layers = draw(st.integers(1, 5))
    model = ModelSpec(
        name="random",
        hidden_size=draw(st.integers(2, 9)),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=draw(st.integers(1, 4)),
        ffn_size=draw(st.integers(1, 13)),
        vocab_size=draw(st.integers(2, 23)),
        num_experts=experts,
        experts_per_token=draw(st.integers(1, experts)) if experts else 0,
        expert_ffn_size=draw(st.integers(1, 7)) if experts else 0,
        shared_experts=draw(st.integers(0, 1)) if experts else 0,
        decoder_sparse_step=draw(st.integers(1, 2)),
        mlp_only_layers=tuple(draw(st.sets(st.integers(0, layers - 1), max_size=2))),
        tie_embeddings=draw(st.booleans()),
        qk_norm=draw(st.booleans()),
        dtype="float32",
    )
    world = draw(st.integers(1, 8))
    per_node = draw(st.sampled_from([d for d in range(1, world + 1) if world % d == 0]))
    cluster = ClusterSpec.make("h100-80gb", world, per_node)
    configs = feasible_configs(model, cluster)
    config = draw(st.sampled_from(configs))  # tp=1, pp=1, dp=world is always feasible
    return model, cluster, config


def expected_owners(name, model, c):
    """Ranks that must hold each element of ``name``, written from the documented rules."""
    if ".mlp.experts." in name and c.ep > 1:
        return c.tp * c.dp // c.ep  # whole experts, spread over a stage's EP groups
    if name.endswith(("norm.weight", "mlp.gate.weight")):
        return c.tp * c.dp  # replicated on every rank of the stage
    if name.endswith(("k_proj.weight", "v_proj.weight")):
        return c.dp * max(1, c.tp // model.num_kv_heads)
    if name == "model.embed_tokens.weight" and model.tie_embeddings and c.pp > 1:
        return 2 * c.dp  # first stage, and last stage as the LM head
    return c.dp  # once per TP x PP cell of every replica


@settings(max_examples=150, deadline=None)
@given(model_and_config())
def test_every_element_owned_the_right_number_of_times(args):
    model, cluster, config = args
    plan = make_plan(model, cluster, config)
    shapes = weight_tensors(model)
    counts = {name: np.zeros(shape, dtype=np.int64) for name, shape in shapes.items()}
    total_held = 0
    for r in plan.ranks:
        shards = plan.weight_shards(r.rank)
        held = 0
        for name, box in shards.items():
            assert len(box) == len(shapes[name])
            for (lo, hi), n in zip(box, shapes[name]):
                assert 0 <= lo <= hi <= n
            counts[name][tuple(slice(lo, hi) for lo, hi in box)] += 1
            held += int(np.prod([hi - lo for lo, hi in box]))
        assert held == plan.weight_elements(r.rank)  # closed form == sum of shards
        total_held += held
    expected_total = 0
    for name, count in counts.items():
        want = expected_owners(name, model, config)
        assert plan.replication(name) == want, name
        assert np.all(count == want), (name, np.unique(count))
        expected_total += want * count.size
    assert total_held == expected_total


@settings(max_examples=150, deadline=None)
@given(model_and_config())
def test_heads_layers_and_experts_line_up(args):
    model, cluster, config = args
    plan = make_plan(model, cluster, config)
    group = model.num_heads // model.num_kv_heads
    for r in plan.ranks:
        # the KV heads a rank holds are exactly those its query heads read
        used = {q // group for q in range(*r.q_heads)}
        assert used == set(range(*r.kv_heads))
    # layers: every replica's stages cover 0..L-1 once, in order
    for d in range(config.dp):
        for t in range(config.tp):
            spans = [plan.ranks[config.rank(d, s, t)].layers for s in range(config.pp)]
            assert spans[0][0] == 0 and spans[-1][1] == model.num_layers
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # uneven splits: first ranks one larger, sizes differ by at most one
    sizes = [r.ffn[1] - r.ffn[0] for r in plan.ranks if r.dp == 0 and r.pp == 0]
    assert sum(sizes) == model.ffn_size and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)

"""The traffic prediction against shardcore's real communicator.

A stand-in for the runtime makes exactly the collectives the traffic contract describes
(zeros instead of activations, real routing for EP) on worker processes; every rank's measured
bytes and calls must equal ``predict_traffic`` exactly. Skipped when the C++ core is not built.
"""

import math

import numpy as np
import pytest

from shardcore.plan import (
    ModelSpec,
    ParallelConfig,
    Plan,
    compare_traffic,
    make_plan,
    merge_traffic,
    predict_traffic,
    split_sizes,
)

pytest.importorskip("shardcore._core")
pytestmark = pytest.mark.timeout(120)


def fake_forward(comm, plan_json, prompt, steps, batch, micro, routing):
    """The collectives of a run, per the contract in shardcore.plan.traffic."""
    plan = Plan.from_json(plan_json)
    c, m = plan.config, plan.model
    me = plan.ranks[comm.rank]
    h = m.hidden_size
    tp_comm = comm.split(me.dp * c.pp + me.pp, key=me.tp)
    ep_comm = comm.split(me.pp * 1000 + me.ep_group, key=me.ep) if c.ep > 1 else None
    comms = [x for x in (comm, tp_comm, ep_comm) if x is not None]
    for x in comms:
        x.reset_traffic()
    prev, nxt = plan.pp_peers(comm.rank)
    first = c.rank(me.dp, 0, me.tp)
    last = c.rank(me.dp, c.pp - 1, me.tp)
    rows = plan.replica_batches(batch)[me.dp]
    per_ep_rank = m.num_experts // c.ep if m.num_experts else 1
    passes = [split_sizes(prompt, min(micro, prompt))] + [[1]] * steps
    for p, chunks in enumerate(passes):
        for j, length in enumerate(chunks):
            tokens = rows * length
            x = np.zeros((tokens, h), np.float32)
            if prev is not None:
                comm.recv(x, prev)
            if me.pp == 0 and c.tp > 1:
                tp_comm.all_reduce(x, algorithm="ring")
            for layer in range(*me.layers):
                if c.tp > 1:
                    tp_comm.all_reduce(x, algorithm="ring")
                if ep_comm is not None and m.is_moe_layer(layer):
                    lo, hi = plan.owned_tokens(comm.rank, tokens)
                    ids = routing[(p, j, layer, me.dp)][lo:hi]
                    counts = [0] * c.ep
                    for e in ids.ravel():
                        counts[int(e) // per_ep_rank] += 1
                    got, recv_counts = ep_comm.all_to_allv(
                        np.zeros((sum(counts), h), np.float32), counts
                    )
                    ep_comm.all_to_allv(np.zeros_like(got), recv_counts)
                if c.tp > 1:
                    tp_comm.all_reduce(x, algorithm="ring")
            if nxt is not None:
                comm.send(x, nxt)
            elif j == len(chunks) - 1 and c.tp > 1:
                tp_comm.all_gather(np.zeros((rows, math.ceil(m.vocab_size / c.tp)), np.float32))
        if c.pp > 1 and p < steps:
            ids = np.zeros(rows, np.int64)
            if me.pp == c.pp - 1:
                comm.send(ids, first)
            if me.pp == 0:
                comm.recv(ids, last)
    return merge_traffic(*(x.traffic() for x in comms))


def tiny(experts=0):
    return ModelSpec(
        name="tiny",
        hidden_size=13,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=4,
        ffn_size=10,
        vocab_size=29,
        num_experts=experts,
        experts_per_token=2 if experts else 0,
        expert_ffn_size=6 if experts else 0,
        dtype="float32",
    )


def routing_table(plan, prompt, steps, batch, micro, seed=0):
    rng = np.random.default_rng(seed)
    m, table = plan.model, {}
    chunks = split_sizes(prompt, min(micro, prompt))
    for p, lens in enumerate([chunks] + [[1]] * steps):
        for j, length in enumerate(lens):
            for layer in m.moe_layers:
                for d, rows in enumerate(plan.replica_batches(batch)):
                    table[(p, j, layer, d)] = np.array(
                        [
                            rng.choice(m.num_experts, m.experts_per_token, replace=False)
                            for _ in range(rows * length)
                        ],
                        dtype=np.int64,
                    ).reshape(-1, 2)
    return table


@pytest.mark.parametrize(
    "experts, cfg, prompt, steps, batch, micro",
    [
        (0, ParallelConfig(tp=2, pp=2), 5, 2, 3, 2),
        (0, ParallelConfig(tp=4), 3, 1, 1, 1),
        (4, ParallelConfig(tp=2, dp=2, ep=4), 4, 2, 3, 1),
        (4, ParallelConfig(tp=1, pp=2, dp=2, ep=2), 3, 1, 2, 3),
    ],
)
def test_prediction_equals_measured_traffic(experts, cfg, prompt, steps, batch, micro):
    import shardcore

    plan = make_plan(tiny(experts), cfg.world_size, cfg)
    routing = routing_table(plan, prompt, steps, batch, micro)
    measured = shardcore.launch(
        fake_forward,
        cfg.world_size,
        args=(plan.to_json(), prompt, steps, batch, micro, routing),
        timeout=100,
    )
    pred = predict_traffic(
        plan,
        prompt,
        steps,
        batch=batch,
        micro_batches=micro,
        expert_ids=lambda p, j, layer, d: routing[(p, j, layer, d)],
    )
    assert pred.exact
    assert compare_traffic(pred, measured) == []
    assert measured == pred.ranks

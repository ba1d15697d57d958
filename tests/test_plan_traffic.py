"""Traffic: the seed's per-token model, the ring byte rule (checked against a simulated ring),
and the per-rank prediction of a run."""

import numpy as np
import pytest

from shardcore.plan import (
    MODEL_PRESETS,
    ClusterSpec,
    ModelSpec,
    ParallelConfig,
    make_plan,
    predict_traffic,
    ring_all_reduce_recv,
    ring_all_reduce_sent,
    seed_ep_bytes,
    seed_pp_bytes,
    seed_tp_bytes,
    token_traffic,
)


def simulate_ring_all_reduce(inputs):
    """A ring all-reduce on real arrays: returns (results, elements sent per rank)."""
    n, S = len(inputs), inputs[0].size
    bounds = np.cumsum([0] + [S // n + (1 if i < S % n else 0) for i in range(n)])
    blk = lambda b: slice(bounds[b], bounds[b + 1])  # noqa: E731
    bufs = [x.astype(np.float64).copy() for x in inputs]
    sent = [0] * n
    for step in range(n - 1):  # reduce-scatter: rank i sends block (i - step) to i + 1
        msgs = [(i, (i - step) % n, bufs[i][blk((i - step) % n)].copy()) for i in range(n)]
        for i, b, data in msgs:
            sent[i] += data.size
            bufs[(i + 1) % n][blk(b)] += data
    for step in range(n - 1):  # all-gather: rank i sends block (i + 1 - step) to i + 1
        msgs = [(i, (i + 1 - step) % n, bufs[i][blk((i + 1 - step) % n)].copy()) for i in range(n)]
        for i, b, data in msgs:
            sent[i] += data.size
            bufs[(i + 1) % n][blk(b)] = data
    return bufs, sent


@pytest.mark.parametrize("n, S", [(2, 7), (3, 10), (4, 4), (5, 3), (8, 4099), (7, 1), (6, 0)])
def test_ring_rule_matches_a_simulated_ring(n, S):
    rng = np.random.default_rng(n * 1000 + S)
    inputs = [rng.standard_normal(S) for _ in range(n)]
    results, sent = simulate_ring_all_reduce(inputs)
    for r in results:
        np.testing.assert_allclose(r, np.sum(inputs, axis=0), rtol=1e-12)
    assert [ring_all_reduce_sent(S, n, i) for i in range(n)] == sent
    assert [ring_all_reduce_recv(S, n, i) for i in range(n)] == [
        sent[(i - 1) % n] for i in range(n)
    ]
    if S % n == 0:
        assert all(s == 2 * (n - 1) * S // n for s in sent)


def test_seed_formulas():
    for k, n, h in [(94, 8, 4096), (3, 4, 10), (80, 2, 8192)]:
        assert seed_tp_bytes(k, n, h) == pytest.approx(8 * k * (n - 1) * h / n)
        assert seed_tp_bytes(k, n, h, b=4) == pytest.approx(16 * k * (n - 1) * h / n)
    assert seed_pp_bytes(4, 4096) == 3 * 4096 * 2
    assert seed_ep_bytes(94, 8, 4096, 8) == 2 * 94 * 8 * 4096 * 2 / 8
    assert seed_ep_bytes(94, 8, 4096, 1) == 0


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
@pytest.mark.parametrize("n", [2, 4, 8])
def test_tp_exceeds_pp_for_every_preset(name, n):
    m = MODEL_PRESETS[name]
    h, k = m.hidden_size, m.num_layers
    tp = 8 * k * (n - 1) * h / n
    pp = (n - 1) * h * 2
    assert tp > pp
    ptp = make_plan(m, ClusterSpec.make("h100-80gb", n), ParallelConfig(tp=n))
    ppp = make_plan(m, ClusterSpec.make("h100-80gb", n), ParallelConfig(pp=n))
    assert token_traffic(ptp)["tp"] == pytest.approx(tp)
    assert token_traffic(ppp)["pp"] == pp
    assert token_traffic(ptp)["pp"] == 0 and token_traffic(ppp)["tp"] == 0
    per_rank = token_traffic(ptp)["per_rank"]
    assert all(r["tp"] == pytest.approx(tp) for r in per_rank)


def tiny(hidden=45, layers=5, experts=0, vocab=37):
    return ModelSpec(
        name="tiny",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=6,
        ffn_size=19,
        vocab_size=vocab,
        num_experts=experts,
        experts_per_token=2 if experts else 0,
        expert_ffn_size=7 if experts else 0,
        dtype="float32",
    )


def expected_dense(plan, prompt, steps, batch, micro, b):
    """Independent tally of the documented contract for a dense model."""
    c, m = plan.config, plan.model
    h = m.hidden_size
    out = [dict() for _ in range(c.world_size)]

    def add(rank, kind, sent, recv):
        e = out[rank].setdefault(kind, {"calls": 0, "sent": 0, "recv": 0})
        e["calls"] += 1
        e["sent"] += sent
        e["recv"] += recv

    nchunks = min(micro, prompt)
    chunk_lens = [prompt // nchunks + (1 if j < prompt % nchunks else 0) for j in range(nchunks)]
    batches = [batch // c.dp + (1 if d < batch % c.dp else 0) for d in range(c.dp)]
    passes = [chunk_lens] + [[1]] * steps
    vblock = -(-m.vocab_size // c.tp)
    for p, chunks in enumerate(passes):
        for j, length in enumerate(chunks):
            for r in plan.ranks:
                T = batches[r.dp] * length
                n = c.tp
                if n > 1:
                    calls = 2 * r.num_layers + (1 if r.pp == 0 else 0)
                    for _ in range(calls):
                        add(
                            r.rank,
                            "all_reduce",
                            ring_all_reduce_sent(T * h, n, r.tp) * b,
                            ring_all_reduce_recv(T * h, n, r.tp) * b,
                        )
                    if r.pp == c.pp - 1 and j == len(chunks) - 1:
                        add(
                            r.rank,
                            "all_gather",
                            (n - 1) * batches[r.dp] * vblock * b,
                            (n - 1) * batches[r.dp] * vblock * b,
                        )
                if r.pp < c.pp - 1:
                    add(r.rank, "send", T * h * b, 0)
                if r.pp > 0:
                    add(r.rank, "recv", 0, T * h * b)
        if c.pp > 1 and p < steps:
            for r in plan.ranks:
                if r.pp == c.pp - 1:
                    add(r.rank, "send", batches[r.dp] * 8, 0)
                if r.pp == 0:
                    add(r.rank, "recv", 0, batches[r.dp] * 8)
    return out


@pytest.mark.parametrize("tp, pp, dp", [(2, 2, 2), (4, 1, 1), (1, 4, 1), (2, 1, 3), (1, 1, 2)])
@pytest.mark.parametrize("prompt, steps, batch, micro", [(7, 3, 3, 2), (1, 0, 5, 4), (5, 2, 4, 9)])
def test_predict_traffic_dense(tp, pp, dp, prompt, steps, batch, micro):
    if batch < dp:
        pytest.skip("batch < dp is rejected")
    plan = make_plan(
        tiny(), ClusterSpec.make("h100-80gb", tp * pp * dp), ParallelConfig(tp, pp, dp)
    )
    got = predict_traffic(plan, prompt, steps, batch=batch, micro_batches=micro)
    assert got.exact
    assert got.ranks == expected_dense(plan, prompt, steps, batch, micro, 4)
    bf = predict_traffic(plan, prompt, steps, batch=batch, micro_batches=micro, dtype="bfloat16")
    for a, b in zip(bf.ranks, got.ranks):
        for kind in b:
            if kind in ("all_reduce", "all_gather"):
                assert a[kind]["sent"] * 2 == b[kind]["sent"]
    # every byte sent is received
    for kind in ("all_reduce", "all_gather"):
        assert got.total_sent(kind) == sum(r[kind]["recv"] for r in got.ranks if kind in r)
    assert got.total_sent("send") == sum(r["recv"]["recv"] for r in got.ranks if "recv" in r)


def test_predict_traffic_ep_with_routing():
    m = tiny(experts=4)
    plan = make_plan(m, ClusterSpec.make("h100-80gb", 4), ParallelConfig(tp=2, dp=2, ep=2))
    # EP group (0, 1) is replica 0's TP group; experts 0-1 on rank 0, 2-3 on rank 1
    assert plan.ep_group(0) == (0, 1) and plan.ranks[1].experts == (2, 4)
    rng = np.random.default_rng(5)
    table = {}

    def ids(pass_index, chunk, layer, dp):
        key = (pass_index, chunk, layer, dp)
        if key not in table:
            T = 3 * (4 if pass_index == 0 else 1)  # 3 sequences per replica
            table[key] = np.array([rng.choice(4, 2, replace=False) for _ in range(T)])
        return table[key]

    got = predict_traffic(plan, 4, 2, batch=6, dtype="float32", expert_ids=ids)
    assert got.exact
    h = m.hidden_size
    sent = [0, 0, 0, 0]
    for (_pass, _chunk, _layer, d), rows in table.items():
        T = len(rows)
        first = (T + 1) // 2  # TP rank 0 owns the first ceil(T/2) tokens
        own = [rows[:first], rows[first:]]
        to_other = [int(np.sum(own[0] >= 2)), int(np.sum(own[1] < 2))]
        for t in range(2):  # dispatch: own rows to the other rank; combine: the other's back
            sent[2 * d + t] += (to_other[t] + to_other[1 - t]) * h * 4
    assert [r["all_to_allv"]["sent"] for r in got.ranks] == sent
    assert [r["all_to_allv"]["calls"] for r in got.ranks] == [2 * 5 * 3] * 4
    est = predict_traffic(plan, 4, 2, batch=6, dtype="float32")
    assert not est.exact and est.notes


def test_predict_traffic_rejects_bad_runs():
    plan = make_plan(tiny(), ClusterSpec.make("h100-80gb", 2), ParallelConfig(dp=2))
    with pytest.raises(ValueError, match="batch=1 must be >= dp=2"):
        predict_traffic(plan, 4, 1, batch=1)
    with pytest.raises(ValueError, match="prefill_tokens"):
        predict_traffic(plan, 0, 1, batch=2)


def test_step_collectives_qwen_tp8():
    m = MODEL_PRESETS["qwen3-235b-a22b"]
    plan = make_plan(m, ClusterSpec.make("h100-80gb", 8), ParallelConfig(tp=8))
    cols = {c["what"]: c for c in plan.step_collectives(3)}
    assert cols["attention"]["calls"] == cols["mlp"]["calls"] == 94
    assert cols["attention"]["sent"] == 94 * 2 * 7 / 8 * 4096 * 2
    assert cols["embedding"]["group"] == list(range(8))
    assert cols["logits"]["sent"] == 7 * (151936 // 8) * 2


def test_compare_and_merge_traffic():
    from shardcore.plan import compare_traffic, merge_traffic

    plan = make_plan(tiny(), ClusterSpec.make("h100-80gb", 4), ParallelConfig(tp=2, pp=2))
    pred = predict_traffic(plan, 3, 2, batch=1, dtype="float32")
    # split each rank's prediction over two "communicators" the way Communicator.traffic()
    # reports them (every kind present, an algorithms entry, bookkeeping under "internal")
    kinds = ("all_reduce", "all_gather", "send", "recv", "all_to_allv", "barrier")
    measured = []
    for r in pred.ranks:
        tp_comm = {k: {"calls": 0, "sent": 0, "recv": 0, "algorithms": {}} for k in kinds}
        world = {k: {"calls": 0, "sent": 0, "recv": 0, "algorithms": {}} for k in kinds}
        world["internal"] = {"calls": 3, "sent": 64, "recv": 64, "algorithms": {}}
        for k, e in r.items():
            target = world if k in ("send", "recv") else tp_comm
            target[k] = dict(e, algorithms={"ring": e["calls"]})
        measured.append(merge_traffic(tp_comm, world))
    assert measured == pred.ranks
    assert compare_traffic(pred, measured) == []
    measured[3]["all_reduce"]["sent"] += 4
    assert compare_traffic(pred, measured) == [
        f"rank 3 all_reduce sent: predicted {pred.ranks[3]['all_reduce']['sent']}, "
        f"measured {pred.ranks[3]['all_reduce']['sent'] + 4}"
    ]
    assert compare_traffic(pred, measured[:2]) == ["2 ranks measured, 4 predicted"]

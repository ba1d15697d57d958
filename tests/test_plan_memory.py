"""Memory per rank: the seed's Qwen3-235B-A22B on 8 H100 arithmetic, KV replication, GB/GiB."""

from shardcore.plan import MODEL_PRESETS, ClusterSpec, ParallelConfig, make_plan

GB, GIB = 1e9, 2**30
QWEN = MODEL_PRESETS["qwen3-235b-a22b"]


def qwen_tp8_weight_bytes():
    """Per-rank bf16 bytes at TP=8, counted tensor family by tensor family."""
    h, layers, vocab = 4096, 94, 151936
    per_layer = (
        2 * h * 64 * 128 // 8  # q_proj, o_proj: 8 query heads per rank
        + 2 * h * 128  # k_proj, v_proj: one whole KV head per rank
        + 128 * 3 * h * 1536 // 8  # 128 experts, each split 8 ways
        + 128 * h  # router, replicated
        + 2 * h
        + 2 * 128
    )  # layer norms, q_norm, k_norm, replicated
    return 2 * (layers * per_layer + 2 * vocab * h // 8 + h)


def test_qwen3_235b_tp8_on_h100():
    plan = make_plan(QWEN, ClusterSpec.make("h100-80gb", 8), ParallelConfig(tp=8))
    expect = qwen_tp8_weight_bytes()
    for r in plan.ranks:
        mem = plan.memory(r.rank)
        assert mem.weights == expect
        assert abs(mem.weights / GB - 58.8) < 0.25  # the seed's 235 * 2 / 8
        assert abs(mem.left_after_weights_nominal / GB - 21.2) < 0.25  # 80 - 58.8
        # the real device: 81559 MiB = 79.65 GiB
        assert abs(mem.device_bytes / GIB - 79.65) < 0.01
        assert abs(mem.left_after_weights / GIB - (81559 * 2**20 - expect) / GIB) < 1e-9
    text = str(plan.memory(0))
    assert "79.65 GiB" in text and "GB" in text
    assert f"{(81559 * 2**20 - expect) / GIB:.2f} GiB" in text
    assert f"nominal: {(80e9 - expect) / GB:.2f} GB" in text
    # the seed's even split, for the record: 235.09e9 * 2 / 8
    assert abs(QWEN.num_params * 2 / 8 / GB - 58.77) < 0.01


def test_kv_per_token_same_at_tp8_and_tp4():
    per_token = {}
    for tp in (1, 2, 4, 8):
        plan = make_plan(QWEN, ClusterSpec.make("h100-80gb", tp), ParallelConfig(tp=tp))
        per_token[tp] = plan.memory(0).kv_per_token
        assert plan.memory(0).kv_replication == max(1, tp // 4)
    # 94 layers x (K, V) x heads held x 128 x 2 bytes
    assert per_token[4] == per_token[8] == 94 * 2 * 1 * 128 * 2
    assert per_token[2] == 94 * 2 * 2 * 128 * 2 and per_token[1] == 94 * 2 * 4 * 128 * 2
    plan8 = make_plan(QWEN, ClusterSpec.make("h100-80gb", 8), ParallelConfig(tp=8))
    assert any("stored 2 times" in n for n in plan8.notes)


def test_kv_capacity_and_budget():
    plan = make_plan(QWEN, ClusterSpec.make("h100-80gb", 16, 8), ParallelConfig(tp=4, pp=4))
    for r in plan.ranks:
        m = plan.memory(r.rank)
        assert m.free == m.device_bytes - m.weights - m.activations - m.comm_buffers
        assert m.kv_per_token == r.num_layers * 2 * 1 * 128 * 2
        assert m.kv_capacity_tokens == int(m.free // m.kv_per_token)
        assert m.activations > 0 and m.comm_buffers == 2 * 64 * 2**20  # TP and PP groups


def test_model_that_does_not_fit():
    plan = make_plan(QWEN, ClusterSpec.make("h100-80gb", 4), ParallelConfig(tp=4))
    m = plan.memory(0)
    assert m.weights > m.device_bytes and m.kv_capacity_tokens == 0 and not m.fits

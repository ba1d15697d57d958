"""The single-process runtime against transformers (the oracle), and its checkpoint reader."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from runtime_fixtures import (  # noqa: F401
    make_checkpoint,
    prompts,
    qwen3_ckpt,
    qwen3_moe_ckpt,
    reference_logits,
    rel_err,
)

from shardcore import PlanError
from shardcore.runtime import Checkpoint, ModelConfig, build_layouts, generate

ORACLE_RTOL = 1e-4  # float32 against transformers' float32 (observed: about 5e-7)


def _check_against_oracle(path, batch=2, length=7, new=5, **kw):
    ids = prompts(batch, length)
    result = generate(path, ids, max_new_tokens=new, **kw)
    prefill, decode = reference_logits(path, ids, result.tokens)
    assert result.tokens.shape == (batch, new)
    assert result.logits.shape == (new, batch, prefill.shape[-1])
    assert rel_err(result.logits[0], prefill[:, -1]) < ORACLE_RTOL
    assert rel_err(result.logits[1:], decode) < ORACLE_RTOL
    # Greedy: each token is the argmax of the logits that chose it.
    np.testing.assert_array_equal(result.tokens.T, np.argmax(result.logits, axis=-1))
    return result


def test_qwen3_matches_transformers(qwen3_ckpt):  # noqa: F811
    _check_against_oracle(qwen3_ckpt)


def test_qwen3_moe_matches_transformers(qwen3_moe_ckpt):  # noqa: F811
    result = _check_against_oracle(qwen3_moe_ckpt)
    # The router really spreads tokens: more than top_k experts are used in the run.
    used = {int(e) for forward in result.routing[0] for rec in forward for e in rec.experts.ravel()}
    assert len(used) > 4


def test_variants_match_transformers(tmp_path):
    """Tied embeddings, no top-k renormalisation, MoE every other layer, batch of one."""
    tied = make_checkpoint(
        tmp_path / "tied", "qwen3", seed=3, tie_word_embeddings=True, num_hidden_layers=2
    )
    with open(f"{tied}/config.json") as f:
        assert json.load(f)["tie_word_embeddings"] is True
    _check_against_oracle(tied, batch=1, length=5, new=3)
    moe = make_checkpoint(
        tmp_path / "moe",
        "qwen3_moe",
        seed=4,
        norm_topk_prob=False,
        mlp_only_layers=[],
        decoder_sparse_step=2,
        num_hidden_layers=2,
    )
    assert ModelConfig.from_hf_config(moe).moe_layers == (1,)
    _check_against_oracle(moe, batch=3, length=4, new=3)


def test_llama_matches_transformers(tmp_path):
    """A Llama-style checkpoint: no per-head q/k norm."""
    path = make_checkpoint(tmp_path / "llama", "llama", seed=5, num_hidden_layers=2)
    cfg = ModelConfig.from_hf_config(path)
    assert cfg.model_type == "llama" and not cfg.qk_norm
    _check_against_oracle(path, batch=2, length=5, new=3)


def test_micro_batches_do_not_change_the_result(qwen3_moe_ckpt):  # noqa: F811
    ids = prompts(2, 9)
    base = generate(qwen3_moe_ckpt, ids, max_new_tokens=3)
    chunked = generate(qwen3_moe_ckpt, ids, max_new_tokens=3, micro_batches=4)
    np.testing.assert_array_equal(chunked.tokens, base.tokens)
    assert rel_err(chunked.logits, base.logits) < 1e-6


BF16_VS_FP32 = 3e-2  # bfloat16 activations (8-bit mantissa) through 4 blocks; observed ~9e-3


def test_bfloat16_checkpoint(tmp_path):
    """A bf16 checkpoint runs in bf16 within BF16_VS_FP32 of its float32 run (same weights)."""
    path = make_checkpoint(tmp_path / "bf16", "qwen3_moe", dtype="bfloat16")
    ckpt = Checkpoint(path)
    assert ckpt.read("model.norm.weight").dtype == np.dtype(ml_dtypes.bfloat16)
    ids = prompts(2, 6)
    f32 = generate(path, ids, max_new_tokens=3, dtype="float32")
    prefill, decode = reference_logits(path, ids, f32.tokens)
    assert rel_err(f32.logits[0], prefill[:, -1]) < ORACLE_RTOL
    assert rel_err(f32.logits[1:], decode) < ORACLE_RTOL
    bf16 = generate(path, ids, max_new_tokens=3, dtype="bfloat16")
    err = rel_err(bf16.logits, f32.logits)
    assert 0 < err < BF16_VS_FP32


def test_checkpoint_slices_equal_full_tensor(qwen3_ckpt, tmp_path):  # noqa: F811
    ckpt = Checkpoint(qwen3_ckpt)
    name = "model.layers.1.self_attn.q_proj.weight"
    full = ckpt.read(name)
    assert full.shape == ckpt.shape(name) == (48, 40)
    np.testing.assert_array_equal(ckpt.read(name, rows=(12, 36)), full[12:36])
    np.testing.assert_array_equal(ckpt.read(name, cols=(5, 17)), full[:, 5:17])
    np.testing.assert_array_equal(ckpt.read(name, rows=(1, 3), cols=(2, 40)), full[1:3, 2:])
    bf = make_checkpoint(tmp_path / "bf", "qwen3", dtype="bfloat16", num_hidden_layers=1)
    bck = Checkpoint(bf)
    bfull = bck.read("model.layers.0.mlp.down_proj.weight")
    assert bfull.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(
        bck.read("model.layers.0.mlp.down_proj.weight", cols=(13, 26)), bfull[:, 13:26]
    )
    with pytest.raises(KeyError, match="nope"):
        ckpt.read("nope")
    with pytest.raises(ValueError, match="out of range"):
        ckpt.read(name, rows=(0, 49))
    with pytest.raises(ValueError, match="column slice"):
        ckpt.read("model.norm.weight", cols=(0, 1))


def test_checkpoint_in_several_files(qwen3_moe_ckpt, tmp_path):  # noqa: F811
    """A checkpoint saved in several *.safetensors files reads and runs as the one-file one."""
    split = make_checkpoint(tmp_path / "split", "qwen3_moe", max_shard_size="40KB")
    files = [f for f in os.listdir(split) if f.endswith(".safetensors")]
    assert len(files) > 2
    ids = prompts(2, 5)
    one = generate(qwen3_moe_ckpt, ids, max_new_tokens=3)
    many = generate(split, ids, max_new_tokens=3)
    np.testing.assert_array_equal(many.logits, one.logits)


def test_config_rejections():
    base = {
        "model_type": "qwen3",
        "vocab_size": 11,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 4,
    }
    assert ModelConfig.from_hf_config(base).head_dim == 4
    assert ModelConfig.from_hf_config(dict(base, rope_theta=5.0)).rope_theta == 5.0
    for bad, match in (
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn"}}, "yarn"),
        ({"num_key_value_heads": 3}, "not a multiple of num_kv_heads"),
        ({"use_sliding_window": True}, "sliding"),
    ):
        with pytest.raises(ValueError, match=match):
            ModelConfig.from_hf_config(dict(base, **bad))
    with pytest.raises(FileNotFoundError, match="config.json"):
        Checkpoint("/nonexistent-dir")


def test_generate_rejects_bad_input(qwen3_ckpt):  # noqa: F811
    with pytest.raises(ValueError, match="token ids"):
        generate(qwen3_ckpt, [[1, 500]], max_new_tokens=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(qwen3_ckpt, [1, 2], max_new_tokens=0)
    with pytest.raises(ValueError, match="dtype"):
        generate(qwen3_ckpt, [1, 2], dtype="float16")
    with pytest.raises(TypeError, match="integers"):
        generate(qwen3_ckpt, [1.5, 2.0])
    with pytest.raises(ValueError, match="dp=2 replicas"):
        generate(qwen3_ckpt, [[1, 2]], dp=2)
    with pytest.raises(PlanError, match="tp=3"):
        generate(qwen3_ckpt, [[1, 2]], tp=3)
    with pytest.raises(PlanError, match="ep=2 needs an MoE model"):
        generate(qwen3_ckpt, [[1, 2], [3, 4]], dp=2, ep=2)


def test_generate_rejects_a_plan_for_another_model(qwen3_ckpt, qwen3_moe_ckpt):  # noqa: F811
    from shardcore.runtime import host_plan

    moe_plan = host_plan(qwen3_moe_ckpt, tp=2)
    with pytest.raises(ValueError, match="the plan is for another model"):
        generate(qwen3_ckpt, [[1, 2]], plan=moe_plan)
    with pytest.raises(ValueError, match="disagree with the plan"):
        generate(qwen3_moe_ckpt, [[1, 2]], plan=moe_plan, tp=4)


def test_layouts_cover_every_head_column_and_expert(qwen3_moe_ckpt):  # noqa: F811
    cfg = Checkpoint(qwen3_moe_ckpt).config
    for tp, pp, dp, ep in ((4, 1, 1, 1), (4, 1, 1, 4), (2, 2, 2, 2), (1, 4, 2, 2), (2, 1, 2, 4)):
        layouts = build_layouts(cfg, qwen3_moe_ckpt, tp, pp, dp, ep)
        assert len(layouts) == tp * pp * dp
        assert [lay.rank for lay in layouts] == list(range(tp * pp * dp))
        for d in range(dp):
            replica = [lay for lay in layouts if lay.dp_index == d]
            layers = sorted({i for lay in replica for i in lay.layers})
            assert layers == list(range(cfg.num_layers))
            for stage in range(pp):
                group = [lay for lay in replica if lay.pp_index == stage]
                assert sorted(lay.rank for lay in group) == sorted(group[0].tp_group)
                heads = sorted(h for lay in group for h in range(*lay.heads))
                assert heads == list(range(cfg.num_heads))
                cols = sorted(c for lay in group for c in range(*lay.intermediate))
                assert cols == list(range(cfg.intermediate_size))
                for lay in group:  # each query head's KV head is held where the query head is
                    for h in range(*lay.heads):
                        assert lay.kv_heads[0] <= h // cfg.kv_group < lay.kv_heads[1]
        for lay in layouts:  # an EP group holds every expert once, inside one stage
            mates = [m for m in layouts if m.rank in lay.ep_group]
            assert sorted(e for m in mates for e in m.experts) == list(range(cfg.num_experts))
            assert all(m.pp_index == lay.pp_index for m in mates)
            assert all(lay.expert_owner[e] == lay.ep_index for e in lay.experts)
    tp4 = build_layouts(cfg, qwen3_moe_ckpt, 4, 1, 1, 1)
    assert [lay.kv_heads for lay in tp4] == [(0, 1), (0, 1), (1, 2), (1, 2)]  # replicated KV


def test_kernel_and_numpy_backends_agree(qwen3_moe_ckpt):  # noqa: F811
    """The default backend is shardcore's GEMM kernels; NumPy computes the same function."""
    from shardcore.runtime.linear import resolve_backend

    assert resolve_backend("auto") == "kernels"
    ids = prompts(2, 6)
    for dtype, rtol in (("float32", 1e-5), ("bfloat16", 3e-2)):
        kern = generate(qwen3_moe_ckpt, ids, max_new_tokens=3, dtype=dtype, backend="kernels")
        ref = generate(qwen3_moe_ckpt, ids, max_new_tokens=3, dtype=dtype, backend="numpy")
        assert rel_err(kern.logits, ref.logits) < rtol
    with pytest.raises(ValueError, match="backend"):
        generate(qwen3_moe_ckpt, ids, backend="blas")


class _RecordingCheckpoint(Checkpoint):
    """A Checkpoint that remembers the slice of every tensor read, as the plan writes them."""

    def __init__(self, directory):
        super().__init__(directory)
        self.reads = {}

    def read(self, name, rows=None, cols=None):
        shape = self.shape(name)
        ranges = [rows or (0, shape[0])]
        if len(shape) == 2:
            ranges.append(cols or (0, shape[1]))
        assert name not in self.reads or self.reads[name] == tuple(ranges), name
        self.reads[name] = tuple(ranges)
        return super().read(name, rows=rows, cols=cols)


@pytest.mark.parametrize(
    "kind,degrees",
    [
        ("qwen3_moe", {"tp": 4}),
        ("qwen3_moe", {"tp": 2, "pp": 2, "dp": 2, "ep": 2}),
        ("qwen3_moe", {"tp": 2, "dp": 2, "ep": 4}),
        ("qwen3", {"tp": 4, "pp": 2}),
    ],
)
def test_each_rank_reads_exactly_its_plan_shards(
    kind,
    degrees,
    qwen3_ckpt,  # noqa: F811
    qwen3_moe_ckpt,
):  # noqa: F811
    """Every rank reads from the checkpoint exactly the slices plan.weight_shards(rank) lists:
    KV heads replicated when tp > KV heads, experts per EP rank, vocab blocks, stage layers."""
    from shardcore.runtime.groups import single
    from shardcore.runtime.layout import host_plan, layouts_from_plan
    from shardcore.runtime.model import StageModel
    from shardcore.runtime.ops import Precision

    path = qwen3_moe_ckpt if kind == "qwen3_moe" else qwen3_ckpt
    plan = host_plan(path, **degrees)
    precision = Precision("float32")
    for layout in layouts_from_plan(Checkpoint(path).config, plan):
        ckpt = _RecordingCheckpoint(path)
        StageModel(
            ckpt,
            layout,
            precision,
            single(precision),
            single(precision),
            batch=1,
            max_len=4,
            backend="numpy",
        )
        expected = {
            name: tuple(tuple(r) for r in ranges)
            for name, ranges in plan.weight_shards(layout.rank).items()
        }
        assert ckpt.reads == expected, f"rank {layout.rank}"

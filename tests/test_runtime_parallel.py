"""Sharded runs equal the single-process run, and move exactly the bytes the plan predicts."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_fixtures import make_checkpoint, prompts, qwen3_ckpt, qwen3_moe_ckpt, rel_err  # noqa: F401

from shardcore.runtime import generate

PARALLEL_RTOL = 1e-5  # float32: only the order of TP sums differs (observed: about 5e-7)
NEW_TOKENS = 4
BATCH, PROMPT = 3, 7  # 3 prompts: uneven DP split; 7 positions: uneven prefill micro-batches

_references: dict = {}


def _reference(path, micro_batches, dtype="float32"):
    """The single-process run, with the same prefill chunks as the parallel run."""
    key = (path, micro_batches, dtype)
    if key not in _references:
        _references[key] = generate(
            path,
            prompts(BATCH, PROMPT),
            max_new_tokens=NEW_TOKENS,
            micro_batches=micro_batches,
            dtype=dtype,
        )
    return _references[key]


def _check_routing(result, reference):
    """Every rank routed its tokens to the experts the single-process run chose for them."""
    for lay in result.layouts:
        first = _first_request(lay.dp_index, lay.dp)
        for f, records in enumerate(result.routing[lay.rank]):
            ref_by_layer = {r.layer: r for r in reference.routing[0][f]}
            for rec in records:
                ref = ref_by_layer[rec.layer]
                tokens_per_request = ref.experts.shape[0] // BATCH
                rows = np.arange(rec.tokens.start, rec.tokens.stop) + first * tokens_per_request
                np.testing.assert_array_equal(rec.experts, ref.experts[rows])


def _first_request(dp_index, dp):
    """The first of the prompts DP replica ``dp_index`` serves (contiguous blocks)."""
    base, extra = divmod(BATCH, dp)
    return dp_index * base + min(dp_index, extra)


def _run_and_compare(path, dtype="float32", **degrees):
    result = generate(
        path, prompts(BATCH, PROMPT), max_new_tokens=NEW_TOKENS, dtype=dtype, timeout=120, **degrees
    )
    reference = _reference(path, degrees.get("pp", 1), dtype)
    assert len(result.traffic) == result.plan.world_size
    for rank, (measured, predicted) in enumerate(zip(result.traffic, result.predicted_traffic)):
        assert measured == predicted, f"rank {rank}: measured {measured} predicted {predicted}"
    return result, reference


DENSE = [
    {"tp": 2},
    {"tp": 4},
    {"pp": 2},
    {"pp": 4},
    {"dp": 2},
    {"tp": 2, "pp": 2, "dp": 2},
    {"tp": 4, "pp": 2},
]
MOE = [
    {"tp": 2, "ep": 2},
    {"tp": 4, "ep": 4},
    {"dp": 2, "ep": 2},
    {"tp": 2, "dp": 2, "ep": 4},
    {"tp": 4},
    {"tp": 2, "pp": 2},
    {"tp": 2, "pp": 2, "dp": 2, "ep": 2},
    {"pp": 4, "dp": 2, "ep": 2},
]


def _name(degrees):
    return "-".join(f"{k}{v}" for k, v in degrees.items())


@pytest.mark.parametrize("degrees", DENSE, ids=_name)
def test_qwen3_parallel_equals_single_process(qwen3_ckpt, degrees):  # noqa: F811
    result, reference = _run_and_compare(qwen3_ckpt, **degrees)
    assert rel_err(result.logits, reference.logits) < PARALLEL_RTOL
    np.testing.assert_array_equal(result.tokens, reference.tokens)


@pytest.mark.parametrize("degrees", MOE, ids=_name)
def test_qwen3_moe_parallel_equals_single_process(qwen3_moe_ckpt, degrees):  # noqa: F811
    result, reference = _run_and_compare(qwen3_moe_ckpt, **degrees)
    assert rel_err(result.logits, reference.logits) < PARALLEL_RTOL
    np.testing.assert_array_equal(result.tokens, reference.tokens)
    _check_routing(result, reference)
    if result.plan.config.ep > 1:  # the dispatch really crossed ranks
        moe_ranks = [
            lay.rank for lay in result.layouts if set(lay.layers) & {0, 1, 3}
        ]  # layer 2 is dense (mlp_only_layers)
        assert all(result.traffic[r]["all_to_allv"]["sent"] > 0 for r in moe_ranks)


def test_tied_embeddings_vocab_parallel_on_both_ends(tmp_path):
    """Tied embeddings with pp=2: the first and the last stage each hold their TP block of the
    one embedding matrix, as the lookup table and as the LM head."""
    path = make_checkpoint(tmp_path / "tied", "qwen3", seed=6, tie_word_embeddings=True)
    result, reference = _run_and_compare(path, tp=2, pp=2)
    assert rel_err(result.logits, reference.logits) < PARALLEL_RTOL
    np.testing.assert_array_equal(result.tokens, reference.tokens)
    assert all(lay.has_embedding != lay.has_lm_head for lay in result.layouts)


# bfloat16: activations and messages are rounded to bf16 after every op, so the one difference
# of a parallel run, partial sums rounded before the TP all-reduce adds them, moves a logit by a
# few bf16 ulps (2^-8 relative each); through 4 blocks we allow 3e-2 of the largest logit
# (observed up to about 1e-2).
BF16_PARALLEL_RTOL = 3e-2


@pytest.mark.parametrize("degrees", [{"tp": 2, "ep": 2}, {"tp": 2, "pp": 2, "dp": 2}], ids=_name)
def test_bfloat16_parallel_within_bound(qwen3_moe_ckpt, degrees):  # noqa: F811
    result, reference = _run_and_compare(qwen3_moe_ckpt, dtype="bfloat16", **degrees)
    err = rel_err(result.logits, reference.logits)
    assert err < BF16_PARALLEL_RTOL
    assert result.plan.model.dtype == "bfloat16"  # and the traffic matched at 2 bytes a value

"""Tiny random Qwen3 / Qwen3-MoE checkpoints made with transformers, and its logits as oracle.

Sizes are odd on purpose and chosen so that tp in {1, 2, 4} divides the heads and SwiGLU widths,
tp = 4 exceeds the 2 KV heads, pp up to 4 has a layer per stage and ep up to 4 divides the
experts. The MoE model keeps one dense layer (mlp_only_layers) so both MLP kinds are sharded.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

COMMON = dict(vocab_size=131, hidden_size=40, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=12, intermediate_size=52,
              max_position_embeddings=128, rope_theta=1000.0, initializer_range=0.08,
              rms_norm_eps=1e-6)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=20, norm_topk_prob=True,
           mlp_only_layers=[2], decoder_sparse_step=1)


def make_checkpoint(path, kind: str = "qwen3", dtype: str = "float32", seed: int = 0,
                    **overrides) -> str:
    """Save a random ``kind`` ('qwen3' or 'qwen3_moe') model to ``path``; returns the path."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    params = dict(COMMON)
    if kind == "qwen3":
        params.update(overrides)
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**params))
    elif kind == "qwen3_moe":
        params.update(MOE)
        params.update(overrides)
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**params))
    else:
        raise ValueError(kind)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(os.fspath(path))
    return os.fspath(path)


def reference_logits(path, prompts: np.ndarray, tokens: np.ndarray):
    """transformers' logits for prompts [B, S] followed by the given tokens [B, n], step by step.

    Returns (prefill logits [B, S, V], decode logits [n - 1, B, V]) in float32.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(os.fspath(path),
                                                              dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(prompts), use_cache=True)
        prefill = out.logits.float().numpy()
        cache = out.past_key_values
        steps = []
        for i in range(tokens.shape[1] - 1):
            out = model(torch.from_numpy(tokens[:, i:i + 1]), past_key_values=cache,
                        use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[:, -1].float().numpy())
    vocab = prefill.shape[-1]
    return prefill, (np.stack(steps) if steps else np.zeros((0, prompts.shape[0], vocab)))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: the relative error of a against reference b."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def prompts(batch: int, length: int, vocab: int = COMMON["vocab_size"], seed: int = 1):
    """Random prompts [batch, length]."""
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int64)


@pytest.fixture(scope="session")
def qwen3_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("qwen3"), "qwen3")


@pytest.fixture(scope="session")
def qwen3_moe_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("qwen3_moe"), "qwen3_moe")

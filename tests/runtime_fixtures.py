"""Fixtures of the runtime tests: tiny random checkpoints (shardcore.runtime.tiny) and
transformers' logits for them, the independent oracle.

torch, transformers and safetensors are in the test extra: a missing one fails the tests
rather than skipping them.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest


def make_checkpoint(
    path,
    kind: str = "qwen3",
    dtype: str = "float32",
    seed: int = 0,
    max_shard_size=None,
    **overrides,
) -> str:
    """Save a random ``kind`` ('qwen3' or 'qwen3_moe') model to ``path``; returns the path."""
    from shardcore.runtime.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(
        path, kind, dtype=dtype, seed=seed, max_shard_size=max_shard_size, **overrides
    )


def reference_logits(path, prompts: np.ndarray, tokens: np.ndarray):
    """transformers' logits for prompts [B, S] followed by the given tokens [B, n], step by step.

    Returns (prefill logits [B, S, V], decode logits [n - 1, B, V]) in float32.
    """
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(os.fspath(path), dtype=torch.float32)
    model.eval()
    # The cache is an object that forward() fills in place. Its keyword is `cache` in current
    # transformers (`past_key_values`, deprecated since 5.24, in older releases).
    params = inspect.signature(model.forward).parameters
    keyword = "cache" if "cache" in params else "past_key_values"
    cache = transformers.DynamicCache()
    with torch.no_grad():
        out = model(torch.from_numpy(prompts), use_cache=True, **{keyword: cache})
        prefill = out.logits.float().numpy()
        steps = []
        for i in range(tokens.shape[1] - 1):
            step = torch.from_numpy(tokens[:, i : i + 1])
            out = model(step, use_cache=True, **{keyword: cache})
            steps.append(out.logits[:, -1].float().numpy())
    vocab = prefill.shape[-1]
    return prefill, (np.stack(steps) if steps else np.zeros((0, prompts.shape[0], vocab)))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: the relative error of a against reference b."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def prompts(batch: int, length: int, vocab: int = 131, seed: int = 1):
    """Random prompts [batch, length]."""
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int64)


@pytest.fixture(scope="session")
def qwen3_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("qwen3"), "qwen3")


@pytest.fixture(scope="session")
def qwen3_moe_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("qwen3_moe"), "qwen3_moe")

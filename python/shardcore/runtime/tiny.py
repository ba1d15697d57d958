"""Tiny random Qwen3 / Qwen3-MoE checkpoints, made with Hugging Face ``transformers``.

For tests and examples: ``python -m shardcore.runtime.tiny DIR [--moe] [--dtype bfloat16]
[--tokenizer]``. Needs ``torch`` and ``transformers`` (the test extra); nothing is downloaded.
``--tokenizer`` adds a tokenizer.json (a small BPE trained here with ``tokenizers`` on a fixed
text, as many tokens as the model's vocabulary) and makes its ``<|endoftext|>`` the eos id of
generation_config.json. The sizes are odd
on purpose and chosen so that tp in {1, 2, 4} divides the heads, tp = 4 exceeds the 2 KV
heads, pp up to 4 has a layer per stage and ep up to 4 divides the experts; the MoE model keeps
one dense layer (mlp_only_layers) so both MLP kinds are exercised.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

COMMON = {
    "vocab_size": 131,
    "hidden_size": 40,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 12,
    "intermediate_size": 52,
    "max_position_embeddings": 128,
    "rope_theta": 1000.0,
    "initializer_range": 0.08,
    "rms_norm_eps": 1e-6,
}
MOE = {
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 20,
    "norm_topk_prob": True,
    "mlp_only_layers": [2],
    "decoder_sparse_step": 1,
}


# The text the tiny tokenizer is trained on (any fixed text would do; this one has enough
# distinct pairs for 131 tokens).
CORPUS = """\
Tiny random Qwen3 and Qwen3-MoE checkpoints for tests and examples.
The sizes are odd on purpose and chosen so that tensor parallel degrees one, two and four
divide the heads, four exceeds the two key value heads, pipeline stages up to four have a
layer each and expert parallel degrees up to four divide the experts.
The quick brown fox jumps over the lazy dog; hello world, hello tokens!
Shared memory carries the activations between ranks: all-reduce, all-gather, send and recv.
"""
EOS_TOKEN = "<|endoftext|>"


def make_tiny_tokenizer(path, vocab_size: int) -> str:
    """Save a BPE tokenizer.json of ``vocab_size`` tokens (EOS_TOKEN is id 0) to directory
    ``path``; returns the file's path."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError as exc:
        raise ImportError(
            "a tiny tokenizer needs tokenizers (pip install 'shardcore[text]')"
        ) from exc
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN, "<unk>"], show_progress=False
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    file = os.path.join(os.fspath(path), "tokenizer.json")
    tok.save(file)
    return file


def make_tiny_checkpoint(
    path,
    kind: str = "qwen3",
    dtype: str = "float32",
    seed: int = 0,
    max_shard_size: str | None = None,
    tokenizer: bool = False,
    **overrides,
) -> str:
    """Save a random ``kind`` ('qwen3', 'qwen3_moe' or 'llama') model to directory ``path``
    (in several *.safetensors files when ``max_shard_size``, e.g. "40KB", is given); with
    ``tokenizer``, also a tiny tokenizer.json whose EOS_TOKEN is the eos id."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            "making a tiny checkpoint needs torch and transformers (pip install 'shardcore[test]')"
        ) from exc
    if kind not in ("qwen3", "qwen3_moe", "llama"):
        raise ValueError(f"kind must be 'qwen3', 'qwen3_moe' or 'llama', got {kind!r}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    torch.manual_seed(seed)
    params: dict[str, Any] = dict(COMMON)
    if kind == "qwen3_moe":
        params.update(MOE)
    params.update(overrides)
    model: Any
    if kind == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**params))
    elif kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**params))
    else:
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**params))
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    if max_shard_size is None:
        model.save_pretrained(os.fspath(path))
    else:
        model.save_pretrained(os.fspath(path), max_shard_size=max_shard_size)
    if tokenizer:
        make_tiny_tokenizer(path, params["vocab_size"])
        gen_path = os.path.join(os.fspath(path), "generation_config.json")
        with open(gen_path, encoding="utf-8") as f:
            gen = json.load(f)
        gen["eos_token_id"] = 0  # EOS_TOKEN: the tokenizer's first special token
        with open(gen_path, "w", encoding="utf-8") as f:
            json.dump(gen, f, indent=2)
    return os.fspath(path)


def main(argv=None) -> int:
    """``python -m shardcore.runtime.tiny DIR [--moe] [--dtype D] [--seed S]``."""
    p = argparse.ArgumentParser(prog="python -m shardcore.runtime.tiny", description=__doc__)
    p.add_argument("directory")
    p.add_argument("--moe", action="store_true", help="Qwen3-MoE instead of dense Qwen3")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tokenizer", action="store_true", help="add a tiny tokenizer.json (needs tokenizers)"
    )
    args = p.parse_args(argv)
    path = make_tiny_checkpoint(
        args.directory,
        "qwen3_moe" if args.moe else "qwen3",
        dtype=args.dtype,
        seed=args.seed,
        tokenizer=args.tokenizer,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m shardcore.runtime.measure CKPT -tp 2``: what an Engine costs and serves.

Measures, on one layout: the engine's start (every rank reads and packs its shard), a first
and a second request of one prompt (the second pays no loading), and N requests served one
after another (``generate``, batch 1) against the same N submitted at once (continuous
batching: one decode forward advances all of them). Greedy, prompts of random ids.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def measure(
    checkpoint: str,
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    ep: int = 1,
    dtype: str = "float32",
    requests: int = 4,
    prompt_len: int = 32,
    new_tokens: int = 16,
    seed: int = 0,
) -> dict:
    """The figures above as a dict of seconds and tokens/s."""
    from .server import Engine

    t0 = time.perf_counter()
    engine = Engine(checkpoint, tp=tp, pp=pp, dp=dp, ep=ep, dtype=dtype)
    try:
        start_s = time.perf_counter() - t0
        vocab = engine._ckpt.config.vocab_size
        rng = np.random.default_rng(seed)
        prompts = [rng.integers(0, vocab, prompt_len).tolist() for _ in range(requests)]

        def one(prompt):
            return engine.generate([prompt], new_tokens, stop_ids=(), logits=False)

        t = time.perf_counter()
        first = one(prompts[0])
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        second = one(prompts[0])
        second_s = time.perf_counter() - t
        t = time.perf_counter()
        for p in prompts:
            one(p)
        serial_s = time.perf_counter() - t
        t = time.perf_counter()
        futures = engine.submit_all(prompts, max_new_tokens=new_tokens, stop_ids=())
        for f in futures:
            f.result()
        continuous_s = time.perf_counter() - t
        total = requests * new_tokens
        return {
            "layout": f"tp={tp} pp={pp} dp={dp} ep={ep} {dtype}",
            "start_s": start_s,
            "first_request_s": first_s,
            "first_ttft_s": first.timing["ttft_s"],
            "second_request_s": second_s,
            "decode_tokens_per_s_batch1": 1.0 / second.timing["tpot_s"]
            if second.timing["tpot_s"] > 0
            else 0.0,
            "serial_tokens_per_s": total / serial_s,
            "continuous_tokens_per_s": total / continuous_s,
            "max_decode_batch": engine.stats["max_decode_batch"],
        }
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m shardcore.runtime.measure``."""
    p = argparse.ArgumentParser(prog="python -m shardcore.runtime.measure", description=__doc__)
    p.add_argument("checkpoint")
    for short in ("tp", "pp", "dp", "ep"):
        p.add_argument(f"-{short}", type=int, default=1, help=f"{short} degree (default 1)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--requests", type=int, default=4, help="requests of the load (default 4)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default 32)")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens per request (default 16)")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    r = measure(
        args.checkpoint,
        args.tp,
        args.pp,
        args.dp,
        args.ep,
        args.dtype,
        args.requests,
        args.prompt_len,
        args.new_tokens,
    )
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['layout']}")
    print(f"engine start (load and pack every shard): {r['start_s']:.2f} s")
    print(
        f"first request: {r['first_request_s']:.3f} s (TTFT {r['first_ttft_s'] * 1e3:.1f} ms); "
        f"second: {r['second_request_s']:.3f} s"
    )
    print(f"decode, batch 1: {r['decode_tokens_per_s_batch1']:.1f} tokens/s")
    print(
        f"{args.requests} requests one after another: {r['serial_tokens_per_s']:.1f} tokens/s; "
        f"submitted at once: {r['continuous_tokens_per_s']:.1f} tokens/s "
        f"(decode batch up to {r['max_decode_batch']})"
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The traffic a run must show: the plan's prediction plus what the plan does not model.

``shardcore.plan.predict_traffic`` gives every rank's bytes for TP (embedding, attention and MLP
all-reduces, the logits all-gather), PP (activations, token ids) and EP (dispatch and combine
all-to-allv, exact given the routing the ranks report). Two things travel beside them and are
added here, per MoE block and forward of a rank in an EP group of ep > 1 ranks:

- the routing metadata: an all-to-all of the [ep, experts per rank] int64 matrix of rows per
  (destination, expert), so that a rank knows which of its experts each received row is for;
- the core's own counts exchange inside each of the two all-to-allv (kind ``internal``): a rank
  posts its vector of ep int64 send counts once (ep * 8 bytes sent) and reads each peer's
  ((ep - 1) * ep * 8 bytes received).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .config import ModelConfig
from .layout import RankLayout

KINDS = (
    "all_reduce",
    "reduce_scatter",
    "all_gather",
    "all_to_all",
    "all_to_allv",
    "broadcast",
    "send",
    "recv",
    "barrier",
    "internal",
)
COUNT_BYTES = 8  # routing counts and the core's row counts are int64

Traffic = dict[str, dict[str, int]]


INTER_FIELDS = ("inter_sent", "inter_recv")


def normalise(traffic: dict[str, dict]) -> Traffic:
    """{kind: {calls, sent, recv}} for every kind in KINDS (zeros where absent), ints; with
    inter_sent/inter_recv too when the traffic has them (a run across hosts)."""
    fields: tuple[str, ...] = ("calls", "sent", "recv")
    if any(f in v for v in traffic.values() for f in INTER_FIELDS):
        fields += INTER_FIELDS
    return {k: {f: int(traffic.get(k, {}).get(f, 0)) for f in fields} for k in KINDS}


def expert_ids_from_routing(layouts: Sequence[RankLayout], routing, n_prefill_chunks: int):
    """The plan's ``expert_ids(pass, chunk, layer, dp)`` from the routing each rank recorded.

    routing[rank][forward] lists the rank's RoutingRecords of that forward (prefill chunks
    first, then one forward per decode step); a replica's rows are the concatenation of its TP
    ranks' shares, in token order.
    """
    table: dict[tuple, list] = defaultdict(list)
    for lay in layouts:
        for f, records in enumerate(routing[lay.rank]):
            key = (0, f) if f < n_prefill_chunks else (f - n_prefill_chunks + 1, 0)
            for rec in records:
                table[key + (rec.layer, lay.dp_index)].append((rec.tokens.start, rec.experts))

    def expert_ids(pass_index: int, chunk: int, layer: int, dp: int) -> np.ndarray:
        parts = sorted(table[(pass_index, chunk, layer, dp)], key=lambda p: p[0])
        return np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 1), np.int64)

    return expert_ids


def predict_run(
    plan,
    config: ModelConfig,
    layouts: Sequence[RankLayout],
    batch: int,
    prompt_len: int,
    max_new_tokens: int,
    micro_batches: int,
    dtype: str,
    routing=None,
    hosts=None,
) -> list[Traffic]:
    """Per-rank traffic of a run of ``generate``: the plan's prediction plus the extras above.

    ``hosts`` (host index of each rank): also the inter-host bytes of a run across hosts.
    """
    from ..plan import predict_traffic
    from .groups import ALL_REDUCE_ALGORITHM

    n_chunks = min(micro_batches, prompt_len)
    expert_ids = None
    if routing is not None and plan.config.ep > 1:
        expert_ids = expert_ids_from_routing(layouts, routing, n_chunks)
    prediction = predict_traffic(
        plan,
        prefill_tokens=prompt_len,
        decode_steps=max_new_tokens - 1,
        batch=batch,
        dtype=dtype,
        micro_batches=micro_batches,
        expert_ids=expert_ids,
        all_reduce_algorithm=ALL_REDUCE_ALGORITHM,
        hosts=hosts,
    )
    if not prediction.exact:
        raise ValueError("an EP run's traffic prediction needs the routing the ranks report")
    out = [normalise(r) for r in prediction.ranks]
    forwards = n_chunks + max_new_tokens - 1
    for lay in layouts:
        if lay.ep == 1:
            continue
        blocks = sum(1 for i in lay.layers if i in config.moe_layers) * forwards
        per = config.num_experts // lay.ep
        n = lay.ep
        extra = {
            "all_to_all": (blocks, (n - 1) * per * COUNT_BYTES, (n - 1) * per * COUNT_BYTES),
            "internal": (2 * blocks, n * COUNT_BYTES, (n - 1) * n * COUNT_BYTES),
        }
        for kind, (calls, sent, recv) in extra.items():
            entry = out[lay.rank][kind]
            entry["calls"] += calls
            entry["sent"] += calls * sent
            entry["recv"] += calls * recv
    return out

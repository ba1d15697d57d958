"""The bytes each rank of a run must move, predicted from the layout and the run's shape.

Per forward of N = batch * new-token rows of width hidden in the model dtype (b bytes):
- TP: two ring all-reduces of N * hidden * b per block of the stage;
- PP: a send of N * hidden * b to the next stage, a receive from the previous one; in decode,
  the last stage also sends the batch's greedy tokens (int64) to the first stage;
- EP: per MoE block, an all-to-all of the [ep, experts per rank] int64 routing counts and two
  all-to-allv of the routed rows (dispatch, then the way back); their bytes follow the routing
  of that forward, which the ranks report;
- DP: nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

from .config import ModelConfig
from .layout import RankLayout, split_even

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all", "all_to_allv", "broadcast",
         "send", "recv", "barrier")

Traffic = Dict[str, Dict[str, int]]


def empty_traffic() -> Traffic:
    """Zero counters for every kind."""
    return {k: {"calls": 0, "sent": 0, "recv": 0} for k in KINDS}


def ring_all_reduce_bytes(n: int, count: int, itemsize: int, index: int) -> Tuple[int, int]:
    """(sent, received) bytes of rank ``index`` in a ring all-reduce of ``count`` items on ``n``.

    The buffer is cut into n blocks, the first count % n one element longer. The reduce-scatter
    passes every block but one around the ring, then the all-gather does; rank r sends all but
    blocks r+1 and r+2 once each and receives all but blocks r+1 and r (indices mod n). With
    equal blocks both are 2(n-1)/n of the buffer, the traffic model's figure.
    """
    if n == 1:
        return 0, 0
    blocks = [e - b for b, e in split_even(count, n)]
    sent = 2 * count - blocks[(index + 1) % n] - blocks[(index + 2) % n]
    recv = 2 * count - blocks[(index + 1) % n] - blocks[index]
    return sent * itemsize, recv * itemsize


def _add(t: Traffic, kind: str, sent: int, recv: int, calls: int = 1) -> None:
    t[kind]["calls"] += calls
    t[kind]["sent"] += sent
    t[kind]["recv"] += recv


def predict_run(config: ModelConfig, layouts: Sequence[RankLayout], replica_batch: Sequence[int],
                forward_lengths: Sequence[int], itemsize: int, routing=None) -> List[Traffic]:
    """Per-rank traffic of a run.

    replica_batch[d]: requests of DP replica d. forward_lengths: new tokens per forward, in
    order (the prefill chunks, then one per decode step). routing[rank][forward][i]: the
    RoutingRecord of the i-th MoE block of that forward on that rank (needed when ep > 1).
    """
    out = [empty_traffic() for _ in layouts]
    h = config.hidden_size
    for lay in layouts:
        t = out[lay.rank]
        b = replica_batch[lay.dp_index]
        moe_blocks = [i for i in lay.layers if i in config.moe_layers]
        for f, length in enumerate(forward_lengths):
            rows = b * length
            if lay.tp > 1:
                sent, recv = ring_all_reduce_bytes(lay.tp, rows * h, itemsize, lay.tp_index)
                calls = 2 * len(lay.layers)
                _add(t, "all_reduce", sent * calls, recv * calls, calls=calls)
            if not lay.is_last_stage:
                _add(t, "send", rows * h * itemsize, 0)
            if not lay.is_first_stage:
                _add(t, "recv", 0, rows * h * itemsize)
            if lay.ep > 1 and moe_blocks:
                per = config.num_experts // lay.ep
                count_bytes = (lay.ep - 1) * per * 8
                _add(t, "all_to_all", count_bytes * len(moe_blocks),
                     count_bytes * len(moe_blocks), calls=len(moe_blocks))
                for i, _ in enumerate(moe_blocks):
                    sent, recv = _routed_rows(lay, layouts, routing, f, i)
                    # dispatch: sent rows out, received rows in; the way back is the reverse.
                    _add(t, "all_to_allv", (sent + recv) * h * itemsize,
                         (recv + sent) * h * itemsize, calls=2)
    # Greedy tokens from each last-stage rank to its first-stage peer, once per decode step.
    decode_steps = len(forward_lengths) - _prefill_count(forward_lengths)
    for lay in layouts:
        if lay.pp > 1 and decode_steps > 0:
            b = replica_batch[lay.dp_index]
            if lay.is_last_stage:
                _add(out[lay.rank], "send", b * 8 * decode_steps, 0, calls=decode_steps)
            if lay.is_first_stage:
                _add(out[lay.rank], "recv", 0, b * 8 * decode_steps, calls=decode_steps)
    return out


def _prefill_count(forward_lengths: Sequence[int]) -> int:
    """How many of the forwards are prefill chunks (the leading run before the 1-token steps)."""
    return getattr(forward_lengths, "prefill_count", len(forward_lengths))


class ForwardLengths(list):
    """New tokens per forward, remembering how many leading forwards are prefill chunks."""

    def __init__(self, prefill: Sequence[int], decode_steps: int):
        super().__init__(list(prefill) + [1] * decode_steps)
        self.prefill_count = len(prefill)


def _routed_rows(lay: RankLayout, layouts, routing, forward: int, block: int):
    """(rows this rank sends to, rows it receives from, other ranks) in one MoE block."""
    if routing is None:
        raise ValueError("predicting EP traffic needs the routing each rank reports")
    sent_matrix = defaultdict(int)
    for src_ep, src in enumerate(lay.ep_group):
        record = routing[src][forward][block]
        for e in record.experts.reshape(-1):
            dst_ep = lay.expert_owner[int(e)]
            if dst_ep != src_ep:
                sent_matrix[(src_ep, dst_ep)] += 1
    me = lay.ep_index
    sent = sum(v for (s, _), v in sent_matrix.items() if s == me)
    recv = sum(v for (_, d), v in sent_matrix.items() if d == me)
    return sent, recv

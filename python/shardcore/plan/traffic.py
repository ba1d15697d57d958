"""Traffic: the seed's per-token model, and the exact per-rank bytes of a run.

Collective byte rules (per rank, elements times the dtype's bytes; ``n`` ranks in the group):

* ring all-reduce of ``S`` elements: the buffer is cut into ``n`` blocks, the first ``S % n``
  one element larger (``split_sizes``); group member ``i`` sends ``(S - |B[(i+1) % n]|) +
  (S - |B[(i+2) % n]|)`` elements (reduce-scatter then all-gather, sending to member i+1) and
  receives what member ``i-1`` sends. That is ``2(n-1)/n * S`` when n divides S.
* all-gather: ``(n-1)`` times the rank's block; reduce-scatter: ``(n-1)/n`` of the full buffer;
  all-to-all: ``(n-1)/n`` of the rank's buffer; all-to-allv: the rows sent to other ranks;
  send/recv: the whole message. Nothing is sent on a group of one rank (no call is made).

A run (``predict_traffic``): ``batch`` sequences of ``prefill_tokens`` prompt tokens, then
``decode_steps`` decode passes of one token per sequence.

* DP: sequences are split over replicas in contiguous blocks (first ``batch % dp`` replicas one
  more); ``batch >= dp``. Replicas never talk.
* Prefill is cut along the prompt into ``min(micro_batches, prefill_tokens)`` chunks
  (``split_sizes`` of the prompt length); chunk ``j`` of replica ``d`` holds ``batch_d * len_j``
  tokens. Every collective below happens once per chunk; a decode pass is one chunk of
  ``batch_d`` tokens.
* TP (tp > 1), per chunk of T tokens: an all-reduce of ``T*h`` after the vocab-parallel
  embedding (first stage), then per layer two all-reduces of ``T*h`` (after o_proj, after the
  MLP/MoE). The first stage's embedding all-reduce and all activations use the activation
  dtype. On the last stage the logits of the last prompt position of every sequence (prefill's
  last chunk) or of every decode token are all-gathered over TP: each rank contributes
  ``rows x ceil(vocab/tp)`` elements (vocab blocks padded to equal size).
* PP (pp > 1): each rank of stage s < pp-1 sends its chunk's ``T*h`` hidden state to the rank of
  stage s+1 with the same (dp, tp). Before every decode pass, each rank of the last stage sends
  the ``batch_d`` sampled token ids (int64) to the first-stage rank with the same (dp, tp).
* EP (ep > 1), per MoE layer and chunk: within a TP group the tokens are replicated, so TP rank t
  routes only its block ``split_range(T, tp, t)`` of the chunk's tokens; it all-to-allv's one
  row of ``h`` per (token, chosen expert) to the EP rank that holds the expert (dispatch), gets
  the rows back (combine), and contributes zeros for the tokens it does not own to the MLP's TP
  all-reduce, which sums the shares. Exact bytes need the routing (``expert_ids``); without it
  the rows are the uniform-routing expectation and the prediction says ``exact=False``.

All-reduces are assumed to use the ring algorithm (the runtime must force ``algorithm="ring"``).
Group members are numbered in tp order (TP groups) and EP-rank order (EP groups), which is how
the runtime must order its sub-communicators. A rank's measured traffic is the sum over all its
communicators (``merge_traffic``), leaving out the ``internal`` kind (shardcore's bookkeeping:
``split`` and the counts exchange of ``all_to_allv``); ``compare_traffic`` does the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import split_range, split_sizes
from .specs import dtype_bytes

TOKEN_ID_BYTES = 8  # sampled token ids travel as int64


# -- the byte rules -----------------------------------------------------------------------
def ring_all_reduce_sent(elements: int, n: int, member: int) -> int:
    """Elements group member ``member`` sends in a ring all-reduce of ``elements`` on ``n``."""
    if n <= 1:
        return 0
    blocks = split_sizes(elements, n)
    return 2 * elements - blocks[(member + 1) % n] - blocks[(member + 2) % n]


def ring_all_reduce_recv(elements: int, n: int, member: int) -> int:
    """Elements member ``member`` receives (what member ``member - 1`` sends)."""
    return ring_all_reduce_sent(elements, n, (member - 1) % n) if n > 1 else 0


def symmetric_all_reduce_sent(elements: int, n: int, member: int) -> int:
    """Elements member ``member`` sends (= receives) in the core's in-place all-reduce on a
    symmetric buffer: the other members' blocks of its array, and its reduced block to each of
    them. Equal to the ring's 2(n-1)/n * elements when n divides elements."""
    if n <= 1:
        return 0
    mine = split_sizes(elements, n)[member]
    return (elements - mine) + (n - 1) * mine


# all_reduce algorithm -> (sent, received) elements of member i of n
ALL_REDUCE_RULES = {
    "ring": (ring_all_reduce_sent, ring_all_reduce_recv),
    "symmetric": (symmetric_all_reduce_sent, symmetric_all_reduce_sent),
}


def collective_sent(kind: str, elements: int, n: int, member: int = 0) -> float:
    """Elements a member sends: ``elements`` is the all-reduce buffer, the all-gather block of
    one rank, the full reduce-scatter buffer, the rank's all-to-all buffer, or the message."""
    if kind == "all_reduce":
        return ring_all_reduce_sent(elements, n, member)
    if n <= 1 and kind != "send":
        return 0
    if kind == "all_gather":
        return (n - 1) * elements
    if kind in ("reduce_scatter", "all_to_all"):
        return (n - 1) * elements / n
    if kind == "send":
        return elements
    raise ValueError(f"unknown collective kind {kind!r}")


# -- the seed's per-token model -------------------------------------------------------------
def seed_tp_bytes(blocks: int, n: int, hidden: int, b: float = 2) -> float:
    """TP bytes per rank per token: two all-reduces of h per block, 2(n-1)/n*h*b each
    (8k(n-1)h/n for k blocks in bf16)."""
    return 2 * blocks * 2 * (n - 1) / n * hidden * b


def seed_pp_bytes(stages: int, hidden: int, b: float = 2) -> float:
    """PP bytes per token through the whole pipeline: one h*b send per stage boundary."""
    return (stages - 1) * hidden * b


def seed_ep_bytes(moe_blocks: int, top_k: int, hidden: int, ep: int, b: float = 2) -> float:
    """EP bytes per token: two all-to-alls of top_k*h*b/l per MoE block, l = ep (0 when l == 1)."""
    return 0.0 if ep <= 1 else 2 * moe_blocks * top_k * hidden * b / ep


def token_traffic(plan, dtype: str | None = None) -> dict:
    """The seed's per-token bytes for ``plan``: {"tp", "pp", "ep", "dp"} where tp counts every
    layer of the model for one TP position (summed over stages), pp the whole pipeline, ep every
    MoE layer, dp nothing per token. Also "per_rank": the same figures for each rank's share."""
    m, c = plan.model, plan.config
    b = dtype_bytes(dtype or m.dtype)
    h = m.hidden_size
    per_rank = []
    for r in plan.ranks:
        moe = sum(1 for i in range(*r.layers) if m.is_moe_layer(i))
        per_rank.append(
            {
                "tp": seed_tp_bytes(r.num_layers, c.tp, h, b),
                "pp": h * b if r.pp < c.pp - 1 else 0.0,
                "ep": seed_ep_bytes(moe, m.experts_per_token, h, c.ep, b),
                "dp": 0.0,
            }
        )
    return {
        "tp": seed_tp_bytes(m.num_layers, c.tp, h, b),
        "pp": seed_pp_bytes(c.pp, h, b),
        "ep": seed_ep_bytes(len(m.moe_layers), m.experts_per_token, h, c.ep, b)
        if m.is_moe
        else 0.0,
        "dp": 0.0,
        "per_rank": per_rank,
    }


# -- exact prediction of a run ------------------------------------------------------------
@dataclass
class _Op:
    kind: str  # all_reduce, all_gather, all_to_allv, p2p
    what: str
    group: tuple
    sent: tuple  # bytes per member
    recv: tuple
    times: int = 1
    elements: int = 0  # all-reduce: the buffer's elements
    itemsize: float = 0


@dataclass
class TrafficPrediction:
    """Per-rank traffic of a run, in the shape of ``Communicator.traffic()``:
    ``ranks[r][kind] = {"calls", "sent", "recv"}``. ``exact`` is False when EP all-to-allv rows
    were estimated from uniform routing instead of given routing."""

    ranks: list
    exact: bool = True
    notes: list = field(default_factory=list)

    def total_sent(self, kind: str | None = None) -> float:
        """Bytes sent by all ranks (of one kind, or all kinds)."""
        return sum(v["sent"] for r in self.ranks for k, v in r.items() if kind is None or k == kind)


def _all_reduce(
    what: str, group: tuple, elements: int, b: float, times: int, algorithm: str = "ring"
) -> _Op:
    n = len(group)
    sent, recv = ALL_REDUCE_RULES[algorithm]
    return _Op(
        "all_reduce",
        what,
        group,
        tuple(sent(elements, n, i) * b for i in range(n)),
        tuple(recv(elements, n, i) * b for i in range(n)),
        times,
        elements,
        b,
    )


def _forward_ops(
    plan,
    chunk_lens: list,
    batches: list,
    b: float,
    pass_index: int,
    expert_ids: Callable | None,
    with_ids_return: bool,
    all_reduce_algorithm: str = "ring",
) -> Iterator[_Op]:
    """Every collective of one forward pass (all replicas, all chunks)."""
    m, c = plan.model, plan.config
    h = m.hidden_size
    vocab_block = math.ceil(m.vocab_size / c.tp)
    for ci, length in enumerate(chunk_lens):
        last_chunk = ci == len(chunk_lens) - 1
        for s in range(c.pp):
            lo, hi = (sum(plan.layer_partition[:s]), sum(plan.layer_partition[: s + 1]))
            moe_layers = [i for i in range(lo, hi) if m.is_moe_layer(i)]
            for d in range(c.dp):
                tokens = batches[d] * length
                group = tuple(c.rank(d, s, t) for t in range(c.tp))
                if c.tp > 1:
                    if s == 0:
                        yield _all_reduce(
                            "embedding", group, tokens * h, b, 1, all_reduce_algorithm
                        )
                    yield _all_reduce(
                        "attention", group, tokens * h, b, hi - lo, all_reduce_algorithm
                    )
                    yield _all_reduce("mlp", group, tokens * h, b, hi - lo, all_reduce_algorithm)
                    if s == c.pp - 1 and last_chunk:
                        block = batches[d] * vocab_block * b
                        yield _Op(
                            "all_gather",
                            "logits",
                            group,
                            tuple((c.tp - 1) * block for _ in group),
                            tuple((c.tp - 1) * block for _ in group),
                        )
                if s < c.pp - 1:
                    for t in range(c.tp):
                        yield _Op(
                            "p2p",
                            "activations",
                            (c.rank(d, s, t), c.rank(d, s + 1, t)),
                            (tokens * h * b,),
                            (tokens * h * b,),
                        )
            if c.ep > 1:
                for layer in moe_layers:
                    yield from _ep_ops(
                        plan, s, layer, length, batches, b, pass_index, ci, expert_ids
                    )
    if with_ids_return and c.pp > 1:
        for d in range(c.dp):
            for t in range(c.tp):
                nbytes = batches[d] * TOKEN_ID_BYTES
                yield _Op(
                    "p2p",
                    "token ids",
                    (c.rank(d, c.pp - 1, t), c.rank(d, 0, t)),
                    (nbytes,),
                    (nbytes,),
                )


def _ep_ops(
    plan,
    stage: int,
    layer: int,
    length: int,
    batches: list,
    b: float,
    pass_index: int,
    chunk: int,
    expert_ids: Callable | None,
) -> Iterator[_Op]:
    m, c = plan.model, plan.config
    h = m.hidden_size
    per_rank_experts = m.num_experts // c.ep
    groups = (c.tp * c.dp) // c.ep
    routing_cache: dict = {}
    for g in range(groups):
        start = stage * c.tp * c.dp + g * c.ep
        group = tuple(range(start, start + c.ep))
        rows = [[0.0] * c.ep for _ in group]  # rows[i][j]: member i -> member j
        for i, rank in enumerate(group):
            d, _, t = c.coords(rank)
            tokens = batches[d] * length
            lo, hi = split_range(tokens, c.tp, t)
            if expert_ids is None:
                for j in range(c.ep):
                    rows[i][j] = (hi - lo) * m.experts_per_token / c.ep
                continue
            if d not in routing_cache:
                routing_cache[d] = expert_ids(pass_index, chunk, layer, d)
            ids = routing_cache[d]
            if len(ids) != tokens:
                raise ValueError(
                    f"expert_ids(pass={pass_index}, chunk={chunk}, layer={layer}, "
                    f"dp={d}) gave {len(ids)} rows, expected {tokens}"
                )
            for row in list(ids)[lo:hi]:
                for e in row:
                    rows[i][int(e) // per_rank_experts] += 1
        n = c.ep
        sent = tuple(sum(rows[i][j] for j in range(n) if j != i) * h * b for i in range(n))
        recv = tuple(sum(rows[j][i] for j in range(n) if j != i) * h * b for i in range(n))
        yield _Op("all_to_allv", "moe dispatch", group, sent, recv)
        yield _Op("all_to_allv", "moe combine", group, recv, sent)


def _run_ops(
    plan,
    prefill_tokens: int,
    decode_steps: int,
    batch: int,
    b: float,
    micro_batches: int,
    expert_ids,
    all_reduce_algorithm: str = "ring",
) -> Iterator[_Op]:
    c = plan.config
    if batch < c.dp:
        raise ValueError(f"batch={batch} must be >= dp={c.dp} (every replica needs a sequence)")
    if prefill_tokens < 1 or decode_steps < 0 or micro_batches < 1:
        raise ValueError("need prefill_tokens >= 1, decode_steps >= 0, micro_batches >= 1")
    batches = split_sizes(batch, c.dp)
    chunks = split_sizes(prefill_tokens, min(micro_batches, prefill_tokens))
    yield from _forward_ops(
        plan, chunks, batches, b, 0, expert_ids, decode_steps > 0, all_reduce_algorithm
    )
    for step in range(1, decode_steps + 1):
        yield from _forward_ops(
            plan, [1], batches, b, step, expert_ids, step < decode_steps, all_reduce_algorithm
        )


def predict_traffic(
    plan,
    prefill_tokens: int,
    decode_steps: int = 0,
    batch: int = 1,
    dtype: str | None = None,
    micro_batches: int = 1,
    expert_ids: Callable[[int, int, int, int], Any] | None = None,
    all_reduce_algorithm: str = "ring",
    hosts: Sequence[int] | None = None,
) -> TrafficPrediction:
    """Bytes and calls per rank and collective kind for a run (see the module docstring).

    ``hosts`` (host index of each rank): every entry also gets ``inter_sent``/``inter_recv``,
    the bytes that cross hosts when the run's communicator spans them (shardcore.hier).

    ``all_reduce_algorithm``: "ring" (the seed's model) or "symmetric" (the core's in-place
    all-reduce on symmetric buffers, which the runtime uses); they differ only when the buffer
    does not split evenly over the group.

    ``dtype`` is the activation dtype (default: the model's). ``expert_ids(pass_index, chunk,
    layer, dp)`` returns, for EP runs, the chosen expert ids ``[tokens, top_k]`` of that replica's
    chunk in the order the runtime flattens tokens (pass 0 is prefill, pass k the k-th decode).
    """
    b = dtype_bytes(dtype or plan.model.dtype)
    ranks: list = [dict() for _ in range(plan.world_size)]

    def add(rank: int, kind: str, sent: float, recv: float, times: int) -> None:
        entry = ranks[rank].setdefault(kind, {"calls": 0, "sent": 0, "recv": 0})
        entry["calls"] += times
        entry["sent"] += sent * times
        entry["recv"] += recv * times

    if all_reduce_algorithm not in ALL_REDUCE_RULES:
        raise ValueError(
            f"all_reduce_algorithm must be one of {sorted(ALL_REDUCE_RULES)}, "
            f"got {all_reduce_algorithm!r}"
        )
    ops = _run_ops(
        plan,
        prefill_tokens,
        decode_steps,
        batch,
        b,
        micro_batches,
        expert_ids,
        all_reduce_algorithm,
    )
    inter_notes: set = set()

    def add_inter(rank: int, kind: str, sent: float, recv: float, times: int) -> None:
        entry = ranks[rank][kind]
        entry["inter_sent"] = entry.get("inter_sent", 0) + sent * times
        entry["inter_recv"] = entry.get("inter_recv", 0) + recv * times

    for op in ops:
        if op.kind == "p2p":
            add(op.group[0], "send", op.sent[0], 0, op.times)
            add(op.group[1], "recv", 0, op.recv[0], op.times)
        else:
            for i, rank in enumerate(op.group):
                add(rank, op.kind, op.sent[i], op.recv[i], op.times)
        if hosts is not None:
            for rank, kind, sent, recv in _inter_host(op, hosts, inter_notes):
                add_inter(rank, kind, sent, recv, op.times)
    if hosts is not None:
        for r in ranks:
            for entry in r.values():
                entry.setdefault("inter_sent", 0)
                entry.setdefault("inter_recv", 0)
    exact = not (plan.config.ep > 1 and plan.model.is_moe and expert_ids is None)
    for r in ranks:
        for entry in r.values():
            for key in ("sent", "recv"):
                if float(entry[key]).is_integer():
                    entry[key] = int(entry[key])
    notes = [] if exact else ["all_to_allv rows estimated from uniform routing"]
    notes += sorted(inter_notes)
    return TrafficPrediction(ranks=ranks, exact=exact, notes=notes)


def _inter_host(op: _Op, hosts, notes: set):
    """(rank, kind, sent, recv) between hosts for one op, as the multi-host communicator moves
    it: ranks of a group that lie on one host share memory; a group across hosts runs the
    two-level algorithms (shardcore.hier.model)."""
    from ..hier.model import all_gather_inter, all_reduce_inter

    group_hosts = [hosts[r] for r in op.group]
    if len(set(group_hosts)) == 1:
        return
    if op.kind == "p2p":
        yield op.group[0], "send", op.sent[0], 0
        yield op.group[1], "recv", 0, op.recv[0]
        return
    # the sub-group's hosts in order of their first member; members in group order
    order: dict = {}
    for i, h in enumerate(group_hosts):
        order.setdefault(h, []).append(i)
    sizes = [len(m) for m in order.values()]
    for i, rank in enumerate(op.group):
        local = order[group_hosts[i]].index(i)
        if op.kind == "all_reduce":
            n = all_reduce_inter(op.elements, int(op.itemsize), sizes, local)
            yield rank, op.kind, n, n
        elif op.kind == "all_gather":
            block = op.sent[i] / (len(op.group) - 1)
            n = all_gather_inter(int(block), sizes, local)
            yield rank, op.kind, n, n
        else:
            notes.add(f"{op.kind} across hosts: inter-host bytes not predicted")


def step_collectives(plan, rank: int, tokens: int = 1, dtype: str | None = None) -> list:
    """The collectives ``rank`` makes in one decode pass of ``tokens`` sequences per replica:
    dicts {kind, what, group, calls, sent} (bytes; EP rows at uniform routing)."""
    b = dtype_bytes(dtype or plan.model.dtype)
    batches = [tokens] * plan.config.dp
    out: dict = {}
    for op in _forward_ops(plan, [1], batches, b, 1, None, True):
        if rank not in op.group:
            continue
        i = op.group.index(rank)
        kind = op.kind
        if kind == "p2p":
            kind = "send" if i == 0 else "recv"
        key = (kind, op.what, op.group)
        e = out.setdefault(
            key, {"kind": kind, "what": op.what, "group": list(op.group), "calls": 0, "sent": 0.0}
        )
        e["calls"] += op.times
        e["sent"] += (op.sent[i] if kind != "recv" else 0) * op.times
    return list(out.values())


#: kinds of ``Communicator.traffic()`` that are shardcore's bookkeeping, not the model's traffic
BOOKKEEPING_KINDS = ("internal",)


def merge_traffic(*traffics: dict) -> dict:
    """Sum ``Communicator.traffic()`` dicts of one rank's communicators (TP, EP, world...) into
    ``{kind: {"calls", "sent", "recv"}}``, dropping kinds with no calls and bookkeeping kinds."""
    out: dict = {}
    for t in traffics:
        for kind, e in t.items():
            if kind in BOOKKEEPING_KINDS or not e.get("calls"):
                continue
            acc = out.setdefault(kind, {"calls": 0, "sent": 0, "recv": 0})
            for key in acc:
                acc[key] += int(e[key])
    return out


def compare_traffic(prediction: TrafficPrediction, measured: list) -> list:
    """Differences between a prediction and measured per-rank traffic (each rank's entry a
    ``merge_traffic`` result or a raw ``traffic()`` dict); an empty list means byte-exact."""
    if len(measured) != len(prediction.ranks):
        return [f"{len(measured)} ranks measured, {len(prediction.ranks)} predicted"]
    problems = []
    for rank, (want, got) in enumerate(zip(prediction.ranks, measured)):
        got = merge_traffic(got)
        for kind in sorted(set(want) | set(got)):
            w = want.get(kind, {"calls": 0, "sent": 0, "recv": 0})
            g = got.get(kind, {"calls": 0, "sent": 0, "recv": 0})
            for key in ("calls", "sent", "recv"):
                if w[key] != g[key]:
                    problems.append(
                        f"rank {rank} {kind} {key}: predicted {w[key]}, measured {g[key]}"
                    )
    return problems

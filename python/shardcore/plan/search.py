"""``auto_plan``: enumerate every feasible (tp, pp, dp, ep) and rank them with an analytic model.

The cost model, per pipeline stage (its first rank stands for the stage; tp rank 0 holds the
larger block of any uneven split):

* compute: ``2 * active weights of the rank * B`` FLOPs plus attention over the context
  (``4 * B * context * local query heads * head_dim`` per layer), at the device's peak.
* memory: the weights the step touches (every dense weight; each held expert with the
  probability that one of the step's tokens picks it) plus the KV cache read
  (``B * context * KV bytes per token``), at the device's memory bandwidth.
* communication (α–β): a ring all-reduce costs ``2(n-1) α + 2(n-1)/n S / β``, an all-to-allv
  ``(n-1) α + bytes / β``, a stage send ``α + S / β``, with β and α those of the slowest link
  in the group (inter-node when a TP group spans nodes).
* step time of a stage: ``max(compute, memory) + communication`` (no overlap assumed).

Objectives. ``throughput``: decode in steady state with as many sequences of ``context``
tokens in flight per replica as the KV cache holds (capped at ``max_batch``), split into
``pp`` micro-batches of B sequences so every stage stays busy: tokens/s = dp * B / (slowest
stage step). ``latency``: one sequence, one token through every stage in turn: the sum of the
stage steps plus the sends between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PlanError
from .config import ParallelConfig, feasible_configs
from .memory import kv_bytes_per_token
from .plan import Plan, make_plan
from .specs import GB, ClusterSpec, ModelSpec, dtype_bytes

DEFAULT_CONTEXT = 4096
DEFAULT_MAX_BATCH = 4096


@dataclass(frozen=True)
class StageCost:
    """Seconds one stage spends on a decode step of B tokens."""

    compute: float
    weights: float
    kv: float
    comm: float

    @property
    def step(self) -> float:
        """max(compute, memory) + communication."""
        return max(self.compute, self.weights + self.kv) + self.comm


@dataclass
class Candidate:
    """One configuration with its numbers (filled in by ``evaluate``)."""

    config: ParallelConfig
    plan: Plan
    fits: bool = True
    weights_gb: float = 0.0
    free_gb: float = 0.0
    kv_per_token: float = 0.0
    kv_replication: int = 1
    tp_spans_nodes: bool = False
    sequences: int = 0  # sequences of `context` tokens in flight per replica
    micro_batch: float = 0.0  # B
    stage: StageCost = field(default_factory=lambda: StageCost(0.0, 0.0, 0.0, 0.0))  # slowest
    throughput: float = 0.0  # tokens/s over all replicas
    latency: float = float("inf")  # seconds per token for one sequence
    latency_parts: StageCost = field(default_factory=lambda: StageCost(0.0, 0.0, 0.0, 0.0))
    comm_bytes_per_token: float = 0.0
    score: float = 0.0
    why: str = ""
    notes: list = field(default_factory=list)

    def row(self) -> dict:
        """Table row of strings."""
        c = self.config
        st = self.stage
        return {
            "tp": str(c.tp),
            "pp": str(c.pp),
            "dp": str(c.dp),
            "ep": str(c.ep),
            "weights GB/rank": f"{self.weights_gb:.1f}",
            "free GB": f"{self.free_gb:.1f}",
            "KV B/tok/rank": f"{self.kv_per_token:.0f}",
            "KV copies": str(self.kv_replication),
            "seqs/replica": str(self.sequences) if self.fits else "-",
            "B": f"{self.micro_batch:.0f}" if self.fits else "-",
            "step ms": f"{st.step * 1e3:.2f}" if self.fits else "-",
            "comm ms": f"{st.comm * 1e3:.2f}" if self.fits else "-",
            "tok/s": f"{self.throughput:.0f}" if self.fits else "-",
            "latency ms": f"{self.latency * 1e3:.2f}" if self.fits else "-",
            "TP spans nodes": "yes" if self.tp_spans_nodes else "",
        }


def _ring_time(n: int, nbytes: float, bw: float, alpha: float) -> float:
    return 0.0 if n <= 1 else 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes / bw


def _stage_cost(
    plan: Plan, stage: int, B: float, context: int, act_b: float, kv_dtype: str | None
) -> StageCost:
    m, c, cl = plan.model, plan.config, plan.cluster
    unit = cl.unit
    rank = c.rank(0, stage, 0)
    r = plan.ranks[rank]
    h = m.hidden_size
    wb = m.weight_bytes_per_element
    moe_layers = sum(1 for i in range(*r.layers) if m.is_moe_layer(i))
    held_experts = r.experts[1] - r.experts[0]
    fe_local = r.expert_ffn[1] - r.expert_ffn[0]
    expert_elems = moe_layers * held_experts * 3 * h * fe_local
    vocab_rows = (r.vocab[1] - r.vocab[0]) * h
    embed_elems = (
        vocab_rows if (r.has_embedding and not (r.has_lm_head and m.tie_embeddings)) else 0
    )
    dense_elems = plan.weight_elements(rank) - expert_elems - embed_elems
    # tokens whose routing reaches this rank's experts in one step
    routed_tokens = B * max(1.0, c.ep / c.tp) if c.ep > 1 else B
    p_touch = (
        1.0 - (1.0 - m.experts_per_token / m.num_experts) ** routed_tokens if m.num_experts else 0.0
    )
    weights = (dense_elems + expert_elems * p_touch) * wb / unit.memory_bandwidth
    kv = B * context * kv_bytes_per_token(plan, rank, kv_dtype) / unit.memory_bandwidth
    active_experts = moe_layers * m.experts_per_token * 3 * h * m.expert_ffn_size / c.tp
    q_local = r.q_heads[1] - r.q_heads[0]
    flops = (
        2 * B * (dense_elems + active_experts)
        + 4 * B * context * q_local * m.head_dim * r.num_layers
    )
    compute = flops / unit.peak_flops
    comm = 0.0
    msg = B * h * act_b
    if c.tp > 1:
        bw, alpha, _ = cl.group_link(plan.tp_group(rank))
        n_ar = 2 * r.num_layers + (1 if r.has_embedding else 0)
        comm += n_ar * _ring_time(c.tp, msg, bw, alpha)
    if c.ep > 1 and moe_layers:
        bw, alpha, _ = cl.group_link(plan.ep_group(rank))
        rows = B / c.tp * m.experts_per_token * (c.ep - 1) / c.ep
        comm += 2 * moe_layers * ((c.ep - 1) * alpha + rows * h * act_b / bw)
    if stage < c.pp - 1:
        bw, alpha, _ = cl.link(rank, plan.pp_peers(rank)[1])
        comm += alpha + msg / bw
    return StageCost(compute=compute, weights=weights, kv=kv, comm=comm)


def evaluate(
    model: ModelSpec,
    cluster: ClusterSpec,
    config: ParallelConfig,
    *,
    context: int = DEFAULT_CONTEXT,
    max_batch: int = DEFAULT_MAX_BATCH,
    dtype: str | None = None,
    kv_dtype: str | None = None,
) -> Candidate:
    """The cost-model numbers of one feasible configuration."""
    plan = make_plan(model, cluster, config)
    m, c = plan.model, config
    act_b = dtype_bytes(dtype or m.dtype)
    cand = Candidate(config=config, plan=plan, notes=list(plan.notes))
    reports = [plan.memory(c.rank(0, s, 0), kv_dtype=kv_dtype) for s in range(c.pp)]
    worst = max(reports, key=lambda x: x.weights)
    cand.weights_gb = worst.weights / GB
    cand.free_gb = min(x.free for x in reports) / GB
    cand.kv_per_token = max(x.kv_per_token for x in reports)
    cand.kv_replication = worst.kv_replication
    cand.tp_spans_nodes = any(n.startswith("TP group spans nodes") for n in plan.notes)
    cand.sequences = min(min(x.kv_capacity_tokens for x in reports) // context, max_batch)
    if cand.sequences < 1:
        cand.fits = False
        cand.why = (
            f"does not fit: {cand.free_gb:.1f} GB free per rank after "
            f"{cand.weights_gb:.1f} GB of weights, less than one {context}-token sequence"
        )
        return cand
    B = cand.sequences / c.pp
    cand.micro_batch = B
    stages = [_stage_cost(plan, s, B, context, act_b, kv_dtype) for s in range(c.pp)]
    cand.stage = max(stages, key=lambda x: x.step)
    cand.throughput = c.dp * B / cand.stage.step
    single = [_stage_cost(plan, s, 1, context, act_b, kv_dtype) for s in range(c.pp)]
    cand.latency = sum(x.step for x in single)
    cand.latency_parts = StageCost(
        *(sum(getattr(x, f) for x in single) for f in ("compute", "weights", "kv", "comm"))
    )
    h = m.hidden_size
    cand.comm_bytes_per_token = (
        2 * m.num_layers * 2 * (c.tp - 1) / c.tp * h * act_b + (c.pp - 1) * h * act_b
    )
    return cand


def _explain(cand: Candidate, win: Candidate, objective: str) -> str:
    if not cand.fits:
        return cand.why
    if cand is win:
        return "winner"
    parts = []
    if objective == "throughput":
        parts.append(f"{cand.throughput:.0f} vs {win.throughput:.0f} tok/s")
    else:
        parts.append(f"{cand.latency * 1e3:.2f} vs {win.latency * 1e3:.2f} ms/token")
    if cand.tp_spans_nodes:
        parts.append(
            f"its TP group spans nodes, so {2 * cand.plan.model.num_layers} "
            f"all-reduces per token cross the network "
            f"(comm {cand.stage.comm * 1e3:.2f} vs {win.stage.comm * 1e3:.2f} ms/step)"
        )
    if cand.kv_replication > 1:
        parts.append(
            f"tp={cand.config.tp} > {cand.plan.model.num_kv_heads} KV heads stores each "
            f"KV head {cand.kv_replication}x, so {cand.kv_replication - 1} of every "
            f"{cand.kv_replication} KV-cache bytes are copies ({cand.kv_per_token:.0f} "
            f"B/token/rank, the same as at tp={cand.plan.model.num_kv_heads}) and the TP "
            f"group adds all-reduce traffic without shrinking the KV cache"
        )
    if objective == "throughput":
        if cand.sequences < win.sequences:
            parts.append(f"room for {cand.sequences} sequences per replica vs {win.sequences}")
        if cand.micro_batch < win.micro_batch:
            parts.append(
                f"micro-batch of {cand.micro_batch:.0f} vs {win.micro_batch:.0f} "
                f"sequences, so each weight read serves fewer tokens"
            )
        st, ws = cand.stage, win.stage
        parts.append(
            f"slowest stage step {st.step * 1e3:.2f} ms (weights "
            f"{st.weights * 1e3:.2f}, KV {st.kv * 1e3:.2f}, compute "
            f"{st.compute * 1e3:.2f}, comm {st.comm * 1e3:.2f}) vs {ws.step * 1e3:.2f}"
        )
    else:
        lp, wp = cand.latency_parts, win.latency_parts
        parts.append(
            f"per token: weights {lp.weights * 1e3:.2f} vs {wp.weights * 1e3:.2f} ms, "
            f"comm {lp.comm * 1e3:.2f} vs {wp.comm * 1e3:.2f} ms "
            f"({cand.comm_bytes_per_token / 1e3:.0f} vs "
            f"{win.comm_bytes_per_token / 1e3:.0f} kB sent per rank)"
        )
    return "; ".join(parts)


@dataclass
class SearchResult:
    """Every candidate (ranked best first, the ones that do not fit last) and the winner."""

    objective: str
    candidates: list
    context: int

    @property
    def best(self) -> Candidate:
        """The winning candidate."""
        return self.candidates[0]

    @property
    def plan(self) -> Plan:
        """The winner's plan."""
        return self.best.plan

    def why(self) -> str:
        """Why the winner wins, in sentences: its numbers, then the runner-up's and, when the
        winner uses EP, the best configuration without it."""
        b = self.best
        m, c = b.plan.model, b.config
        st = b.stage
        metric = (
            f"{b.throughput:.0f} tok/s"
            if self.objective == "throughput"
            else f"{b.latency * 1e3:.2f} ms/token"
        )
        if self.objective == "throughput":
            lines = [
                f"{c} wins on throughput with {metric}: {b.weights_gb:.1f} GB of weights "
                f"per rank leave {b.free_gb:.1f} GB for the KV cache, {b.sequences} "
                f"sequences of {self.context} tokens per replica, run as {c.pp} "
                f"micro-batch(es) of {b.micro_batch:.0f} on {c.dp} replica(s); slowest "
                f"stage step {st.step * 1e3:.2f} ms (weights {st.weights * 1e3:.2f}, KV "
                f"{st.kv * 1e3:.2f}, compute {st.compute * 1e3:.2f}, comm "
                f"{st.comm * 1e3:.2f} ms)."
            ]
        else:
            lp = b.latency_parts
            lines = [
                f"{c} wins on latency with {metric}: one token of one {self.context}-token "
                f"sequence passes {c.pp} stage(s) of tp={c.tp} ranks, reading weights "
                f"{lp.weights * 1e3:.2f} ms and KV {lp.kv * 1e3:.2f} ms (compute "
                f"{lp.compute * 1e3:.2f} ms) plus {lp.comm * 1e3:.2f} ms of "
                f"communication."
            ]
        if c.ep > 1:
            lines.append(
                f"EP={c.ep}: each rank holds {m.num_experts // c.ep} whole experts "
                f"instead of a 1/{c.tp} slice of all {m.num_experts}, so one read of "
                f"an expert's weights serves the tokens of "
                f"{max(1, c.ep // c.tp)} replica(s)."
            )
        runner = next((x for x in self.candidates[1:] if x.fits), None)
        if runner is not None:
            lines.append(f"Runner-up {runner.config}: {runner.why}.")
        if c.ep > 1:
            plain = next((x for x in self.candidates if x.fits and x.config.ep == 1), None)
            if plain is not None:
                lines.append(f"Best without EP, {plain.config}: {plain.why}.")
        return "\n".join(lines)


def auto_plan(
    model: ModelSpec | str,
    cluster: ClusterSpec,
    objective: str = "latency",
    *,
    context: int = DEFAULT_CONTEXT,
    max_batch: int = DEFAULT_MAX_BATCH,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    tp: int | None = None,
    pp: int | None = None,
    dp: int | None = None,
    ep: int | None = None,
) -> SearchResult:
    """Rank every feasible (tp, pp, dp, ep) for ``model`` on ``cluster`` by ``objective``
    ("latency": seconds per token of one sequence; "throughput": decode tokens/s with the KV
    cache full of ``context``-token sequences). ``tp``/``pp``/``dp``/``ep`` pin a degree (e.g.
    ``ep=1`` searches TP/PP/DP only). Raises ``PlanError`` when nothing fits."""
    if isinstance(model, str):
        model = ModelSpec.preset(model)
    if objective not in ("latency", "throughput"):
        raise ValueError(f"objective must be 'latency' or 'throughput', got {objective!r}")
    pinned = {"tp": tp, "pp": pp, "dp": dp, "ep": ep}
    configs = [
        c
        for c in feasible_configs(model, cluster)
        if all(v is None or getattr(c, k) == v for k, v in pinned.items())
    ]
    if not configs:
        raise PlanError(
            f"no feasible configuration of {model.name} on {cluster.world_size} "
            f"devices with {', '.join(f'{k}={v}' for k, v in pinned.items() if v)}"
        )
    cands = [
        evaluate(
            model, cluster, c, context=context, max_batch=max_batch, dtype=dtype, kv_dtype=kv_dtype
        )
        for c in configs
    ]
    fitting = [c for c in cands if c.fits]
    if not fitting:
        raise PlanError(
            f"no configuration of {model.name} fits {cluster.world_size} x "
            f"{cluster.unit.name}: " + "; ".join(f"({c.config}) {c.why}" for c in cands[:8])
        )

    def key(c: Candidate) -> tuple:
        if objective == "throughput":
            return (-c.throughput, c.latency, c.config.ep, c.config.pp)
        return (c.latency, -c.throughput, c.config.ep, c.config.pp)

    fitting.sort(key=key)
    for c in fitting:
        c.score = c.throughput if objective == "throughput" else c.latency
    ranked = fitting + [c for c in cands if not c.fits]
    for c in ranked:
        c.why = _explain(c, fitting[0], objective)
    return SearchResult(objective=objective, candidates=ranked, context=context)

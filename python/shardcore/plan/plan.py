"""``Plan``: which rank holds which layers, weight slices and experts, and what it sends.

Sharding rules (one table, applied by ``Plan.weight_shards``; shapes are HF ``[out, in]``):

================================  =========  ===============================================
tensor                            dim split  rule
================================  =========  ===============================================
self_attn.q_proj.weight           0          by query heads, ``num_heads / tp`` heads per rank
self_attn.k_proj/v_proj.weight    0          by KV heads; tp > kv: rank t holds head
                                             ``t // (tp / kv)`` (each head on tp/kv ranks)
self_attn.o_proj.weight           1          the same query heads as q_proj (row-parallel)
mlp.gate_proj/up_proj.weight      0          ffn split in contiguous blocks (column-parallel)
mlp.down_proj.weight              1          the same ffn block (row-parallel)
mlp.experts.{e}.*  (ep == 1)      0 / 1      every expert split like the dense MLP
mlp.experts.{e}.*  (ep > 1)       none       whole experts; EP rank j holds experts
                                             ``[j*E/ep, (j+1)*E/ep)``
mlp.shared_experts.*              0 / 1      split like the dense MLP
model.embed_tokens.weight         0          vocab-parallel, first stage (and the last when
                                             tied, where it is the LM head)
lm_head.weight                    0          vocab-parallel, last stage
norms, q_norm/k_norm, mlp.gate    none       replicated on every rank of the stage
================================  =========  ===============================================

Uneven splits (ffn, vocab) are contiguous blocks, the first ``total % tp`` ranks one element
larger (``split_range``). Heads always divide evenly (``check_config`` enforces it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import PlanError
from .config import ParallelConfig, check_config, default_layer_partition, split_range, split_sizes
from .specs import GB, GIB, ClusterSpec, ModelSpec

PLAN_FORMAT = 1

Range = tuple  # (start, stop)


@dataclass(frozen=True)
class RankPlan:
    """What one rank holds: coordinates, layers, head/ffn/vocab ranges and experts."""

    rank: int
    node: int
    card: int
    dp: int
    pp: int
    tp: int
    ep: int  # EP rank inside its EP group (0 when ep == 1)
    ep_group: int  # which EP group of its stage
    layers: Range  # [start, stop) of decoder layers
    q_heads: Range
    kv_heads: Range
    ffn: Range  # dense MLP intermediate block
    expert_ffn: Range  # block of every held expert's intermediate (whole when ep > 1)
    shared_ffn: Range
    vocab: Range
    experts: Range  # [first, stop) of the experts whose weights it holds
    has_embedding: bool
    has_lm_head: bool

    @property
    def coords(self) -> dict:
        """{dp, pp, tp, ep} of this rank."""
        return {"dp": self.dp, "pp": self.pp, "tp": self.tp, "ep": self.ep}

    @property
    def num_layers(self) -> int:
        """Number of decoder layers on this rank."""
        return self.layers[1] - self.layers[0]


def weight_tensors(model: ModelSpec) -> dict:
    """Every weight tensor of ``model``: HF name -> shape, in checkpoint order."""
    h, d = model.hidden_size, model.head_dim
    out: dict = {"model.embed_tokens.weight": (model.vocab_size, h)}
    for i in range(model.num_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "self_attn.q_proj.weight"] = (model.q_size, h)
        out[p + "self_attn.k_proj.weight"] = (model.kv_size, h)
        out[p + "self_attn.v_proj.weight"] = (model.kv_size, h)
        out[p + "self_attn.o_proj.weight"] = (h, model.q_size)
        if model.qk_norm:
            out[p + "self_attn.q_norm.weight"] = (d,)
            out[p + "self_attn.k_norm.weight"] = (d,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        if model.is_moe_layer(i):
            out[p + "mlp.gate.weight"] = (model.num_experts, h)
            f = model.expert_ffn_size
            for e in range(model.num_experts):
                q = f"{p}mlp.experts.{e}."
                out[q + "gate_proj.weight"] = (f, h)
                out[q + "up_proj.weight"] = (f, h)
                out[q + "down_proj.weight"] = (h, f)
            if model.shared_ffn_size:
                fs = model.shared_ffn_size
                out[p + "mlp.shared_experts.gate_proj.weight"] = (fs, h)
                out[p + "mlp.shared_experts.up_proj.weight"] = (fs, h)
                out[p + "mlp.shared_experts.down_proj.weight"] = (h, fs)
        else:
            f = model.ffn_size
            out[p + "mlp.gate_proj.weight"] = (f, h)
            out[p + "mlp.up_proj.weight"] = (f, h)
            out[p + "mlp.down_proj.weight"] = (h, f)
    out["model.norm.weight"] = (h,)
    if not model.tie_embeddings:
        out["lm_head.weight"] = (model.vocab_size, h)
    return out


def _full(shape) -> tuple:
    return tuple((0, n) for n in shape)


@dataclass(frozen=True)
class Plan:
    """A complete TP/PP/DP/EP plan: one ``RankPlan`` per rank plus the specs it came from."""

    model: ModelSpec
    cluster: ClusterSpec
    config: ParallelConfig
    layer_partition: tuple
    ranks: tuple
    notes: tuple = field(default=())

    # -- groups ---------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return len(self.ranks)

    def tp_group(self, rank: int) -> tuple:
        """Ranks of ``rank``'s TP group, in tp order."""
        r = self.ranks[rank]
        return tuple(self.config.rank(r.dp, r.pp, t) for t in range(self.config.tp))

    def stage_ranks(self, pp: int) -> tuple:
        """Ranks of pipeline stage ``pp`` (every DP replica), in rank order."""
        n = self.config.tp * self.config.dp
        return tuple(range(pp * n, (pp + 1) * n))

    def ep_group(self, rank: int) -> tuple:
        """Ranks of ``rank``'s EP group (its stage's consecutive ep ranks), in EP-rank order."""
        r = self.ranks[rank]
        start = r.pp * self.config.tp * self.config.dp + r.ep_group * self.config.ep
        return tuple(range(start, start + self.config.ep))

    def dp_group(self, rank: int) -> tuple:
        """Ranks holding the same shards as ``rank`` in the other DP replicas."""
        r = self.ranks[rank]
        return tuple(self.config.rank(d, r.pp, r.tp) for d in range(self.config.dp))

    def pp_peers(self, rank: int) -> tuple:
        """(previous stage rank or None, next stage rank or None) with the same dp and tp."""
        r = self.ranks[rank]
        prev = self.config.rank(r.dp, r.pp - 1, r.tp) if r.pp > 0 else None
        nxt = self.config.rank(r.dp, r.pp + 1, r.tp) if r.pp < self.config.pp - 1 else None
        return prev, nxt

    def replica_ranks(self, dp: int) -> tuple:
        """Every rank of DP replica ``dp``."""
        c = self.config
        return tuple(c.rank(dp, s, t) for s in range(c.pp) for t in range(c.tp))

    def expert_owner(self, rank: int, expert: int) -> int:
        """The rank of ``rank``'s EP group that holds ``expert`` (``rank`` itself when ep == 1)."""
        if not 0 <= expert < self.model.num_experts:
            raise ValueError(f"expert {expert} out of range [0, {self.model.num_experts})")
        if self.config.ep == 1:
            return rank
        return self.ep_group(rank)[expert // (self.model.num_experts // self.config.ep)]

    def owned_tokens(self, rank: int, tokens: int) -> tuple:
        """(start, stop) of the tokens of a chunk that ``rank`` routes through EP: its TP
        block of the replica's ``tokens`` (all of them when tp == 1)."""
        return split_range(tokens, self.config.tp, self.ranks[rank].tp)

    def replica_batches(self, batch: int) -> list:
        """Sequences per DP replica for a batch of ``batch`` (first ``batch % dp`` one more)."""
        return split_sizes(batch, self.config.dp)

    def stage_of_layer(self, layer: int) -> int:
        """The pipeline stage that runs decoder layer ``layer``."""
        start = 0
        for s, n in enumerate(self.layer_partition):
            if start <= layer < start + n:
                return s
            start += n
        raise ValueError(f"layer {layer} out of range")

    # -- weights --------------------------------------------------------------------------
    def weight_shards(self, rank: int) -> dict:
        """Every weight tensor ``rank`` holds: HF name -> ((start, stop) per dim)."""
        m, r = self.model, self.ranks[rank]
        h, d = m.hidden_size, m.head_dim
        q = (r.q_heads[0] * d, r.q_heads[1] * d)
        kv = (r.kv_heads[0] * d, r.kv_heads[1] * d)
        out: dict = {}
        if r.has_embedding:
            out["model.embed_tokens.weight"] = (r.vocab, (0, h))
        for i in range(*r.layers):
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = ((0, h),)
            out[p + "self_attn.q_proj.weight"] = (q, (0, h))
            out[p + "self_attn.k_proj.weight"] = (kv, (0, h))
            out[p + "self_attn.v_proj.weight"] = (kv, (0, h))
            out[p + "self_attn.o_proj.weight"] = ((0, h), q)
            if m.qk_norm:
                out[p + "self_attn.q_norm.weight"] = ((0, d),)
                out[p + "self_attn.k_norm.weight"] = ((0, d),)
            out[p + "post_attention_layernorm.weight"] = ((0, h),)
            if m.is_moe_layer(i):
                out[p + "mlp.gate.weight"] = ((0, m.num_experts), (0, h))
                f = r.expert_ffn
                for e in range(*r.experts):
                    pe = f"{p}mlp.experts.{e}."
                    out[pe + "gate_proj.weight"] = (f, (0, h))
                    out[pe + "up_proj.weight"] = (f, (0, h))
                    out[pe + "down_proj.weight"] = ((0, h), f)
                if m.shared_ffn_size:
                    f = r.shared_ffn
                    out[p + "mlp.shared_experts.gate_proj.weight"] = (f, (0, h))
                    out[p + "mlp.shared_experts.up_proj.weight"] = (f, (0, h))
                    out[p + "mlp.shared_experts.down_proj.weight"] = ((0, h), f)
            else:
                f = r.ffn
                out[p + "mlp.gate_proj.weight"] = (f, (0, h))
                out[p + "mlp.up_proj.weight"] = (f, (0, h))
                out[p + "mlp.down_proj.weight"] = ((0, h), f)
        if r.has_lm_head:
            out["model.norm.weight"] = ((0, h),)
            name = "model.embed_tokens.weight" if m.tie_embeddings else "lm_head.weight"
            out[name] = (r.vocab, (0, h))
        return out

    def replication(self, name: str) -> int:
        """How many ranks hold each element of weight tensor ``name`` (the same for all of them).

        Per DP replica: once for TP-split tensors, ``tp/kv`` times for K/V projections when tp
        exceeds the KV heads, ``tp`` times for replicated norms and the router, twice for tied
        embeddings when pp > 1; experts with ep > 1 are held ``tp*dp/ep`` times in total.
        """
        c, m = self.config, self.model
        if name not in weight_tensors_cached(m):
            raise KeyError(f"{name!r} is not a weight of {m.name}")
        if ".mlp.experts." in name and c.ep > 1:
            return c.tp * c.dp // c.ep
        per_replica = 1
        if (
            name.endswith(("layernorm.weight", "q_norm.weight", "k_norm.weight", "mlp.gate.weight"))
            or name == "model.norm.weight"
        ):
            per_replica = c.tp
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            per_replica = max(1, c.tp // m.num_kv_heads)
        elif name == "model.embed_tokens.weight" and m.tie_embeddings and c.pp > 1:
            per_replica = 2
        return per_replica * c.dp

    def weight_elements(self, rank: int) -> int:
        """Weight elements ``rank`` holds, counted in closed form (no per-tensor listing)."""
        m, r = self.model, self.ranks[rank]
        h, d = m.hidden_size, m.head_dim
        qn = (r.q_heads[1] - r.q_heads[0]) * d
        kvn = (r.kv_heads[1] - r.kv_heads[0]) * d
        attn = 2 * h + 2 * qn * h + 2 * kvn * h + (2 * d if m.qk_norm else 0)
        n_moe = sum(1 for i in range(*r.layers) if m.is_moe_layer(i))
        n_dense = r.num_layers - n_moe
        fe = r.expert_ffn[1] - r.expert_ffn[0]
        moe = (
            m.num_experts * h
            + (r.experts[1] - r.experts[0]) * 3 * h * fe
            + 3 * h * (r.shared_ffn[1] - r.shared_ffn[0])
        )
        dense = 3 * h * (r.ffn[1] - r.ffn[0])
        total = r.num_layers * attn + n_moe * moe + n_dense * dense
        vocab = (r.vocab[1] - r.vocab[0]) * h
        if r.has_embedding:
            total += vocab
        if r.has_lm_head:
            total += h
            if not (m.tie_embeddings and r.has_embedding):
                total += vocab  # lm_head, or the tied embedding copy on the last stage
        return total

    def weight_bytes(self, rank: int) -> float:
        """Weight bytes ``rank`` holds in the model's dtype."""
        return self.weight_elements(rank) * self.model.weight_bytes_per_element

    # -- memory, traffic (thin wrappers over memory.py / traffic.py) ----------------------
    def memory(self, rank: int = 0, **kw: Any):
        """``MemoryReport`` of ``rank`` (see ``shardcore.plan.memory.memory_report``)."""
        from .memory import memory_report

        return memory_report(self, rank, **kw)

    def step_collectives(self, rank: int, tokens: int = 1, dtype: str | None = None) -> list:
        """Collectives ``rank`` makes in one decode step of ``tokens`` sequences per replica."""
        from .traffic import step_collectives

        return step_collectives(self, rank, tokens=tokens, dtype=dtype)

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-data form, the source of ``to_json`` and ``hash``."""
        return {
            "format": PLAN_FORMAT,
            "model": asdict(self.model),
            "cluster": self.cluster.to_dict(),
            "config": asdict(self.config),
            "layer_partition": list(self.layer_partition),
            "notes": list(self.notes),
            "ranks": [asdict(r) for r in self.ranks],
        }

    def to_json(self, indent: int | None = 1) -> str:
        """JSON text of the plan (keys sorted, so equal plans give equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no whitespace): stable across runs."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Inverse of ``to_dict``."""
        if d.get("format") != PLAN_FORMAT:
            raise PlanError(f"unsupported plan format {d.get('format')!r}")
        md = dict(d["model"])
        md["mlp_only_layers"] = tuple(md.get("mlp_only_layers", ()))
        fields: list = [
            {k: (tuple(v) if isinstance(v, list) else v) for k, v in r.items()} for r in d["ranks"]
        ]
        ranks = tuple(RankPlan(**f) for f in fields)
        return cls(
            model=ModelSpec(**md),
            cluster=ClusterSpec.from_dict(d["cluster"]),
            config=ParallelConfig(**d["config"]),
            layer_partition=tuple(d["layer_partition"]),
            ranks=ranks,
            notes=tuple(d.get("notes", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Inverse of ``to_json``."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str) -> None:
        """Write ``to_json()`` to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str) -> Plan:
        """Read a plan written by ``save``."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())

    # -- text -----------------------------------------------------------------------------
    def summary(self) -> str:
        """One line: model, cluster, degrees and hash."""
        c = self.cluster
        return (
            f"{self.model.name} on {c.nodes}x{c.devices_per_node} {c.device.name} "
            f"({self.world_size} ranks): {self.config}, layers per stage "
            f"{list(self.layer_partition)}, plan {self.hash[:12]}"
        )

    def rank_rows(self) -> list:
        """Table rows (list of dicts of strings), one per rank."""
        rows = []
        for r in self.ranks:
            mem = self.memory(r.rank)
            rows.append(
                {
                    "rank": str(r.rank),
                    "node": str(r.node),
                    **({"card": str(r.card)} if self.cluster.ranks_per_card > 1 else {}),
                    "dp,pp,tp,ep": f"{r.dp},{r.pp},{r.tp},{r.ep}",
                    "layers": f"{r.layers[0]}-{r.layers[1] - 1}",
                    "q heads": f"{r.q_heads[0]}-{r.q_heads[1] - 1}",
                    "kv heads": f"{r.kv_heads[0]}-{r.kv_heads[1] - 1}",
                    "experts": self._experts_text(r),
                    "vocab": (
                        f"{r.vocab[0]}-{r.vocab[1] - 1}"
                        if r.has_embedding or r.has_lm_head
                        else "-"
                    ),
                    "weights GB/GiB": f"{mem.weights / GB:.2f}/{mem.weights / GIB:.2f}",
                    "KV B/token": f"{mem.kv_per_token:.0f}",
                    "free GB/GiB": f"{mem.free / GB:.2f}/{mem.free / GIB:.2f}",
                    "KV tokens": f"{mem.kv_capacity_tokens}",
                }
            )
        return rows

    def _experts_text(self, r: RankPlan) -> str:
        if not self.model.is_moe:
            return "-"
        held = f"{r.experts[0]}-{r.experts[1] - 1}"
        if self.config.ep > 1:
            return held + " whole"
        return f"all, ffn {r.expert_ffn[0]}-{r.expert_ffn[1] - 1}"

    def __str__(self) -> str:
        from .format import plan_text

        return plan_text(self)


_SHAPES_CACHE: dict = {}


def weight_tensors_cached(model: ModelSpec) -> dict:
    """``weight_tensors(model)``, memoised per model."""
    got = _SHAPES_CACHE.get(model)
    if got is None:
        if len(_SHAPES_CACHE) > 16:
            _SHAPES_CACHE.clear()
        got = _SHAPES_CACHE[model] = weight_tensors(model)
    return got


def make_plan(
    model: ModelSpec | str,
    cluster: ClusterSpec | int,
    config: ParallelConfig | None = None,
    *,
    tp: int | None = None,
    pp: int | None = None,
    dp: int | None = None,
    ep: int | None = None,
    layer_partition: Sequence[int] | None = None,
) -> Plan:
    """Validate ``config`` (or tp/pp/dp/ep; dp defaults to what fills the cluster) and build
    the plan. Raises ``PlanError`` naming the broken constraint and listing what would work.

    ``model`` may be a preset name; ``cluster`` may be a world size, meaning one host of that
    many ``cpu`` devices (what ``shardcore.runtime`` runs on)."""
    if isinstance(model, str):
        model = ModelSpec.preset(model)
    if isinstance(cluster, int):
        cluster = ClusterSpec.make("cpu", cluster)
    if config is None:
        if pp is None and layer_partition is not None:
            pp = len(layer_partition)
        tp, pp, ep = (1 if v is None else v for v in (tp, pp, ep))
        if dp is None:
            ParallelConfig(tp, pp, 1, ep)  # validates the given degrees first
            dp = max(1, cluster.world_size // (tp * pp))
        config = ParallelConfig(tp, pp, dp, ep)
    notes = check_config(model, cluster, config, layer_partition)
    parts = (
        tuple(int(p) for p in layer_partition)
        if layer_partition is not None
        else default_layer_partition(model.num_layers, config.pp)
    )
    starts = [sum(parts[:s]) for s in range(config.pp)]
    m, c = model, config
    ranks = []
    for rank in range(c.world_size):
        dp_i, pp_i, tp_i = c.coords(rank)
        stage_local = dp_i * c.tp + tp_i
        q_per = m.num_heads // c.tp
        if c.tp <= m.num_kv_heads:
            kv_per = m.num_kv_heads // c.tp
            kv_heads = (tp_i * kv_per, (tp_i + 1) * kv_per)
        else:
            head = tp_i // (c.tp // m.num_kv_heads)
            kv_heads = (head, head + 1)
        if c.ep > 1:
            per = m.num_experts // c.ep
            j = stage_local % c.ep
            experts = (j * per, (j + 1) * per)
            expert_ffn = (0, m.expert_ffn_size)
        else:
            experts = (0, m.num_experts)
            expert_ffn = split_range(m.expert_ffn_size, c.tp, tp_i)
        ranks.append(
            RankPlan(
                rank=rank,
                node=cluster.node_of(rank),
                card=cluster.card_of(rank),
                dp=dp_i,
                pp=pp_i,
                tp=tp_i,
                ep=stage_local % c.ep,
                ep_group=stage_local // c.ep,
                layers=(starts[pp_i], starts[pp_i] + parts[pp_i]),
                q_heads=(tp_i * q_per, (tp_i + 1) * q_per),
                kv_heads=kv_heads,
                ffn=split_range(m.ffn_size, c.tp, tp_i),
                expert_ffn=expert_ffn,
                shared_ffn=split_range(m.shared_ffn_size, c.tp, tp_i),
                vocab=split_range(m.vocab_size, c.tp, tp_i),
                experts=experts,
                has_embedding=pp_i == 0,
                has_lm_head=pp_i == c.pp - 1,
            )
        )
    return Plan(
        model=model,
        cluster=cluster,
        config=config,
        layer_partition=parts,
        ranks=tuple(ranks),
        notes=tuple(notes),
    )


__all__ = ["Plan", "RankPlan", "make_plan", "weight_tensors"]

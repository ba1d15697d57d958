"""The decoder (Qwen3, Qwen3-MoE, Llama-style) for one rank's shard, with its KV cache.

One code path serves the single-process model and every shard: a rank holds the layers of its
pipeline stage, the heads and SwiGLU columns of its TP index and the experts of its EP index
(``RankLayout``); its groups' collectives are the identity when it is alone.

Per block: h += o_proj(attention(norm(h))) [TP all-reduce]; h += mlp(norm(h)) [TP all-reduce].
MoE blocks route each token to its top-k experts; with ep > 1 a rank takes its TP share of the
tokens, dispatches (token, expert) rows to the ranks holding the experts with an all-to-allv,
gets the expert outputs back with a second one and sums them weighted by the router.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checkpoint import Checkpoint
from .clock import Clock
from .config import ModelConfig
from .groups import AxisGroup
from .layout import RankLayout, split_even
from .linear import Linear
from .ops import (
    Precision,
    causal_attention,
    causal_attention_rows,
    fused_ops,
    norm,
    qk_norm_rope_,
    rope_tables,
    softmax_top_k,
    swiglu,
)


@dataclass
class ExpertWeights:
    gate_up: Linear  # [hidden, 2 * columns held]
    down: Linear  # [columns held, hidden]


@dataclass
class LayerWeights:
    input_norm: np.ndarray
    post_norm: np.ndarray
    qkv: Linear  # [hidden, (heads + 2 * kv_heads held) * head_dim]
    q_norm: np.ndarray | None
    k_norm: np.ndarray | None
    o: Linear  # [heads held * head_dim, hidden]
    mlp: ExpertWeights | None = None  # dense SwiGLU, column shard
    router: Linear | None = None  # [hidden, experts], whole on every rank
    experts: dict[int, ExpertWeights] = field(default_factory=dict)


@dataclass
class RoutingRecord:
    """The router's choice for the tokens a rank routed in one MoE block of one forward."""

    layer: int
    tokens: range  # this rank's rows of the forward's flattened [batch * new tokens]
    experts: np.ndarray  # [len(tokens), top_k]


def _linear_weight(ckpt: Checkpoint, name: str, precision: Precision, rows=None, cols=None):
    """Tensor ``name`` [out, in] sliced, transposed to [in, out], in the model dtype's values."""
    return precision.weight(ckpt.read(name, rows=rows, cols=cols)).T


class StageModel:
    """The layers, embedding and head one rank holds, with the KV cache of its requests."""

    def __init__(
        self,
        ckpt: Checkpoint,
        layout: RankLayout,
        precision: Precision,
        tp_group: AxisGroup,
        ep_group: AxisGroup,
        batch: int,
        max_len: int,
        record_routing: bool = False,
        backend: str = "numpy",
    ):
        cfg = ckpt.config
        self.cfg: ModelConfig = cfg
        self.layout = layout
        self.precision = precision
        self.tp_group = tp_group
        self.ep_group = ep_group
        self.clock = Clock()  # this rank's seconds in GEMMs and in communication
        tp_group.clock = ep_group.clock = self.clock
        self.record_routing = record_routing
        self.backend = backend
        self.routing: list[RoutingRecord] = []
        d = cfg.head_dim
        h0, h1 = layout.heads
        k0, k1 = layout.kv_heads
        self.n_heads, self.n_kv = h1 - h0, k1 - k0
        # Embedding and LM head: this rank's vocabulary rows (vocab-parallel over TP).
        self.embed: np.ndarray | None = None
        self.final_norm: np.ndarray | None = None
        self.lm_head: Linear | None = None
        if layout.has_embedding:
            self.embed = precision.weight(ckpt.read("model.embed_tokens.weight", rows=layout.vocab))
        if layout.has_lm_head:
            self.final_norm = precision.weight(ckpt.read("model.norm.weight"))
            head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
            if head not in ckpt:
                raise KeyError(f"{ckpt.directory!r} has no {head}")
            self.lm_head = self._linear(_linear_weight(ckpt, head, precision, rows=layout.vocab))
        self.vocab_blocks = split_even(cfg.vocab_size, layout.tp)
        holds_vocab = layout.has_embedding or layout.has_lm_head
        if holds_vocab and layout.vocab != self.vocab_blocks[layout.tp_index]:
            raise ValueError(
                f"rank {layout.rank}'s vocabulary rows {layout.vocab} are not block "
                f"{layout.tp_index} of {self.vocab_blocks}"
            )
        self.layers: dict[int, LayerWeights] = {}
        for i in layout.layers:
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv = np.concatenate(
                [
                    _linear_weight(ckpt, a + "q_proj.weight", precision, rows=(h0 * d, h1 * d)),
                    _linear_weight(ckpt, a + "k_proj.weight", precision, rows=(k0 * d, k1 * d)),
                    _linear_weight(ckpt, a + "v_proj.weight", precision, rows=(k0 * d, k1 * d)),
                ],
                axis=1,
            )
            lw = LayerWeights(
                input_norm=precision.weight(ckpt.read(p + "input_layernorm.weight")),
                post_norm=precision.weight(ckpt.read(p + "post_attention_layernorm.weight")),
                qkv=self._linear(qkv),
                q_norm=precision.weight(ckpt.read(a + "q_norm.weight")) if cfg.qk_norm else None,
                k_norm=precision.weight(ckpt.read(a + "k_norm.weight")) if cfg.qk_norm else None,
                o=self._linear(
                    _linear_weight(ckpt, a + "o_proj.weight", precision, cols=(h0 * d, h1 * d))
                ),
            )
            if i in cfg.moe_layers:
                lw.router = self._linear(_linear_weight(ckpt, p + "mlp.gate.weight", precision))
                for e in layout.experts:
                    lw.experts[e] = self._swiglu(
                        ckpt, f"{p}mlp.experts.{e}.", layout.expert_intermediate
                    )
            else:
                lw.mlp = self._swiglu(ckpt, p + "mlp.", layout.intermediate)
            self.layers[i] = lw
        self.k_cache: dict[int, np.ndarray] = {}
        self.v_cache: dict[int, np.ndarray] = {}
        self.max_len = 0
        # The slot cache of continuous batching (allocate_slots), apart from the batch cache.
        self.slot_k: dict[int, np.ndarray] = {}
        self.slot_v: dict[int, np.ndarray] = {}
        self.slot_len = 0
        self.allocate_cache(batch, max_len)

    def allocate_cache(self, batch: int, max_len: int) -> None:
        """A KV cache for ``batch`` sequences of up to ``max_len`` positions (the one held is
        kept when it has that batch and is long enough: a request writes every position it
        reads). Shape per layer: [batch, kv heads held, max_len, head_dim]."""
        held = next(iter(self.k_cache.values()), None)
        if held is not None and held.shape[0] == batch and self.max_len >= max_len:
            return
        shape = (batch, self.n_kv, max_len, self.cfg.head_dim)
        self.k_cache = {i: np.zeros(shape, np.float32) for i in self.layout.layers}
        self.v_cache = {i: np.zeros(shape, np.float32) for i in self.layout.layers}
        self.max_len = max_len

    def _swiglu(self, ckpt: Checkpoint, prefix: str, cols) -> ExpertWeights:
        gate = _linear_weight(ckpt, prefix + "gate_proj.weight", self.precision, rows=cols)
        up = _linear_weight(ckpt, prefix + "up_proj.weight", self.precision, rows=cols)
        down = _linear_weight(ckpt, prefix + "down_proj.weight", self.precision, cols=cols)
        return ExpertWeights(self._linear(np.concatenate([gate, up], axis=1)), self._linear(down))

    def _linear(self, weight: np.ndarray) -> Linear:
        return Linear(weight, self.precision, self.backend, self.clock)

    # -- the pieces of a forward -------------------------------------------------------------

    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """[B, T] token ids -> [B, T, hidden] (first stage): rows looked up where held, summed
        over TP (each id's row lives on exactly one rank, so the sum is exact)."""
        ids = np.asarray(ids)
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(
                f"token ids must be in [0, {self.cfg.vocab_size}), got [{ids.min()}, {ids.max()}]"
            )
        if self.embed is None:
            raise RuntimeError(f"rank {self.layout.rank} holds no embedding")
        v0, v1 = self.layout.vocab
        flat = ids.reshape(-1)
        held = (flat >= v0) & (flat < v1)
        h = np.zeros((flat.size, self.cfg.hidden_size), np.float32)
        h[held] = self.embed[flat[held] - v0]
        return self.tp_group.all_reduce(h).reshape(*ids.shape, -1)

    def head(self, h: np.ndarray) -> np.ndarray:
        """[R, hidden] final hidden states -> logits [R, vocab] (last stage): this rank's vocab
        block, then an all-gather of the TP ranks' blocks (padded to equal size)."""
        if self.lm_head is None or self.final_norm is None:
            raise RuntimeError(f"rank {self.layout.rank} holds no LM head")
        x = norm(h, self.final_norm, self.cfg.rms_norm_eps, self.precision)
        local = self.lm_head(x)
        if self.layout.tp == 1:
            return local
        rows = local.shape[0]
        block = max(e - b for b, e in self.vocab_blocks)
        buf = np.zeros((1, rows, block), self.precision.dtype)
        buf[0, :, : local.shape[1]] = local
        gathered = self.tp_group.all_gather(buf)
        return np.concatenate(
            [
                gathered[t, :, : e - b].astype(np.float32)
                for t, (b, e) in enumerate(self.vocab_blocks)
            ],
            axis=1,
        )

    def forward_layers(self, h: np.ndarray, start: int) -> np.ndarray:
        """Run this stage's layers on h [B, T, hidden] of the tokens at positions start.."""
        b, t, _ = h.shape
        if start + t > self.max_len:
            raise ValueError(f"positions up to {start + t} exceed the KV cache ({self.max_len})")
        cos, sin = rope_tables(np.arange(start, start + t), self.cfg.head_dim, self.cfg.rope_theta)
        cos, sin = np.tile(cos, (b, 1)), np.tile(sin, (b, 1))  # one table row per token row
        for i in self.layout.layers:
            h = self._block(i, h, start, cos, sin)
        return h

    def _block(self, i: int, h: np.ndarray, start: int, cos, sin) -> np.ndarray:
        b, t, _ = h.shape
        nq, nkv, d = self.n_heads, self.n_kv, self.cfg.head_dim
        qkv, q, k, v = self._qkv(i, h, cos, sin)
        self.k_cache[i][:, :, start : start + t] = k
        self.v_cache[i][:, :, start : start + t] = v
        core = fused_ops()
        if core is not None:  # straight from the cache, out in o_proj's layout
            slots, starts = np.arange(b), np.full(b, start)
            attn = core.attention(
                qkv, nq, nkv, d, self.k_cache[i], self.v_cache[i], slots, starts, t,
                self.precision.rounds,
            )  # fmt: skip
            return self._finish_block(i, h, attn)
        keys = self.k_cache[i][:, :, : start + t]
        values = self.v_cache[i][:, :, : start + t]
        attn = causal_attention(q.reshape(b, nkv, nq // nkv, t, d), keys, values, start)
        return self._finish_block(i, h, attn)

    def _qkv(self, i: int, h: np.ndarray, cos, sin):
        """qkv [B * T, (heads + 2 * kv heads) * D] of h, normed and rotated, and its views q
        [B, heads, T, D], k and v [B, kv heads, T, D]; cos and sin [B * T, D] hold each token
        row's tables."""
        cfg, lw = self.cfg, self.layers[i]
        b, t, hidden = h.shape
        d, nq, nkv = cfg.head_dim, self.n_heads, self.n_kv
        x = norm(h, lw.input_norm, cfg.rms_norm_eps, self.precision).reshape(b * t, hidden)
        qkv = np.ascontiguousarray(lw.qkv(x))
        qk_norm_rope_(
            qkv, cos, sin, nq, nkv, d, lw.q_norm, lw.k_norm, cfg.rms_norm_eps, self.precision
        )
        heads = qkv.reshape(b, t, nq + 2 * nkv, d).transpose(0, 2, 1, 3)
        return qkv, heads[:, :nq], heads[:, nq : nq + nkv], heads[:, nq + nkv :]

    def _finish_block(self, i: int, h: np.ndarray, attn: np.ndarray) -> np.ndarray:
        """The block after attention (attn [B, KV, G, T, D], or already rounded [B * T, heads *
        D]): o_proj, residual, MLP (or MoE), residual."""
        cfg, rnd, lw = self.cfg, self.precision.round, self.layers[i]
        b, t, hidden = h.shape
        nq, d = self.n_heads, cfg.head_dim
        if attn.ndim != 2:
            attn = rnd(attn).reshape(b, nq, t, d).transpose(0, 2, 1, 3).reshape(b * t, nq * d)
        h = rnd(h + self.tp_group.all_reduce(lw.o(attn)).reshape(b, t, hidden))
        x = norm(h, lw.post_norm, cfg.rms_norm_eps, self.precision).reshape(b * t, hidden)
        out = self._swiglu_apply(lw.mlp, x) if lw.mlp is not None else self._moe(i, lw, x)
        return rnd(h + self.tp_group.all_reduce(out).reshape(b, t, hidden))

    # -- sequences in slots: each row at its own position (continuous batching) ----------------

    def allocate_slots(self, slots: int, max_len: int) -> None:
        """A KV cache of ``slots`` sequences of up to ``max_len`` positions, kept apart from the
        batch cache (kept when it already has that size)."""
        held = next(iter(self.slot_k.values()), None)
        if held is not None and held.shape[0] == slots and self.slot_len >= max_len:
            return
        shape = (slots, self.n_kv, max_len, self.cfg.head_dim)
        self.slot_k = {i: np.zeros(shape, np.float32) for i in self.layout.layers}
        self.slot_v = {i: np.zeros(shape, np.float32) for i in self.layout.layers}
        self.slot_len = max_len

    def forward_slots(self, h: np.ndarray, slots: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """This stage's layers on h [N, T, hidden]: row r is sequence ``slots[r]``'s tokens at
        positions starts[r].. (T = 1 for a decode step, or one sequence's prompt)."""
        n, t, _ = h.shape
        if int(starts.max()) + t > self.slot_len:
            raise ValueError(f"positions up to {int(starts.max()) + t} exceed {self.slot_len}")
        positions = (starts[:, None] + np.arange(t)[None, :]).reshape(-1)
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)  # [N * T, D]
        nq, nkv, d = self.n_heads, self.n_kv, self.cfg.head_dim
        length = int(starts.max()) + t
        core = fused_ops()
        for i in self.layout.layers:
            qkv, q, k, v = self._qkv(i, h, cos, sin)
            for r in range(n):
                self.slot_k[i][slots[r], :, starts[r] : starts[r] + t] = k[r]
                self.slot_v[i][slots[r], :, starts[r] : starts[r] + t] = v[r]
            if core is not None:  # the slots' cache read in place, not gathered
                attn = core.attention(
                    qkv, nq, nkv, d, self.slot_k[i], self.slot_v[i], slots, starts, t,
                    self.precision.rounds,
                )  # fmt: skip
                h = self._finish_block(i, h, attn)
                continue
            keys = self.slot_k[i][slots, :, :length]
            values = self.slot_v[i][slots, :, :length]
            q5 = q.reshape(n, nkv, nq // nkv, t, d)
            h = self._finish_block(i, h, causal_attention_rows(q5, keys, values, starts))
        return h

    def _swiglu_apply(self, w: ExpertWeights, x: np.ndarray) -> np.ndarray:
        return w.down(swiglu(w.gate_up(x), self.precision))

    def _moe(self, layer: int, lw: LayerWeights, x: np.ndarray) -> np.ndarray:
        """This rank's part of the MoE output for x [N, hidden]; the TP all-reduce sums parts.

        ep == 1: every rank routes all N tokens through every expert's column shard.
        ep > 1: a rank routes its TP share of the tokens to whole experts across its EP group.
        """
        cfg, rnd, lay = self.cfg, self.precision.round, self.layout
        n, hidden = x.shape
        lo, hi = (0, n) if lay.ep == 1 else split_even(n, lay.tp)[lay.tp_index]
        xs = x[lo:hi]
        if lw.router is None:
            raise RuntimeError(f"layer {layer} has no router")
        idx, weights = softmax_top_k(lw.router(xs), cfg.experts_per_token, cfg.norm_topk_prob)
        weights = rnd(weights)
        if self.record_routing:
            self.routing.append(RoutingRecord(layer, range(lo, hi), idx))
        k = cfg.experts_per_token
        token = np.repeat(np.arange(hi - lo), k)
        slot = np.tile(np.arange(k), hi - lo)
        expert = idx.reshape(-1)
        owner = np.asarray(lay.expert_owner, dtype=np.int64)[expert]
        # Rows grouped by destination rank, then expert, so a receiver can tell them apart.
        order = np.lexsort((slot, token, expert, owner))
        ep = self.ep_group.size
        per = cfg.num_experts // ep
        counts = np.zeros((ep, per), np.int64)
        np.add.at(counts, (owner[order], expert[order] - owner[order] * per), 1)
        recv_counts_by_expert = self.ep_group.all_to_all_counts(counts)
        recv, recv_counts = self.ep_group.all_to_allv(xs[token[order]], counts.sum(axis=1))
        # The received rows, source by source and within a source expert by expert.
        recv_expert = np.repeat(
            np.tile(np.asarray(lay.experts), ep), recv_counts_by_expert.reshape(-1)
        )
        y = np.zeros_like(recv)
        for e in lay.experts:
            rows = np.nonzero(recv_expert == e)[0]
            if rows.size:
                y[rows] = rnd(self._swiglu_apply(lw.experts[e], recv[rows]))
        back, _ = self.ep_group.all_to_allv(y, recv_counts)
        per_slot = np.zeros((hi - lo, k, hidden), np.float32)
        per_slot[token[order], slot[order]] = back
        combined = np.zeros((hi - lo, hidden), np.float32)
        for s in range(k):  # in top-k order, the same on every rank and in one process
            combined += weights[:, s : s + 1] * per_slot[:, s]
        out = np.zeros((n, hidden), np.float32)
        out[lo:hi] = rnd(combined)
        return out

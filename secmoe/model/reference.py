"""Plaintext forward pass of the MoE transformers, and routing inspection.

The model structure is written once, over an arithmetic backend (:mod:`secmoe.model.backend`):
:class:`FloatOps` (exact functions, or with ``approximate=True`` the float forms of the secure
approximations) and the fixed-point emulation :class:`secmoe.model.fixed.FixedOps`. A secure
runner that mirrors these calls operator by operator is comparable term by term.

Attention: q, k, v projections; with ``qk_norm`` a per-head RMSNorm of q and k (Qwen3); rotary
embeddings at positions 0..T−1 (:func:`rope_tables`); GQA by repeating k, v; scores (scaled by
1/√d_k if configured, plus T5's relative bias) masked by :func:`attention_mask` (causal, with
an optional sliding window); softmax; the output projection.

Routing (see :mod:`secmoe.model.config`): router logits l = x·Wr on the normed hidden state;
the top-k experts by logit; gates = softmax over the k chosen logits when
``norm_topk_prob`` (Mixtral, Qwen3 with renormalisation: the renormalised top-k probabilities),
else softmax(l) at each chosen expert (top-1: the Switch rule). Ties go to the lower expert
index. Capacity (:func:`capacity_of`): by default the model's own, ``config.expert_capacity``
(none: nothing dropped); each expert takes at most C tokens per sequence, the first in token
order (transformers' Switch); a dropped assignment contributes 0 (the residual carries the
token), the others keep their gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from secmoe.model.backend import FloatOps, Ops
from secmoe.model.config import ModelConfig
from secmoe.model.weights import FFN, ModelWeights, MoE, Norm

__all__ = [
    "FloatOps",
    "Ops",
    "Output",
    "Routing",
    "attention_mask",
    "capacity_mask",
    "forward",
    "measure_ranges",
    "moe_forward",
    "predict",
    "relative_position_buckets",
    "rope_tables",
    "routing",
    "run",
]

_ACT = {"relu": "relu", "gelu": "gelu", "gated-gelu": "gelu", "swiglu": "silu"}


@dataclass
class Routing:
    """Routing of one MoE layer over a batch: (B, T, k) chosen experts, gates, kept flags
    (False = dropped by capacity) and (B, T, E) router probabilities softmax(l)."""

    layer: int
    experts: np.ndarray
    gates: np.ndarray
    kept: np.ndarray
    probs: np.ndarray

    def load(self) -> np.ndarray:
        """Fraction of the (kept) assignments that went to each expert, shape (E,)."""
        e = self.probs.shape[-1]
        counts = np.bincount(self.experts[self.kept].ravel(), minlength=e)
        return counts / max(1, counts.sum())


@dataclass
class Output:
    """Model output (decoded to float) and the routing of every MoE layer."""

    output: np.ndarray
    routing: list[Routing]


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def relative_position_buckets(
    q_len: int, k_len: int, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's relative position bucket of (query i, key j), shape (q_len, k_len): exact buckets
    for small distances, logarithmic ones up to ``max_distance`` (public: positions only)."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    out = np.zeros_like(rel)
    nb = num_buckets
    if bidirectional:
        nb //= 2
        out += (rel > 0) * nb
        n = np.abs(rel)
    else:
        n = -np.minimum(rel, 0)
    exact = nb // 2
    with np.errstate(divide="ignore"):
        large = exact + (
            np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact) * (nb - exact)
        ).astype(np.int64)
    return out + np.where(n < exact, n, np.minimum(large, nb - 1))


def rope_tables(cfg: ModelConfig, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Public rotary tables (cos, sin), each (t, d_head), for positions 0..t−1 in transformers'
    rotate-half form: angle(p, i) = p·θ^(−2i/d_head) for i < d_head/2, repeated on the second
    half; ``sin`` carries rotate-half's sign (−sin on the first half, +sin on the second), so
    RoPE(x) = x·cos + swap_halves(x)·sin (:meth:`Ops.rope`)."""
    dk = cfg.d_head
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, dk, 2) / dk)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)
    sin = np.concatenate([-np.sin(ang), np.sin(ang)], axis=-1)
    return cos, sin


def attention_mask(cfg: ModelConfig, t: int) -> np.ndarray | None:
    """The public (T, T) mask of the attention scores (True = query i sees key j), ``None`` for
    full attention. Causal: j ≤ i; with ``sliding_window`` W also i − j < W (transformers'
    ``sliding_window_overlay``: kv_idx > q_idx − W)."""
    if not cfg.causal:
        return None
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    keep = j <= i
    if cfg.sliding_window is not None:
        keep &= i - j < cfg.sliding_window
    return keep


def _attention(ops: Ops, x: np.ndarray, w: Any, cfg: ModelConfig, ctx: dict) -> np.ndarray:
    b, t, _ = x.shape
    h, hkv, dk = cfg.n_heads, cfg.kv_heads, cfg.d_head

    def heads(y: np.ndarray, n: int) -> np.ndarray:
        return y.reshape(b, t, n, dk).transpose(0, 2, 1, 3)

    q = heads(ops.linear(x, w.wq), h)
    k, v = heads(ops.linear(x, w.wk), hkv), heads(ops.linear(x, w.wv), hkv)
    if cfg.qk_norm:  # per head, before RoPE (Qwen3)
        q = ops.norm(q, Norm(w.q_norm), cfg, "rmsnorm")
        k = ops.norm(k, Norm(w.k_norm), cfg, "rmsnorm")
    if "rope" in ctx:
        q, k = ops.rope(q, *ctx["rope"]), ops.rope(k, *ctx["rope"])
    if hkv < h:
        k, v = np.repeat(k, h // hkv, axis=1), np.repeat(v, h // hkv, axis=1)
    s = ops.matmul(q, k.transpose(0, 1, 3, 2))  # (B, H, T, T)
    if cfg.scale_attention:
        s = ops.mul_public(s, 1.0 / math.sqrt(dk))
    if "bias" in ctx:
        s = ops.add_public(s, ctx["bias"])
    p = ops.softmax(s, ctx.get("mask"))
    out = ops.matmul(p, v).transpose(0, 2, 1, 3).reshape(b, t, h * dk)
    return ops.linear(out, w.wo)


def _ffn(ops: Ops, x: np.ndarray, w: FFN, kind: str) -> np.ndarray:
    y = ops.activation(ops.linear(x, w.w1), _ACT[kind])
    if w.v is not None:
        y = ops.mul(y, ops.linear(x, w.v))
    return ops.linear(y, w.w2)


def capacity_of(cfg: ModelConfig, tokens: int, capacity: bool | int | None) -> int:
    """The per-sequence capacity C in [1, T] (C = T drops nothing) for the ``capacity``
    argument of :func:`run`: None = the model's own (``cfg.expert_capacity``, none: no drop),
    False = no capacity, True = the config's factor (``cfg.capacity(T)``), an int = that C."""
    if capacity is None:
        capacity = False if cfg.expert_capacity is None else cfg.expert_capacity
    if capacity is False:
        return tokens
    return min(cfg.capacity(tokens) if capacity is True else int(capacity), tokens)


def capacity_mask(experts: np.ndarray, n_experts: int, capacity: int) -> np.ndarray:
    """Kept flags (B, T, k): each expert keeps its first ``capacity`` assignments of each
    sequence in token order (experts are distinct within a token)."""
    onehot = experts[..., None] == np.arange(n_experts)  # (B, T, k, E)
    position = np.cumsum(onehot.any(axis=2), axis=1)  # (B, T, E): rank of token t at e
    rank = np.take_along_axis(position, experts, axis=-1)  # (B, T, k)
    return rank <= capacity


def moe_forward(
    ops: Ops,
    x: np.ndarray,
    w: MoE,
    cfg: ModelConfig,
    layer: int = 0,
    capacity: bool | int | None = None,
) -> tuple[np.ndarray, Routing]:
    """One MoE FFN on normed hidden states x (B, T, d): route, run each token's expert(s),
    scale by the gates, sum. Returns the output (B, T, d) (before the residual) and routing."""
    b, t, d = x.shape
    k = cfg.top_k
    logits = ops.linear(x, w.router)  # (B, T, E)
    idx = ops.topk(logits, k)
    probs = ops.softmax(logits)
    if cfg.norm_topk_prob:
        gates = ops.softmax(np.take_along_axis(logits, idx, axis=-1))
    else:
        gates = np.take_along_axis(probs, idx, axis=-1)
    kept = capacity_mask(idx, cfg.n_experts, capacity_of(cfg, t, capacity))
    flat_x, flat_idx = x.reshape(b * t, d), idx.reshape(b * t, k)
    flat_gate, flat_kept = gates.reshape(b * t, k), kept.reshape(b * t, k)
    out = ops.zeros((b * t, d))
    for e in range(cfg.n_experts):
        rows, slots = np.nonzero((flat_idx == e) & flat_kept)
        if rows.size == 0:
            continue
        y = _ffn(ops, flat_x[rows], w.expert(e), cfg.ffn)
        y = ops.mul(y, flat_gate[rows, slots][:, None])
        out[rows] = ops.add(out[rows], y)  # rows are distinct for one expert
    routing = Routing(layer, idx, ops.decode(gates), kept, ops.decode(probs))
    return out.reshape(b, t, d), routing


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def batched(cfg: ModelConfig, inputs: np.ndarray) -> tuple[np.ndarray, bool]:
    """Inputs with a batch axis (and whether one was added); ``ValueError`` if they do not fit."""
    x = np.asarray(inputs)
    single = x.ndim == (1 if cfg.input == "tokens" else 2)
    if single:
        x = x[None]
    want = 2 if cfg.input == "tokens" else 3
    if x.ndim != want or (cfg.input == "patches" and x.shape[-1] != cfg.patch_dim):
        raise ValueError(
            f"{cfg.name}: inputs of shape {np.shape(inputs)} do not fit "
            + ("token ids (T,) or (B, T)" if cfg.input == "tokens" else f"(B, T, {cfg.patch_dim})")
        )
    if cfg.position == "learned" and x.shape[1] > cfg.seq_len:
        raise ValueError(f"{cfg.name}: {x.shape[1]} tokens > seq_len {cfg.seq_len}")
    return x, single


def run(
    weights: ModelWeights,
    inputs: np.ndarray,
    ops: Ops | None = None,
    capacity: bool | int | None = None,
) -> Output:
    """Forward pass over a batch (or one sequence) with backend ``ops`` (default exact float).

    ``inputs``: token ids (B, T) / (T,), or patch features (B, T, patch_dim) / (T, patch_dim).
    Returns the decoded output ((B, n_classes), (B, T, vocab) or (B, T, d_model); without the
    batch axis for a single sequence) and the routing of each MoE layer (always batched).
    ``capacity``: the MoE layers' capacity, see :func:`capacity_of` (default: the model's own).
    """
    cfg = weights.config
    ops = ops or FloatOps()
    x, single = batched(cfg, inputs)
    t = x.shape[1]
    if cfg.input == "tokens":
        h = ops.embed(x, weights.embed)
    else:
        h = ops.linear(ops.encode(x), weights.patch_proj, weights.patch_bias)
    if cfg.position == "learned":
        h = ops.add_public(h, weights.pos_embed[:t])
    ctx: dict[str, Any] = {}
    if cfg.position == "relative":
        buckets = relative_position_buckets(
            t, t, not cfg.causal, cfg.rel_buckets, cfg.rel_max_distance
        )
        ctx["bias"] = weights.rel_bias[buckets].transpose(2, 0, 1)  # (H, T, T)
    if cfg.position == "rope":
        ctx["rope"] = rope_tables(cfg, t)
    ctx["mask"] = attention_mask(cfg, t)
    routings = []
    for i, layer in enumerate(weights.layers):
        h = ops.add(h, _attention(ops, ops.norm(h, layer.attn_norm, cfg), layer.attn, cfg, ctx))
        f = ops.norm(h, layer.ffn_norm, cfg)
        if isinstance(layer.ffn, MoE):
            y, r = moe_forward(ops, f, layer.ffn, cfg, i, capacity)
            routings.append(r)
        else:
            y = _ffn(ops, f, layer.ffn, cfg.ffn)
        h = ops.add(h, y)
    h = ops.norm(h, weights.final_norm, cfg)
    if cfg.head == "classifier":
        h = ops.linear(ops.mean(h, axis=1), weights.head, weights.head_bias)
    elif cfg.head == "lm":
        h = ops.linear(h, weights.head)
    out = ops.decode(h)
    return Output(out[0] if single else out, routings)


class _RangeOps(FloatOps):
    """Exact float backend that records the ranges the fixed-point operators must cover."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = {"norm_min": math.inf, "norm_max": 0.0, "softmax_sum_max": 0.0, "abs_max": 0.0}

    def _seen(self, y: np.ndarray) -> np.ndarray:
        self.stats["abs_max"] = max(self.stats["abs_max"], float(np.max(np.abs(y))))
        return y

    def linear(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        return self._seen(super().linear(x, w, b))

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._seen(super().matmul(a, b))

    def norm(self, x: np.ndarray, p: Norm, cfg: ModelConfig, kind: str | None = None) -> np.ndarray:
        c = x - x.mean(axis=-1, keepdims=True) if (kind or cfg.norm) == "layernorm" else x
        ms = np.mean(c * c, axis=-1) + cfg.norm_eps
        self.stats["norm_min"] = min(self.stats["norm_min"], float(ms.min()))
        self.stats["norm_max"] = max(self.stats["norm_max"], float(ms.max()))
        return super().norm(x, p, cfg, kind)

    def softmax(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
        z = np.where(keep, x, -np.inf)
        s = np.exp(z - z.max(axis=-1, keepdims=True)).sum(axis=-1)
        self.stats["softmax_sum_max"] = max(self.stats["softmax_sum_max"], float(s.max()))
        return super().softmax(x, mask)


def measure_ranges(weights: ModelWeights, inputs: np.ndarray) -> dict[str, float]:
    """Ranges seen by an exact float run, to choose fixed-point parameters: the min/max of the
    norms' rsqrt argument (``config.norm_range`` must cover them), the largest softmax
    denominator and the largest |value| out of a linear layer or product."""
    ops = _RangeOps()
    run(weights, inputs, ops)
    return dict(ops.stats)


def forward(
    weights: ModelWeights, inputs: np.ndarray, capacity: bool | int | None = None
) -> np.ndarray:
    """Exact float forward pass (see :func:`run`): the model output only."""
    return run(weights, inputs, capacity=capacity).output


def routing(
    weights: ModelWeights, inputs: np.ndarray, capacity: bool | int | None = None
) -> list[Routing]:
    """Routing inspection: per MoE layer, the expert(s) of each token with gate values."""
    return run(weights, inputs, capacity=capacity).routing


def predict(weights: ModelWeights, inputs: np.ndarray, ops: Ops | None = None) -> np.ndarray:
    """Class predictions (argmax of the classifier output), (B,)."""
    return np.argmax(run(weights, inputs, ops).output, axis=-1)

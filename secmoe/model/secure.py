"""The secure model runner: private inference of an MoE transformer between two parties.

Both parties run :func:`secure_forward` (SPMD). The **server** passes the model weights and no
input; the **client** passes its input and no weights. The architecture (the config) is public.
The output is revealed to the client only.

The structure mirrors :func:`secmoe.model.reference.run` operator by operator, so the secure
output can be compared with the float reference and with the fixed-point emulation
(:mod:`secmoe.model.fixed`) to tell approximation error from protocol error:

- input: the client's patch features (or one-hot tokens) are fixed-point encoded and shared;
- linear layers with the server's weights: HE (:mod:`secmoe.ops.linear`); the server adds its
  biases and position embeddings to its own share (no communication);
- attention: q, k, v by HE; with ``qk_norm`` a per-head RMSNorm of q and k
  (:mod:`secmoe.ops.norm`, the server's weights); rotary embeddings at positions 0..T−1: the
  cos/sin tables are public, so x·cos + swap_halves(x)·sin is a local linear map on each
  party's shares, followed by one truncation (q and k together); GQA by repeating k, v;
  secret × secret products (HE); the server adds the relative-position bias to its share of
  the scores; softmax (:mod:`secmoe.ops.softmax`) under the public causal / sliding-window mask
  (:func:`secmoe.model.reference.attention_mask`);
- norms (:mod:`secmoe.ops.norm`) with the server's γ, β;
- FFN: dense, or MoE with a chosen strategy (:mod:`secmoe.ops.moe`);
- head: mean over tokens (division by the public length), the classifier; or the LM head (a
  tied head is the embedding matrix, resolved when the weights are loaded).

Every :class:`~secmoe.model.config.ModelConfig` field is declared in :data:`SECURE_SUPPORT`
with how this runner honours it; :func:`check_supported` (called first by
:func:`secure_forward`) refuses, with :class:`UnsupportedFeature` naming the feature, a config
with an undeclared field or a feature this runner would not compute exactly.

Every layer runs on its own fork (``layer{i}/attn``, ``layer{i}/moe``, …), so the transcript
and ``ch.stats.by_path()`` attribute bytes and rounds per layer.

What each party learns: the client learns the model output; the server learns nothing (not
the input, not the activations, not the routing) unless the INSECURE ``reveal`` strategy is
chosen, which reveals every token's expert to both parties.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..ops.activations import activation
from ..ops.linear import linear, linear_fused, matmul
from ..ops.moe import ExpertWeights, MoESpec, check_capacity, check_strategy, moe
from ..ops.norm import layernorm, rmsnorm
from ..ops.softmax import softmax
from ..protocols import arith
from ..protocols.party import Party
from ..protocols.shares import mul_public, reveal, share
from .backend import swap_halves
from .config import ModelConfig
from .fold import norm_weighted
from .reference import attention_mask, relative_position_buckets, rope_tables
from .weights import FFN, Attention, ModelWeights, MoE, Norm

_ACT = {"relu": "relu", "gelu": "gelu", "gated-gelu": "gelu", "swiglu": "silu"}
Progress = Callable[[str], None]


#: How the norms' row products may run (:class:`RunOptions`).
NORM_PRODUCTS = ("ot", "he")


@dataclass(frozen=True)
class RunOptions:
    """Public options of a secure run (both parties must agree: they are in the handshake).

    Capacity (every strategy honours it, see :mod:`secmoe.ops.moe`): by default the model's
    own (``cfg.expert_capacity`` per sequence; none for Mixtral and Qwen3-MoE: nothing is
    dropped). An explicit ``capacity`` C (or else ``capacity_factor`` cf, C = ⌈cf·k·T/E⌉)
    replaces it and may drop tokens the model keeps; a C beyond T means T (nothing to drop).
    Raises ``ValueError`` for an unknown strategy, a capacity that is not an integer ≥ 1 or a
    factor that is not a finite number > 0.

    Norm products (``norm_products``): ``"ot"`` (the default) runs the norms' Σx² and x·y by
    COTs; ``"he"`` runs them as HE row products wherever that declares fewer bytes
    (:func:`secmoe.ops.norm.he_products`: at 8 rows of 768, 2.44 → 0.95 MB per norm, at
    about 3–4× the norm's compute). A ``ValueError`` names any other value.
    """

    strategy: str = "select"
    capacity_factor: float | None = None  # None: the model's capacity
    capacity: int | None = None  # an explicit C per sequence (overrides the factor)
    norm_products: str = "ot"

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        check_capacity(self.capacity, self.capacity_factor)
        if self.norm_products not in NORM_PRODUCTS:
            raise ValueError(
                f"unknown norm products {self.norm_products!r}; choose from {NORM_PRODUCTS}"
            )

    @property
    def he_norms(self) -> bool:
        """Whether the norms may run their row products by HE."""
        return self.norm_products == "he"

    @property
    def explicit_capacity(self) -> bool:
        """Whether the run's capacity was asked for (rather than the model's own)."""
        return self.capacity is not None or self.capacity_factor is not None


#: How the secure runner honours each ModelConfig field (tests check that this covers every
#: field, so a new field cannot be silently ignored; :func:`check_supported` refuses a config
#: carrying an undeclared one).
SECURE_SUPPORT: dict[str, str] = {
    "name": "a label (messages only)",
    "arch": "a family label: its behaviour is carried by the fields below (causal, position, "
    "qk_norm, norm_topk_prob, …), which this runner honours one by one",
    "d_model": "shapes of every linear layer and share",
    "n_heads": "the attention heads",
    "n_layers": "the number of blocks",
    "d_ff": "the experts' hidden size (moe_spec)",
    "n_experts": "the MoE layers' experts (moe_spec)",
    "top_k": "the experts per token (moe_spec: secure top-k)",
    "moe_layers": "which blocks run the secure MoE layer, the others a dense FFN",
    "ffn": "the activation (ops.activations) and the gated product",
    "norm": "layernorm or rmsnorm on shares (ops.norm)",
    "seq_len": "the longest sequence secure_forward accepts",
    "input": "tokens (one-hot × embedding by HE) or patches (HE linear + the server's bias)",
    "vocab_size": "the one-hot width and the LM head's output",
    "patch_dim": "the patch features' width",
    "head": "classifier (mean, linear, bias), lm (linear) or none",
    "n_classes": "the classifier's output",
    "head_dim": "the per-head dimension",
    "n_kv_heads": "grouped-query attention (k, v repeated per group)",
    "position": "relative (the server adds the bias), learned (the server adds the rows), "
    "rope (public tables, a local linear map on shares + one truncation) or none",
    "rel_buckets": "the relative-position buckets (public)",
    "rel_max_distance": "the relative-position buckets (public)",
    "rope_theta": "the rotary tables (public)",
    "scale_attention": "1/√d_k as a public fixed-point constant + one truncation",
    "causal": "the softmax's public mask",
    "sliding_window": "the softmax's public mask (i − j < W)",
    "norm_eps": "ε of every norm on shares",
    "capacity_factor": "not part of the model's function (the plaintext reference's "
    "capacity=True only): a run's factor comes from its RunOptions",
    "expert_capacity": "the model's own capacity, every strategy (moe_spec; checked)",
    "tie_word_embeddings": "resolved at loading: ModelWeights.head is the embedding, the LM "
    "head is the same HE linear",
    "norm_topk_prob": "the gate rule (moe_spec norm_topk; checked)",
    "qk_norm": "per-head RMSNorm of q and k on shares before RoPE",
    "dense_d_ff": "the dense FFN's hidden size",
    "norm_range": "the rsqrt range of every norm on shares",
    "norms_folded": "the folded norms run without the γ product (model.fold.norm_weighted)",
}


class UnsupportedFeature(ValueError):
    """A model feature the secure runner cannot compute exactly (the message names it)."""


def check_supported(cfg: ModelConfig, options: RunOptions = RunOptions()) -> None:
    """Raise :class:`UnsupportedFeature` unless the secure runner computes ``cfg``'s model
    exactly (as the fixed-point emulation does, up to the truncation protocols' ulps): every
    config field must be declared in :data:`SECURE_SUPPORT`, and the secure MoE layer
    (:func:`moe_spec`) must carry the config's gate rule and, unless the run asks for another,
    the model's own capacity."""
    for f in dataclasses.fields(cfg):
        if f.name not in SECURE_SUPPORT:
            raise UnsupportedFeature(
                f"{cfg.name}: config field {f.name!r} has no secure implementation declared "
                "(secmoe.model.secure.SECURE_SUPPORT); refusing to run without it"
            )
    if not cfg.moe_layers:
        return
    spec = moe_spec(cfg, options)
    if spec.norm_topk != cfg.norm_topk_prob:
        raise UnsupportedFeature(
            f"{cfg.name}: norm_topk_prob={cfg.norm_topk_prob} but the secure MoE layer's gates "
            f"would use norm_topk={spec.norm_topk}"
        )
    if not options.explicit_capacity and spec.capacity != cfg.expert_capacity:
        raise UnsupportedFeature(
            f"{cfg.name}: expert_capacity={cfg.expert_capacity} but the secure MoE layer would "
            f"run with capacity {spec.capacity}"
        )


def _server(p: Party, value: object) -> object:
    """``value`` on the server, ``None`` on the client (for weights)."""
    return value if p.role == "server" else None


def add_server_const(p: Party, x: np.ndarray, c: np.ndarray | None) -> np.ndarray:
    """Shares of x + c for a constant the server holds in plaintext (float): local."""
    if p.role != "server" or c is None:
        return x
    return p.ring.reduce(x + p.ring.encode(np.broadcast_to(c, x.shape)))


async def _norm(
    p: Party, x: np.ndarray, n: Norm | None, cfg: ModelConfig, which: str, he: bool = False
) -> np.ndarray:
    g = norm_weighted(cfg, which)  # False: γ folded into the next layer (public)
    weight = None if n is None or not g else n.weight
    kw = {"weighted": g, "he": he}
    if cfg.norm == "layernorm":
        bias = None if n is None else n.bias
        return await layernorm(p, x, weight, bias, cfg.norm_eps, cfg.norm_range, **kw)
    return await rmsnorm(p, x, weight, cfg.norm_eps, cfg.norm_range, **kw)


async def _rope(p: Party, x: np.ndarray, tables: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Shares of :meth:`FixedOps.rope <secmoe.model.fixed.FixedOps.rope>` (±1 ulp): the
    public tables are encoded, x·enc(cos) + swap_halves(x)·enc(sin) is local on each share,
    then one truncation. Cost: one :func:`~secmoe.protocols.arith.trunc` per element."""
    cos, sin = (p.ring.to_signed(p.ring.encode(c)) for c in tables)
    y = mul_public(p.ring, x, cos) + mul_public(p.ring, swap_halves(x), sin)
    return await arith.trunc(p, p.ring.reduce(y))


@dataclass
class KVCache:
    """This party's additive shares of every layer's attention keys (after q/k norm and RoPE,
    before GQA repetition) and values, kept between the passes of one generation and never
    revealed: ``k[i]``, ``v[i]`` are (B, kv_heads, n, d_head) ring elements for the n most
    recent positions ``length − n … length − 1``.

    With a sliding window W only the last W − 1 positions are kept (the next token attends to
    those and itself), so memory stops growing at the window. Per party and sequence, each
    position holds :meth:`elements_per_token` ring elements (8 bytes each).
    """

    k: list[np.ndarray]
    v: list[np.ndarray]
    window: int | None = None
    length: int = 0  # positions seen: the next token's position

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int) -> KVCache:
        """An empty cache for ``batch`` sequences of ``cfg``'s model."""
        z = np.zeros((batch, cfg.kv_heads, 0, cfg.d_head), np.uint64)
        return cls([z] * cfg.n_layers, [z] * cfg.n_layers, cfg.sliding_window)

    @staticmethod
    def elements_per_token(cfg: ModelConfig) -> int:
        """Ring elements one position adds per party and sequence: 2·layers·kv_heads·d_head."""
        return 2 * cfg.n_layers * cfg.kv_heads * cfg.d_head

    @property
    def held(self) -> int:
        """Positions currently held (≤ W − 1 with a sliding window W)."""
        return self.k[0].shape[2] if self.k else 0

    @property
    def nbytes(self) -> int:
        """Bytes of shares this party holds."""
        return sum(a.nbytes for a in (*self.k, *self.v))

    def extend(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The keys and values a layer's new rows attend to (the held ones, then k, v), and
        keep what the next token will need. Local; :meth:`advance` moves the position."""
        k_all = np.concatenate([self.k[layer], k], axis=2)
        v_all = np.concatenate([self.v[layer], v], axis=2)
        keep = k_all.shape[2] if self.window is None else self.window - 1
        start = k_all.shape[2] - min(keep, k_all.shape[2])
        self.k[layer], self.v[layer] = k_all[:, :, start:], v_all[:, :, start:]
        return k_all, v_all

    def advance(self, t: int) -> None:
        """Record that a pass added t positions (after its last layer)."""
        self.length += t


@dataclass(frozen=True)
class _Rows:
    """Public per-pass data for the rows a pass computes: the attention mask (``None``: every
    key), RoPE tables at the rows' positions and the relative-position bias (server)."""

    mask: np.ndarray | None
    rope: tuple[np.ndarray, np.ndarray] | None
    bias: np.ndarray | None


def _rows(cfg: ModelConfig, w: ModelWeights | None, t: int, cache: KVCache | None) -> _Rows:
    """Positions ``offset … offset + t − 1`` (offset: the cache's length, else 0). A pass on a
    non-empty cache is one new token whose keys are the held window and itself, all visible:
    causal by construction, so its mask is ``None``."""
    offset = 0 if cache is None else cache.length
    if offset and t != 1:
        raise ValueError(f"a pass on a KV cache computes one new token, not {t}")
    mask = attention_mask(cfg, t) if offset == 0 else None
    rope = None
    if cfg.position == "rope":
        cos, sin = rope_tables(cfg, offset + t)
        rope = cos[offset:], sin[offset:]
    bias = None
    if cfg.position == "relative" and w is not None:
        if offset:
            raise UnsupportedFeature(f"{cfg.name}: relative position bias with a KV cache")
        buckets = relative_position_buckets(
            t, t, not cfg.causal, cfg.rel_buckets, cfg.rel_max_distance
        )
        bias = w.rel_bias[buckets].transpose(2, 0, 1)
    return _Rows(mask, rope, bias)


async def _attention(
    p: Party,
    x: np.ndarray,
    w: Attention | None,
    cfg: ModelConfig,
    rows: _Rows,
    cache: KVCache | None = None,
    layer: int = 0,
) -> np.ndarray:
    """Self-attention of x's rows: over themselves, or, with a cache, over the cached keys and
    values of the layer and themselves (appended to the cache)."""
    b, t, _ = x.shape
    h, hkv, dk = cfg.n_heads, cfg.kv_heads, cfg.d_head
    flat = x.reshape(b * t, -1)

    def heads(y: np.ndarray, n: int) -> np.ndarray:
        return y.reshape(b, t, n, dk).transpose(0, 2, 1, 3)

    qkv = w and [w.wq, w.wk, w.wv]  # one HE product: the client's input is sent once
    q, k, v = await linear_fused(p.fork("qkv"), flat, qkv, [h * dk, hkv * dk, hkv * dk])
    q, k, v = heads(q, h), heads(k, hkv), heads(v, hkv)
    if cfg.qk_norm:  # per head, before RoPE (Qwen3)
        q, k = await asyncio.gather(
            rmsnorm(p.fork("q_norm"), q, w and w.q_norm, cfg.norm_eps, cfg.norm_range),
            rmsnorm(p.fork("k_norm"), k, w and w.k_norm, cfg.norm_eps, cfg.norm_range),
        )
    if rows.rope is not None:  # q and k in one truncation batch
        qk = await _rope(p.fork("rope"), np.concatenate([q, k], axis=1), rows.rope)
        q, k = qk[:, :h], qk[:, h:]
    if cache is not None:
        k, v = cache.extend(layer, k, v)
    if hkv < h:
        k, v = np.repeat(k, h // hkv, axis=1), np.repeat(v, h // hkv, axis=1)
    s = await matmul(p.fork("qk"), q, k.transpose(0, 1, 3, 2))  # (B, H, T, keys)
    if cfg.scale_attention:
        scale = int(p.ring.to_signed(p.ring.encode(1 / dk**0.5)))
        s = await arith.trunc(p.fork("scale"), mul_public(p.ring, s, scale))
    s = add_server_const(p, s, rows.bias)
    probs = await softmax(p.fork("softmax"), s, rows.mask)
    out = await matmul(p.fork("pv"), probs, v)
    out = out.transpose(0, 2, 1, 3).reshape(b * t, h * dk)
    return (await linear(p.fork("o"), out, w and w.wo, cfg.d_model)).reshape(b, t, -1)


async def _ffn(p: Party, x: np.ndarray, w: FFN | None, cfg: ModelConfig) -> np.ndarray:
    """The dense FFN (hidden size ``cfg.d_ff_dense``)."""
    y = await linear(p.fork("w1"), x, w and w.w1, cfg.d_ff_dense)
    y = await activation(p.fork("act"), y, _ACT[cfg.ffn])
    if cfg.gated:
        g = await linear(p.fork("v"), x, w and w.v, cfg.d_ff_dense)
        y = await arith.mul_fixed(p.fork("glu"), y, g)
    return await linear(p.fork("w2"), y, w and w.w2, cfg.d_model)


def moe_spec(cfg: ModelConfig, options: RunOptions = RunOptions()) -> MoESpec:
    """The public shape of the config's MoE layers: the gate rule from ``cfg.norm_topk_prob``;
    the capacity asked for in the run options, else the model's own (``cfg.expert_capacity``)."""
    return MoESpec(
        cfg.d_model,
        cfg.d_ff,
        cfg.n_experts,
        cfg.top_k,
        cfg.ffn,
        norm_topk=cfg.norm_topk_prob,
        capacity=options.capacity if options.explicit_capacity else cfg.expert_capacity,
        capacity_factor=options.capacity_factor,
    )


def _experts(w: MoE | None) -> ExpertWeights | None:
    return None if w is None else ExpertWeights(w.router, w.w1, w.w2, w.v)


async def _encode_input(
    p: Party, cfg: ModelConfig, inputs: np.ndarray | None, shape: tuple[int, int]
) -> np.ndarray:
    """Shares of the client's input: patch features, or the one-hot of its token ids."""
    b, t = shape
    if cfg.input == "patches":
        plain = None if inputs is None else p.ring.encode(inputs)
        return await share(p.fork("input"), plain, "client", (b, t, cfg.patch_dim))
    plain = None
    if inputs is not None:
        plain = (inputs[..., None] == np.arange(cfg.vocab_size)).astype(np.uint64)
        plain = p.ring.reduce(plain << np.uint64(p.ring.frac_bits))
    return await share(p.fork("input"), plain, "client", (b, t, cfg.vocab_size))


async def forward_pass(
    p: Party,
    cfg: ModelConfig,
    weights: ModelWeights | None,
    inputs: np.ndarray | None,
    shape: tuple[int, int],
    options: RunOptions = RunOptions(),
    progress: Progress | None = None,
    *,
    cache: KVCache | None = None,
    last_only: bool = False,
) -> np.ndarray:
    """This party's shares of the model's output on a batch of ``shape = (B, T)`` rows, not
    revealed (:func:`secure_forward` checks its arguments; this does not).

    With ``cache``, the rows are at positions ``cache.length …`` and attend to the cached keys
    and values too; their own are appended (:class:`KVCache`); one new token per pass once the
    cache holds a prompt. With ``last_only``, the final norm and the head run on each
    sequence's last row only (the next-token logits, (B, 1, out)).
    """
    b, t = shape
    w = weights
    offset = 0 if cache is None else cache.length
    if not 1 <= offset + t <= cfg.seq_len:
        raise ValueError(f"{cfg.name}: position {offset + t - 1} outside [0, {cfg.seq_len})")
    x = await _encode_input(p, cfg, inputs, shape)
    flat = x.reshape(b * t, -1)
    if cfg.input == "patches":
        h = await linear(p.fork("embed"), flat, w and w.patch_proj, cfg.d_model)
        h = add_server_const(p, h, w and w.patch_bias)
    else:
        h = await linear(p.fork("embed"), flat, w and w.embed, cfg.d_model)
    h = h.reshape(b, t, cfg.d_model)
    if cfg.position == "learned":
        h = add_server_const(p, h, w and w.pos_embed[offset : offset + t])
    rows = _rows(cfg, w, t, cache)
    he = options.he_norms  # public: the norms' row products by HE where fewer bytes
    for i in range(cfg.n_layers):
        layer = w.layers[i] if w is not None else None
        f = p.fork(f"layer{i}")
        a = await _norm(f.fork("attn_norm"), h, layer and layer.attn_norm, cfg, "attn", he)
        att = await _attention(f.fork("attn"), a, layer and layer.attn, cfg, rows, cache, i)
        h = p.ring.reduce(h + att)
        g = await _norm(f.fork("ffn_norm"), h, layer and layer.ffn_norm, cfg, "ffn", he)
        g = g.reshape(b * t, cfg.d_model)
        if cfg.is_moe(i):
            y = await moe(
                f.fork("moe"),
                g,
                _experts(layer and layer.ffn),
                moe_spec(cfg, options),
                options.strategy,
                groups=b,
            )
        else:
            y = await _ffn(f.fork("ffn"), g, layer and layer.ffn, cfg)
        h = p.ring.reduce(h + y.reshape(b, t, cfg.d_model))
        if progress is not None:
            progress(f"layer {i + 1}/{cfg.n_layers} done")
    if cache is not None:
        cache.advance(t)
    if last_only:
        h, t = h[:, -1:], 1
    h = await _norm(p.fork("final_norm"), h, w and w.final_norm, cfg, "final", he)
    if cfg.head == "classifier":
        pooled = await arith.div_public(p.fork("mean"), p.ring.reduce(h.sum(axis=1)), t)
        h = await linear(p.fork("head"), pooled, w and w.head, cfg.out_dim)
        h = add_server_const(p, h, w and w.head_bias)
    elif cfg.head == "lm":
        h = (await linear(p.fork("head"), h.reshape(b * t, -1), w and w.head, cfg.out_dim)).reshape(
            b, t, -1
        )
    return h


async def secure_forward(
    p: Party,
    cfg: ModelConfig,
    weights: ModelWeights | None,
    inputs: np.ndarray | None,
    shape: tuple[int, int],
    options: RunOptions = RunOptions(),
    progress: Progress | None = None,
) -> np.ndarray | None:
    """Private inference on a batch of ``shape = (B, T)`` sequences.

    Args:
        p: this party (OT pool and HE set up).
        cfg: the public model config.
        weights: the model (server) or ``None`` (client).
        inputs: patch features (B, T, patch_dim) / token ids (B, T) (client) or ``None``.
        shape: (B, T), public.
        options: the public run options (MoE strategy).
        progress: called with a short message as each layer completes.

    Returns:
        the decoded model output on the client (as :func:`secmoe.model.reference.run`'s),
        ``None`` on the server.

    Raises:
        UnsupportedFeature: ``cfg`` has a feature this runner cannot compute exactly
            (:func:`check_supported`), before any message.
        ValueError: roles and arguments do not match, or T is outside [1, ``cfg.seq_len``].
    """
    check_supported(cfg, options)
    check_roles(p, weights, inputs)
    t = shape[1]
    if not 1 <= t <= cfg.seq_len:
        raise ValueError(f"{cfg.name}: sequence length {t} outside [1, {cfg.seq_len}]")
    h = await forward_pass(p, cfg, weights, inputs, shape, options, progress)
    out = await reveal(p.fork("output"), h, to="client")
    return None if out is None else p.ring.decode(out)


def check_roles(p: Party, weights: ModelWeights | None, inputs: np.ndarray | None) -> None:
    """``ValueError`` unless the server passes the weights and the client the input."""
    if (weights is None) != (p.role == "client") or (inputs is None) != (p.role == "server"):
        raise ValueError("the server passes the weights, the client passes the input")


__all__ = [
    "SECURE_SUPPORT",
    "KVCache",
    "RunOptions",
    "UnsupportedFeature",
    "add_server_const",
    "check_roles",
    "check_supported",
    "forward_pass",
    "moe_spec",
    "secure_forward",
]

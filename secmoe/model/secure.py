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
- attention: secret × secret products (HE), softmax (:mod:`secmoe.ops.softmax`), the server
  adds the relative-position bias to its share of the scores;
- norms (:mod:`secmoe.ops.norm`) with the server's γ, β;
- FFN: dense, or MoE with a chosen strategy (:mod:`secmoe.ops.moe`);
- head: mean over tokens (division by the public length), the classifier.

Every layer runs on its own fork (``layer{i}/attn``, ``layer{i}/moe``, …), so the transcript
and ``ch.stats.by_path()`` attribute bytes and rounds per layer.

What each party learns: the client learns the model output; the server learns nothing (not
the input, not the activations, not the routing) unless the INSECURE ``reveal`` strategy is
chosen, which reveals every token's expert to both parties.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..ops.activations import activation
from ..ops.linear import linear, matmul
from ..ops.moe import ExpertWeights, MoESpec, check_strategy, moe
from ..ops.norm import layernorm, rmsnorm
from ..ops.softmax import softmax
from ..protocols import arith
from ..protocols.party import Party
from ..protocols.shares import mul_public, reveal, share
from .config import ModelConfig
from .reference import relative_position_buckets
from .weights import FFN, ModelWeights, MoE, Norm

_ACT = {"relu": "relu", "gelu": "gelu", "gated-gelu": "gelu", "swiglu": "silu"}
Progress = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    """Public options of a secure run (both parties must agree: they are in the handshake)."""

    strategy: str = "select"
    capacity_factor: float | None = None  # dispatch: None = the config's
    capacity: int | None = None  # dispatch: an explicit C per sequence (overrides the factor)

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        if self.capacity is not None and self.capacity < 1:
            raise ValueError("capacity must be ≥ 1")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError("capacity factor must be positive")


def _server(p: Party, value: object) -> object:
    """``value`` on the server, ``None`` on the client (for weights)."""
    return value if p.role == "server" else None


def add_server_const(p: Party, x: np.ndarray, c: np.ndarray | None) -> np.ndarray:
    """Shares of x + c for a constant the server holds in plaintext (float): local."""
    if p.role != "server" or c is None:
        return x
    return p.ring.reduce(x + p.ring.encode(np.broadcast_to(c, x.shape)))


async def _norm(p: Party, x: np.ndarray, n: Norm | None, cfg: ModelConfig) -> np.ndarray:
    weight = None if n is None else n.weight
    if cfg.norm == "layernorm":
        bias = None if n is None else n.bias
        return await layernorm(p, x, weight, bias, cfg.norm_eps, cfg.norm_range)
    return await rmsnorm(p, x, weight, cfg.norm_eps, cfg.norm_range)


async def _attention(
    p: Party,
    x: np.ndarray,
    w: object,
    cfg: ModelConfig,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
) -> np.ndarray:
    b, t, _ = x.shape
    h, hkv, dk = cfg.n_heads, cfg.kv_heads, cfg.d_head
    flat = x.reshape(b * t, -1)

    def heads(y: np.ndarray, n: int) -> np.ndarray:
        return y.reshape(b, t, n, dk).transpose(0, 2, 1, 3)

    q = heads(await linear(p.fork("q"), flat, w and w.wq, h * dk), h)
    k = heads(await linear(p.fork("k"), flat, w and w.wk, hkv * dk), hkv)
    v = heads(await linear(p.fork("v"), flat, w and w.wv, hkv * dk), hkv)
    if hkv < h:
        k, v = np.repeat(k, h // hkv, axis=1), np.repeat(v, h // hkv, axis=1)
    s = await matmul(p.fork("qk"), q, k.transpose(0, 1, 3, 2))  # (B, H, T, T)
    if cfg.scale_attention:
        scale = int(p.ring.to_signed(p.ring.encode(1 / dk**0.5)))
        s = await arith.trunc(p.fork("scale"), mul_public(p.ring, s, scale))
    s = add_server_const(p, s, bias)
    probs = await softmax(p.fork("softmax"), s, mask)
    out = await matmul(p.fork("pv"), probs, v)
    out = out.transpose(0, 2, 1, 3).reshape(b * t, h * dk)
    return (await linear(p.fork("o"), out, w and w.wo, cfg.d_model)).reshape(b, t, -1)


async def _ffn(p: Party, x: np.ndarray, w: FFN | None, cfg: ModelConfig) -> np.ndarray:
    y = await linear(p.fork("w1"), x, w and w.w1, cfg.d_ff)
    y = await activation(p.fork("act"), y, _ACT[cfg.ffn])
    if cfg.gated:
        g = await linear(p.fork("v"), x, w and w.v, cfg.d_ff)
        y = await arith.mul_fixed(p.fork("glu"), y, g)
    return await linear(p.fork("w2"), y, w and w.w2, cfg.d_model)


def moe_spec(cfg: ModelConfig, options: RunOptions = RunOptions()) -> MoESpec:
    """The public shape of the config's MoE layers (capacity from the run options)."""
    return MoESpec(
        cfg.d_model,
        cfg.d_ff,
        cfg.n_experts,
        cfg.top_k,
        cfg.ffn,
        "mixtral" if cfg.arch == "mixtral" else "switch",
        options.capacity_factor or cfg.capacity_factor,
        options.capacity,
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
    """
    if (weights is None) != (p.role == "client") or (inputs is None) != (p.role == "server"):
        raise ValueError("the server passes the weights, the client passes the input")
    b, t = shape
    w = weights
    x = await _encode_input(p, cfg, inputs, shape)
    flat = x.reshape(b * t, -1)
    if cfg.input == "patches":
        h = await linear(p.fork("embed"), flat, w and w.patch_proj, cfg.d_model)
        h = add_server_const(p, h, w and w.patch_bias)
    else:
        h = await linear(p.fork("embed"), flat, w and w.embed, cfg.d_model)
    h = h.reshape(b, t, cfg.d_model)
    if cfg.position == "learned":
        h = add_server_const(p, h, w and w.pos_embed[:t])
    bias = None
    if cfg.position == "relative" and w is not None:
        buckets = relative_position_buckets(
            t, t, not cfg.causal, cfg.rel_buckets, cfg.rel_max_distance
        )
        bias = w.rel_bias[buckets].transpose(2, 0, 1)
    mask = np.tril(np.ones((t, t), dtype=bool)) if cfg.causal else None
    for i in range(cfg.n_layers):
        layer = w.layers[i] if w is not None else None
        f = p.fork(f"layer{i}")
        a = await _norm(f.fork("attn_norm"), h, layer and layer.attn_norm, cfg)
        att = await _attention(f.fork("attn"), a, layer and layer.attn, cfg, bias, mask)
        h = p.ring.reduce(h + att)
        g = await _norm(f.fork("ffn_norm"), h, layer and layer.ffn_norm, cfg)
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
    h = await _norm(p.fork("final_norm"), h, w and w.final_norm, cfg)
    if cfg.head == "classifier":
        pooled = await arith.div_public(p.fork("mean"), p.ring.reduce(h.sum(axis=1)), t)
        h = await linear(p.fork("head"), pooled, w and w.head, cfg.out_dim)
        h = add_server_const(p, h, w and w.head_bias)
    elif cfg.head == "lm":
        h = (await linear(p.fork("head"), h.reshape(b * t, -1), w and w.head, cfg.out_dim)).reshape(
            b, t, -1
        )
    out = await reveal(p.fork("output"), h, to="client")
    return None if out is None else p.ring.decode(out)


__all__ = ["RunOptions", "add_server_const", "moe_spec", "secure_forward"]

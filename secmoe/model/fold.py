"""Folding the norms' γ into the following linear layers: a plaintext rewrite by the server.

In a pre-norm block a norm's output only feeds linear maps: Norm(h) = z ⊙ γ (+ β) with z the
normalized h, and (z ⊙ γ)·W = z·(diag(γ)·W). So the server may multiply each row j of the next
weight matrices by γ_j and run the norm with γ = 1: the same function in exact arithmetic, and on
shares the norm needs no γ product at all (:func:`secmoe.ops.norm.rmsnorm` with
``weighted=False``: no COT product, no truncation; at 8 × 768 this is 0.95 of the norm's
4.35 MB). The rewrite is public in kind (the config says ``norms_folded``, so the client runs the
same protocol), private in values: γ ends up inside the server's weights, which stay secret.

Which norms fold (:func:`norm_weighted` is the rule both parties apply):

* ``attn``: each block's attention input norm feeds the q, k and v projections (q/k norms, RoPE
  and the scores come after those projections, so folding before them is exact);
* ``ffn``: each block's FFN input norm feeds the dense W1 (and V of a gated FFN), or the MoE
  router and every expert's W1 (and V);
* ``final``: the final norm, when a head follows (LM head: the head's rows; classifier: the mean
  over tokens commutes with diag(γ)); with ``head="none"`` its output is the model's output and it
  keeps γ.

Not folded: Qwen3's per-head q/k norms (they feed RoPE and the q·kᵀ product of two shared
values, not a weight of the server). Valid only for pre-norm blocks, which is the only structure
secmoe runs (:mod:`secmoe.model.reference`: h += Attn(Norm(h)); h += FFN(Norm(h))): a post-norm
block's norm output is the residual stream itself and cannot fold. A LayerNorm's β becomes a
bias β·W only where the following layer has one: the classifier head (``head_bias``); q/k/v,
the router and the experts have no bias, so a non-zero β there is refused, by name
(:class:`FoldError`), as is a folded weight beyond the HE linear layers' public bound
(:data:`secmoe.ops.linear.W_BITS`). A tied LM head becomes its own matrix (the embedding keeps
its values), so the folded config is untied.

In fixed point the result differs by rounding only: trunc(trunc(z·γ)·W) becomes
trunc(z·enc(γ·W)) (tests/model/test_fold.py checks the float reference, the fixed-point
emulation and the secure run on folded and unfolded weights).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..crypto.ring import DEFAULT_RING
from ..ops.linear import W_BITS
from .config import ModelConfig
from .expert_store import ExpertStore
from .lazy_weights import StreamedLayers
from .weights import Layer, ModelWeights, MoE, Norm

#: The norms of a model, as :func:`norm_weighted` names them.
NORMS = ("attn", "ffn", "final")


class FoldError(ValueError):
    """Weights whose norms cannot be folded (the message names each tensor)."""


def norm_weighted(cfg: ModelConfig, which: str) -> bool:
    """Whether norm ``which`` (one of :data:`NORMS`) multiplies by its γ on shares: always,
    unless the config's ``norms_folded`` says the server folded it (every ``attn`` and ``ffn``
    norm, and ``final`` when a head follows). Public: both parties apply this rule."""
    if which not in NORMS:
        raise ValueError(f"unknown norm {which!r}; expected one of {NORMS}")
    if not cfg.norms_folded:
        return True
    return which == "final" and cfg.head == "none"


def _scaled(
    gamma: np.ndarray,
    w: np.ndarray,
    name: str,
    problems: list[str],
    store: ExpertStore | None = None,
) -> np.ndarray:
    """diag(γ)·W for W (…, d, out) (experts stacked in front), in W's dtype, one matrix at a
    time (an expert stack: in ``store`` if given, each matrix dropped from memory once
    written); a weight beyond the HE linear layers' public bound is reported in
    ``problems``."""
    g = np.asarray(gamma, np.float64)[:, None]
    out = np.empty_like(w) if store is None else store.empty(w.shape, w.dtype)
    top = 0.0
    for i in np.ndindex(w.shape[:-2]):  # each expert's matrix (or the one matrix)
        out[i] = g * np.asarray(w[i], np.float64)  # rounded to W's dtype as it is stored
        top = max(top, float(np.abs(out[i]).max(initial=0.0)))
        if store is not None:
            store.drop(out[i])
            store.drop(w[i])
    f = DEFAULT_RING.frac_bits
    if out.size and np.rint(top * 2.0**f) >= 2.0 ** (W_BITS - 1):
        problems.append(
            f"{name}: γ·W reaches {top:.4g}, beyond the HE linear layers' "
            f"bound |W| < 2^{W_BITS - 1 - f}"
        )
    return out


def _identity(n: Norm, name: str, problems: list[str], bias_ok: bool = False) -> Norm:
    """The norm with γ = 1 (and β = 0: a non-zero β is reported unless ``bias_ok``)."""
    if n.bias is not None and np.any(n.bias != 0) and not bias_ok:
        problems.append(f"{name}.bias: a LayerNorm β before a layer without a bias cannot fold")
    bias = None if n.bias is None else np.zeros_like(n.bias)
    return Norm(np.ones_like(n.weight), bias)


def _fold_layer(i: int, layer: Layer, store: ExpertStore | None = None) -> Layer:
    """Layer i with its norms folded; the MoE's folded expert stacks go to ``store``."""
    problems: list[str] = []
    pre = f"layers.{i}"
    g = layer.attn_norm.weight
    a = layer.attn
    attn = dataclasses.replace(
        a, **{k: _scaled(g, getattr(a, k), f"{pre}.attn.{k}", problems) for k in ("wq", "wk", "wv")}
    )
    g, ffn = layer.ffn_norm.weight, layer.ffn
    moe = isinstance(ffn, MoE)
    keys = ("router", "w1", "v") if moe else ("w1", "v")
    new = {}
    for k in keys:
        if (w := getattr(ffn, k)) is not None:
            stack = store if moe and k != "router" else None
            new[k] = _scaled(g, w, f"{pre}.ffn.{k}", problems, stack)
    out = Layer(
        _identity(layer.attn_norm, f"{pre}.attn_norm", problems),
        attn,
        _identity(layer.ffn_norm, f"{pre}.ffn_norm", problems),
        dataclasses.replace(ffn, **new),
    )
    if problems:
        raise FoldError("; ".join(problems))
    return out


def fold_norms(weights: ModelWeights) -> ModelWeights:
    """New weights computing the same function, with every foldable norm's γ (module
    docstring) moved into the following weights, those norms' γ = 1 (β = 0) and the config's
    ``norms_folded`` set; ``weights`` is not modified (the experts of weights in an
    :class:`~secmoe.model.expert_store.ExpertStore` are folded into new arrays there, one
    matrix at a time). Streamed layers
    (:class:`~secmoe.model.lazy_weights.StreamedLayers`) stay streamed: each layer is folded
    when accessed (its hook sees the folded layer), so a problem in one surfaces then.

    Raises:
        FoldError: already folded, a non-zero LayerNorm β before a layer without a bias, or a
            folded weight beyond the HE bound; every such tensor is named.
    """
    cfg = weights.config
    if cfg.norms_folded:
        raise FoldError(f"{cfg.name}: the norms are already folded")
    problems: list[str] = []
    top: dict[str, object] = {}
    if not norm_weighted(cfg.replace(norms_folded=True), "final"):
        n = weights.final_norm
        top["head"] = _scaled(n.weight, weights.head, "head", problems)
        if cfg.head == "classifier" and n.bias is not None:
            zero = np.zeros(weights.head.shape[-1], weights.head.dtype)
            b = weights.head_bias if weights.head_bias is not None else zero
            top["head_bias"] = (b + np.asarray(n.bias, np.float64) @ weights.head).astype(b.dtype)
        top["final_norm"] = _identity(n, "final_norm", problems, cfg.head == "classifier")
    layers = weights.layers
    if isinstance(layers, StreamedLayers):
        src = layers.source
        folded = StreamedLayers(len(layers), lambda i: _fold_layer(i, src(i)), layers.hook)
    else:
        folded = []
        for i, layer in enumerate(layers):
            try:
                folded.append(_fold_layer(i, layer, weights.store))
            except FoldError as e:
                problems.append(str(e))
    if problems:
        raise FoldError(f"{cfg.name}: cannot fold the norms: " + "; ".join(problems))
    # a tied LM head is now its own matrix: the folded model is untied
    config = cfg.replace(norms_folded=True, tie_word_embeddings=False)
    return dataclasses.replace(weights, config=config, layers=folded, **top)


__all__ = ["NORMS", "FoldError", "fold_norms", "norm_weighted"]

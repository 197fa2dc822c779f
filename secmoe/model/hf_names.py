"""The checkpoint name map: Hugging Face tensor names and shapes for a ModelConfig.

One :class:`Slot` per checkpoint tensor (or part of one) says where it lives in
:class:`~secmoe.model.weights.ModelWeights` (an attribute path), whether it is an ``nn.Linear``
weight (stored (out, in) in the checkpoint, (in, out) internally), for experts which slice of
the stacked expert tensor it is, and for transformers 5's fused ``gate_up_proj`` which rows.
The names are those transformers' ``save_pretrained`` writes for SwitchTransformers, Mixtral and
Qwen3-MoE; a decoder checkpoint comes in one of four :class:`Layout` s, found from the names
present (:func:`detect_layout`). See :mod:`secmoe.model.weights` for the lists and secmoe's
extensions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

import numpy as np

from secmoe.model.config import ModelConfig

__all__ = [
    "LAYOUTS",
    "Layout",
    "Slot",
    "default_ignored",
    "detect_layout",
    "expected_tensors",
    "param_count",
    "slots",
]


@dataclass(frozen=True)
class Layout:
    """How a decoder (mixtral, qwen3_moe) checkpoint names its tensors; Switch has one layout.

    ``prefix``: ``"model."`` for ``*ForCausalLM`` (and what secmoe writes), ``""`` for the base
    models (``MixtralModel``, ``Qwen3MoeModel``). ``fused_experts``: each MoE layer's experts as
    two 3-D tensors ``mlp.experts.gate_up_proj`` (E, 2·d_ff, d) (gate rows first) and
    ``mlp.experts.down_proj`` (E, d, d_ff), router ``mlp.gate.weight`` — transformers 5's
    in-memory form, written by ``save_pretrained(save_original_format=False)``; otherwise one
    module per expert, as ``save_pretrained`` writes by default.
    """

    prefix: str = "model."
    fused_experts: bool = False

    def describe(self, config: ModelConfig) -> str:
        """E.g. ``"MixtralModel names (no prefix, fused experts)"``."""
        if config.arch == "switch":
            return "SwitchTransformers encoder names"
        cls = {"mixtral": "Mixtral", "qwen3_moe": "Qwen3Moe"}[config.arch]
        kind = f"{cls}ForCausalLM" if self.prefix else f"{cls}Model"
        pre = f"prefix {self.prefix!r}" if self.prefix else "no prefix"
        return f"{kind} names ({pre}, {'fused' if self.fused_experts else 'per-expert'} experts)"


#: Every decoder layout, the default (what secmoe writes) first.
LAYOUTS = tuple(Layout(p, f) for p in ("model.", "") for f in (False, True))


@dataclass(frozen=True)
class Slot:
    """One checkpoint tensor (or a row range of it) and where it goes."""

    hf: str  # tensor name in the checkpoint
    shape: tuple[int, ...]  # shape of the whole tensor in the checkpoint
    key: str  # attribute path in ModelWeights, e.g. "layers.3.ffn.w1"
    linear: bool = False  # nn.Linear layout (…, out, in): the last two axes swap internally
    expert: int | None = None  # index into a stacked expert tensor
    rows: tuple[int, int] | None = None  # this slot's part of the out axis (fused gate_up)

    def internal_shape(self, config: ModelConfig) -> tuple[int, ...]:
        """Shape of the whole internal array this slot belongs to."""
        shape = list(self.shape)
        if self.rows is not None:
            shape[-2] = self.rows[1] - self.rows[0]
        if self.linear:
            shape[-2:] = shape[:-3:-1]
        return (config.n_experts, *shape) if self.expert is not None else tuple(shape)

    def to_internal(self, a: np.ndarray) -> np.ndarray:
        """This slot's part of checkpoint tensor ``a``, in internal layout (a view)."""
        if self.rows is not None:
            a = a[..., self.rows[0] : self.rows[1], :]
        return np.swapaxes(a, -1, -2) if self.linear else a


# FFN matrix names: internal attribute → checkpoint name.
_SWITCH_FFN = {"w1": "wi", "w2": "wo"}
_SWITCH_GATED_FFN = {"w1": "wi_0", "v": "wi_1", "w2": "wo"}
_MIXTRAL_DENSE = {"w1": "gate_proj", "v": "up_proj", "w2": "down_proj"}
_MIXTRAL_EXPERT = {"w1": "w1", "v": "w3", "w2": "w2"}


def _switch_ffn_names(c: ModelConfig) -> dict[str, str]:
    """Switch's FFN matrix names, dense and expert alike."""
    return _SWITCH_GATED_FFN if c.gated else _SWITCH_FFN


def _layer_names(c: ModelConfig, i: int, layout: Layout) -> dict[str, str]:
    """Name templates of layer i's tensors (``{j}`` = expert index, ``{m}`` = FFN matrix)."""
    if c.arch == "switch":
        blk = f"encoder.block.{i}"
        mlp = f"{blk}.layer.1.mlp"
        return {
            "attn_norm": f"{blk}.layer.0.layer_norm",
            "attn": f"{blk}.layer.0.SelfAttention.{{p}}.weight",
            "qk_norm": f"{blk}.layer.0.SelfAttention.{{p}}_norm.weight",
            "ffn_norm": f"{blk}.layer.1.layer_norm",
            "router": f"{mlp}.router.classifier.weight",
            "dense": f"{mlp}.{{m}}.weight",
            "expert": f"{mlp}.experts.expert_{{j}}.{{m}}.weight",
        }
    lay = f"{layout.prefix}layers.{i}"
    legacy_mixtral = c.arch == "mixtral" and not layout.fused_experts
    moe = f"{lay}.block_sparse_moe" if legacy_mixtral else f"{lay}.mlp"
    return {
        "attn_norm": f"{lay}.input_layernorm",
        "attn": f"{lay}.self_attn.{{p}}_proj.weight",
        "qk_norm": f"{lay}.self_attn.{{p}}_norm.weight",
        "ffn_norm": f"{lay}.post_attention_layernorm",
        "router": f"{moe}.gate.weight",
        "dense": f"{lay}.mlp.{{m}}.weight",
        "expert": f"{moe}.experts.{{j}}.{{m}}.weight",
        "fused": f"{moe}.experts.{{m}}",
    }


def _experts(c: ModelConfig, n: dict[str, str], L: str, layout: Layout) -> Iterator[Slot]:
    """The expert tensors of one MoE layer (``L`` = internal prefix, ``n`` = name templates)."""
    d, f, e = c.d_model, c.d_ff, c.n_experts
    if layout.fused_experts and c.arch != "switch" and c.gated:
        gate_up = n["fused"].format(m="gate_up_proj")
        yield Slot(gate_up, (e, 2 * f, d), f"{L}.ffn.w1", True, rows=(0, f))
        yield Slot(gate_up, (e, 2 * f, d), f"{L}.ffn.v", True, rows=(f, 2 * f))
        yield Slot(n["fused"].format(m="down_proj"), (e, d, f), f"{L}.ffn.w2", True)
        return
    shapes = {"w1": (f, d), "v": (f, d), "w2": (d, f)}
    if c.arch == "switch":
        names = _switch_ffn_names(c)
    else:
        names = _MIXTRAL_EXPERT if c.arch == "mixtral" else _MIXTRAL_DENSE
    for j in range(e):
        for m in (m for m in names if m != "v" or c.gated):
            yield Slot(n["expert"].format(j=j, m=names[m]), shapes[m], f"{L}.ffn.{m}", True, j)


def slots(c: ModelConfig, layout: Layout = LAYOUTS[0]) -> Iterator[Slot]:
    """All checkpoint tensors of ``c`` named as in ``layout``, in a stable order."""
    d, fd = c.d_model, c.d_ff_dense
    dq, dkv = c.n_heads * c.d_head, c.kv_heads * c.d_head
    sw = c.arch == "switch"
    pre = "encoder." if sw else layout.prefix

    def norm(name: str, key: str) -> Iterator[Slot]:
        yield Slot(f"{name}.weight", (d,), f"{key}.weight")
        if c.norm == "layernorm":
            yield Slot(f"{name}.bias", (d,), f"{key}.bias")

    if c.input == "tokens":
        name = "shared.weight" if sw else f"{pre}embed_tokens.weight"
        yield Slot(name, (int(c.vocab_size or 0), d), "embed")
    else:
        yield Slot(f"{pre}patch_embed.weight", (d, int(c.patch_dim or 0)), "patch_proj", True)
        yield Slot(f"{pre}patch_embed.bias", (d,), "patch_bias")
    if c.position == "learned":
        yield Slot(f"{pre}embed_positions.weight", (c.seq_len, d), "pos_embed")
    if c.position == "relative":
        name = (
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            if sw
            else f"{pre}relative_attention_bias.weight"
        )
        yield Slot(name, (c.rel_buckets, c.n_heads), "rel_bias")

    dense_names = _switch_ffn_names(c) if sw else _MIXTRAL_DENSE
    dense = {"w1": (fd, d), "v": (fd, d), "w2": (d, fd)}
    for i in range(c.n_layers):
        L, n = f"layers.{i}", _layer_names(c, i, layout)
        yield from norm(n["attn_norm"], f"{L}.attn_norm")
        for p, shape in (("q", (dq, d)), ("k", (dkv, d)), ("v", (dkv, d)), ("o", (d, dq))):
            yield Slot(n["attn"].format(p=p), shape, f"{L}.attn.w{p}", True)
        if c.qk_norm:
            for p in "qk":
                yield Slot(n["qk_norm"].format(p=p), (c.d_head,), f"{L}.attn.{p}_norm")
        yield from norm(n["ffn_norm"], f"{L}.ffn_norm")
        if c.is_moe(i):
            yield Slot(n["router"], (c.n_experts, d), f"{L}.ffn.router", True)
            yield from _experts(c, n, L, layout)
        else:
            for m in (m for m in dense_names if m != "v" or c.gated):
                yield Slot(n["dense"].format(m=dense_names[m]), dense[m], f"{L}.ffn.{m}", True)
    yield from norm("encoder.final_layer_norm" if sw else f"{pre}norm", "final_norm")
    if c.head == "classifier":
        yield Slot("classifier.weight", (int(c.n_classes or 0), d), "head", True)
        yield Slot("classifier.bias", (int(c.n_classes or 0),), "head_bias")
    elif c.head == "lm" and not c.tie_word_embeddings:
        yield Slot("lm_head.weight", (int(c.vocab_size or 0), d), "head", True)


def expected_tensors(
    config: ModelConfig, layout: Layout = LAYOUTS[0]
) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor name → shape for ``config`` (HF layout, (out, in) for linears)."""
    return {s.hf: s.shape for s in slots(config, layout)}


def param_count(config: ModelConfig) -> int:
    """Number of parameters of ``config`` (computed from shapes, nothing allocated)."""
    return int(sum(int(np.prod(s)) for s in expected_tensors(config).values()))


def detect_layout(config: ModelConfig, names: Collection[str]) -> Layout:
    """The decoder layout whose expected names overlap ``names`` most (the default on a tie,
    and always for Switch)."""
    if config.arch == "switch":
        return LAYOUTS[0]
    found = set(names)
    return max(LAYOUTS, key=lambda lay: len(found.intersection(expected_tensors(config, lay))))


def default_ignored(config: ModelConfig) -> tuple[str, ...]:
    """Checkpoint name prefixes skipped on load: an lm head the config does not use (no lm
    head, or tied to the embedding, as transformers ties it); for a Switch encoder also the
    decoder and the tied embedding copy ``encoder.embed_tokens.weight``."""
    head = () if config.head == "lm" and not config.tie_word_embeddings else ("lm_head.",)
    if config.arch != "switch":
        return head
    return ("decoder.", "encoder.embed_tokens.weight", *head)

"""The checkpoint name map: Hugging Face tensor names and shapes for a ModelConfig.

One :class:`Slot` per checkpoint tensor says where it lives in
:class:`~secmoe.model.weights.ModelWeights` (an attribute path), whether it is an ``nn.Linear``
weight (stored (out, in) in the checkpoint, (in, out) internally) and, for experts, which slice
of the stacked expert tensor it is. The names are those of transformers' SwitchTransformers
and Mixtral checkpoints; see :mod:`secmoe.model.weights` for the list and secmoe's extensions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from secmoe.model.config import ModelConfig

__all__ = ["Slot", "default_ignored", "expected_tensors", "param_count", "slots"]


@dataclass(frozen=True)
class Slot:
    """One checkpoint tensor and where it goes."""

    hf: str  # tensor name in the checkpoint
    shape: tuple[int, ...]  # shape in the checkpoint
    key: str  # attribute path in ModelWeights, e.g. "layers.3.ffn.w1"
    linear: bool = False  # an nn.Linear weight (out, in): transposed internally
    expert: int | None = None  # index into a stacked expert tensor

    def internal_shape(self, config: ModelConfig) -> tuple[int, ...]:
        """Shape of the whole internal array this slot belongs to."""
        shape = tuple(reversed(self.shape)) if self.linear else self.shape
        return (config.n_experts, *shape) if self.expert is not None else shape


# FFN matrix names per arch: internal attribute → (dense name, expert name); None = absent.
_SWITCH_FFN = {"w1": "wi", "w2": "wo"}
_SWITCH_GATED_FFN = {"w1": "wi_0", "v": "wi_1", "w2": "wo"}
_MIXTRAL_DENSE = {"w1": "gate_proj", "v": "up_proj", "w2": "down_proj"}
_MIXTRAL_EXPERT = {"w1": "w1", "v": "w3", "w2": "w2"}


def _layer_names(c: ModelConfig, i: int) -> dict[str, str]:
    """Name templates of layer i's tensors (``{j}`` = expert index, ``{m}`` = FFN matrix)."""
    if c.arch == "switch":
        blk = f"encoder.block.{i}"
        mlp = f"{blk}.layer.1.mlp"
        return {
            "attn_norm": f"{blk}.layer.0.layer_norm",
            "attn": f"{blk}.layer.0.SelfAttention.{{p}}.weight",
            "ffn_norm": f"{blk}.layer.1.layer_norm",
            "router": f"{mlp}.router.classifier.weight",
            "dense": f"{mlp}.{{m}}.weight",
            "expert": f"{mlp}.experts.expert_{{j}}.{{m}}.weight",
        }
    lay = f"model.layers.{i}"
    return {
        "attn_norm": f"{lay}.input_layernorm",
        "attn": f"{lay}.self_attn.{{p}}_proj.weight",
        "ffn_norm": f"{lay}.post_attention_layernorm",
        "router": f"{lay}.block_sparse_moe.gate.weight",
        "dense": f"{lay}.mlp.{{m}}.weight",
        "expert": f"{lay}.block_sparse_moe.experts.{{j}}.{{m}}.weight",
    }


def slots(c: ModelConfig) -> Iterator[Slot]:
    """All checkpoint tensors of ``c``, in a stable order."""
    d, f = c.d_model, c.d_ff
    dq, dkv = c.n_heads * c.d_head, c.kv_heads * c.d_head
    sw = c.arch == "switch"
    pre = "encoder" if sw else "model"

    def norm(name: str, key: str) -> Iterator[Slot]:
        yield Slot(f"{name}.weight", (d,), f"{key}.weight")
        if c.norm == "layernorm":
            yield Slot(f"{name}.bias", (d,), f"{key}.bias")

    if c.input == "tokens":
        name = "shared.weight" if sw else "model.embed_tokens.weight"
        yield Slot(name, (int(c.vocab_size or 0), d), "embed")
    else:
        yield Slot(f"{pre}.patch_embed.weight", (d, int(c.patch_dim or 0)), "patch_proj", True)
        yield Slot(f"{pre}.patch_embed.bias", (d,), "patch_bias")
    if c.position == "learned":
        yield Slot(f"{pre}.embed_positions.weight", (c.seq_len, d), "pos_embed")
    if c.position == "relative":
        name = (
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            if sw
            else "model.relative_attention_bias.weight"
        )
        yield Slot(name, (c.rel_buckets, c.n_heads), "rel_bias")

    shapes = {"w1": (f, d), "v": (f, d), "w2": (d, f)}
    if sw:
        dense_names = expert_names = _SWITCH_GATED_FFN if c.gated else _SWITCH_FFN
    else:
        dense_names, expert_names = _MIXTRAL_DENSE, _MIXTRAL_EXPERT
    for i in range(c.n_layers):
        L, n = f"layers.{i}", _layer_names(c, i)
        yield from norm(n["attn_norm"], f"{L}.attn_norm")
        for p, shape in (("q", (dq, d)), ("k", (dkv, d)), ("v", (dkv, d)), ("o", (d, dq))):
            yield Slot(n["attn"].format(p=p), shape, f"{L}.attn.w{p}", True)
        yield from norm(n["ffn_norm"], f"{L}.ffn_norm")
        mats = [m for m in ("w1", "v", "w2") if m != "v" or c.gated]
        if c.is_moe(i):
            yield Slot(n["router"], (c.n_experts, d), f"{L}.ffn.router", True)
            for j in range(c.n_experts):
                for m in mats:
                    name = n["expert"].format(j=j, m=expert_names[m])
                    yield Slot(name, shapes[m], f"{L}.ffn.{m}", True, j)
        else:
            for m in mats:
                yield Slot(n["dense"].format(m=dense_names[m]), shapes[m], f"{L}.ffn.{m}", True)
    yield from norm("encoder.final_layer_norm" if sw else "model.norm", "final_norm")
    if c.head == "classifier":
        yield Slot("classifier.weight", (int(c.n_classes or 0), d), "head", True)
        yield Slot("classifier.bias", (int(c.n_classes or 0),), "head_bias")
    elif c.head == "lm":
        yield Slot("lm_head.weight", (int(c.vocab_size or 0), d), "head", True)


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor name → shape for ``config`` (HF layout, (out, in) for linears)."""
    return {s.hf: s.shape for s in slots(config)}


def param_count(config: ModelConfig) -> int:
    """Number of parameters of ``config`` (computed from shapes, nothing allocated)."""
    return int(sum(int(np.prod(s)) for s in expected_tensors(config).values()))


def default_ignored(config: ModelConfig) -> tuple[str, ...]:
    """Checkpoint name prefixes skipped on load: for a Switch encoder, the decoder, the lm head
    (unless the config has one) and the tied embedding copy ``encoder.embed_tokens.weight``."""
    if config.arch != "switch":
        return ()
    ign = ("decoder.", "encoder.embed_tokens.weight")
    return ign if config.head == "lm" else (*ign, "lm_head.")

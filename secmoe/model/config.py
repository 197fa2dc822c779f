"""Model configurations for MoE transformers: Switch/T5-style encoders, Mixtral- and
Qwen3-MoE-style decoders.

A :class:`ModelConfig` is frozen, validated on construction, and round-trips through JSON. Named
presets (:data:`PRESETS`, :func:`preset`) include ``switch-base-{8,16,32,64,128}`` at the real
Switch-Base dimensions, a small Mixtral-style decoder and the bundled digits model.

Conventions (shared by the weights, the references and the secure runner):

* Pre-norm blocks: h += Attn(Norm(h)); h += FFN_or_MoE(Norm(h)); a final norm; then the head.
* ``arch="switch"``: bidirectional attention, no 1/√d_k score scaling by default (T5 folds it
  into the query weights), T5 relative position buckets shared by all layers (stored in block 0).
* ``arch="mixtral"``: causal attention with 1/√d_k scaling, rotary position embeddings,
  grouped-query attention (``n_kv_heads``), optionally a sliding window.
* ``arch="qwen3_moe"``: as mixtral, plus per-head RMSNorm of q and k before RoPE
  (``qk_norm``); dense layers may have their own FFN size (``dense_d_ff``).
* FFN kinds: ``relu``/``gelu``: w2·act(w1·x); ``gated-gelu``: w2·(GeLU(w1·x) ⊙ v·x) (T5 v1.1);
  ``swiglu``: w2·(SiLU(w1·x) ⊙ v·x) (Mixtral's w1, w3, w2). GeLU is the erf form.
* Routing: router logits l = Wr·x; the k largest logits are chosen. ``norm_topk_prob=False``
  (Switch, Qwen3-MoE's default): gate = softmax(l) over all experts at each chosen one;
  ``True`` (Mixtral): gates = softmax over the k chosen logits. ``expert_capacity``: the model
  drops a token beyond that many per expert and sequence (Switch), in token order.
* ``head``: ``"classifier"`` = mean over tokens + linear (with bias) to ``n_classes``;
  ``"lm"`` = per-token linear to the vocabulary; ``"none"`` = the final hidden states.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PRESETS",
    "ConfigError",
    "ModelConfig",
    "from_hf_config",
    "preset",
    "preset_names",
]

ARCHS = ("switch", "mixtral", "qwen3_moe")
FFN_KINDS = ("relu", "gelu", "gated-gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("relative", "learned", "rope", "none")
HEADS = ("classifier", "lm", "none")
INPUTS = ("tokens", "patches")


class ConfigError(ValueError):
    """An invalid model configuration (the message names the field)."""


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of an MoE transformer (see the module docstring for conventions)."""

    name: str
    arch: str
    d_model: int
    n_heads: int
    n_layers: int
    d_ff: int
    n_experts: int
    top_k: int
    moe_layers: tuple[int, ...]
    ffn: str
    norm: str
    seq_len: int
    input: str = "tokens"
    vocab_size: int | None = None
    patch_dim: int | None = None
    head: str = "none"
    n_classes: int | None = None
    head_dim: int | None = None  # d_kv; default d_model // n_heads
    n_kv_heads: int | None = None  # grouped-query attention; default n_heads
    position: str = "relative"
    rel_buckets: int = 32
    rel_max_distance: int = 128
    rope_theta: float = 10000.0
    scale_attention: bool = False
    causal: bool = False
    norm_eps: float = 1e-6
    capacity_factor: float = 1.25
    #: causal sliding window: query i sees key j iff j <= i and i - j < sliding_window (None: all)
    sliding_window: int | None = None
    #: the model's own per-sequence, per-expert capacity (Switch's ``expert_capacity``);
    #: None = the model drops no token
    expert_capacity: int | None = None
    #: the LM head is the token embedding (the checkpoint has no ``lm_head.weight``)
    tie_word_embeddings: bool = False
    #: gates renormalised over the selected top-k (None: resolved from the arch, see
    #: :meth:`__post_init__`)
    norm_topk_prob: bool | None = None
    #: per-head RMSNorm of queries and keys before RoPE (Qwen3)
    qk_norm: bool = False
    #: hidden size of the dense (non-MoE) layers' FFN when it differs from the experts' d_ff
    #: (Qwen3-MoE's ``intermediate_size``); None = d_ff
    dense_d_ff: int | None = None
    #: rsqrt range [2^lo, 2^hi] of the norms' mean square (+eps), used by the fixed-point and
    #: secure norms; measured on the bundled model, a generous default elsewhere.
    norm_range: tuple[int, int] = (-8, 12)
    #: the server folded the pre-linear norms' γ into the following weights
    #: (:func:`secmoe.model.fold.fold_norms`): those norms run without γ on shares
    norms_folded: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "moe_layers", tuple(int(i) for i in self.moe_layers))
        object.__setattr__(self, "norm_range", tuple(int(i) for i in self.norm_range))
        if self.norm_topk_prob is None:
            # switch: the top-1 gate is softmax over all E at the argmax (not renormalised);
            # mixtral: softmax over the k chosen logits = renormalised; qwen3_moe: HF's default.
            object.__setattr__(self, "norm_topk_prob", self.arch == "mixtral")
        self._validate()

    # --- derived ---------------------------------------------------------------------------

    @property
    def d_head(self) -> int:
        """Per-head dimension d_kv."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def d_ff_dense(self) -> int:
        """Hidden size of the dense layers' FFN (``dense_d_ff``, default d_ff)."""
        return self.dense_d_ff if self.dense_d_ff is not None else self.d_ff

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (= n_heads without grouped-query attention)."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def gated(self) -> bool:
        """Whether the FFN has a gating branch (gated-gelu, swiglu)."""
        return self.ffn in ("gated-gelu", "swiglu")

    @property
    def out_dim(self) -> int:
        """Width of the model output (classes, vocabulary or d_model)."""
        if self.head == "classifier":
            return int(self.n_classes or 0)
        if self.head == "lm":
            return int(self.vocab_size or 0)
        return self.d_model

    def is_moe(self, layer: int) -> bool:
        """Whether layer ``layer`` has an MoE FFN."""
        return layer in self.moe_layers

    def capacity(self, n_tokens: int) -> int:
        """Expert capacity C = ⌈capacity_factor · n_tokens · top_k / n_experts⌉ (≥ 1)."""
        return max(1, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts))

    # --- validation ------------------------------------------------------------------------

    def _validate(self) -> None:
        def need(cond: bool, fld: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config {self.name!r}: {fld}: {msg}")

        need(self.arch in ARCHS, "arch", f"must be one of {ARCHS}, got {self.arch!r}")
        need(self.ffn in FFN_KINDS, "ffn", f"must be one of {FFN_KINDS}, got {self.ffn!r}")
        need(self.norm in NORMS, "norm", f"must be one of {NORMS}, got {self.norm!r}")
        need(self.position in POSITIONS, "position", f"must be one of {POSITIONS}")
        need(self.head in HEADS, "head", f"must be one of {HEADS}, got {self.head!r}")
        need(self.input in INPUTS, "input", f"must be one of {INPUTS}, got {self.input!r}")
        for fld in ("d_model", "n_heads", "n_layers", "d_ff", "n_experts", "top_k", "seq_len"):
            v = getattr(self, fld)
            need(isinstance(v, int) and v > 0, fld, f"must be a positive integer, got {v!r}")
        need(self.top_k <= self.n_experts, "top_k", f"{self.top_k} > n_experts {self.n_experts}")
        need(
            self.head_dim is not None or self.d_model % self.n_heads == 0,
            "n_heads",
            f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}",
        )
        need(
            self.n_heads % self.kv_heads == 0,
            "n_kv_heads",
            f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}",
        )
        need(len(set(self.moe_layers)) == len(self.moe_layers), "moe_layers", "duplicates")
        bad = [i for i in self.moe_layers if not 0 <= i < self.n_layers]
        need(not bad, "moe_layers", f"{bad} out of range for {self.n_layers} layers")
        if self.input == "tokens":
            need(bool(self.vocab_size and self.vocab_size > 0), "vocab_size", "needed for tokens")
        else:
            need(bool(self.patch_dim and self.patch_dim > 0), "patch_dim", "needed for patches")
        if self.head == "classifier":
            need(bool(self.n_classes and self.n_classes > 1), "n_classes", "needed by classifier")
        if self.head == "lm":
            need(bool(self.vocab_size), "vocab_size", "needed by the lm head")
        if self.position == "rope":
            need(self.d_head % 2 == 0, "head_dim", "rotary embeddings need an even head dim")
        need(self.capacity_factor > 0, "capacity_factor", "must be positive")
        need(self.norm_eps >= 0, "norm_eps", "must be ≥ 0")
        lo, hi = self.norm_range
        need(lo < hi, "norm_range", f"needs lo < hi, got {self.norm_range}")
        for fld in ("sliding_window", "expert_capacity", "dense_d_ff"):
            v = getattr(self, fld)
            need(
                v is None or (isinstance(v, int) and v > 0), fld, f"must be None or > 0, got {v!r}"
            )
        need(
            self.sliding_window is None or self.causal,
            "sliding_window",
            "a sliding window needs causal attention",
        )
        for fld in ("tie_word_embeddings", "norm_topk_prob", "qk_norm", "norms_folded"):
            v = getattr(self, fld)
            need(isinstance(v, bool), fld, f"must be a bool, got {v!r}")
        need(
            not self.tie_word_embeddings or (self.head == "lm" and self.input == "tokens"),
            "tie_word_embeddings",
            "needs an lm head and token inputs",
        )

    # --- (de)serialization -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["moe_layers"] = list(self.moe_layers)
        d["norm_range"] = list(self.norm_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown or missing fields raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}")
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(d))
        if missing:
            raise ConfigError(f"missing config field(s) {missing}")
        kw = dict(d)
        kw["moe_layers"] = tuple(kw["moe_layers"])
        if "norm_range" in kw:
            kw["norm_range"] = tuple(kw["norm_range"])
        return cls(**kw)

    def to_json(self) -> str:
        """JSON text (sorted keys, indented)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Parse :meth:`to_json` output."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        """Write the JSON config to ``path``."""
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read a JSON config (secmoe's format, or a Hugging Face ``config.json``: see
        :mod:`secmoe.model.hf_config`)."""
        d = json.loads(Path(path).read_text())
        if "model_type" in d:
            return from_hf_config(d)
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def _switch_base(n_experts: int) -> ModelConfig:
    # google/switch-base-N: T5-base dims, MoE in every other encoder layer (1, 3, …, 11),
    # top-1, ReLU experts, T5 RMS norm, relative position buckets, the T5 vocabulary. The
    # paper runs 8 tokens.
    return ModelConfig(
        name=f"switch-base-{n_experts}",
        arch="switch",
        d_model=768,
        n_heads=12,
        n_layers=12,
        d_ff=3072,
        n_experts=n_experts,
        top_k=1,
        moe_layers=tuple(range(1, 12, 2)),
        ffn="relu",
        norm="rmsnorm",
        seq_len=8,
        vocab_size=32128,
        head_dim=64,
        position="relative",
        norm_eps=1e-6,
        capacity_factor=1.25,
    )


def _moe_small() -> ModelConfig:
    # The paper's "MoE-Small" (T5-small dims, 8 experts), encoder side.
    return _switch_base(8).replace(
        name="moe-small-8", d_model=512, n_heads=8, n_layers=6, d_ff=2048, moe_layers=(1, 3, 5)
    )


def _mixtral_tiny() -> ModelConfig:
    return ModelConfig(
        name="mixtral-tiny",
        arch="mixtral",
        d_model=64,
        n_heads=4,
        n_layers=2,
        d_ff=128,
        n_experts=8,
        top_k=2,
        moe_layers=(0, 1),
        ffn="swiglu",
        norm="rmsnorm",
        seq_len=16,
        vocab_size=512,
        head="lm",
        n_kv_heads=2,
        position="rope",
        rope_theta=1e6,
        scale_attention=True,
        causal=True,
        norm_eps=1e-5,
    )


def _digits() -> ModelConfig:
    # The bundled model (secmoe/model/bundled/): 8×8 digits as 8 row tokens of 8 pixels.
    return ModelConfig(
        name="digits-moe",
        arch="switch",
        d_model=32,
        n_heads=2,
        n_layers=2,
        d_ff=64,
        n_experts=4,
        top_k=1,
        moe_layers=(1,),
        ffn="gated-gelu",
        norm="layernorm",
        seq_len=8,
        input="patches",
        patch_dim=8,
        head="classifier",
        n_classes=10,
        position="learned",
        norm_eps=1e-5,
        capacity_factor=1.25,
        norm_range=(-6, 8),
    )


PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        *(_switch_base(n) for n in (8, 16, 32, 64, 128)),
        _moe_small(),
        _mixtral_tiny(),
        _digits(),
    ]
}


def preset_names() -> list[str]:
    """Names of the presets."""
    return list(PRESETS)


def preset(name: str) -> ModelConfig:
    """The preset called ``name`` (ConfigError listing the known names otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


# The Hugging Face conversion lives in its own module (it needs ModelConfig, defined above).
from secmoe.model.hf_config import from_hf_config  # noqa: E402

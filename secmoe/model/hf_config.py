"""Hugging Face ``config.json`` → :class:`~secmoe.model.config.ModelConfig`, key by key.

Three transformers families are supported, checked against transformers 5.25's configuration
and modeling code (older 4.x key spellings are accepted where they mean the same thing):

* ``switch_transformers`` (``SwitchTransformersForConditionalGeneration``,
  ``SwitchTransformersModel``, ``SwitchTransformersEncoderModel``): the **encoder** runs
  (``arch="switch"``, ``head="none"``);
* ``mixtral`` (``MixtralForCausalLM`` → ``head="lm"``, ``MixtralModel`` → ``head="none"``);
* ``qwen3_moe`` (``Qwen3MoeForCausalLM``, ``Qwen3MoeModel``).

Every key is either **read** (it sets a ModelConfig field), **ignored** because it cannot
change what inference computes (:data:`IGNORED_KEYS`: bookkeeping, token ids, initialisation,
dropout, training-only router noise and losses, generation defaults), or **refused** with a
:class:`ConfigError` naming the key and its value — a value secmoe cannot compute exactly, or
a key it does not know. Nothing is silently run as a different model. A missing key takes
transformers' default for that family, as ``from_pretrained`` would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from secmoe.model.config import ConfigError, ModelConfig

__all__ = ["IGNORED_KEYS", "SWITCH_SEQ_LEN", "from_hf_config"]

#: seq_len of a Switch encoder, whose relative position buckets have no hard length limit:
#: T5's pre-training input length. Pass ``seq_len=`` to allow longer sequences.
SWITCH_SEQ_LEN = 512

#: Keys that cannot change the inference function, for every family: bookkeeping, special
#: token ids, initialisation, output switches, generation defaults (transformers pops those),
#: dropout and training-only router settings (jitter noise is applied only in training mode).
IGNORED_KEYS = frozenset(
    {
        "architectures",  # read for the head (see from_hf_config), never a function change
        "model_type",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "_name_or_path",
        "name_or_path",
        "_commit_hash",
        "_attn_implementation",
        "_attn_implementation_internal",
        "attn_implementation",
        "_experts_implementation",
        "_experts_implementation_internal",
        "experts_implementation",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "initializer_range",
        "initializer_factor",
        "use_cache",
        "return_dict",
        "torchscript",
        "chunk_size_feed_forward",
        "tokenizer_class",
        "prefix",
        "finetuning_task",
        "task_specific_params",
        "problem_type",
        "id2label",
        "label2id",
        "num_labels",
        "is_encoder_decoder",
        "router_jitter_noise",
        "router_z_loss_coef",
        "router_aux_loss_coef",
        "output_router_logits",
        "add_router_probs",
        "attention_dropout",
        "dropout_rate",
        # generation defaults (transformers moves them to generation_config.json)
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "temperature",
        "top_k",
        "top_p",
        "typical_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size",
        "encoder_repetition_penalty",
        "bad_words_ids",
        "num_return_sequences",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        "return_dict_in_generate",
        "output_scores",
        "epsilon_cutoff",
        "eta_cutoff",
    }
)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith("output_") or key.endswith("_loss_coef")


class _Keys:
    """A config dict being converted: records the keys read, refuses by name."""

    def __init__(self, d: Mapping[str, Any], family: str) -> None:
        self.d, self.family, self.seen = d, family, set()

    def get(self, key: str, default: Any = None) -> Any:
        """The value, or transformers' ``default`` when the key is absent (null stays None)."""
        self.seen.add(key)
        return self.d.get(key, default)

    def integer(self, key: str, default: int | None = None) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.family} config: {key}={v!r} must be an integer")
        return v

    def number(self, key: str, default: float) -> float:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{self.family} config: {key}={v!r} must be a number")
        return float(v)

    def refuse(self, key: str, why: str, value: Any = None) -> ConfigError:
        """The error for ``key`` (its value in the dict unless ``value`` is given)."""
        v = self.d.get(key) if value is None else value
        return ConfigError(f"{self.family} config: {key}={v!r} is not supported: {why}")

    def only(self, key: str, ok: Callable[[Any], bool], default: Any, why: str) -> Any:
        """Read ``key``; refuse it by name unless ``ok(value)``."""
        v = self.get(key, default)
        if not ok(v):
            raise self.refuse(key, why)
        return v

    def done(self) -> None:
        """Refuse every key neither read nor known to be harmless."""
        left = sorted(k for k in self.d if k not in self.seen and not _ignored(k))
        if left:
            shown = ", ".join(f"{k}={self.d[k]!r}" for k in left[:6])
            raise ConfigError(
                f"{self.family} config: key(s) secmoe does not know: {shown}"
                f"{' …' if len(left) > 6 else ''} (refused rather than ignored: they may change "
                "what the model computes)"
            )


def _head(k: _Keys, heads: Mapping[str, str], default: str) -> str:
    """The head from ``architectures`` (class name → head), refusing other classes by name."""
    archs = k.get("architectures") or []
    found = {heads.get(a) for a in archs}
    if None in found or len(found) > 1:
        raise k.refuse("architectures", f"secmoe runs {', '.join(heads)} (one at a time)")
    return found.pop() if found else default


# --------------------------------------------------------------------------------------------
# switch_transformers
# --------------------------------------------------------------------------------------------

_SWITCH_HEADS = {
    "SwitchTransformersForConditionalGeneration": "none",
    "SwitchTransformersModel": "none",
    "SwitchTransformersEncoderModel": "none",
}
#: transformers' ACT2FN names secmoe computes exactly: ReLU and the erf form of GeLU.
_SWITCH_ACTS = {"relu": "relu", "gelu": "gelu", "gelu_python": "gelu"}
_TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate")
#: secmoe's own (pre-transformers) spelling of the FFN, read only without ``dense_act_fn``.
_LEGACY_PROJ = {"relu": "relu", "gelu": "gelu", "gated-gelu": "gated-gelu"}


def _switch_ffn(k: _Keys) -> str:
    proj = k.get("feed_forward_proj")
    if "dense_act_fn" not in k.d and proj is not None:
        ffn = _LEGACY_PROJ.get(proj)
        if ffn is None:
            raise k.refuse("feed_forward_proj", f"one of {sorted(_LEGACY_PROJ)}")
    else:
        act = k.get("dense_act_fn", "relu")
        if act in _TANH_GELUS:
            raise k.refuse(
                "dense_act_fn", "the tanh approximation of GeLU; secmoe computes the erf form"
            )
        ffn = _SWITCH_ACTS.get(act)
        if ffn is None:
            raise k.refuse("dense_act_fn", f"secmoe computes {sorted(_SWITCH_ACTS)}")
        if proj is not None and proj != act:
            raise k.refuse("feed_forward_proj", f"disagrees with dense_act_fn={act!r}")
    gated = ffn == "gated-gelu"
    k.only("is_gated_act", lambda v: v is gated, gated, f"the FFN is {ffn}")
    return ffn


def _switch_moe_layers(k: _Keys, n_layers: int) -> tuple[int, ...]:
    """Sparse encoder layers: i % step == 1 (every layer when step == 1), as transformers.

    The step is ``encoder_sparse_step`` when config.json has it (transformers sets the stored
    value after deriving its own), else num_layers // num_sparse_encoder_layers (num_layers
    when that is 0)."""
    n_sparse = k.integer("num_sparse_encoder_layers", 3)
    derived = n_layers // n_sparse if n_sparse > 0 else n_layers
    step = k.integer("encoder_sparse_step", derived)
    return tuple(i for i in range(n_layers) if step > 0 and (step == 1 or i % step == 1))


def _switch(k: _Keys, seq_len: int | None) -> ModelConfig:
    """SwitchTransformers: the encoder. Read: vocab_size, d_model, d_kv, d_ff, num_heads,
    num_layers, num_experts, expert_capacity (per sequence, per expert), dense_act_fn (or the
    legacy feed_forward_proj / is_gated_act), encoder_sparse_step / num_sparse_encoder_layers,
    relative_attention_num_buckets / _max_distance, layer_norm_epsilon. Checked: router_bias
    (false), router_dtype (float32), is_decoder / add_cross_attention (false), and the legacy
    num_selected_experts (1), router_type ("tokens_masked"), batch_prioritized_routing (false).
    Ignored: the decoder's keys (num_decoder_layers, num_sparse_decoder_layers,
    decoder_sparse_step), router_ignore_padding_tokens (unused by transformers' router; secmoe
    has no padding), and tie_word_embeddings: it ties the decoder's LM head to the shared
    embedding, and neither runs in an encoder-only model (head "none")."""
    n_layers = k.integer("num_layers", 12)
    d_model, n_heads = k.integer("d_model", 768), k.integer("num_heads", 12)
    k.only("router_bias", lambda v: v is False, False, "a router bias (the router is Wr·x)")
    k.only("router_dtype", lambda v: v == "float32", "float32", "the router softmax is float32")
    for key, why in (
        ("is_decoder", "a causal encoder stack"),
        ("add_cross_attention", "cross-attention in the encoder"),
        ("batch_prioritized_routing", "transformers fills capacity in token order"),
    ):
        k.only(key, lambda v: v is False, False, why)
    k.only("num_selected_experts", lambda v: v == 1, 1, "Switch routing is top-1")
    k.only("router_type", lambda v: v == "tokens_masked", "tokens_masked", "tokens choose")
    for key in ("num_decoder_layers", "num_sparse_decoder_layers", "decoder_sparse_step"):
        k.get(key)
    k.get("router_ignore_padding_tokens")
    k.get("tie_word_embeddings")
    _head(k, _SWITCH_HEADS, "none")
    cfg = ModelConfig(
        name=str(k.get("_name_or_path") or "switch"),
        arch="switch",
        d_model=d_model,
        n_heads=n_heads,
        n_layers=n_layers,
        d_ff=k.integer("d_ff", 2048),
        n_experts=k.integer("num_experts", 8),
        top_k=1,
        moe_layers=_switch_moe_layers(k, n_layers),
        ffn=_switch_ffn(k),
        norm="rmsnorm",
        seq_len=seq_len or SWITCH_SEQ_LEN,
        vocab_size=k.integer("vocab_size", 32128),
        head_dim=k.integer("d_kv", 64),
        position="relative",
        rel_buckets=k.integer("relative_attention_num_buckets", 32),
        rel_max_distance=k.integer("relative_attention_max_distance", 128),
        norm_eps=k.number("layer_norm_epsilon", 1e-6),
        expert_capacity=k.integer("expert_capacity", 64),
        norm_topk_prob=False,
    )
    k.done()
    return cfg


# --------------------------------------------------------------------------------------------
# mixtral and qwen3_moe (decoders)
# --------------------------------------------------------------------------------------------

_ROPE_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")


def _rope_theta(k: _Keys, default_theta: float) -> float:
    """RoPE base, resolved as transformers 5 does: ``rope_scaling`` (4.x) or
    ``rope_parameters`` (5.x), then the top-level ``rope_theta``, then the family default.
    Only the default (unscaled, full-width) rotary embedding is computed."""
    legacy = k.get("rope_scaling")
    key = "rope_scaling" if legacy else "rope_parameters"
    given = legacy or k.get("rope_parameters") or {}  # null: the defaults
    if not isinstance(given, Mapping):
        raise k.refuse(key, "must be a dict")
    rope = dict(given)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise k.refuse(key, f"rope_type {kind!r}: secmoe computes only the default RoPE")
    unknown = sorted(set(rope) - set(_ROPE_KEYS))
    if unknown:
        raise k.refuse(key, f"unknown RoPE parameter(s) {unknown}")
    partial = rope.get("partial_rotary_factor", k.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise k.refuse("partial_rotary_factor", "secmoe rotates the whole head", partial)
    top = k.number("rope_theta", default_theta)
    theta = rope.get("rope_theta", top)
    if isinstance(theta, bool) or not isinstance(theta, int | float):
        raise k.refuse(key, f"rope_theta {theta!r} is not a number")
    return float(theta)


def _decoder(k: _Keys, seq_len: int | None, family: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields Mixtral and Qwen3-MoE share (attention, RoPE, norms, head)."""
    heads = {f"{family['cls']}ForCausalLM": "lm", f"{family['cls']}Model": "none"}
    head = _head(k, heads, "lm")
    n_heads = k.integer("num_attention_heads", family["num_attention_heads"])
    max_len = k.integer("max_position_embeddings", family["max_position_embeddings"])
    head_dim = k.get("head_dim")  # null: hidden_size // num_attention_heads
    kv = k.get("num_key_value_heads", family["num_key_value_heads"])  # null: num_attention_heads
    k.only("hidden_act", lambda v: v in ("silu", "swish"), "silu", "the experts are SwiGLU")
    k.only("attention_bias", lambda v: v is False, False, "q/k/v/o projections have no bias")
    # The mixtral config calls the expert count num_local_experts, qwen3_moe num_experts;
    # each maps the other name onto its own (transformers' attribute_map).
    names = ("num_local_experts", "num_experts")
    given = {n: k.integer(n) for n in names if k.d.get(n) is not None}
    if len(set(given.values())) > 1:
        raise k.refuse("num_experts", f"disagrees with num_local_experts={given[names[0]]}")
    tie = k.only("tie_word_embeddings", lambda v: isinstance(v, bool), False, "a bool")
    return dict(
        name=str(k.get("_name_or_path") or family["name"]),
        arch=family["name"],
        d_model=k.integer("hidden_size", family["hidden_size"]),
        n_heads=n_heads,
        n_layers=k.integer("num_hidden_layers", family["num_hidden_layers"]),
        n_experts=next(iter(given.values()), family["num_experts"]),
        top_k=k.integer("num_experts_per_tok", family["num_experts_per_tok"]),
        ffn="swiglu",
        norm="rmsnorm",
        seq_len=seq_len or max_len,
        vocab_size=k.integer("vocab_size", family["vocab_size"]),
        head=head,
        head_dim=None if head_dim is None else k.integer("head_dim"),
        n_kv_heads=n_heads if kv is None else k.integer("num_key_value_heads"),
        position="rope",
        rope_theta=_rope_theta(k, family["rope_theta"]),
        scale_attention=True,
        causal=True,
        norm_eps=k.number("rms_norm_eps", family["rms_norm_eps"]),
        tie_word_embeddings=tie and head == "lm",
    )


_MIXTRAL = {
    "name": "mixtral",
    "cls": "Mixtral",
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 4096 * 32,
    "vocab_size": 32000,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-5,
}


def _mixtral(k: _Keys, seq_len: int | None) -> ModelConfig:
    """Mixtral: every layer sparse, d_ff = intermediate_size, gates renormalised over the
    top-k (a norm_topk_prob key, which transformers' Mixtral does not read, must be true).
    sliding_window: null = none. Ignored: router_jitter_noise, attention_dropout,
    output_router_logits, router_aux_loss_coef (training only)."""
    kw = _decoder(k, seq_len, _MIXTRAL)
    k.only("norm_topk_prob", lambda v: v is True, True, "Mixtral always renormalises")
    window = k.get("sliding_window")
    cfg = ModelConfig(
        **kw,
        d_ff=k.integer("intermediate_size", 14336),
        moe_layers=tuple(range(kw["n_layers"])),
        sliding_window=None if window is None else k.integer("sliding_window"),
        norm_topk_prob=True,
    )
    k.done()
    return cfg


_QWEN3_MOE = {
    "name": "qwen3_moe",
    "cls": "Qwen3Moe",
    "hidden_size": 2048,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "num_hidden_layers": 24,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "max_position_embeddings": 32768,
    "vocab_size": 151936,
    "rope_theta": 1e4,
    "rms_norm_eps": 1e-6,
}


def _qwen3_sliding_window(k: _Keys) -> int | None:
    """The window if ``use_sliding_window`` (transformers 5 then windows every layer);
    ``max_window_layers`` (a 4.x key) is refused with a window, since the versions disagree
    on which layers it windows."""
    window = k.get("sliding_window", 4096)
    if not k.get("use_sliding_window", False):
        k.get("max_window_layers")
        return None
    if k.d.get("max_window_layers") is not None:
        raise k.refuse("max_window_layers", "transformers 5 windows every layer, 4.x did not")
    return None if window is None else k.integer("sliding_window", window)


def _qwen3_moe(k: _Keys, seq_len: int | None) -> ModelConfig:
    """Qwen3-MoE: per-head q/k RMSNorm (always), experts of size moe_intermediate_size, layer
    i sparse iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0 (dense layers
    have intermediate_size), norm_topk_prob as given (default false). Ignored:
    attention_dropout, output_router_logits, router_aux_loss_coef (training only)."""
    kw = _decoder(k, seq_len, _QWEN3_MOE)
    n = kw["n_layers"]
    step = k.only("decoder_sparse_step", lambda v: isinstance(v, int) and v > 0, 1, "must be ≥ 1")
    dense = set(k.only("mlp_only_layers", lambda v: isinstance(v, list | None), [], "a list") or [])
    moe = tuple(i for i in range(n) if i not in dense and (i + 1) % step == 0)
    d_ff, d_dense = k.integer("moe_intermediate_size", 768), k.integer("intermediate_size", 6144)
    cfg = ModelConfig(
        **kw,
        d_ff=d_ff,
        moe_layers=moe,
        dense_d_ff=d_dense if len(moe) < n and d_dense != d_ff else None,
        sliding_window=_qwen3_sliding_window(k),
        norm_topk_prob=bool(k.get("norm_topk_prob", False)),
        qk_norm=True,
    )
    k.done()
    return cfg


_FAMILIES = {"switch_transformers": _switch, "mixtral": _mixtral, "qwen3_moe": _qwen3_moe}


def from_hf_config(d: Mapping[str, Any], seq_len: int | None = None) -> ModelConfig:
    """Convert a Hugging Face ``config.json`` dict to a ModelConfig (see the module docstring).

    ``seq_len`` (the longest sequence the model accepts) defaults to ``max_position_embeddings``
    for the decoders and :data:`SWITCH_SEQ_LEN` for Switch. The head follows
    ``architectures`` (``*ForCausalLM`` → ``"lm"``, base models and Switch → ``"none"``;
    ``"lm"`` when absent). Raises ConfigError naming any key refused.
    """
    mt = d.get("model_type")
    convert = _FAMILIES.get(mt)  # type: ignore[arg-type]
    if convert is None:
        raise ConfigError(
            f"unsupported Hugging Face model_type {mt!r} (supported: {', '.join(_FAMILIES)})"
        )
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"seq_len must be ≥ 1, got {seq_len}")
    return convert(_Keys(d, str(mt)), seq_len)

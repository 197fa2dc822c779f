"""from_hf_config: every key of transformers' Switch, Mixtral and Qwen3-MoE configs is read,
ignored as harmless, or refused by name.

The dicts below are written out by hand as transformers 5.25's ``save_pretrained`` writes
config.json for small models (class defaults for every key not set), plus the older 4.x
spellings (top-level ``rope_theta``, ``rope_scaling``, ``torch_dtype``, ``max_window_layers``).
"""

import json

import pytest

from secmoe.model.config import ConfigError, ModelConfig
from secmoe.model.hf_config import IGNORED_KEYS, SWITCH_SEQ_LEN, from_hf_config

SWITCH = {
    "add_cross_attention": False,
    "add_router_probs": False,
    "architectures": ["SwitchTransformersForConditionalGeneration"],
    "bos_token_id": None,
    "d_ff": 24,
    "d_kv": 4,
    "d_model": 16,
    "decoder_sparse_step": 1,
    "dense_act_fn": "relu",
    "dropout_rate": 0.1,
    "dtype": "float32",
    "encoder_sparse_step": 2,
    "eos_token_id": 1,
    "expert_capacity": 64,
    "initializer_factor": 1.0,
    "is_decoder": False,
    "is_encoder_decoder": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "switch_transformers",
    "num_decoder_layers": 1,
    "num_experts": 4,
    "num_heads": 4,
    "num_layers": 2,
    "num_sparse_decoder_layers": 1,
    "num_sparse_encoder_layers": 1,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "router_aux_loss_coef": 0.001,
    "router_bias": False,
    "router_dtype": "float32",
    "router_ignore_padding_tokens": False,
    "router_jitter_noise": 0.01,
    "router_z_loss_coef": 0.001,
    "tie_word_embeddings": True,
    "transformers_version": "5.25.0",
    "use_cache": True,
    "vocab_size": 50,
}
MIXTRAL = {
    "architectures": ["MixtralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "dtype": "float32",
    "eos_token_id": 2,
    "head_dim": None,
    "hidden_act": "silu",
    "hidden_size": 16,
    "initializer_range": 0.02,
    "intermediate_size": 24,
    "max_position_embeddings": 64,
    "model_type": "mixtral",
    "num_attention_heads": 4,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "output_router_logits": False,
    "pad_token_id": None,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "router_aux_loss_coef": 0.001,
    "router_jitter_noise": 0.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "transformers_version": "5.25.0",
    "use_cache": True,
    "vocab_size": 50,
}
QWEN3 = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": None,
    "decoder_sparse_step": 1,
    "dtype": "float32",
    "eos_token_id": None,
    "head_dim": 8,
    "hidden_act": "silu",
    "hidden_size": 16,
    "initializer_range": 0.02,
    "intermediate_size": 40,
    "max_position_embeddings": 32768,
    "mlp_only_layers": [0],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 8,
    "norm_topk_prob": False,
    "num_attention_heads": 4,
    "num_experts_per_tok": 3,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "num_local_experts": 6,
    "output_router_logits": False,
    "pad_token_id": None,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "transformers_version": "5.25.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 50,
}
#: A transformers 4.x Qwen3-MoE config.json (the shape of Qwen/Qwen3-30B-A3B's, shrunk).
QWEN3_4X = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 8,
    "hidden_act": "silu",
    "hidden_size": 16,
    "initializer_range": 0.02,
    "intermediate_size": 48,
    "max_position_embeddings": 40960,
    "max_window_layers": 4,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 8,
    "norm_topk_prob": True,
    "num_attention_heads": 4,
    "num_experts": 16,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 64,
}


def hf(base: dict, **changes) -> dict:
    """``base`` with keys changed (a value of ``...`` removes the key)."""
    d = {**base, **changes}
    return {k: v for k, v in d.items() if v is not ...}


def has(c: ModelConfig, **want) -> None:
    """``c``'s attributes are ``want``."""
    assert {k: getattr(c, k) for k in want} == want


def refused(d: dict, *words: str) -> str:
    """The ConfigError message for ``d``, checked to name every word (key, value)."""
    with pytest.raises(ConfigError) as e:
        from_hf_config(d)
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    return msg


# --- switch_transformers ---------------------------------------------------------------------


def test_switch_as_transformers_writes_it():
    c = from_hf_config(SWITCH)
    has(c, arch="switch", head="none", ffn="relu", norm="rmsnorm", position="relative", top_k=1)
    assert (c.d_model, c.n_heads, c.d_head, c.n_layers, c.d_ff, c.n_experts) == (16, 4, 4, 2, 24, 4)
    assert c.moe_layers == (1,)
    assert (c.rel_buckets, c.rel_max_distance, c.norm_eps) == (32, 128, 1e-6)
    assert c.expert_capacity == 64 and c.norm_topk_prob is False
    # tie_word_embeddings ties the decoder's lm head: nothing to tie in the encoder
    assert c.tie_word_embeddings is False and not c.scale_attention and not c.causal
    assert c.seq_len == SWITCH_SEQ_LEN >= 9


@pytest.mark.parametrize(
    ("act", "ffn"), [("relu", "relu"), ("gelu", "gelu"), ("gelu_python", "gelu")]
)
def test_switch_dense_act_fn(act, ffn):
    assert from_hf_config(hf(SWITCH, dense_act_fn=act)).ffn == ffn


@pytest.mark.parametrize("act", ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate"])
def test_switch_tanh_gelu_is_refused_by_name(act):
    refused(hf(SWITCH, dense_act_fn=act), "dense_act_fn", repr(act), "tanh")


@pytest.mark.parametrize("act", ["silu", "gated-gelu", "relu2"])
def test_switch_other_activations_are_refused(act):
    refused(hf(SWITCH, dense_act_fn=act), "dense_act_fn", repr(act))


def test_switch_legacy_feed_forward_proj():
    # secmoe's older spelling, read when dense_act_fn is absent (gated-gelu = T5 v1.1 FFN)
    legacy = hf(SWITCH, dense_act_fn=..., feed_forward_proj="gated-gelu", is_gated_act=True)
    assert from_hf_config(legacy).ffn == "gated-gelu"
    assert from_hf_config(hf(legacy, is_gated_act=...)).ffn == "gated-gelu"
    assert from_hf_config(hf(SWITCH, dense_act_fn=..., feed_forward_proj="gelu")).ffn == "gelu"
    # transformers runs dense_act_fn: a feed_forward_proj that says otherwise is refused
    refused(hf(SWITCH, feed_forward_proj="gelu"), "feed_forward_proj", "dense_act_fn")
    refused(hf(SWITCH, is_gated_act=True), "is_gated_act")


def test_switch_expert_capacity_is_the_models():
    assert from_hf_config(hf(SWITCH, expert_capacity=1)).expert_capacity == 1
    assert from_hf_config(hf(SWITCH, expert_capacity=...)).expert_capacity == 64  # default


@pytest.mark.parametrize(
    ("n_layers", "changes", "moe"),
    [
        (4, {"num_sparse_encoder_layers": 2, "encoder_sparse_step": ...}, (1, 3)),
        (4, {"num_sparse_encoder_layers": 4, "encoder_sparse_step": ...}, (0, 1, 2, 3)),
        # transformers' "0 sparse layers" hack: step = num_layers, so layer 1 is sparse
        (4, {"num_sparse_encoder_layers": 0, "encoder_sparse_step": ...}, (1,)),
        (5, {"num_sparse_encoder_layers": 9, "encoder_sparse_step": ...}, ()),  # step 0
        # a stored encoder_sparse_step wins over the derived one, as in transformers
        (4, {"num_sparse_encoder_layers": 2, "encoder_sparse_step": 1}, (0, 1, 2, 3)),
        (6, {"num_sparse_encoder_layers": ..., "encoder_sparse_step": 3}, (1, 4)),
    ],
)
def test_switch_sparse_layers(n_layers, changes, moe):
    assert from_hf_config(hf(SWITCH, num_layers=n_layers, **changes)).moe_layers == moe


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("router_bias", True),
        ("router_dtype", "bfloat16"),
        ("is_decoder", True),
        ("add_cross_attention", True),
        ("num_selected_experts", 2),
        ("router_type", "experts_choice"),
        ("batch_prioritized_routing", True),
        ("architectures", ["SwitchTransformersForSequenceClassification"]),
    ],
)
def test_switch_unsupported_values_are_refused_by_name(key, value):
    refused(hf(SWITCH, **{key: value}), key, repr(value))


def test_switch_legacy_keys_with_transformers_values_are_accepted():
    old = hf(SWITCH, num_selected_experts=1, router_type="tokens_masked")
    c = from_hf_config(hf(old, batch_prioritized_routing=False, torch_dtype="float32"))
    assert c == from_hf_config(SWITCH)


def test_switch_decoder_and_training_keys_do_not_matter():
    other = hf(
        SWITCH,
        num_decoder_layers=7,
        num_sparse_decoder_layers=3,
        decoder_sparse_step=2,
        router_jitter_noise=0.5,  # applied only in training mode
        dropout_rate=0.3,
        router_ignore_padding_tokens=True,
        tie_word_embeddings=False,
        router_z_loss_coef=1.0,
    )
    assert from_hf_config(other) == from_hf_config(SWITCH)


# --- mixtral ---------------------------------------------------------------------------------


def test_mixtral_as_transformers_writes_it():
    c = from_hf_config(MIXTRAL)
    has(c, arch="mixtral", head="lm", ffn="swiglu", position="rope", top_k=2, n_experts=4)
    has(c, d_model=16, n_heads=4, kv_heads=2, d_head=4, d_ff=24, moe_layers=(0, 1))
    assert c.causal and c.scale_attention and c.norm_topk_prob is True and not c.qk_norm
    assert (c.rope_theta, c.norm_eps, c.seq_len) == (1e6, 1e-5, 64)  # max_position_embeddings
    assert c.sliding_window is None and c.tie_word_embeddings is False
    assert c.expert_capacity is None  # Mixtral drops no token


def test_mixtral_keys_that_change_the_function():
    assert from_hf_config(hf(MIXTRAL, sliding_window=4)).sliding_window == 4
    assert from_hf_config(hf(MIXTRAL, tie_word_embeddings=True)).tie_word_embeddings
    assert from_hf_config(hf(MIXTRAL, head_dim=8)).d_head == 8
    assert from_hf_config(hf(MIXTRAL, num_key_value_heads=None)).kv_heads == 4  # = heads
    assert from_hf_config(hf(MIXTRAL, num_experts_per_tok=3)).top_k == 3
    assert from_hf_config(hf(MIXTRAL, max_position_embeddings=...)).seq_len == 131072
    assert from_hf_config(MIXTRAL, seq_len=9).seq_len == 9
    base = from_hf_config(hf(MIXTRAL, architectures=["MixtralModel"], tie_word_embeddings=True))
    assert base.head == "none" and not base.tie_word_embeddings  # no head to tie


@pytest.mark.parametrize(
    ("changes", "theta"),
    [
        ({}, 1e6),
        ({"rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}, 5e5),
        ({"rope_parameters": ..., "rope_theta": 1234.0}, 1234.0),  # transformers 4.x
        ({"rope_parameters": None, "rope_scaling": None, "rope_theta": 99.0}, 99.0),
        ({"rope_parameters": ...}, 1e6),  # Mixtral's default_theta
        ({"rope_parameters": {"rope_type": "default"}, "rope_theta": 7.0}, 7.0),
        ({"rope_parameters": {"type": "default", "rope_theta": 3.0}, "rope_theta": 7.0}, 3.0),
    ],
)
def test_mixtral_rope_theta_resolution(changes, theta):
    assert from_hf_config(hf(MIXTRAL, **changes)).rope_theta == theta


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, ("rope_scaling", "linear")),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, ("rope_parameters", "yarn")),
        ({"rope_parameters": {"rope_type": "default", "factor": 4.0}}, ("rope_parameters",)),
        ({"partial_rotary_factor": 0.5}, ("partial_rotary_factor", "0.5")),
        ({"hidden_act": "gelu"}, ("hidden_act", "'gelu'")),
        ({"norm_topk_prob": False}, ("norm_topk_prob", "False")),
        ({"attention_bias": True}, ("attention_bias", "True")),
        ({"num_experts": 5}, ("num_experts", "5")),  # disagrees with num_local_experts
        ({"architectures": ["MixtralForSequenceClassification"]}, ("architectures",)),
        ({"head_dim": "8"}, ("head_dim", "'8'")),
        ({"layer_types": ["sliding_attention"] * 2}, ("layer_types",)),
        ({"quantization_config": {"bits": 4}}, ("quantization_config",)),
    ],
)
def test_mixtral_refusals_name_the_key(changes, words):
    refused(hf(MIXTRAL, **changes), *words)


def test_mixtral_training_and_bookkeeping_keys_do_not_matter():
    other = hf(
        MIXTRAL,
        router_jitter_noise=0.1,
        attention_dropout=0.2,
        output_router_logits=True,
        router_aux_loss_coef=0.5,
        initializer_range=1.0,
        torch_dtype="bfloat16",
        use_cache=False,
        num_experts=4,  # the same count under transformers' other name
        norm_topk_prob=True,
        max_length=20,
        _name_or_path="",
    )
    assert from_hf_config(other) == from_hf_config(MIXTRAL)


def test_unknown_keys_are_refused_and_listed():
    msg = refused(hf(MIXTRAL, foo=1, bar="x"), "bar='x'", "foo=1", "refused")
    assert "does not know" in msg
    assert {"architectures", "dtype", "router_jitter_noise", "attention_dropout"} <= IGNORED_KEYS


def test_unsupported_model_type_and_seq_len():
    refused({"model_type": "bert"}, "model_type", "'bert'")
    with pytest.raises(ConfigError, match="seq_len"):
        from_hf_config(MIXTRAL, seq_len=0)


# --- qwen3_moe -------------------------------------------------------------------------------


def test_qwen3_moe_as_transformers_writes_it():
    c = from_hf_config(QWEN3)
    has(c, arch="qwen3_moe", head="lm", qk_norm=True, norm_topk_prob=False, top_k=3, n_experts=6)
    # layer 0 is in mlp_only_layers: a dense SwiGLU of intermediate_size; experts are smaller
    assert (c.moe_layers, c.d_ff, c.dense_d_ff, c.d_ff_dense) == ((1,), 8, 40, 40)
    assert (c.d_head, c.kv_heads, c.rope_theta, c.norm_eps, c.seq_len) == (8, 2, 1e4, 1e-6, 32768)
    assert c.causal and c.scale_attention and c.sliding_window is None


def test_qwen3_moe_4x_config():
    c = from_hf_config(QWEN3_4X)
    assert (c.n_experts, c.top_k, c.norm_topk_prob, c.rope_theta) == (16, 8, True, 1e6)
    assert c.moe_layers == (0, 1, 2, 3) and c.dense_d_ff is None  # intermediate_size unused
    assert c.sliding_window is None  # use_sliding_window false: max_window_layers unused


@pytest.mark.parametrize(
    ("changes", "moe"),
    [
        ({"decoder_sparse_step": 2}, (1, 3)),
        ({"decoder_sparse_step": 3}, (2,)),
        ({"mlp_only_layers": [0, 3]}, (1, 2)),
        ({"mlp_only_layers": [1], "decoder_sparse_step": 2}, (3,)),
    ],
)
def test_qwen3_moe_sparse_layers(changes, moe):
    c = from_hf_config(hf(QWEN3_4X, **changes))
    assert c.moe_layers == moe and c.d_ff_dense == 48  # dense layers: intermediate_size


def test_qwen3_moe_sliding_window():
    on = hf(QWEN3_4X, use_sliding_window=True, sliding_window=4, max_window_layers=...)
    assert from_hf_config(on).sliding_window == 4
    # transformers 5 windows every layer; 4.x's max_window_layers chose layers: ambiguous
    refused(hf(on, max_window_layers=2), "max_window_layers")
    assert from_hf_config(hf(QWEN3, sliding_window=4)).sliding_window is None  # not in use
    assert from_hf_config(hf(on, sliding_window=None)).sliding_window is None


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"attention_bias": True}, ("attention_bias", "True")),
        ({"hidden_act": "gelu"}, ("hidden_act",)),
        ({"decoder_sparse_step": 0}, ("decoder_sparse_step", "0")),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, ("rope_scaling", "yarn")),
        ({"architectures": ["Qwen3MoeForTokenClassification"]}, ("architectures",)),
        ({"shared_expert_intermediate_size": 64}, ("shared_expert_intermediate_size",)),
    ],
)
def test_qwen3_moe_refusals_name_the_key(changes, words):
    refused(hf(QWEN3_4X, **changes), *words)


def test_qwen3_moe_base_model_and_tied_head():
    base = from_hf_config(hf(QWEN3, architectures=["Qwen3MoeModel"]))
    assert base.head == "none"
    assert from_hf_config(hf(QWEN3, tie_word_embeddings=True)).tie_word_embeddings


# --- loading config.json ---------------------------------------------------------------------


@pytest.mark.parametrize("d", [SWITCH, MIXTRAL, QWEN3, QWEN3_4X], ids=lambda d: d["model_type"])
def test_config_json_round_trip(d, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(d))
    c = ModelConfig.load(tmp_path / "config.json")
    assert c == from_hf_config(d)
    assert ModelConfig.from_json(c.to_json()) == c  # the new fields survive secmoe's JSON

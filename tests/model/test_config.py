"""Model configs: presets, validation, JSON round trips, Hugging Face config conversion."""

import json

import pytest

from secmoe.model.config import ConfigError, ModelConfig, from_hf_config, preset, preset_names
from secmoe.model.hf_names import param_count


@pytest.mark.parametrize("n", [8, 16, 32, 64, 128])
def test_switch_base_presets_have_the_real_dimensions(n):
    c = preset(f"switch-base-{n}")
    assert (c.d_model, c.n_heads, c.d_head, c.n_layers, c.d_ff) == (768, 12, 64, 12, 3072)
    assert (c.n_experts, c.top_k, c.vocab_size) == (n, 1, 32128)
    assert c.moe_layers == (1, 3, 5, 7, 9, 11)  # every other layer, as transformers builds it
    assert (c.ffn, c.norm, c.position, c.arch) == ("relu", "rmsnorm", "relative", "switch")
    assert not c.scale_attention and not c.causal


def test_switch_base_parameter_count_by_formula():
    c = preset("switch-base-8")
    d, f, e = 768, 3072, 8
    attn = 4 * d * d
    per_dense, per_moe = attn + 2 * d * f + 2 * d, attn + e * 2 * d * f + e * d + 2 * d
    want = 32128 * d + 32 * 12 + 6 * per_dense + 6 * per_moe + d
    assert param_count(c) == want


def test_mixtral_tiny_and_bundled_presets():
    m = preset("mixtral-tiny")
    assert (m.arch, m.ffn, m.norm, m.top_k, m.position, m.causal) == (
        "mixtral",
        "swiglu",
        "rmsnorm",
        2,
        "rope",
        True,
    )
    assert m.moe_layers == tuple(range(m.n_layers)) and m.kv_heads < m.n_heads
    b = preset("digits-moe")
    assert (b.n_layers, b.moe_layers, b.n_experts, b.top_k) == (2, (1,), 4, 1)
    assert (b.ffn, b.norm, b.d_model, b.n_heads, b.d_ff) == ("gated-gelu", "layernorm", 32, 2, 64)
    assert (b.input, b.patch_dim, b.seq_len, b.head, b.n_classes) == (
        "patches",
        8,
        8,
        "classifier",
        10,
    )


@pytest.mark.parametrize("name", preset_names())
def test_json_round_trip(name, tmp_path):
    c = preset(name)
    assert ModelConfig.from_json(c.to_json()) == c
    c.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == c


def test_unknown_preset_lists_known_names():
    with pytest.raises(ConfigError, match="switch-base-8"):
        preset("switch-huge")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"arch": "gpt"}, "arch"),
        ({"ffn": "tanh"}, "ffn"),
        ({"norm": "batchnorm"}, "norm"),
        ({"top_k": 5}, "top_k"),
        ({"moe_layers": (1, 2)}, "moe_layers"),
        ({"moe_layers": (1, 1)}, "moe_layers"),
        ({"n_heads": 3}, "n_heads"),
        ({"d_model": 0}, "d_model"),
        ({"patch_dim": None}, "patch_dim"),
        ({"n_classes": None}, "n_classes"),
        ({"norm_range": (3, 3)}, "norm_range"),
        ({"capacity_factor": 0.0}, "capacity_factor"),
    ],
)
def test_validation_names_the_field(change, field):
    with pytest.raises(ConfigError, match=f"{field}:"):
        preset("digits-moe").replace(**change)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sliding_window": 0}, "sliding_window"),
        ({"sliding_window": 4, "causal": False}, "sliding_window"),  # a window is causal
        ({"expert_capacity": 0}, "expert_capacity"),
        ({"expert_capacity": 2.5}, "expert_capacity"),
        ({"dense_d_ff": -1}, "dense_d_ff"),
        ({"tie_word_embeddings": True, "head": "none"}, "tie_word_embeddings"),
        ({"qk_norm": 1}, "qk_norm"),
        ({"norm_topk_prob": "yes"}, "norm_topk_prob"),
    ],
)
def test_validation_of_the_hf_fields(change, field):
    with pytest.raises(ConfigError, match=f"{field}:"):
        preset("mixtral-tiny").replace(**change)


def test_new_fields_default_to_the_old_behaviour_and_round_trip():
    m, s = preset("mixtral-tiny"), preset("switch-base-8")
    assert m.norm_topk_prob is True and s.norm_topk_prob is False  # resolved from the arch
    q = m.replace(arch="qwen3_moe", norm_topk_prob=None)
    assert q.norm_topk_prob is False  # transformers' Qwen3-MoE default
    for c in (m, s):
        assert (c.sliding_window, c.expert_capacity, c.dense_d_ff) == (None, None, None)
        assert not c.tie_word_embeddings and not c.qk_norm and c.d_ff_dense == c.d_ff
    full = m.replace(
        arch="qwen3_moe",
        sliding_window=4,
        expert_capacity=3,
        tie_word_embeddings=True,
        norm_topk_prob=False,
        qk_norm=True,
        dense_d_ff=40,
        moe_layers=(1,),
    )
    assert ModelConfig.from_json(full.to_json()) == full and full.d_ff_dense == 40
    # a config saved before these fields existed (the bundled model's) still loads
    old = {k: v for k, v in preset("digits-moe").to_dict().items() if k != "sliding_window"}
    for k in ("expert_capacity", "tie_word_embeddings", "norm_topk_prob", "qk_norm", "dense_d_ff"):
        del old[k]
    assert ModelConfig.from_dict(old) == preset("digits-moe")


def test_tokens_need_a_vocabulary():
    with pytest.raises(ConfigError, match="vocab_size"):
        preset("switch-base-8").replace(vocab_size=None)


def test_from_dict_rejects_unknown_and_missing_fields():
    d = preset("digits-moe").to_dict()
    with pytest.raises(ConfigError, match="unknown config field"):
        ModelConfig.from_dict({**d, "dropout": 0.1})
    del d["d_model"]
    with pytest.raises(ConfigError, match=r"missing config field.*d_model"):
        ModelConfig.from_dict(d)
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json("{")


def test_capacity():
    c = preset("digits-moe")  # 4 experts, top-1, factor 1.25
    assert c.capacity(8) == 3  # ⌈1.25·8/4⌉
    assert c.replace(capacity_factor=1.0).capacity(8) == 2
    assert preset("mixtral-tiny").replace(capacity_factor=1.0).capacity(16) == 4  # 16·2/8


def test_from_hf_switch_config(tmp_path):
    hf = {
        "model_type": "switch_transformers",
        "d_model": 768,
        "d_kv": 64,
        "d_ff": 3072,
        "num_heads": 12,
        "num_layers": 12,
        "num_experts": 16,
        "encoder_sparse_step": 2,
        "vocab_size": 32128,
        "feed_forward_proj": "relu",
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "layer_norm_epsilon": 1e-6,
    }
    c = from_hf_config(hf)
    ref = preset("switch-base-16")
    for f in ("d_model", "n_heads", "n_layers", "d_ff", "n_experts", "moe_layers", "ffn", "norm"):
        assert getattr(c, f) == getattr(ref, f), f
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert ModelConfig.load(tmp_path / "config.json").moe_layers == ref.moe_layers


def test_from_hf_mixtral_config():
    hf = {
        "model_type": "mixtral",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 3,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 100,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6,
    }
    c = from_hf_config(hf)
    assert (c.arch, c.ffn, c.top_k, c.kv_heads, c.moe_layers) == (
        "mixtral",
        "swiglu",
        2,
        2,
        (0, 1, 2),
    )
    assert c.causal and c.scale_attention and c.head == "lm" and c.rope_theta == 1e6
    with pytest.raises(ConfigError, match="model_type"):
        from_hf_config({"model_type": "bert"})

"""Weights: safetensors round trips, the Hugging Face name map, malformed checkpoints."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from secmoe.model.config import ModelConfig, preset
from secmoe.model.hf_names import expected_tensors
from secmoe.model.reference import forward
from secmoe.model.weights import (
    MoE,
    WeightsError,
    init_and_save,
    init_random,
    load_bundled,
    load_heldout,
    load_weights,
    save_weights,
    to_tensors,
)

SWITCH_HF = {
    "model_type": "switch_transformers",
    "d_model": 16,
    "d_kv": 4,
    "d_ff": 24,
    "num_heads": 4,
    "num_layers": 2,
    "num_experts": 3,
    "encoder_sparse_step": 2,
    "vocab_size": 50,
    "feed_forward_proj": "relu",
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
}
MIXTRAL_HF = {
    "model_type": "mixtral",
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "num_local_experts": 3,
    "num_experts_per_tok": 2,
    "vocab_size": 50,
}


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def switch_checkpoint(rng):
    """A SwitchTransformers encoder–decoder checkpoint, names written out by hand."""
    t = {"shared.weight": _rand(rng, 50, 16), "encoder.embed_tokens.weight": _rand(rng, 50, 16)}
    t["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = _rand(rng, 8, 4)
    for i in range(2):
        b = f"encoder.block.{i}"
        for p in "qkv":
            t[f"{b}.layer.0.SelfAttention.{p}.weight"] = _rand(rng, 16, 16)
        t[f"{b}.layer.0.SelfAttention.o.weight"] = _rand(rng, 16, 16)
        t[f"{b}.layer.0.layer_norm.weight"] = _rand(rng, 16)
        t[f"{b}.layer.1.layer_norm.weight"] = _rand(rng, 16)
    t["encoder.block.0.layer.1.mlp.wi.weight"] = _rand(rng, 24, 16)
    t["encoder.block.0.layer.1.mlp.wo.weight"] = _rand(rng, 16, 24)
    t["encoder.block.1.layer.1.mlp.router.classifier.weight"] = _rand(rng, 3, 16)
    for j in range(3):
        t[f"encoder.block.1.layer.1.mlp.experts.expert_{j}.wi.weight"] = _rand(rng, 24, 16)
        t[f"encoder.block.1.layer.1.mlp.experts.expert_{j}.wo.weight"] = _rand(rng, 16, 24)
    t["encoder.final_layer_norm.weight"] = _rand(rng, 16)
    # decoder side and lm head of the full model: present in real checkpoints, ignored
    t["decoder.block.0.layer.0.SelfAttention.q.weight"] = _rand(rng, 16, 16)
    t["decoder.final_layer_norm.weight"] = _rand(rng, 16)
    t["lm_head.weight"] = _rand(rng, 50, 16)
    return t


def mixtral_checkpoint(rng):
    t = {"model.embed_tokens.weight": _rand(rng, 50, 16), "lm_head.weight": _rand(rng, 50, 16)}
    for i in range(2):
        m = f"model.layers.{i}"
        t[f"{m}.self_attn.q_proj.weight"] = _rand(rng, 16, 16)
        t[f"{m}.self_attn.k_proj.weight"] = _rand(rng, 8, 16)  # 2 kv heads of 4
        t[f"{m}.self_attn.v_proj.weight"] = _rand(rng, 8, 16)
        t[f"{m}.self_attn.o_proj.weight"] = _rand(rng, 16, 16)
        t[f"{m}.input_layernorm.weight"] = _rand(rng, 16)
        t[f"{m}.post_attention_layernorm.weight"] = _rand(rng, 16)
        t[f"{m}.block_sparse_moe.gate.weight"] = _rand(rng, 3, 16)
        for j in range(3):
            e = f"{m}.block_sparse_moe.experts.{j}"
            t[f"{e}.w1.weight"] = _rand(rng, 24, 16)
            t[f"{e}.w2.weight"] = _rand(rng, 16, 24)
            t[f"{e}.w3.weight"] = _rand(rng, 24, 16)
    t["model.norm.weight"] = _rand(rng, 16)
    return t


def write_hf(tmp_path, tensors, hf_config):
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    return tmp_path


def test_switch_checkpoint_maps_hf_names(tmp_path):
    t = switch_checkpoint(np.random.default_rng(0))
    w = load_weights(write_hf(tmp_path, t, SWITCH_HF))  # a directory with config.json
    c = w.config
    assert (c.arch, c.moe_layers, c.n_experts, c.d_head) == ("switch", (1,), 3, 4)
    assert np.array_equal(w.embed, t["shared.weight"])
    assert np.array_equal(
        w.rel_bias, t["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    )
    assert np.array_equal(
        w.layers[0].attn.wq, t["encoder.block.0.layer.0.SelfAttention.q.weight"].T
    )
    assert np.array_equal(
        w.layers[1].attn.wo, t["encoder.block.1.layer.0.SelfAttention.o.weight"].T
    )
    assert np.array_equal(w.layers[0].ffn.w1, t["encoder.block.0.layer.1.mlp.wi.weight"].T)
    assert np.array_equal(
        w.layers[1].ffn_norm.weight, t["encoder.block.1.layer.1.layer_norm.weight"]
    )
    moe = w.layers[1].ffn
    assert isinstance(moe, MoE) and moe.v is None
    assert np.array_equal(moe.router, t["encoder.block.1.layer.1.mlp.router.classifier.weight"].T)
    for j in range(3):
        e = f"encoder.block.1.layer.1.mlp.experts.expert_{j}"
        assert np.array_equal(moe.w1[j], t[f"{e}.wi.weight"].T)
        assert np.array_equal(moe.w2[j], t[f"{e}.wo.weight"].T)
    assert np.array_equal(w.final_norm.weight, t["encoder.final_layer_norm.weight"])
    assert forward(w, np.arange(5)).shape == (5, 16)  # runs: the encoder's hidden states


def test_switch_embedding_alias(tmp_path):
    t = switch_checkpoint(np.random.default_rng(0))
    del t["shared.weight"]
    w = load_weights(write_hf(tmp_path, t, SWITCH_HF))
    assert np.array_equal(w.embed, t["encoder.embed_tokens.weight"])


def test_mixtral_checkpoint_maps_hf_names(tmp_path):
    t = mixtral_checkpoint(np.random.default_rng(1))
    w = load_weights(write_hf(tmp_path, t, MIXTRAL_HF) / "model.safetensors")
    assert w.config.arch == "mixtral" and w.config.kv_heads == 2
    assert np.array_equal(w.embed, t["model.embed_tokens.weight"])
    assert np.array_equal(w.head, t["lm_head.weight"].T)
    assert np.array_equal(w.layers[1].attn.wk, t["model.layers.1.self_attn.k_proj.weight"].T)
    assert np.array_equal(w.layers[0].attn_norm.weight, t["model.layers.0.input_layernorm.weight"])
    moe = w.layers[1].ffn
    assert np.array_equal(moe.router, t["model.layers.1.block_sparse_moe.gate.weight"].T)
    for j in range(3):
        e = f"model.layers.1.block_sparse_moe.experts.{j}"
        assert np.array_equal(moe.w1[j], t[f"{e}.w1.weight"].T)  # gate branch (SiLU)
        assert np.array_equal(moe.v[j], t[f"{e}.w3.weight"].T)  # up branch
        assert np.array_equal(moe.w2[j], t[f"{e}.w2.weight"].T)  # down
    assert forward(w, np.arange(6)).shape == (6, 50)


def test_gated_switch_names_and_dense_mixtral_names():
    g = preset("digits-moe").replace(input="tokens", vocab_size=10, patch_dim=None)
    names = expected_tensors(g)
    assert "encoder.block.0.layer.1.mlp.wi_0.weight" in names
    assert "encoder.block.1.layer.1.mlp.experts.expert_3.wi_1.weight" in names
    assert names["encoder.block.1.layer.1.mlp.router.classifier.weight"] == (4, 32)
    assert names["encoder.block.0.layer.0.layer_norm.bias"] == (32,)
    m = preset("mixtral-tiny").replace(moe_layers=(1,))
    names = expected_tensors(m)
    assert names["model.layers.0.mlp.gate_proj.weight"] == (128, 64)
    assert names["model.layers.0.mlp.down_proj.weight"] == (64, 128)
    assert "model.layers.1.block_sparse_moe.experts.7.w3.weight" in names


def test_switch_base_names_and_shapes():
    names = expected_tensors(preset("switch-base-8"))
    assert names["encoder.block.1.layer.1.mlp.router.classifier.weight"] == (8, 768)
    assert names["encoder.block.11.layer.1.mlp.experts.expert_7.wi.weight"] == (3072, 768)
    assert names["encoder.block.0.layer.1.mlp.wi.weight"] == (3072, 768)
    assert "encoder.block.0.layer.1.mlp.router.classifier.weight" not in names
    assert names["shared.weight"] == (32128, 768)


@pytest.mark.parametrize("name", ["digits-moe", "mixtral-tiny"])
def test_round_trip(name, tmp_path):
    w = init_random(preset(name), seed=3)
    path = save_weights(w, tmp_path / "m.safetensors")
    assert (tmp_path / "m.json").is_file()
    back = load_weights(path)
    assert back.config == w.config
    a, b = to_tensors(w), to_tensors(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_config_from_sidecar_json_when_metadata_has_none(tmp_path):
    w = init_random(preset("digits-moe"), seed=4)
    save_file(to_tensors(w), str(tmp_path / "m.safetensors"))
    with pytest.raises(WeightsError, match="no config"):
        load_weights(tmp_path / "m.safetensors")
    w.config.save(tmp_path / "m.json")
    assert load_weights(tmp_path / "m.safetensors").config == w.config
    assert load_weights(tmp_path / "m.safetensors", "digits-moe").config == w.config


def _write_with_bf16(path, tensors, bf16_name, metadata):
    """A safetensors file with one BF16 tensor (numpy cannot make one), written by hand."""
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name, a in tensors.items():
        if name == bf16_name:
            raw, dtype = (a.view(np.uint32) >> 16).astype("<u2").tobytes(), "BF16"
        else:
            raw, dtype = a.astype("<f4").tobytes(), "F32"
        header[name] = {
            "dtype": dtype,
            "shape": list(a.shape),
            "data_offsets": [off, off + len(raw)],
        }
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def test_bf16_tensors_load(tmp_path):
    w = init_random(preset("digits-moe"), seed=5)
    t = to_tensors(w)
    name = "encoder.block.1.layer.1.mlp.experts.expert_2.wi_0.weight"
    _write_with_bf16(tmp_path / "m.safetensors", t, name, {"secmoe.config": w.config.to_json()})
    back = load_weights(tmp_path / "m.safetensors")
    got = back.layers[1].ffn.w1[2].T
    assert np.allclose(got, t[name], rtol=2**-7, atol=0) and not np.array_equal(got, t[name])
    assert np.array_equal(back.layers[1].ffn.w2, w.layers[1].ffn.w2)


@pytest.fixture
def digits_tensors():
    w = init_random(preset("digits-moe"), seed=6)
    return w.config, to_tensors(w)


def _save(tmp_path, cfg, tensors):
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"secmoe.config": cfg.to_json()})
    return tmp_path / "bad.safetensors"


def test_missing_tensor_is_named_with_its_shape(tmp_path, digits_tensors):
    cfg, t = digits_tensors
    name = "encoder.block.1.layer.1.mlp.experts.expert_1.wo.weight"
    del t[name]
    with pytest.raises(WeightsError) as e:
        load_weights(_save(tmp_path, cfg, t))
    assert f"missing tensor '{name}' (expected shape (32, 64))" in str(e.value)


def test_extra_tensor_is_named(tmp_path, digits_tensors):
    cfg, t = digits_tensors
    t["encoder.block.1.layer.1.mlp.experts.expert_4.wo.weight"] = np.zeros((32, 64), np.float32)
    with pytest.raises(WeightsError, match=r"unexpected tensor '.*expert_4\.wo\.weight' \(shape"):
        load_weights(_save(tmp_path, cfg, t))


def test_misshapen_tensor_names_both_shapes(tmp_path, digits_tensors):
    cfg, t = digits_tensors
    name = "encoder.block.1.layer.1.mlp.router.classifier.weight"
    t[name] = np.zeros((32, 4), np.float32)  # transposed by mistake
    with pytest.raises(WeightsError) as e:
        load_weights(_save(tmp_path, cfg, t))
    assert f"tensor '{name}' has shape (32, 4), expected (4, 32)" in str(e.value)


def test_all_problems_are_reported_together(tmp_path, digits_tensors):
    cfg, t = digits_tensors
    del t["classifier.bias"]
    t["classifier.weight"] = np.zeros((9, 32), np.float32)
    t["stray"] = np.zeros(1, np.float32)
    with pytest.raises(WeightsError, match=r"3 problem") as e:
        load_weights(_save(tmp_path, cfg, t))
    for bit in ("classifier.bias", "classifier.weight", "stray"):
        assert bit in str(e.value)


def test_wrong_config_for_a_checkpoint(tmp_path):
    t = mixtral_checkpoint(np.random.default_rng(2))
    write_hf(tmp_path, t, MIXTRAL_HF)
    cfg = ModelConfig.load(tmp_path / "config.json").replace(n_experts=4)
    with pytest.raises(WeightsError, match=r"missing tensor '.*experts\.3\.w1\.weight'"):
        load_weights(tmp_path, cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=r"no \.safetensors"):
        load_weights(tmp_path / "empty")
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")


def test_init_random_is_seeded_float32():
    c = preset("mixtral-tiny")
    a, b, other = init_random(c, 1), init_random(c, 1), init_random(c, 2)
    ta, tb, to = to_tensors(a), to_tensors(b), to_tensors(other)
    assert all(v.dtype == np.float32 for v in ta.values())
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert not np.array_equal(ta["lm_head.weight"], to["lm_head.weight"])
    assert {k: v.shape for k, v in ta.items()} == expected_tensors(c)


def test_init_and_save(tmp_path):
    path = init_and_save("mixtral-tiny", tmp_path / "tiny", seed=7)
    assert path.name == "tiny.safetensors" and (tmp_path / "tiny.json").is_file()
    w = load_weights(path)
    assert w.config == preset("mixtral-tiny")
    assert np.array_equal(to_tensors(w)["model.norm.weight"], np.ones(64, np.float32))


def test_bundled_model_and_heldout_split():
    w = load_bundled()
    assert w.config == preset("digits-moe")
    x, y = load_heldout()
    assert x.shape == (359, 8, 8) and x.dtype == np.float32 and y.shape == (359,)  # 20% of 1797
    assert x.min() >= 0 and x.max() <= 1 and set(y.tolist()) == set(range(10))

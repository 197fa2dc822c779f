"""Checkpoint layouts: *ForCausalLM and base-model names, per-expert and fused experts, tied
heads, Switch encoder-only and encoder-decoder checkpoints.

The non-default layouts are made here from secmoe's own (default) tensor dict by an
independent conversion written from transformers 5.25's conversion rules: the base models drop
the ``model.`` prefix and the lm head; fused experts are ``gate_up_proj`` = per expert
[w1; w3] (gate rows first) stacked over experts, ``down_proj`` = the w2s stacked, and
Mixtral's ``block_sparse_moe`` is renamed ``mlp``.
"""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file

from secmoe.model.config import ModelConfig, from_hf_config, preset
from secmoe.model.hf_names import LAYOUTS, Layout, detect_layout, expected_tensors
from secmoe.model.weights import WeightsError, init_random, load_weights, to_tensors
from tests.model.test_hf_config import MIXTRAL, hf

TINY = preset("mixtral-tiny").replace(
    name="tiny", d_model=16, d_ff=8, n_experts=4, vocab_size=32, n_heads=4, n_kv_heads=2
)
CONFIGS = {
    "mixtral": TINY,
    "qwen3_moe": TINY.replace(
        arch="qwen3_moe", qk_norm=True, moe_layers=(1,), dense_d_ff=12, norm_topk_prob=False
    ),
}
_EXPERT = re.compile(r"^(.*)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight$")


def convert(tensors: dict[str, np.ndarray], layout: Layout) -> dict[str, np.ndarray]:
    """secmoe's default tensor dict rewritten in ``layout``."""
    out: dict[str, np.ndarray] = {}
    experts: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for name, a in tensors.items():
        m = _EXPERT.match(name)
        if layout.fused_experts and m:
            layer, j, mat = m.group(1), int(m.group(2)), m.group(3)
            kind = {"w1": "gate", "gate_proj": "gate", "w3": "up", "up_proj": "up"}.get(mat, "down")
            experts.setdefault(layer, {}).setdefault(kind, {})[j] = a
            continue
        if layout.fused_experts:
            name = name.replace(".block_sparse_moe.gate.", ".mlp.gate.")
        out[name] = a
    for layer, parts in experts.items():
        n = len(parts["gate"])
        gate_up = [np.concatenate([parts["gate"][j], parts["up"][j]]) for j in range(n)]
        out[f"{layer}.mlp.experts.gate_up_proj"] = np.stack(gate_up)
        out[f"{layer}.mlp.experts.down_proj"] = np.stack([parts["down"][j] for j in range(n)])
    if not layout.prefix:
        out = {k.removeprefix("model."): v for k, v in out.items() if k != "lm_head.weight"}
    return out


def write(tmp_path, tensors, name="model.safetensors"):
    save_file(tensors, str(tmp_path / name), metadata={"format": "pt"})
    return tmp_path / name


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.describe(TINY))
@pytest.mark.parametrize("arch", CONFIGS)
def test_every_layout_loads_the_same_weights(arch, layout, tmp_path):
    cfg = CONFIGS[arch]
    if not layout.prefix:  # a base model: no lm head
        cfg = cfg.replace(head="none")
    w = init_random(cfg, seed=3)
    ref = to_tensors(w)
    tensors = convert(ref, layout)
    assert set(tensors) == set(expected_tensors(cfg, layout))  # the converter and the map agree
    assert detect_layout(cfg, tensors) == layout
    got = load_weights(write(tmp_path, tensors), cfg)
    loaded = to_tensors(got)
    assert loaded.keys() == ref.keys()
    for name in ref:
        assert np.array_equal(loaded[name], ref[name]), name
    if arch == "qwen3_moe":
        assert got.layers[0].attn.q_norm.shape == (cfg.d_head,)
        assert got.layers[0].ffn.w1.shape == (16, 12)  # dense layer: dense_d_ff
        assert got.layers[1].ffn.w1.shape == (4, 16, 8)  # experts: d_ff


def test_fused_gate_up_rows_are_gate_then_up(tmp_path):
    cfg = CONFIGS["qwen3_moe"]
    w = init_random(cfg, seed=4)
    t = convert(to_tensors(w), LAYOUTS[1])
    gate_up = t["model.layers.1.mlp.experts.gate_up_proj"]
    assert gate_up.shape == (4, 16, 16)  # (E, 2·d_ff, d)
    got = load_weights(write(tmp_path, t), cfg).layers[1].ffn
    assert np.array_equal(got.w1[2], gate_up[2, :8].T)  # gate (SiLU branch)
    assert np.array_equal(got.v[2], gate_up[2, 8:].T)  # up
    assert np.array_equal(got.w2[2], t["model.layers.1.mlp.experts.down_proj"][2].T)


def test_causal_lm_checkpoint_read_as_a_base_model_ignores_the_head(tmp_path):
    w = init_random(TINY, seed=5)
    got = load_weights(write(tmp_path, to_tensors(w)), TINY.replace(head="none"))
    assert got.head is None and np.array_equal(got.embed, w.embed)


def test_tied_head_is_the_embedding(tmp_path):
    cfg = TINY.replace(tie_word_embeddings=True)
    w = init_random(cfg, seed=6)
    t = to_tensors(w)
    assert "lm_head.weight" not in t and "lm_head.weight" not in expected_tensors(cfg)
    got = load_weights(write(tmp_path, t), cfg)
    assert np.array_equal(got.head, t["model.embed_tokens.weight"].T)
    assert np.shares_memory(got.head, got.embed)  # one matrix, as transformers ties it
    # a checkpoint that also stores the tied copy (older savers) loads; the copy is unused
    t["lm_head.weight"] = np.zeros_like(t["model.embed_tokens.weight"])
    again = load_weights(write(tmp_path, t, "with_copy.safetensors"), cfg)
    assert np.array_equal(again.head, got.head)


def test_untied_head_missing_is_named(tmp_path):
    t = to_tensors(init_random(TINY, seed=7))
    del t["lm_head.weight"]
    with pytest.raises(WeightsError, match=r"missing tensor 'lm_head.weight' \(expected shape"):
        load_weights(write(tmp_path, t), TINY)


def test_base_names_with_an_lm_config_say_which_layout_was_read(tmp_path):
    t = convert(to_tensors(init_random(TINY.replace(head="none"), seed=8)), LAYOUTS[2])
    with pytest.raises(WeightsError) as e:
        load_weights(write(tmp_path, t), TINY)
    msg = str(e.value)
    assert "MixtralModel names (no prefix, per-expert experts)" in msg
    assert "missing tensor 'lm_head.weight'" in msg


def test_a_checkpoint_of_neither_layout_lists_missing_and_unexpected_names(tmp_path):
    t = to_tensors(init_random(TINY, seed=9))
    t = {k.replace("self_attn", "attention"): v for k, v in t.items()}  # another naming
    with pytest.raises(WeightsError) as e:
        load_weights(write(tmp_path, t), TINY)
    msg = str(e.value)
    assert "missing tensor 'model.layers.0.self_attn.q_proj.weight'" in msg
    assert "unexpected tensor 'model.layers.0.attention.q_proj.weight'" in msg
    assert "(16 problem(s))" in msg  # 8 missing + 8 unexpected attention projections


# --- whole directories: config.json as transformers writes it + tensors ------------------------

#: config.json of a MixtralModel as save_pretrained writes it (the dimensions of TINY)
MIXTRAL_MODEL_JSON = hf(
    MIXTRAL,
    architectures=["MixtralModel"],
    intermediate_size=8,
    vocab_size=32,
    max_position_embeddings=131072,
)


@pytest.mark.parametrize(
    ("changes", "layout", "head"),
    [
        ({}, LAYOUTS[2], "none"),  # MixtralModel
        ({}, LAYOUTS[3], "none"),  # MixtralModel, fused experts
        ({"architectures": ["MixtralForCausalLM"]}, LAYOUTS[0], "lm"),
        ({"architectures": ["MixtralForCausalLM"], "tie_word_embeddings": True}, LAYOUTS[0], "lm"),
    ],
)
def test_directory_as_save_pretrained_writes_it(changes, layout, head, tmp_path):
    d = {**MIXTRAL_MODEL_JSON, **changes}
    cfg = from_hf_config(d)
    w = init_random(cfg, seed=10)
    write(tmp_path, convert(to_tensors(w), layout))
    (tmp_path / "config.json").write_text(json.dumps(d))
    got = load_weights(tmp_path)
    assert got.config == cfg and got.config.head == head
    assert np.array_equal(got.layers[1].ffn.v, w.layers[1].ffn.v)
    if head == "lm":
        assert np.array_equal(got.head, w.head)


def test_switch_encoder_model_and_conditional_generation_load_alike(tmp_path):
    cfg = ModelConfig.from_dict(
        {**preset("switch-base-8").to_dict(), "d_model": 16, "d_ff": 8, "n_heads": 4}
        | {"head_dim": 4, "n_layers": 2, "moe_layers": [1], "vocab_size": 32, "n_experts": 4}
    )
    w = init_random(cfg, seed=11)
    enc = to_tensors(w)  # SwitchTransformersEncoderModel: shared.weight + encoder.*
    full = dict(enc)  # ForConditionalGeneration: + the decoder (tied head: no lm_head.weight)
    full["decoder.block.0.layer.0.SelfAttention.q.weight"] = np.ones((16, 16), np.float32)
    full["decoder.final_layer_norm.weight"] = np.ones(16, np.float32)
    a = load_weights(write(tmp_path, enc, "enc.safetensors"), cfg)
    b = load_weights(write(tmp_path, full, "full.safetensors"), cfg)
    for name, t in to_tensors(a).items():
        assert np.array_equal(t, to_tensors(b)[name]) and np.array_equal(t, enc[name]), name

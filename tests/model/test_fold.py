"""Folding the norms' γ into the following weights (secmoe.model.fold): the same function in
float, in the fixed-point emulation and on shares, with the folded norms' γ product gone."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from secmoe.model.config import preset
from secmoe.model.fixed import run_fixed
from secmoe.model.fold import FoldError, fold_norms, norm_weighted
from secmoe.model.lazy_weights import StreamedLayers, lazy_random_weights, materialize
from secmoe.model.reference import run
from secmoe.model.secure import RunOptions
from secmoe.model.weights import init_random, load_bundled, load_weights, save_weights
from tests.hf_helpers import CASES, hf_case, max_err
from tests.model.test_secure import X, secure_run

FLOAT_TOL = 1e-5  # float32 weights: the folded products round once more
PROTOCOL_TOL = 0.01  # secure vs the fixed-point emulation (as tests/model/test_secure.py)


def _random_norms(w, seed=0, beta=False):
    """``w`` with every norm's γ ~ U(0.5, 1.5) (init_random makes them 1, which would fold
    trivially) and, with ``beta``, the final norm's β ~ N(0, 0.1²)."""
    rng = np.random.default_rng(seed)

    def g(n):
        n.weight = rng.uniform(0.5, 1.5, n.weight.shape).astype(np.float32)

    for layer in w.layers:
        g(layer.attn_norm)
        g(layer.ffn_norm)
    g(w.final_norm)
    if beta:
        w.final_norm.bias = rng.normal(0, 0.1, w.final_norm.weight.shape).astype(np.float32)
    return w


def _tokens(cfg, t=5, seed=1):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, t))


def _norms(w):
    return [n for layer in w.layers for n in (layer.attn_norm, layer.ffn_norm)] + [w.final_norm]


@pytest.mark.parametrize("name", CASES)
def test_hf_fixtures_fold_to_the_same_function(name):
    case = hf_case(name)
    w = load_weights(case.dir)
    before = {k: v.copy() for k, v in dataclasses.asdict(w.layers[0].attn).items() if v is not None}
    f = fold_norms(w)
    # the input is untouched, the folded norms are identities, the q/k norms are kept
    assert all(np.array_equal(getattr(w.layers[0].attn, k), v) for k, v in before.items())
    assert any(not np.allclose(n.weight, 1) for n in _norms(w))
    folded = [
        n for i, n in enumerate(_norms(f)) if i < 2 * len(f.layers) or w.config.head != "none"
    ]
    assert all(np.array_equal(n.weight, np.ones_like(n.weight)) for n in folded)
    if w.config.head == "none":  # the model's output: the final norm keeps γ
        np.testing.assert_array_equal(f.final_norm.weight, w.final_norm.weight)
    if w.config.qk_norm:
        np.testing.assert_array_equal(f.layers[0].attn.q_norm, w.layers[0].attn.q_norm)
    assert f.config.norms_folded and not f.config.tie_word_embeddings
    ids = case.input_ids
    assert np.abs(run(f, ids).output - run(w, ids).output).max() < FLOAT_TOL
    # fixed point: both within the fixture's tolerance of transformers, and close to each other
    fixed, fixed_folded = run_fixed(w, ids).output, run_fixed(f, ids).output
    assert max_err(fixed_folded, case) <= case.fixed_tol
    assert np.abs(fixed_folded - fixed).max() < 0.1 * case.fixed_tol


@pytest.mark.parametrize("name", ["mixtral-tiny", "digits-moe", "switch-base-8"])
def test_presets_fold_to_the_same_function(name):
    cfg = preset(name)
    if name == "switch-base-8":  # the real widths, fewer blocks (an MoE one included)
        cfg = cfg.replace(n_layers=2, moe_layers=(1,), vocab_size=64)
    w = _random_norms(init_random(cfg, 3), beta=cfg.norm == "layernorm")
    if cfg.input == "tokens":
        x = _tokens(cfg)
    else:
        x = np.random.default_rng(2).normal(size=(2, cfg.seq_len, cfg.patch_dim))
    f = fold_norms(w)
    if cfg.head == "classifier":  # β went into the head's bias
        assert not np.allclose(f.head_bias, w.head_bias)
    ref = run(w, x).output
    assert np.abs(run(f, x).output - ref).max() < FLOAT_TOL * max(1.0, np.abs(ref).max())
    fixed, fixed_folded = run_fixed(w, x).output, run_fixed(f, x).output
    assert np.abs(fixed_folded - fixed).max() < 0.02 * max(1.0, np.abs(ref).max())


def test_a_folded_tied_model_saves_and_loads_as_untied(tmp_path):
    cfg = preset("mixtral-tiny").replace(tie_word_embeddings=True)
    w = _random_norms(init_random(cfg, 4))
    f = fold_norms(w)
    assert f.head is not w.head and np.array_equal(f.embed, w.embed)  # the embedding kept
    back = load_weights(save_weights(f, tmp_path / "folded.safetensors"))
    assert back.config == f.config and back.config.norms_folded
    x = _tokens(cfg)
    np.testing.assert_array_equal(run(back, x).output, run(f, x).output)
    assert np.abs(run(back, x).output - run(w, x).output).max() < FLOAT_TOL


def test_which_norms_run_without_gamma():
    lm, enc = preset("mixtral-tiny"), preset("switch-base-8")
    for cfg in (lm, enc):
        assert all(norm_weighted(cfg, k) for k in ("attn", "ffn", "final"))
    assert not any(
        norm_weighted(lm.replace(norms_folded=True), k) for k in ("attn", "ffn", "final")
    )
    folded = enc.replace(norms_folded=True)
    assert not norm_weighted(folded, "attn") and not norm_weighted(folded, "ffn")
    assert norm_weighted(folded, "final")  # head "none": the output itself
    with pytest.raises(ValueError, match="unknown norm 'q'"):
        norm_weighted(lm, "q")


def test_what_cannot_fold_is_refused_by_name():
    # the bundled model's LayerNorms have a β before q/k/v and W1, which have no bias
    with pytest.raises(FoldError, match=r"layers\.0\.attn_norm\.bias.*layers\.0\.ffn_norm\.bias"):
        fold_norms(load_bundled())
    w = init_random(preset("mixtral-tiny"), 0)
    f = fold_norms(w)
    with pytest.raises(FoldError, match="already folded"):
        fold_norms(f)
    w.final_norm.bias = np.full(w.final_norm.weight.shape, 0.5, np.float32)  # an LM head: no bias
    with pytest.raises(FoldError, match=r"final_norm\.bias"):
        fold_norms(w)
    w = init_random(preset("mixtral-tiny"), 0)
    w.layers[1].ffn_norm.weight[3] = 1e4  # γ·W beyond the HE linear layers' weight bound
    with pytest.raises(FoldError, match=r"layers\.1\.ffn\.router: γ·W reaches .* bound"):
        fold_norms(w)


def test_streamed_layers_fold_on_access():
    cfg = preset("mixtral-tiny").replace(n_layers=2, moe_layers=(1,))
    seen = []
    w = lazy_random_weights(cfg, 5)
    w.layers.hook = lambda i, layer: seen.append(layer)
    f = fold_norms(w)
    assert isinstance(f.layers, StreamedLayers)
    eager = fold_norms(materialize(lazy_random_weights(cfg, 5)))
    layer = f.layers[1]
    assert seen == [layer]  # the hook sees the folded layer
    np.testing.assert_array_equal(layer.ffn.router, eager.layers[1].ffn.router)
    assert np.array_equal(layer.ffn_norm.weight, np.ones_like(layer.ffn_norm.weight))


def _bundled_without_block_betas():
    """The bundled classifier with its blocks' LayerNorm β set to 0 (so they fold) and its
    final β kept (it folds into the classifier's bias)."""
    w = load_bundled()
    w = dataclasses.replace(w, layers=[dataclasses.replace(layer) for layer in w.layers])
    for layer in w.layers:
        layer.attn_norm = dataclasses.replace(layer.attn_norm, bias=None)
        layer.ffn_norm = dataclasses.replace(layer.ffn_norm, bias=None)
    return w


async def test_secure_run_on_folded_weights_drops_the_gamma_products():
    w = _bundled_without_block_betas()
    f = fold_norms(w)
    x = X[:1]
    views = {}
    outs = {}
    for key, weights in (("plain", w), ("folded", f)):
        views[key] = []
        res = await secure_run(x, RunOptions("select"), views[key], weights=weights)
        outs[key] = res.output
        np.testing.assert_allclose(res.output, run_fixed(weights, x).output, atol=PROTOCOL_TOL)
    np.testing.assert_allclose(outs["folded"], outs["plain"], atol=2 * PROTOCOL_TOL)

    def gamma_paths(view):  # the γ product by COT and its truncation
        return {e["path"] for e in view if re.search(r"_norm/(w|out)/", e["path"])}

    assert {p.split("/")[-3] for p in gamma_paths(views["plain"])} == {
        "attn_norm",
        "ffn_norm",
        "final_norm",
    }
    assert not gamma_paths(views["folded"])

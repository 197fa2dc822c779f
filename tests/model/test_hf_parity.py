"""Parity with Hugging Face transformers on checkpoints it wrote (no torch needed).

Every case of tests/fixtures/hf/manifest.json (Switch, Mixtral, Qwen3-MoE; see
scripts/make_hf_fixtures.py for what each covers) is loaded as a user would load it, with the
configuration read from its config.json, and run with the defaults: nothing here tells secmoe
the capacity, window or head the model has. Checked: loading; the float reference within
1e-5 of transformers; routing (experts, and tokens dropped by capacity) identical; the
fixed-point emulation and the secure run (both parties in one process, ``select`` and
``dispatch``) within the fixed-point tolerance of transformers and with the same argmax per
token.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from secmoe.model.fixed import run_fixed
from secmoe.model.reference import run
from secmoe.model.secure import RunOptions
from secmoe.model.session import client_session, serve_session
from secmoe.model.weights import load_weights
from secmoe.net import memory_pair, run_pair
from tests.hf_helpers import CASES, FLOAT_TOL, argmax_agreement, assignment, hf_case, max_err

#: The secure run covers one case per family (select costs per token and chosen expert, so
#: the suite stays fast), chosen for the features the secure runner must reproduce: Switch with
#: a capacity that drops tokens (per sequence, batch 2, GeLU), Mixtral with RoPE + sliding window
#: + GQA + an untied head on 10 tokens, Qwen3-MoE with E = 8, top-4, renormalised gates and q/k
#: norms (1 layer, 6 tokens).
SECURE_CASES = ["switch-enc-s1-gelu-cap1", "mixtral-lm-gqa-swa-untied", "qwen3moe-lm-norm"]


def _weights(name: str):
    return load_weights(hf_case(name).dir)


def _same_routing(routing, case) -> bool:
    """Whether every MoE layer selected the same experts for every token as transformers, and
    capacity dropped the same assignments."""
    if len(routing) != case.info["moe_layers"]:
        return False
    e = routing[0].probs.shape[-1]
    got = assignment(np.stack([r.experts for r in routing]), np.stack([r.kept for r in routing]), e)
    return np.array_equal(got, assignment(case.experts, case.kept, e))


@pytest.mark.parametrize("name", CASES)
def test_checkpoint_loads_with_the_models_configuration(name):
    case = hf_case(name)
    hf = json.loads((case.dir / "config.json").read_text())
    cfg = load_weights(case.dir).config
    assert cfg.n_experts == hf.get("num_experts", hf.get("num_local_experts"))
    assert cfg.top_k == case.info["top_k"]
    assert len(cfg.moe_layers) == case.info["moe_layers"]
    assert cfg.seq_len >= case.input_ids.shape[1]
    assert cfg.out_dim == case.output.shape[-1]


@pytest.mark.parametrize("name", CASES)
def test_float_reference_matches_transformers(name):
    case = hf_case(name)
    out = run(_weights(name), case.input_ids)
    assert _same_routing(out.routing, case), "routing or capacity drops differ from transformers'"
    assert max_err(out.output, case) <= FLOAT_TOL


@pytest.mark.parametrize("name", CASES)
def test_fixed_point_emulation_matches_transformers(name):
    case = hf_case(name)
    out = run_fixed(_weights(name), case.input_ids)
    assert _same_routing(out.routing, case), "routing or capacity drops differ from transformers'"
    assert max_err(out.output, case) <= case.fixed_tol
    assert argmax_agreement(out.output, case) == 1.0


#: A model that ignores one feature of the checkpoint, per case: its float output must miss
#: transformers' by more than the fixed-point tolerance, or the fixed-point and secure tests
#: above could not tell the feature was computed.
WRONG_MODELS = [
    ("switch-enc-s1-gelu-cap1", {"expert_capacity": None}),
    ("switch-enc-s1-gelu-cap1", {"ffn": "relu"}),
    ("switch-enc-s1-gelu-cap1", {"norm_topk_prob": True}),
    ("switch-cg-s2-gelu-cap2", {"expert_capacity": None}),
    ("mixtral-lm-gqa-swa-untied", {"sliding_window": None}),
    ("mixtral-lm-gqa-swa-untied", {"rope_theta": 1e6}),
    ("mixtral-lm-gqa-swa-untied", {"norm_topk_prob": False}),
    ("qwen3moe-lm-norm", {"norm_topk_prob": False}),
    ("qwen3moe-lm-norm", {"qk_norm": False}),
    ("qwen3moe-base-nonorm", {"norm_topk_prob": True}),
]


@pytest.mark.parametrize(("name", "change"), WRONG_MODELS)
def test_the_tolerance_tells_a_model_that_ignores_a_feature(name, change):
    case = hf_case(name)
    w = _weights(name)
    w.config = w.config.replace(**change)
    assert max_err(run(w, case.input_ids).output, case) > case.fixed_tol


async def _secure(name: str, strategy: str) -> np.ndarray:
    cch, sch = memory_pair()
    try:
        res, _ = await run_pair(
            client_session(cch, hf_case(name).input_ids, options=RunOptions(strategy)),
            serve_session(sch, _weights(name)),
            timeout=600,
        )
    finally:
        await cch.close()
        await sch.close()
    return res.output


@pytest.mark.parametrize("strategy", ["select", "dispatch", "all"])
@pytest.mark.parametrize("name", SECURE_CASES)
async def test_secure_run_matches_transformers(name, strategy):
    case = hf_case(name)
    out = await _secure(name, strategy)
    assert max_err(out, case) <= case.fixed_tol
    assert argmax_agreement(out, case) == 1.0

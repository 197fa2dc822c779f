"""The model's norms with their row products by HE (``RunOptions(norm_products="he")``): the
same function as the fixed-point model, fewer bytes, and a flooding demand that covers them."""

import numpy as np
import pytest

from secmoe.crypto.he_params import HE_8K
from secmoe.model.config import PRESETS
from secmoe.model.fixed import run_fixed
from secmoe.model.secure import RunOptions
from secmoe.model.session import (
    ServerLimits,
    SessionRefused,
    check_request,
    client_session,
    flood_demand,
    serve_session,
)
from secmoe.model.weights import init_random
from secmoe.net import memory_pair, run_pair
from tests.test_budgets import _session_budgets

# 12 rows of 256 per norm: enough for the HE row products to send fewer bytes than COTs.
CFG = PRESETS["mixtral-tiny"].replace(
    name="mixtral-d256", d_model=256, n_layers=1, moe_layers=(0,), n_experts=2, top_k=1, d_ff=64
)
WEIGHTS = init_random(CFG, seed=5)
X = np.random.default_rng(2).integers(0, CFG.vocab_size, (1, 12))


async def _run(norms: str):
    """The client's output and the online bytes of the norms' forks."""
    events = []
    cch, sch = memory_pair()
    sch.session.recorder = lambda ev, payload: events.append(ev)
    try:
        res, _ = await run_pair(
            client_session(cch, X, options=RunOptions("all", norm_products=norms)),
            serve_session(sch, WEIGHTS),
            timeout=600,
        )
    finally:
        await cch.close()
        await sch.close()
    online = [ev for ev in events if ev["phase"] == "online"]
    return res.output, sum(ev["bytes"] for ev in online if "norm" in ev["path"])


async def test_he_norms_compute_the_same_model_with_fewer_bytes():
    fixed = run_fixed(WEIGHTS, X).output
    (ot, ot_bytes), (he, he_bytes) = await _run("ot"), await _run("he")
    for out in (ot, he):
        np.testing.assert_allclose(out, fixed, atol=0.01)  # protocol error only
        np.testing.assert_array_equal(out.argmax(-1), fixed.argmax(-1))
    assert 0 < he_bytes < 0.85 * ot_bytes  # the γ products stay on COTs (not folded here)


async def test_the_flooding_demand_covers_the_he_norms():
    options = RunOptions("all", norm_products="he")
    demand = flood_demand(CFG, X.shape, options)
    extra = demand[HE_8K.name] - flood_demand(CFG, X.shape, RunOptions("all"))[HE_8K.name]
    budgets = await _session_budgets(CFG, WEIGHTS, X, options, union_bits=25)
    used = budgets[HE_8K.name].used
    assert demand[HE_8K.name] - extra < used <= demand[HE_8K.name]


def test_unknown_norm_products_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown norm products 'fast'"):
        RunOptions("all", norm_products="fast")
    req = {"strategy": "all", "shape": [1, 12]}
    assert check_request(req, CFG, ServerLimits()).options.norm_products == "ot"  # the default
    he = check_request({**req, "norm_products": "he"}, CFG, ServerLimits())
    assert he.options.he_norms and he.demand == flood_demand(CFG, (1, 12), he.options)
    for bad, why in ((5, "malformed norm products 5"), ("fast", "unknown norm products 'fast'")):
        with pytest.raises(SessionRefused, match=why):
            check_request({**req, "norm_products": bad}, CFG, ServerLimits())

"""The secure MoE layer's routing for many experts and top-k > 2 (Qwen3-MoE: E = 64, k = 8,
here E = 16), under both gate rules of the config's ``norm_topk_prob``."""

import numpy as np
import pytest

from secmoe.ops.moe import MoESpec
from tests.ops.moe_helpers import layer, references, secure_moe

E, K, D, D_FF = 16, 8, 8, 4


@pytest.mark.parametrize(("strategy", "norm_topk"), [("dispatch", False), ("all", True)])
async def test_top8_of_16_experts_matches_the_emulation(strategy, norm_topk):
    w = layer(E, D, D_FF, "swiglu", seed=3)
    x = np.random.default_rng(4).standard_normal((1, 2, D))
    spec = MoESpec(D, D_FF, E, K, "swiglu", norm_topk=norm_topk)  # no capacity: C = T
    fixed, exact, routing = references(x, w, spec, capacity=False)
    assert routing.kept.all() and np.unique(routing.experts).size > K  # 8 distinct per token
    got = await secure_moe(x, w, spec, strategy)
    np.testing.assert_allclose(got, fixed, atol=1e-3)
    np.testing.assert_allclose(got, exact, atol=0.05)


def test_the_gate_rules_differ_and_renormalised_gates_sum_to_one():
    w = layer(E, D, D_FF, "swiglu", seed=3)
    x = np.random.default_rng(4).standard_normal((1, 2, D))
    gates = {}
    for norm in (False, True):
        _, _, r = references(x, w, MoESpec(D, D_FF, E, K, "swiglu", norm_topk=norm), False)
        gates[norm] = r.gates
    np.testing.assert_allclose(gates[True].sum(-1), 1.0, atol=1e-9)
    assert (gates[False].sum(-1) < 1 - 1e-3).all()  # top-8 of 16 softmax probabilities
    np.testing.assert_allclose(gates[True], gates[False] / gates[False].sum(-1, keepdims=True))

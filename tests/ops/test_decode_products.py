"""A decoding step's small products (issue 21): ``all`` on one token per sequence fuses its
expert products (W1 and V of every expert in one HE product, W2 as one block-diagonal
product), and the secret × secret product takes elementwise OT products when they declare
fewer bytes than HE; each computes the same function as before."""

import numpy as np
import pytest

from secmoe.crypto.he_params import HE_8K, HE_16K
from secmoe.crypto.ring import DEFAULT_RING as R
from secmoe.model.secure import RunOptions
from secmoe.model.session import flood_demand
from secmoe.ops import approx
from secmoe.ops.linear import (
    diagonal_is_cheaper,
    fused_is_cheaper,
    linear_diagonal,
    matmul,
    secret_product_by_ot,
)
from secmoe.ops.moe import MoESpec
from secmoe.protocols import arith
from tests.ops.helpers import run_he_parties
from tests.ops.moe_helpers import layer, references, secure_moe
from tests.protocols.helpers import mine, opened, split
from tests.test_budgets import TINY_LM, _session_budgets

RNG = np.random.default_rng(21)


def _paths(view: list) -> set[str]:
    return {entry[1] for entry in view if entry is not None}


@pytest.mark.parametrize("tokens", [1, 3])
async def test_all_on_a_decoding_step_matches_the_emulation_in_fused_products(tokens):
    e, d, d_ff = 4, 8, 8
    w = layer(e, d, d_ff, "swiglu", seed=7)
    x = RNG.standard_normal((3, tokens, d))  # 3 sequences: T = 1 is a decoding step
    spec = MoESpec(d, d_ff, e, 2, "swiglu", norm_topk=True)
    fixed, exact, _ = references(x, w, spec, capacity=False)
    view: list = []
    got = await secure_moe(x, w, spec, "all", server_view=view)
    np.testing.assert_allclose(got, fixed, atol=1e-3)
    np.testing.assert_allclose(got, exact, atol=0.05)
    products = {p.split("/ffn/")[1] for p in _paths(view) if "/ffn/" in p and "/he" in p}
    if tokens == 1:  # one product for W1 and V of every expert, one for W2
        assert products == {"w1/he", "w2/he"}
    else:  # the prompt's pass: one product per expert and matrix, as before
        assert products == {f"{m}/he{i}" for m in ("w1", "v", "w2") for i in range(e)}


async def test_the_block_diagonal_product_is_each_inputs_own_product():
    m, t, d, h = 3, 2, 5, 4
    x = RNG.normal(size=(m, t, d))
    w = RNG.normal(size=(m, d, h)) * 0.5
    xs = split(R.encode(x), R, 5)

    async def body(p):
        return await linear_diagonal(p, mine(p, xs), w if p.role == "server" else None, h)

    got = opened(await run_he_parties(body), R)
    want = approx.trunc(R.reduce(np.einsum("mtd,mdh->mth", R.encode(x), R.encode(w))), R)
    assert set(R.to_signed(R.reduce(got - want)).ravel().tolist()) <= {-1, 0}


async def test_the_choices_follow_the_declared_bytes_at_one_row_and_not_at_32():
    async def body(p):
        n = 1056  # the OT estimate is the silent source's declared cost (codec apart)
        assert 0 <= arith.cost_mul(p.ot, n, R).bytes_total - n * 536 < 100
        return [
            fused_is_cheaper(p, 1, 32, [64] * 8),
            diagonal_is_cheaper(p, 4, 1, 64, 32),
            diagonal_is_cheaper(p, 8, 1, 14336, 4096),  # Mixtral-8x7B's W2: E products cheaper
        ]

    client, server = await run_he_parties(body)
    assert client == server == [True, True, False]
    assert secret_product_by_ot(4, 1, 8, 33)  # q·kᵀ of a decoding step: 4 heads, 33 keys
    assert secret_product_by_ot(4, 1, 33, 8)  # its p·v
    assert not secret_product_by_ot(4, 32, 8, 32)  # the prompt's q·kᵀ
    assert not secret_product_by_ot(4, 2, 4, 4)  # several rows keep HE, however small
    assert not secret_product_by_ot(12, 1, 64, 512)  # Switch-Base dims, 512 keys


async def test_secret_products_by_ot_and_by_he_are_exact():
    small = (RNG.normal(size=(2, 1, 6)), RNG.normal(size=(2, 6, 3)))
    large = (RNG.normal(size=(2, 16, 16)), RNG.normal(size=(2, 16, 16)))
    shares = [tuple(split(R.encode(v), R, i) for i, v in enumerate(ab)) for ab in (small, large)]

    async def body(p):
        outs = [
            await matmul(p.fork(f"m{i}"), mine(p, sa), mine(p, sb), truncate=False)
            for i, (sa, sb) in enumerate(shares)
        ]
        return outs

    cout, sout = await run_he_parties(body)
    assert [secret_product_by_ot(2, *a.shape[1:], b.shape[-1]) for a, b in (small, large)] == [
        True,
        False,
    ]
    for (a, b), c, s in zip((small, large), cout, sout, strict=True):
        want = R.reduce(np.matmul(R.encode(a), R.encode(b)))
        np.testing.assert_array_equal(opened((c, s), R), want)


async def test_the_flooding_plan_counts_a_decoding_steps_products_exactly():
    # B = 2 sequences of one token: the fused / block-diagonal expert products return as many
    # coefficients as E products each, and attention by OT returns none under the HE keys
    cfg = TINY_LM.config
    x = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 1))
    options = RunOptions("all")
    demand = flood_demand(cfg, (2, 1), options)
    used = {k: b.used for k, b in (await _session_budgets(cfg, TINY_LM, x, options, 25)).items()}
    assert used[HE_8K.name] == demand[HE_8K.name]
    assert used[HE_16K.name] == 0  # the combine's 0/1 products go by MUXes at one token

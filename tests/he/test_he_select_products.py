"""The encrypted selection's products (he_select.shard_products, computed on numpy residues with
crypto.he_mac) against the same products made by SEAL one by one (multiply_plain + add_inplace
on the expanded ciphertexts, the weight blocks as SEAL plaintexts): equal bit for bit, on the
breadth-first and the depth-first (fused) paths, with zero blocks (a zero expert,
a zero matrix), with and without skip_zero_blocks."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sealapi

import secmoe.protocols.he_select as hs
from secmoe.crypto.he import add_rns, expand_a
from secmoe.crypto.prg import PRG
from tests.distributed.test_local_pool import FUSED, NON_FUSED, keys
from tests.he.test_he_select import make_selection


def root_and_inputs(client, server, plan, case):
    """[[t]] (coefficient form, a fresh SEAL ciphertext per call) and the inputs' c0, c1."""
    t_c, _t_s, x_c, _x_s, _ws, _r = case
    ctx, lv = server.ctx, plan.level
    primes = ctx.primes[:lv]
    seed, c0 = client.sk.encrypt(
        hs._onehot_poly(t_c, plan), PRG(b"\x06" * 16), scale_bits=64 + plan.lam, level=lv
    )
    root = np.concatenate([c0, expand_a(seed, 1, primes, ctx.n)])
    seed_x, c0_x = client.sk.encrypt(
        hs._x_polys(x_c, plan), PRG(b"\x07" * 16), encoding="bgv", level=lv
    )
    a_x = expand_a(seed_x, plan.n_x, primes, ctx.n)

    def fresh_root():
        ct = ctx.import_ct(root, ntt=True)
        ctx.evaluator.transform_from_ntt_inplace(ct)
        return ct

    return fresh_root, c0_x, a_x


def seal_reference(server, plan, weights, fresh_root, x0, x1):
    """Per output block (m, c): (A_k, B_k) residues by SEAL, product by product (None: no
    product, every term skipped)."""
    ctx, ev, lv = server.ctx, server.ctx.evaluator, plan.level
    leaves = hs._expand(ctx, server.galois, fresh_root(), plan, np.ones(plan.t * plan.e, bool))
    out = []
    for m, c in plan.outputs:
        accs = [[None] * plan.t, [None] * plan.t]
        for b in range(plan.nb):
            for k in range(plan.t):
                sel = None
                for j in range(plan.e):
                    poly = weights.polys[j][m][b, c]
                    if weights.skip_zero_blocks and not poly.any():
                        continue
                    if not poly.any():  # SEAL refuses a product that is exactly zero
                        continue
                    tmp = sealapi.Ciphertext(ctx.seal)
                    ev.multiply_plain(leaves[k * plan.e + j], ctx.plain_small(poly, lv), tmp)
                    if sel is None:
                        sel = tmp
                    else:
                        ev.add_inplace(sel, tmp)
                if sel is None:
                    continue
                for acc, xs in zip(accs, (x0, x1), strict=True):
                    tmp = sealapi.Ciphertext(ctx.seal)
                    ev.multiply_plain(sel, ctx.plain_from_ntt(xs[k * plan.nb + b]), tmp)
                    if acc[k] is None:
                        acc[k] = tmp
                    else:
                        ev.add_inplace(acc[k], tmp)
        out.append([[None if a is None else ctx.export_ct(a) for a in s] for s in accs])
    return out


@pytest.mark.parametrize(("shape", "skip"), [(NON_FUSED, False), (NON_FUSED, True), (FUSED, True)])
def test_products_equal_seals_bit_for_bit(shape, skip):
    t, e, d, h = shape
    plan = hs.plan_select(t, e, d, h)
    client, server = keys(plan)
    case = make_selection(t, e, d, h, seed=b"products-case-01")
    ws = case[4]
    ws[1] = [np.zeros_like(w) for w in ws[1]]  # an all-zero expert
    ws[0][0][: plan.db] = 0  # expert 0's first row block of matrix 0: zero blocks
    for w in ws:  # the last matrix: zero in every expert (its outputs: no product)
        w[-1][:] = 0
    weights = hs.encode_select_weights(ws, plan, skip_zero_blocks=skip)
    assert any(weights.zero_blocks.values()) and not all(weights.zero_blocks.values())
    fresh_root, x0, x1 = root_and_inputs(client, server, plan, case)
    want = seal_reference(server, plan, weights, fresh_root, x0, x1)
    got = list(hs.shard_products(server.ctx, server.galois, fresh_root(), x0, x1, weights, {}))
    assert len(got) == len(want) == len(plan.outputs)
    assert {bool(p.any()) for p, _acc in got} == {True, False}
    primes = server.ctx.primes[: plan.level]
    for (present, acc), ref in zip(got, want, strict=True):
        for k in range(t):
            assert present[k] == (ref[0][k] is not None)
            if ref[0][k] is None:
                assert not acc[k].any()
            else:  # A + B = (a0, a1 + b0, b1)
                a, b = ref[0][k], ref[1][k]
                assert np.array_equal(acc[k][[0, 2]], np.stack([a[0], b[1]]))
                assert np.array_equal(acc[k][1], add_rns(a[1:], b[:1], primes)[0])

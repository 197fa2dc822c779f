"""Secure softmax: max, exp, reciprocal and the whole, against the spec and the float softmax."""

import numpy as np
import pytest

from secmoe.crypto.ring import Ring
from secmoe.ops import approx
from secmoe.ops import softmax as sm
from tests.ops.test_piecewise import checked
from tests.protocols.helpers import SOURCES, mine, opened, run_parties, split

R = Ring(64, 18)


def float_softmax(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    z = np.where(mask, x, -np.inf) if mask is not None else x
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


async def test_max_exp_reciprocal_pieces():
    rng = np.random.default_rng(1)
    v = rng.integers(-(2**28), 2**28, (6, 7))
    v[0] = 5  # ties
    v[1, 3] = 2**29 - 1
    clip = int(R.to_signed(R.encode(-approx.EXP_CLIP)))
    d = np.concatenate([[0, -1, clip - 1, clip, clip + 1, -(2**30)], -rng.integers(0, 2**23, 94)])
    s = R.encode(
        np.concatenate([[1.0, 1.5, 2.0, 2.0 + 2**-18, 64.0, 127.9, 128.0], rng.uniform(1, 128, 43)])
    )
    vs, ds, ss = split(R.from_signed(v), R, 1), split(R.from_signed(d), R, 2), split(s, R, 3)

    async def body(p):
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        m = await sm.row_max(p.fork("max"), mine(p, vs))
        checked(p, snap, mark, sm.row_max_cost(p.ot, 6, 7, R, 32))
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        e = await sm.exp_neg(p.fork("exp"), mine(p, ds))
        checked(p, snap, mark, sm.exp_neg_cost(p.ot, d.size, R))
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        r = await sm.reciprocal(p.fork("rcp"), mine(p, ss), 7)
        checked(p, snap, mark, sm.reciprocal_cost(p.ot, s.size, 7, R))
        return m, e, r

    cv, sv = await run_parties(body)
    m, e, r = (opened((a, b), R) for a, b in zip(cv, sv, strict=True))
    np.testing.assert_array_equal(R.to_signed(m)[:, 0], v.max(axis=-1))
    du = R.from_signed(d)
    err = np.abs(R.to_signed(e) - R.to_signed(approx.exp_neg_fixed(du, R)))
    assert (err <= sm.exp_error_bound(du, R)).all()
    assert R.to_signed(e)[2:4].tolist() == [0, 0]  # at and below the clip: exactly 0
    rerr = np.abs(R.to_signed(r) - R.to_signed(approx.reciprocal_fixed(s, R, 7)))
    assert rerr.max() <= sm.RECIP_SLACK


@pytest.mark.parametrize("source", SOURCES)
async def test_softmax_matches_spec_and_float_with_and_without_mask(source):
    rng = np.random.default_rng(2)
    xf = rng.normal(0, 3, (2, 9, 9))
    xf[0, 0, :] = 0.0  # a flat row
    xf[1, 2, 4] = 40.0  # a dominant logit
    x = R.encode(xf)
    xs = split(x, R, 4)
    causal = np.tril(np.ones((9, 9), bool))

    async def body(p):
        out = []
        for name, mask in (("full", None), ("causal", causal)):
            snap, mark = p.ch.stats.snapshot(), p.ot.mark()
            out.append(await sm.softmax(p.fork(name), mine(p, xs), mask))
            checked(p, snap, mark, sm.softmax_cost(p.ot, x.shape, R, mask))
        return out

    c_out, s_out = await run_parties(body, source=source)
    for cy, sy, mask in zip(c_out, s_out, (None, causal), strict=True):
        got = R.to_signed(opened((cy, sy), R))
        err = np.abs(got - R.to_signed(sm.ideal(x, R, mask)))
        assert (err <= sm.error_bound(x, R, mask)).all()
        assert np.abs(got / 2**18 - float_softmax(xf, mask)).max() < 4e-3
        if mask is not None:
            assert (got[..., ~causal] == 0).all()

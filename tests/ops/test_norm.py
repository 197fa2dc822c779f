"""LayerNorm / RMSNorm with the server's weights, and the server-weight product."""

import numpy as np
import pytest

from secmoe.crypto.ring import Ring
from secmoe.ops import approx, norm
from tests.ops.test_piecewise import checked
from tests.protocols.helpers import mine, opened, run_parties, split

R = Ring(64, 18)
VAR_RANGE = (-6, 8)
EPS = 1e-5


def float_layernorm(x, w, b):
    c = x - x.mean(-1, keepdims=True)
    return c / np.sqrt((c * c).mean(-1, keepdims=True) + EPS) * w + b


def float_rmsnorm(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


async def test_server_weight_product_is_exact():
    rng = np.random.default_rng(1)
    z = rng.integers(-(2**45), 2**45, (3, 5, 6))
    w = np.array([1.5, -2.0, 0.0, -31.99, 31.99, 2.0**-18])
    zs = split(R.from_signed(z), R, 1)

    async def body(p):
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        w_ = w if p.role == "server" else None
        y = await norm.mul_server_weight(p.fork("w"), mine(p, zs), w_)
        checked(p, snap, mark, norm.mul_server_weight_cost(p.ot, 15, 6, R))
        return y

    cy, sy = await run_parties(body)
    np.testing.assert_array_equal(opened((cy, sy), R), R.from_signed(z) * R.encode(w))


async def test_server_weight_too_wide_is_refused():
    async def body(p):
        w = np.array([40.0]) if p.role == "server" else None
        return await norm.mul_server_weight(p, np.zeros((2, 1), np.uint64), w)

    with pytest.raises(Exception, match="do not fit"):
        await run_parties(body, timeout=5)


@pytest.mark.parametrize(
    ("kind", "source"), [("layernorm", "iknp"), ("rmsnorm", "iknp"), ("layernorm", "silent")]
)
async def test_norms_match_spec_and_float(kind, source):
    rng = np.random.default_rng(2)
    xf = rng.normal(0.5, 3.0, (3, 2, 48))
    xf[0, 0] = np.linspace(-20, 20, 48)
    xf[1, 1] = 0.2 * rng.normal(size=48)  # variance near the bottom of the range [2^-6, 2^8]
    w, b = rng.uniform(-2, 2, 48), rng.normal(0, 1, 48)
    x = R.encode(xf)
    xs = split(x, R, 3)

    async def body(p):
        srv = p.role == "server"
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        if kind == "layernorm":
            y = await norm.layernorm(
                p.fork("n"), mine(p, xs), w if srv else None, b if srv else None, EPS, VAR_RANGE
            )
            checked(p, snap, mark, norm.layernorm_cost(p.ot, x.shape, R, VAR_RANGE))
        else:
            y = await norm.rmsnorm(p.fork("n"), mine(p, xs), w if srv else None, EPS, VAR_RANGE)
            checked(p, snap, mark, norm.rmsnorm_cost(p.ot, x.shape, R, VAR_RANGE))
        return y

    cy, sy = await run_parties(body, source=source)
    got = R.to_signed(opened((cy, sy), R))
    if kind == "layernorm":
        spec = norm.ideal_layernorm(x, R, w, b, EPS, VAR_RANGE)
        ref = float_layernorm(xf, w, b)
    else:
        spec = norm.ideal_rmsnorm(x, R, w, EPS, VAR_RANGE)
        ref = float_rmsnorm(xf, w)
    err = np.abs(got - R.to_signed(spec))
    assert (err <= norm.error_bound(x, R, w, EPS, VAR_RANGE, kind == "layernorm")).all()
    assert np.abs(got / 2**18 - ref).max() < 2e-3
    assert approx.rsqrt_guess(*VAR_RANGE).n_segments == 14

import numpy as np

from secmoe.crypto.ring import DEFAULT_RING as R
from secmoe.ops import approx
from secmoe.ops.dispatch import gather_buckets, ideal_dispatch, scatter_outputs
from secmoe.ops.linear import linear, linear_batched, matmul, prepare
from tests.ops.helpers import run_he_parties
from tests.protocols.helpers import mine, opened, split

RNG = np.random.default_rng(11)


async def test_linear_and_batched_match_the_fixed_point_spec():
    x = RNG.normal(size=(5, 13))
    w = RNG.normal(size=(3, 13, 7)) * 0.5
    xs = split(R.encode(x), R)

    async def body(p):
        if p.role == "server":
            for e in range(3):
                prepare(p, w[e], 5)
        ww = w if p.role == "server" else None
        y = await linear(p.fork("one"), mine(p, xs), None if ww is None else ww[1], 7)
        yb = await linear_batched(p.fork("many"), np.stack([mine(p, xs)] * 2), ww, [2, 0], 7)
        return y, yb

    (cy, cb), (sy, sb) = await run_he_parties(body)
    spec = [approx.trunc(R.reduce(R.encode(x) @ R.encode(w[e])), R) for e in (1, 2, 0)]
    for got, want in zip([opened((cy, sy), R), *opened((cb, sb), R)], spec, strict=True):
        assert set(R.to_signed(R.reduce(got - want)).ravel().tolist()) <= {-1, 0}


async def test_secret_matmul_exact_and_truncated():
    a = RNG.normal(size=(2, 4, 6))
    b = RNG.normal(size=(2, 6, 3))
    sa, sb = split(R.encode(a), R, 1), split(R.encode(b), R, 2)

    async def body(p):
        exact = await matmul(p.fork("x"), mine(p, sa), mine(p, sb), truncate=False)
        fixed = await matmul(p.fork("t"), mine(p, sa), mine(p, sb))
        return exact, fixed

    (ce, cf), (se, sf) = await run_he_parties(body)
    prod = R.reduce(np.matmul(R.encode(a), R.encode(b)))
    np.testing.assert_array_equal(opened((ce, se), R), prod)
    diff = R.to_signed(R.reduce(opened((cf, sf), R) - approx.trunc(prod, R)))
    assert set(diff.ravel().tolist()) <= {-1, 0}


async def test_buckets_round_trip_through_the_dispatch_tensor():
    routes = np.array([0, 2, 2, 2, 1])  # expert 2 overflows capacity 2
    d = ideal_dispatch(routes, 3, 2)
    x = RNG.normal(size=(5, 4))
    sd, sx = split(d, R, 3), split(R.encode(x), R, 4)

    async def body(p):
        buckets = await gather_buckets(p.fork("g"), mine(p, sd), mine(p, sx))
        back = await scatter_outputs(p.fork("s"), mine(p, sd), buckets)
        return buckets, back

    (cb, cback), (sb, sback) = await run_he_parties(body)
    back = R.decode(opened((cback, sback), R))
    kept = d.sum(axis=(1, 2)).astype(bool)
    np.testing.assert_allclose(back[kept], x[kept], atol=2**-18)
    np.testing.assert_array_equal(back[~kept], 0)
    assert opened((cb, sb), R).shape == (3, 2, 4)

import numpy as np
import pytest

from secmoe.crypto.ring import Ring
from secmoe.protocols import arith, boolean
from tests.protocols.helpers import SOURCES, mine, opened, opened_bits, run_parties, split

R64 = Ring(64, 18)
EDGE = np.array([0, 1, -1, 2**40, -(2**40), 2**61 - 1, -(2**61), 12345], dtype=np.int64)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("ring", [Ring(64, 18), Ring(40, 10)])
async def test_mul_is_exact_mod_2l(ring, source):
    rng = np.random.default_rng(1)
    x = ring.reduce(rng.integers(0, 2**63, 300, dtype=np.uint64))
    y = ring.reduce(rng.integers(0, 2**63, 300, dtype=np.uint64))
    x[:8], y[:8] = ring.from_signed(EDGE), ring.from_signed(EDGE[::-1])
    xs, ys = split(x, ring, 1), split(y, ring, 2)

    async def body(p):
        return await arith.mul(p, mine(p, xs), mine(p, ys))

    np.testing.assert_array_equal(
        opened(await run_parties(body, ring, source=source), ring), arith.ideal_mul(x, y, ring)
    )


async def test_square():
    x = R64.from_signed(np.concatenate([EDGE, np.arange(-50, 50)]))
    xs = split(x, R64)

    async def body(p):
        return await arith.square(p, mine(p, xs))

    np.testing.assert_array_equal(opened(await run_parties(body), R64), arith.ideal_mul(x, x, R64))


@pytest.mark.parametrize("source", SOURCES)
async def test_trunc_never_wraps_over_a_million_values(source):
    # the documented range |x| < 2^(ℓ−2); here the full range of fixed-point products
    rng = np.random.default_rng(3)
    n = 1_000_000
    x = rng.integers(-(2**61), 2**61, n, dtype=np.int64)
    x[:6] = [0, 1, -1, 2**61 - 1, -(2**61), -(2**18)]
    xs = split(R64.from_signed(x), R64, 5)

    async def body(p):
        return await arith.trunc(p, mine(p, xs))

    # With the silent source, a million COTs run past the primed ``pre`` outputs into B13's
    # first main batches.
    got = R64.to_signed(opened(await run_parties(body, timeout=300, source=source), R64))
    want = x >> 18
    diff = got - want
    assert set(np.unique(diff)) <= {-1, 0}, "a gross (wrap-around) error occurred"
    assert 0.3 < (diff == -1).mean() < 0.7  # the dropped carry is a fair coin


@pytest.mark.parametrize("shift", [1, 12, 30])
async def test_trunc_shifts(shift):
    x = R64.from_signed(EDGE[:6])
    xs = split(x, R64)

    async def body(p):
        return await arith.trunc(p, mine(p, xs), shift)

    got = R64.to_signed(opened(await run_parties(body), R64))
    assert set(got - (R64.to_signed(x) >> shift)) <= {-1, 0}


@pytest.mark.parametrize("source", SOURCES)
async def test_mul_fixed_matches_float(source):
    a, b = np.linspace(-30, 30, 101), np.linspace(7, -7, 101)
    xs, ys = split(R64.encode(a), R64, 1), split(R64.encode(b), R64, 2)

    async def body(p):
        return await arith.mul_fixed(p, mine(p, xs), mine(p, ys))

    got = R64.to_signed(opened(await run_parties(body, source=source), R64))
    x, y = R64.reduce(xs[0] + xs[1]), R64.reduce(ys[0] + ys[1])
    want = R64.to_signed(arith.ideal_trunc(arith.ideal_mul(x, y, R64), R64))
    assert set((got - want).tolist()) <= {-1, 0}
    # encoding error of the inputs (2^-19 each) scaled by the other factor, plus 1 ulp
    assert np.all(np.abs(got / 2**18 - a * b) <= (np.abs(a) + np.abs(b) + 2) * 2.0**-18)


@pytest.mark.parametrize("source", SOURCES)
async def test_and_b2a_mux(source):
    rng = np.random.default_rng(4)
    x, y = rng.random(257) < 0.5, rng.random(257) < 0.5
    v = R64.from_signed(rng.integers(-(2**62), 2**62, 257))
    xb = (x ^ (r := rng.random(257) < 0.5), r)
    yb = (y ^ (r2 := rng.random(257) < 0.5), r2)
    vs = split(v, R64)

    async def body(p):
        z = await boolean.and_(p.fork("and"), mine(p, xb), mine(p, yb))
        a = await boolean.b2a(p.fork("b2a"), mine(p, xb))
        m = await boolean.mux(p.fork("mux"), mine(p, xb), mine(p, vs))
        return z, a, m

    (cz, ca, cm), (sz, sa, sm) = await run_parties(body, source=source)
    np.testing.assert_array_equal(opened_bits((cz, sz)), x & y)
    np.testing.assert_array_equal(opened((ca, sa), R64), x.astype(np.uint64))
    np.testing.assert_array_equal(opened((cm, sm), R64), np.where(x, v, 0).astype(np.uint64))


@pytest.mark.parametrize("d", [3, 7, 768, 1000003])
async def test_div_public(d):
    rng = np.random.default_rng(d)
    x = np.concatenate([rng.integers(-(2**60), 2**60, 5000), [0, 1, -1, d, -d, d - 1, 2**61]])
    xs = split(R64.from_signed(x), R64)

    async def body(p):
        return await arith.div_public(p, mine(p, xs), d)

    got = R64.to_signed(opened(await run_parties(body), R64))
    want = R64.to_signed(arith.ideal_div_public(R64.from_signed(x), d, R64))
    assert set((got - want).tolist()) <= {-1, 0, 1}


async def test_forking_a_name_twice_never_replays_ots():
    # The same protocol twice on the same party forks the same names: its COTs must differ.
    x = split(R64.from_signed(np.arange(64)), R64)
    y = split(R64.from_signed(np.arange(64) * 3), R64)

    async def body(p):
        first = await arith.mul(p, mine(p, x), mine(p, y))
        second = await arith.mul(p, mine(p, x), mine(p, y))
        return first, second

    (c1, c2), (s1, s2) = await run_parties(body, source="iknp")
    np.testing.assert_array_equal(opened((c1, s1), R64), opened((c2, s2), R64))
    assert not np.array_equal(c1, c2)  # same product, fresh randomness

"""Measured communication equals each protocol's declared cost."""

import numpy as np
import pytest

from secmoe.crypto.ring import Ring
from secmoe.protocols import arith, boolean, compare
from secmoe.protocols.cost import Cost
from tests.protocols.helpers import SOURCES, mine, opened, run_parties, split

R64, R32 = Ring(64, 18), Ring(32, 10)


def measured(fn, declare, exact_rounds, source, ring=R64):
    """Run ``fn(p)`` after setup and check the channel's figures against ``declare(pool)``
    plus the pool's declared stream refills (GGM batches of the silent source; IKNP: none)."""

    async def body(p):
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        await fn(p)
        refills = Cost(**p.ot.refill_cost(mark))
        (declare(p.ot) + refills).check(p.ch.stats.since(snap), exact_rounds)
        return True

    return run_parties(body, ring, source=source)


N = 77
X = split(R64.from_signed(np.arange(-38, 39)), R64)
B = (np.arange(N) % 3 == 0, np.arange(N) % 2 == 0)


@pytest.mark.parametrize(
    ("name", "fn", "declare", "exact"),
    [
        ("b2a", lambda p: boolean.b2a(p, mine(p, B)), lambda o: boolean.cost_b2a(o, N, 64), True),
        (
            "mux",
            lambda p: boolean.mux(p, mine(p, B), mine(p, X)),
            lambda o: boolean.cost_mux(o, N, 64),
            True,
        ),
        (
            "and",
            lambda p: boolean.and_(p, mine(p, B), mine(p, B)),
            lambda o: boolean.cost_and(o, N),
            True,
        ),
        (
            "mul",
            lambda p: arith.mul(p, mine(p, X), mine(p, X)),
            lambda o: arith.cost_mul(o, N, R64),
            True,
        ),
        (
            "square",
            lambda p: arith.square(p, mine(p, X)),
            lambda o: arith.cost_square(o, N, R64),
            True,
        ),
        (
            "trunc",
            lambda p: arith.trunc(p, mine(p, X)),
            lambda o: arith.cost_trunc(o, N, R64),
            True,
        ),
        (
            "millionaires",
            lambda p: compare.millionaires(p, mine(p, X), 64, want_eq=True),
            lambda o: compare.cost_millionaires(o, N, 64, want_eq=True),
            False,
        ),
        (
            "msb20",
            lambda p: compare.msb(p, mine(p, X) & np.uint64(2**20 - 1), 20),
            lambda o: compare.cost_msb(o, N, 20),
            False,
        ),
        (
            "relu",
            lambda p: compare.relu(p, mine(p, X), 24),
            lambda o: compare.cost_relu(o, N, 64, 24),
            False,
        ),
    ],
)
@pytest.mark.parametrize("source", SOURCES)
async def test_measured_equals_declared(name, fn, declare, exact, source):
    assert await measured(fn, declare, exact, source) == (True, True)


async def test_and_fanout_opens_each_shared_input_once():
    rng = np.random.default_rng(4)
    xs, ys = rng.random((2, 40)) < 0.5, rng.random((2, 90)) < 0.5
    at = rng.integers(0, 40, 90)

    async def body(p):
        tri = await boolean.bit_triples(p.fork("tri"), 40, 3)
        a, b, c = tri[0], tri[1][at, at % 3], tri[2][at, at % 3]  # correlated: a shared
        snap = p.ch.stats.snapshot()
        z = await boolean.and_fanout(p, mine(p, xs), mine(p, ys), at, (a, b, c))
        Cost.exchange(np.zeros(130, bool)).check(p.ch.stats.since(snap), exact_rounds=True)
        return z

    z = await run_parties(body)
    np.testing.assert_array_equal(z[0] ^ z[1], (xs[0] ^ xs[1])[at] & (ys[0] ^ ys[1]))


async def test_large_products_go_in_bounded_batches(monkeypatch):
    monkeypatch.setattr(arith, "MUL_CHUNK", 32)  # 77 elements: batches of 32, 32, 13
    want = R64.reduce(R64.reduce(X[0] + X[1]) ** np.uint64(2))

    async def body(p):
        snap = p.ch.stats.snapshot()
        y = await arith.mul(p, mine(p, X), mine(p, X))
        arith.cost_mul(p.ot, N, R64).check(p.ch.stats.since(snap), exact_rounds=False)
        return y

    np.testing.assert_array_equal(opened(await run_parties(body, source="iknp"), R64), want)

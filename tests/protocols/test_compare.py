import numpy as np
import pytest

from secmoe.crypto.ring import Ring
from secmoe.protocols import boolean, compare, select
from secmoe.protocols.cost import Cost
from tests.protocols.helpers import SOURCES, mine, opened, opened_bits, run_parties, split

R64 = Ring(64, 18)


def edge_values(bits: int) -> np.ndarray:
    half = 2 ** (bits - 1)
    return np.array(
        [0, 1, -1, 2, -2, half // 2, -half // 2, half - 1, -half, 17, -17], dtype=np.int64
    )


@pytest.mark.parametrize(
    ("bits", "m", "source"),
    [
        (64, 4, "iknp"),
        (64, 4, "silent"),
        (63, 4, "iknp"),
        (20, 3, "iknp"),
        (9, 2, "iknp"),
        (9, 2, "silent"),
        (5, 4, "iknp"),
    ],
)
async def test_millionaires_gt_and_eq(bits, m, source):
    rng = np.random.default_rng(bits)
    n = 200
    hi = 2**bits if bits < 64 else 2**64
    a = rng.integers(0, min(hi, 2**63), n, dtype=np.uint64)
    b = a.copy()
    b[: n // 2] = rng.integers(0, min(hi, 2**63), n // 2, dtype=np.uint64)  # half equal inputs
    b[n // 2 : n // 2 + 5] = a[n // 2 : n // 2 + 5] + np.uint64(1)  # neighbours
    if bits < 64:
        b &= np.uint64(hi - 1)

    async def body(p):
        mine_v = a if p.role == "client" else b
        return await compare.millionaires(p, mine_v, bits, want_eq=True, m=m)

    (cg, ce), (sg, se) = await run_parties(body, source=source)
    want_gt, want_eq = compare.ideal_millionaires(a, b, bits)
    np.testing.assert_array_equal(opened_bits((cg, sg)), want_gt)
    np.testing.assert_array_equal(opened_bits((ce, se)), want_eq)


@pytest.mark.parametrize(
    ("bits", "m", "source"),
    [
        (63, None, "silent"),  # the default radix (3): 21 equal digits
        (63, None, "iknp"),  # radix 4: a 3-bit top digit (1-of-8 leaves)
        (10, 4, "iknp"),  # a 2-bit top digit
        (3, 4, "silent"),  # one digit: gt-only leaves and no tree
        (7, 2, "iknp"),
    ],
)
async def test_millionaires_gt_only(bits, m, source):
    rng = np.random.default_rng(bits)
    n = 300
    a = rng.integers(0, 2**bits, n, dtype=np.uint64)
    b = np.where(rng.random(n) < 0.3, a, rng.integers(0, 2**bits, n, dtype=np.uint64))
    b[:20] = (a[:20] ^ np.uint64(1)) & np.uint64(2**bits - 1)  # differ in the lowest digit only

    async def body(p):
        return await compare.millionaires(p, a if p.role == "client" else b, bits, m=m)

    (cg, ce), (sg, se) = await run_parties(body, source=source)
    assert ce is None and se is None
    np.testing.assert_array_equal(opened_bits((cg, sg)), a > b)


async def test_large_comparisons_go_in_bounded_batches(monkeypatch):
    monkeypatch.setattr(compare, "COMPARE_CHUNK", 64)  # 150 elements: batches of 64, 64, 22
    rng = np.random.default_rng(3)
    v = rng.integers(-(2**62), 2**62, 150)
    xs = split(R64.from_signed(v), R64)

    async def body(p):
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        got = await compare.msb(p, mine(p, xs))
        declared = compare.cost_msb(p.ot, 150, 64) + Cost(**p.ot.refill_cost(mark))
        measured = p.ch.stats.since(snap)
        declared.check(measured, exact_rounds=False)
        assert declared.messages > compare.cost_msb(p.ot, 64, 64).messages * 2
        # Two batches in flight, then the third: its rounds come after the first pair's.
        assert measured.rounds > compare.cost_msb(p.ot, 64, 64).rounds
        return got

    np.testing.assert_array_equal(opened_bits(await run_parties(body, source="silent")), v < 0)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("bits", [64, 24])
async def test_msb_drelu_relu_on_edges(bits, source):
    rng = np.random.default_rng(9)
    v = np.concatenate([edge_values(bits), rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), 300)])
    x = R64.from_signed(v)
    xs = split(x, R64)

    async def body(p):
        mine_x = mine(p, xs)
        if bits < 64:  # shares reduced mod 2^bits stay valid shares of the small value
            mine_x = mine_x & np.uint64((1 << bits) - 1)
        m = await compare.msb(p.fork("msb"), mine_x, bits)
        r = await compare.relu(p.fork("relu"), mine(p, xs), bits)
        return m, r

    (cm, cr), (sm, sr) = await run_parties(body, source=source)
    np.testing.assert_array_equal(opened_bits((cm, sm)), v < 0)
    np.testing.assert_array_equal(R64.to_signed(opened((cr, sr), R64)), np.maximum(v, 0))


@pytest.mark.parametrize("source", SOURCES)
async def test_less_than_greater_than_public_equal(source):
    rng = np.random.default_rng(5)
    a = rng.integers(-(2**40), 2**40, 200)
    b = np.where(rng.random(200) < 0.3, a, rng.integers(-(2**40), 2**40, 200))
    a[:4], b[:4] = [0, -1, 5, 2**40], [0, 0, 5, -(2**40)]
    xa, xb = split(R64.from_signed(a), R64, 1), split(R64.from_signed(b), R64, 2)
    c = R64.from_signed(np.array([3]))

    async def body(p):
        lt = await compare.less_than(p.fork("lt"), mine(p, xa), mine(p, xb))
        gt = await compare.greater_than_public(p.fork("gt"), mine(p, xa), c)
        eq = await compare.equal(p.fork("eq"), mine(p, xa), mine(p, xb))
        eq42 = await compare.equal(p.fork("eq42"), mine(p, xa), mine(p, xb), bits=42)
        return lt, gt, eq, eq42

    c_out, s_out = await run_parties(body, source=source)
    lt, gt, eq, eq42 = (opened_bits((x, y)) for x, y in zip(c_out, s_out, strict=True))
    np.testing.assert_array_equal(lt, a < b)
    np.testing.assert_array_equal(gt, a > 3)
    np.testing.assert_array_equal(eq, a == b)
    np.testing.assert_array_equal(eq42, a == b)


@pytest.mark.parametrize(
    ("n_exp", "k", "source"),
    [(2, 1, "iknp"), (5, 2, "iknp"), (8, 2, "iknp"), (8, 2, "silent"), (7, 3, "iknp")],
)
async def test_topk_and_argmax_with_ties(n_exp, k, source):
    rng = np.random.default_rng(n_exp)
    t = 12
    v = rng.integers(-5, 5, (t, n_exp))  # small range: many ties
    v[0] = 0  # all equal
    v[1] = np.arange(n_exp)[::-1]
    x = R64.from_signed(v)
    xs = split(x, R64)

    async def body(p):
        return await select.topk(p, mine(p, xs), k, bits=32)

    (cv, ch), (sv, sh) = await run_parties(body, source=source)
    want_v, want_h = select.ideal_topk(x, k, R64)
    np.testing.assert_array_equal(opened((cv, sv), R64), want_v)
    np.testing.assert_array_equal(opened((ch, sh), R64), want_h)


@pytest.mark.parametrize("source", SOURCES)
async def test_onehot_of_shared_index(source):
    idx = np.array([0, 3, 7, 5, 0, 1], dtype=np.uint64)
    xs = split(idx, R64)

    async def body(p):
        return await select.onehot(p, mine(p, xs), 8, bits=8)

    got = opened(await run_parties(body, source=source), R64)
    np.testing.assert_array_equal(got, (idx[:, None] == np.arange(8)).astype(np.uint64))


async def test_b2a_of_comparison_matches():
    a = np.arange(-10, 10)
    xs = split(R64.from_signed(a), R64)

    async def body(p):
        d = await compare.drelu(p.fork("d"), mine(p, xs), 16)
        return await boolean.b2a(p.fork("b"), d)

    np.testing.assert_array_equal(opened(await run_parties(body), R64), (a >= 0).astype(np.uint64))

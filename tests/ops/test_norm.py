"""LayerNorm / RMSNorm with the server's weights, and the server-weight product."""

import numpy as np
import pytest

from secmoe.crypto.he_params import HE_8K
from secmoe.crypto.prg import PRG
from secmoe.crypto.ring import Ring
from secmoe.net import run_local
from secmoe.ops import approx, norm
from secmoe.ops.linear import setup_he
from secmoe.ops.piecewise import mul_narrow, mul_narrow_cost, square_narrow, square_narrow_cost
from secmoe.protocols.party import Party
from tests.ops.test_piecewise import checked
from tests.protocols.helpers import SEEDS, mine, opened, run_parties, split

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


async def test_products_with_dropped_low_bits_are_floors_within_their_terms():
    """mul_server_weight, mul_narrow and square_narrow with ``drop`` = s: shares mod 2^(ℓ−s)
    of ⌊product / 2^s⌋ − e with e below the number of floored terms, at the declared cost."""
    rng = np.random.default_rng(4)
    s = 12
    z = rng.integers(-(2**30), 2**30, (3, 40))
    w = rng.uniform(-31.9, 31.9, 40)
    y = rng.integers(-(2**22), 2**22, (3, 1))  # one narrow value per row, 25 bits
    c = rng.integers(-(2**27), 2**27, (3, 40))  # |c| < 2^(30 − 2)
    zs, ys, cs = (split(R.from_signed(v), R, i) for i, v in enumerate((z, y, c)))
    out = R.with_bits(64 - s)

    async def body(p):
        srv = p.role == "server"
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        a = await norm.mul_server_weight(p.fork("w"), mine(p, zs), w if srv else None, drop=s)
        b = await mul_narrow(p.fork("m"), mine(p, cs), mine(p, ys), 25, s)
        q = await square_narrow(p.fork("q"), mine(p, cs), 30, s)
        want = (
            norm.mul_server_weight_cost(p.ot, 3, 40, R, drop=s)
            + mul_narrow_cost(p.ot, 3, 40, R, 25, s)
            + square_narrow_cost(p.ot, 120, R, 30, s)
        )
        checked(p, snap, mark, want)
        return a, b, q

    (ca, cb, cq), (sa, sb, sq) = await run_parties(body)
    g = R.to_signed(R.encode(w))
    for got, exact, terms in [
        ((ca, sa), z * g, 24 + 1),
        ((cb, sb), c * y, 2 * 25 + 4),
        ((cq, sq), c * c, 30 + 4),
    ]:
        e = (exact >> s) - out.to_signed(opened(got, out))
        assert e.min() >= 0 and e.max() < terms


async def test_server_weight_too_wide_is_refused():
    async def body(p):
        w = np.array([40.0]) if p.role == "server" else None
        return await norm.mul_server_weight(p, np.zeros((2, 1), np.uint64), w)

    with pytest.raises(Exception, match="do not fit"):
        await run_parties(body, timeout=5)


@pytest.mark.parametrize(
    ("kind", "source", "weighted"),
    [
        ("layernorm", "iknp", True),
        ("rmsnorm", "iknp", True),
        ("layernorm", "silent", True),
        ("rmsnorm", "silent", False),
        ("layernorm", "iknp", False),
    ],
)
async def test_norms_match_spec_and_float(kind, source, weighted):
    rng = np.random.default_rng(2)
    xf = rng.normal(0.5, 3.0, (3, 2, 48))
    xf[0, 0] = np.linspace(-20, 20, 48)
    xf[1, 1] = 0.2 * rng.normal(size=48)  # variance near the bottom of the range [2^-6, 2^8]
    xf[2, 0] = 0.0
    xf[2, 0, 7] = 90.0  # one dominant element: |z| = √(d − 1/d)·… ≈ √d, the c·y ring's bound
    w, b = rng.uniform(-2, 2, 48), rng.normal(0, 1, 48)
    w_ = w if weighted else None
    x = R.encode(xf)
    xs = split(x, R, 3)

    async def body(p):
        srv = p.role == "server"
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        mw = w_ if srv else None
        if kind == "layernorm":
            y = await norm.layernorm(
                p.fork("n"), mine(p, xs), mw, b if srv else None, EPS, VAR_RANGE, weighted=weighted
            )
            cost = norm.layernorm_cost(p.ot, x.shape, R, VAR_RANGE, weighted=weighted)
        else:
            y = await norm.rmsnorm(p.fork("n"), mine(p, xs), mw, EPS, VAR_RANGE, weighted=weighted)
            cost = norm.rmsnorm_cost(p.ot, x.shape, R, VAR_RANGE, weighted=weighted)
        checked(p, snap, mark, cost)
        if not weighted:  # the γ product and its truncation are gone
            full = norm.norm_cost(p.ot, x.shape, R, VAR_RANGE, kind == "layernorm")
            assert cost.bytes_c2s + cost.bytes_s2c < full.bytes_c2s + full.bytes_s2c
        return y

    cy, sy = await run_parties(body, source=source)
    got = R.to_signed(opened((cy, sy), R))
    wf = w if weighted else 1.0
    if kind == "layernorm":
        spec = norm.ideal_layernorm(x, R, w_, b, EPS, VAR_RANGE)
        ref = float_layernorm(xf, wf, b)
    else:
        spec = norm.ideal_rmsnorm(x, R, w_, EPS, VAR_RANGE)
        ref = float_rmsnorm(xf, wf)
    err = np.abs(got - R.to_signed(spec))
    assert (err <= norm.error_bound(x, R, w_, EPS, VAR_RANGE, kind == "layernorm")).all()
    assert np.abs(got / 2**18 - ref).max() < 2e-3
    z = float_layernorm(xf, 1.0, 0.0) if kind == "layernorm" else float_rmsnorm(xf, 1.0)
    assert np.abs(z[2, 0, 7]) > 0.99 * np.sqrt(47)  # the row that reaches the c·y ring's bound
    assert approx.rsqrt_guess(*VAR_RANGE).n_segments == 14


def test_narrow_ring_widths_hold_their_bounds():
    f = R.frac_bits
    for d in [1, 2, 3, 48, 512, 768, 1000, 1024, 4096, 5120]:
        cb = norm.cy_bits(d, R)  # |c·y| ≤ √d·(1 + 2^−10)·2^(2f), with trunc's margin 2^f
        assert np.sqrt(d) * (1 + 2**-10) * 2.0 ** (2 * f) + 2**f < 2.0 ** (cb - 2)
        assert cb <= 2 * f + np.log2(d) / 2 + 4  # not much wider than needed
        wb = norm.w_ring_bits(d, R)  # |z| < 2^(f+h+1), |enc γ| < 2^(w_bits − 1)
        zmax = np.sqrt(d) * (1 + 2**-10) * 2**f + 2
        assert zmax * 2.0 ** (norm.DEFAULT_W_BITS - 1) + 2**f < 2.0 ** (wb - 2)
        for hi in (4, 8, 12):  # Σc² < d·2^(hi+1)·2^(2f), with the division's margin 2^f·d
            sb = norm.sq_bits(d, hi, R)
            assert sb == 64 or d * 2.0 ** (hi + 1 + 2 * f) + d * 2**f < 2.0 ** (sb - 2)
            assert sb >= norm.DEFAULT_X_BITS


async def _run_he8k(body, timeout=300):
    """Both parties with OT and the HE_8K keys only (the norms' HE products)."""

    async def party(ch):
        p = await setup_he(await Party.setup(ch, PRG(SEEDS[ch.role])), (HE_8K,))
        return await body(p)

    return await run_local(party, party, timeout=timeout)


async def test_he_row_products_are_exact_at_their_declared_cost():
    """sum_squares_he: Σx² per row mod 2^bits; mul_rows_he: x·y (y one per row) mod 2^bits;
    both exact for values at the edges of their narrow widths."""
    rng = np.random.default_rng(6)
    x = rng.integers(-(2**27), 2**27, (5, 40))  # |x| < 2^(30 − 2)
    x[0, :3] = [2**27 - 1, -(2**27) + 1, 0]
    y = rng.integers(-(2**22), 2**22, (5, 1))  # |y| < 2^(25 − 2)
    y[1, 0] = 2**22 - 1
    xs, ys = split(R.from_signed(x), R, 1), split(R.from_signed(y), R, 2)
    sb, cb = 62, 52  # |x·y| < 2^49

    async def body(p):
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        s = await norm.sum_squares_he(p.fork("s"), mine(p, xs), 30, sb)
        m = await norm.mul_rows_he(p.fork("m"), mine(p, xs), mine(p, ys), 30, 25, cb)
        k = p.he.union_bits
        want = norm.sum_squares_he_cost(
            p.ot, 5, 40, R.with_bits(sb), 30, union_bits=k
        ) + norm.mul_rows_he_cost(p.ot, 5, 40, 30, 25, cb, k)
        checked(p, snap, mark, want)
        return s, m

    (cs, cm), (ss, sm) = await _run_he8k(body)
    sq = R.with_bits(sb).reduce(cs + ss)
    exact = (x.astype(object) ** 2).sum(-1, keepdims=True)
    assert [int(v) for v in sq.reshape(-1)] == [int(v) for v in exact.reshape(-1)]
    got = R.with_bits(cb).to_signed(R.with_bits(cb).reduce(cm + sm))
    np.testing.assert_array_equal(got, x * y)


@pytest.mark.parametrize(("kind", "weighted"), [("rmsnorm", False), ("layernorm", True)])
async def test_norms_with_he_products_match_spec_at_fewer_bytes(kind, weighted):
    """8 rows of 768 (Switch-Base at T = 8): Σc² and c·y by HE (he_products picks both), the
    result within the same error bound as by COTs, the declared cost exact and below the
    COT-only one; one row: the COTs are cheaper and kept."""
    rng = np.random.default_rng(7)
    xf = rng.normal(0.5, 3.0, (8, 768))
    xf[1] = 0.2 * rng.normal(size=768)
    xf[2] = 0.0
    xf[2, 7] = 300.0  # one dominant element: |z| ≈ √d
    w, b = rng.uniform(-2, 2, 768), rng.normal(0, 1, 768)
    w_ = w if weighted else None
    x = R.encode(xf)
    xs = split(x, R, 3)
    vr = (-8, 12)

    async def body(p):
        srv = p.role == "server"
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        mw = w_ if srv else None
        kw = {"weighted": weighted, "he": True}
        if kind == "layernorm":
            y = await norm.layernorm(
                p.fork("n"), mine(p, xs), mw, b if srv else None, EPS, vr, **kw
            )
        else:
            y = await norm.rmsnorm(p.fork("n"), mine(p, xs), mw, EPS, vr, **kw)
        k = p.he.union_bits
        cost = norm.norm_cost(p.ot, x.shape, R, vr, kind == "layernorm", union_bits=k, **kw)
        checked(p, snap, mark, cost)
        ot = norm.norm_cost(p.ot, x.shape, R, vr, kind == "layernorm", weighted=weighted)
        assert cost.bytes_total < 0.6 * ot.bytes_total
        assert norm.he_products(p.ot, 8, 768, R, vr, union_bits=k) == (True, True)
        assert norm.he_products(p.ot, 1, 768, R, vr, union_bits=k) == (False, False)
        assert not norm.he_products(p.ot, 8, 4096, R, vr, union_bits=k)[0]  # no plan: COTs
        if srv:  # the flooded coefficients under the HE_8K key: the declared bound, reached
            used = p.he.server(HE_8K).pk.budget.used
            assert used == norm.he_coefficients(8, 768)
        return y

    cy, sy = await _run_he8k(body)
    got = R.to_signed(opened((cy, sy), R))
    if kind == "layernorm":
        spec = norm.ideal_layernorm(x, R, w_, b, EPS, vr)
    else:
        spec = norm.ideal_rmsnorm(x, R, w_, EPS, vr)
    err = np.abs(got - R.to_signed(spec))
    assert (err <= norm.error_bound(x, R, w_, EPS, vr, kind == "layernorm")).all()
    ref = float_layernorm(xf, w, b) if kind == "layernorm" else float_rmsnorm(xf, 1.0)
    assert np.abs(got / 2**18 - ref).max() < 2e-3

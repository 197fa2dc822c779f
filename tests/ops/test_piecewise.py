"""Secure piecewise polynomials: comparisons, narrow products, STC and CTC vs the spec."""

import numpy as np
import pytest

from secmoe.crypto.ring import Ring
from secmoe.ops import approx
from secmoe.ops import piecewise as pw
from tests.protocols.helpers import mine, opened, opened_bits, run_parties, split

R = Ring(64, 18)
ULP = 1.0 / 2**18


def around(points: np.ndarray) -> np.ndarray:
    """Each encoded point and its neighbours one fixed-point step away."""
    b = np.asarray(points, dtype=np.int64)
    return np.concatenate([b - 1, b, b + 1])


def cost_of(delta) -> tuple[int, int]:
    return delta.bytes_c2s, delta.bytes_s2c


# --- local steps --------------------------------------------------------------------------


def test_shared_low_bits_and_plans():
    assert pw.shared_low_bits(approx.GELU.encoded_breakpoints(R), 32) == 18
    assert pw.shared_low_bits(approx.SILU.encoded_breakpoints(R), 32) == 16  # 1.25 = 5/4
    assert pw.shared_low_bits(approx.GELU_PUMA.encoded_breakpoints(R), 32) == 0  # −1.95
    assert pw.shared_low_bits(np.array([0]), 20) == 19
    assert pw._split(13, 7) == (7, 6) and pw._split(0, 5) == ()


def test_leaf_table_packs_gt_and_eq_per_threshold():
    a = np.array([[0, 3], [2, 2]], dtype=np.uint64)
    zeros = np.zeros((2, 2), bool)
    t = pw._leaf_table(a, zeros, zeros, 2)
    for i in range(2):
        for v in range(4):
            for j in range(2):
                assert (int(t[i, v]) >> (2 * j)) & 1 == int(a[i, j] > v)
                assert (int(t[i, v]) >> (2 * j + 1)) & 1 == int(a[i, j] == v)


def test_integer_tables_skip_the_final_truncation():
    _, shift = pw._coeffs(approx.RELU, R)
    assert shift == 0
    assert not pw.error_bound(approx.RELU, R.encode(np.array([-3.0, 2.5])), R).any()
    _, shift = pw._coeffs(approx.GELU, R)
    assert shift == R.frac_bits


# --- two parties ---------------------------------------------------------------------------

THRESHOLDS = {
    "gelu": (approx.GELU.encoded_breakpoints(R), 32),
    "puma": (approx.GELU_PUMA.encoded_breakpoints(R), 32),
    "zero-20": (np.array([0]), 20),
    "recip-27": (approx.reciprocal_guess(7).encoded_breakpoints(R), 27),
}


async def test_compare_breakpoints_at_every_breakpoint_and_bytes():
    rng = np.random.default_rng(1)
    cases = {}
    for name, (thr, bits) in THRESHOLDS.items():
        lim = 2 ** (bits - 1) - int(np.abs(thr).max()) - 2
        x = np.concatenate([around(thr), rng.integers(-lim, lim, 200), [lim, -lim, 0]])
        cases[name] = (x, split(R.from_signed(x), R, 3))

    async def body(p):
        out = {}
        for name, (thr, bits) in THRESHOLDS.items():
            f = p.fork(name)
            snap = p.ch.stats.snapshot()
            c = await pw.compare_breakpoints(f, mine(p, cases[name][1]), thr, bits)
            n = cases[name][0].size
            out[name] = (c, cost_of(p.ch.stats.since(snap)), pw.compare_cost(p.ot, n, thr, bits))
        return out

    c_out, s_out = await run_parties(body)
    for name, (thr, _) in THRESHOLDS.items():
        got = opened_bits((c_out[name][0], s_out[name][0]))
        np.testing.assert_array_equal(got, cases[name][0][:, None] > thr[None, :], err_msg=name)
        assert c_out[name][1] == cost_of(c_out[name][2]), name


async def test_narrow_square_and_products_are_exact():
    rng = np.random.default_rng(2)
    k = 33
    edge = np.array([0, 1, -1, 2 ** (k - 2) - 1, -(2 ** (k - 2)), 12345, -98765])
    x = np.concatenate([edge, rng.integers(-(2 ** (k - 2)), 2 ** (k - 2), 193)])
    y = rng.integers(-(2**62), 2**62, x.size)
    rows_x = rng.integers(-(2**40), 2**40, (4, 50))
    rows_y = np.array([[3], [-(2 ** (k - 2))], [2 ** (k - 2) - 1], [-7]])
    xs, ys = split(R.from_signed(x), R, 1), split(R.from_signed(y), R, 2)
    rxs, rys = split(R.from_signed(rows_x), R, 3), split(R.from_signed(rows_y), R, 4)

    async def body(p):
        snap = p.ch.stats.snapshot()
        sq = await pw.square_narrow(p.fork("sq"), mine(p, xs), k)
        d1 = cost_of(p.ch.stats.since(snap))
        snap = p.ch.stats.snapshot()
        el = await pw.mul_narrow(p.fork("el"), mine(p, ys), mine(p, xs), k)
        d2 = cost_of(p.ch.stats.since(snap))
        snap = p.ch.stats.snapshot()
        rw = await pw.mul_narrow(p.fork("rw"), mine(p, rxs), mine(p, rys), k)
        d3 = cost_of(p.ch.stats.since(snap))
        full = await pw.mul_narrow(p.fork("full"), mine(p, rxs), mine(p, rys))
        want = (
            pw.square_narrow_cost(p.ot, x.size, R, k),
            pw.mul_narrow_cost(p.ot, x.size, 1, R, k),
            pw.mul_narrow_cost(p.ot, 4, 50, R, k),
            pw.square_cost(p.ot, x.size, R),
        )
        return sq, el, rw, full, (d1, d2, d3), want

    (csq, cel, crw, cfull, meas, want), (ssq, sel, srw, sfull, _, _) = await run_parties(body)
    xu, yu = R.from_signed(x), R.from_signed(y)
    np.testing.assert_array_equal(opened((csq, ssq), R), xu * xu)
    np.testing.assert_array_equal(opened((cel, sel), R), xu * yu)
    prod = R.from_signed(rows_x) * R.from_signed(rows_y)
    np.testing.assert_array_equal(opened((crw, srw), R), prod)
    np.testing.assert_array_equal(opened((cfull, sfull), R), prod)
    assert list(meas) == [cost_of(w) for w in want[:3]]
    # a narrow square is k + 2 COTs per element instead of ℓ: less than 0.6× the bytes
    assert want[0].bytes_total < 0.6 * want[3].bytes_total


CUBIC = approx.PiecewisePolynomial(
    (-2.0, 0.5, 3.0),
    ((0.0,), (0.25, -1.5, 0.125, 0.0625), (1.0, 0.75, -0.5, 0.01), (-2.0, 1.0)),
    coeff_extra_bits=6,
)


@pytest.mark.parametrize(("method", "select"), [("stc", "mux"), ("stc", "onehot"), ("ctc", "mux")])
async def test_evaluate_matches_the_spec_within_the_truncation_bound(method, select):
    rng = np.random.default_rng(4)
    xr = np.concatenate(
        [around(CUBIC.encoded_breakpoints(R)), R.to_signed(R.encode(rng.uniform(-6, 6, 150)))]
    )
    x = R.from_signed(xr)
    xs = split(x, R, 5)

    async def body(p):
        snap = p.ch.stats.snapshot()
        out = await pw.evaluate(p.fork("pp"), CUBIC, mine(p, xs), method, 28, select)
        return (
            out,
            cost_of(p.ch.stats.since(snap)),
            pw.cost(p.ot, CUBIC, x.size, R, method, 28, select),
        )

    (c, meas, want), (s, _, _) = await run_parties(body)
    err = np.abs(R.to_signed(opened((c, s), R)) - R.to_signed(pw.ideal(CUBIC, x, R)))
    assert (err <= pw.error_bound(CUBIC, x, R)).all()
    assert meas == cost_of(want)


async def test_evaluate_rejects_unknown_methods():
    with pytest.raises(ValueError, match="method"):
        await pw.evaluate(None, CUBIC, np.zeros(1, np.uint64), "magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="select"):
        await pw.stc(None, CUBIC, np.zeros(1, np.uint64), select="magic")  # type: ignore[arg-type]

"""Secure piecewise polynomials: comparisons, narrow products, STC and CTC vs the spec."""

import numpy as np
import pytest

from secmoe.crypto.ring import Ring
from secmoe.ops import approx
from secmoe.ops import piecewise as pw
from secmoe.protocols import arith
from secmoe.protocols.cost import Cost
from tests.protocols.helpers import SOURCES, mine, opened, opened_bits, run_parties, split

R = Ring(64, 18)
ULP = 1.0 / 2**18


def around(points: np.ndarray) -> np.ndarray:
    """Each encoded point and its neighbours one fixed-point step away."""
    b = np.asarray(points, dtype=np.int64)
    return np.concatenate([b - 1, b, b + 1])


def checked(p, snap, mark, declared: Cost) -> None:
    """Measured bytes each way and messages == declared (+ the silent source's stream refills).

    Rounds are not compared: the OT pool's channel tree (``ot/…``) is not under the party's
    forks, so the measured depth of a composite protocol mixes two trees (it can read above or
    below the real critical path); the declared rounds are the model's upper bound.
    """
    want = declared + Cost(**p.ot.refill_cost(mark))
    got = p.ch.stats.since(snap)
    assert (got.bytes_c2s, got.bytes_s2c, got.messages) == (
        want.bytes_c2s,
        want.bytes_s2c,
        want.messages,
    )


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


@pytest.mark.parametrize("source", SOURCES)
async def test_compare_breakpoints_at_every_breakpoint_and_cost(source):
    rng = np.random.default_rng(1)
    cases = {}
    for name, (thr, bits) in THRESHOLDS.items():
        lim = 2 ** (bits - 1) - int(np.abs(thr).max()) - 2
        x = np.concatenate([around(thr), rng.integers(-lim, lim, 200), [lim, -lim, 0]])
        cases[name] = (x, split(R.from_signed(x), R, 3))

    async def body(p):
        out = {}
        for name, (thr, bits) in THRESHOLDS.items():
            snap, mark = p.ch.stats.snapshot(), p.ot.mark()
            out[name] = await pw.compare_breakpoints(
                p.fork(name), mine(p, cases[name][1]), thr, bits
            )
            checked(p, snap, mark, pw.compare_cost(p.ot, cases[name][0].size, thr, bits))
        return out

    c_out, s_out = await run_parties(body, source=source)
    for name, (thr, _) in THRESHOLDS.items():
        got = opened_bits((c_out[name], s_out[name]))
        np.testing.assert_array_equal(got, cases[name][0][:, None] > thr[None, :], err_msg=name)


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
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        sq = await pw.square_narrow(p.fork("sq"), mine(p, xs), k)
        checked(p, snap, mark, pw.square_narrow_cost(p.ot, x.size, R, k))
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        el = await pw.mul_narrow(p.fork("el"), mine(p, ys), mine(p, xs), k)
        checked(p, snap, mark, pw.mul_narrow_cost(p.ot, x.size, 1, R, k))
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        rw = await pw.mul_narrow(p.fork("rw"), mine(p, rxs), mine(p, rys), k)
        checked(p, snap, mark, pw.mul_narrow_cost(p.ot, 4, 50, R, k))
        full = await pw.mul_narrow(p.fork("full"), mine(p, rxs), mine(p, rys))
        sizes = (
            pw.square_narrow_cost(p.ot, x.size, R, k).bytes_total,
            arith.cost_square(p.ot, x.size, R).bytes_total,
        )
        return sq, el, rw, full, sizes

    (csq, cel, crw, cfull, sizes), (ssq, sel, srw, sfull, _) = await run_parties(body)
    xu, yu = R.from_signed(x), R.from_signed(y)
    np.testing.assert_array_equal(opened((csq, ssq), R), xu * xu)
    np.testing.assert_array_equal(opened((cel, sel), R), xu * yu)
    prod = R.from_signed(rows_x) * R.from_signed(rows_y)
    np.testing.assert_array_equal(opened((crw, srw), R), prod)
    np.testing.assert_array_equal(opened((cfull, sfull), R), prod)
    # a narrow square is k + 2 COTs per element instead of ℓ: less than 0.6× the bytes
    assert sizes[0] < 0.7 * sizes[1]  # arith's square sends ℓ − i bits for bit i (0.65 here)


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
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        out = await pw.evaluate(p.fork("pp"), CUBIC, mine(p, xs), method, 28, select)
        checked(p, snap, mark, pw.cost(p.ot, CUBIC, x.size, R, method, 28, select))
        return out

    c, s = await run_parties(body)
    err = np.abs(R.to_signed(opened((c, s), R)) - R.to_signed(pw.ideal(CUBIC, x, R)))
    assert (err <= pw.error_bound(CUBIC, x, R)).all()


@pytest.mark.parametrize("method", ["stc", "ctc"])
async def test_large_inputs_go_in_batches_with_their_declared_cost(method, monkeypatch):
    monkeypatch.setattr(pw, "EVAL_CHUNK", 64)  # 150 elements: batches of 64, 64 and 22
    x = R.from_signed(R.to_signed(R.encode(np.random.default_rng(5).uniform(-6, 6, 150))))
    xs = split(x, R, 6)

    async def body(p):
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        out = await pw.evaluate(p.fork("pp"), CUBIC, mine(p, xs).reshape(10, 15), method, 28)
        checked(p, snap, mark, pw.cost(p.ot, CUBIC, x.size, R, method, 28))
        paths = {path.split("/")[1] for path in p.ch.stats.by_path(depth=2) if "/" in path}
        assert {"cmp", "batch1", "batch2"} <= paths, paths
        return out.reshape(-1)

    c, s = await run_parties(body)
    err = np.abs(R.to_signed(opened((c, s), R)) - R.to_signed(pw.ideal(CUBIC, x, R)))
    assert (err <= pw.error_bound(CUBIC, x, R)).all()


async def test_evaluate_rejects_unknown_methods():
    with pytest.raises(ValueError, match="method"):
        await pw.evaluate(None, CUBIC, np.zeros(1, np.uint64), "magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="select"):
        await pw.stc(None, CUBIC, np.zeros(1, np.uint64), select="magic")  # type: ignore[arg-type]

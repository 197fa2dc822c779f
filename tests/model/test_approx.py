"""The approximation specification (secmoe.ops.approx): error bounds, fixed-point semantics."""

import math

import numpy as np
import pytest

from secmoe.crypto.ring import DEFAULT_RING, Ring
from secmoe.ops import approx as A

R = DEFAULT_RING


def enc(x):
    return R.encode(np.asarray(x, dtype=np.float64))


def dec(x):
    return R.decode(x)


def exact_softmax(x, mask=None):
    z = np.where(mask, x, -np.inf) if mask is not None else x
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- fixed-point primitives -------------------------------------------------------------------


def test_trunc_is_floor_on_negative_values():
    x = R.from_signed(np.array([-3, -1, 0, 1, 3, -(1 << 20) - 1], dtype=np.int64))
    got = R.to_signed(A.trunc(x, R, shift=1))
    assert got.tolist() == [-2, -1, 0, 0, 1, -(1 << 19) - 1]


def test_mul_fixed_and_div_public():
    a, b = enc([1.5, -2.25, 3.0]), enc([2.0, 0.5, -0.125])
    assert dec(A.mul_fixed(a, b, R)).tolist() == [3.0, -1.125, -0.375]
    s = R.from_signed(np.array([-7, 7], dtype=np.int64))
    assert R.to_signed(A.div_public(s, 2, R)).tolist() == [-4, 3]
    with pytest.raises(ValueError):
        A.div_public(s, 0, R)


# --- piecewise polynomials --------------------------------------------------------------------


def test_piecewise_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        A.PiecewisePolynomial((1.0, 1.0), ((0,), (0,), (0,)))
    with pytest.raises(ValueError, match="coefficient rows"):
        A.PiecewisePolynomial((0.0,), ((0,),))


def test_segments_are_right_closed():
    pp = A.PiecewisePolynomial((-1.0, 2.0), ((10.0,), (20.0,), (30.0,)))
    x = np.array([-5.0, -1.0, -0.999, 2.0, 2.001])
    assert pp.segment_index(x).tolist() == [0, 0, 1, 1, 2]
    assert pp(x).tolist() == [10.0, 10.0, 20.0, 20.0, 30.0]
    # The protocol's selector (compare once per breakpoint, XOR neighbours) agrees.
    sel = pp.selector_fixed(enc(x), R)
    assert (sel.sum(axis=-1) == 1).all()
    assert np.argmax(sel, axis=-1).tolist() == [0, 0, 1, 1, 2]


def test_evaluate_fixed_matches_hand_computation():
    pp = A.PiecewisePolynomial((0.0,), ((1.0, -0.5, 0.0), (0.25, 2.0, 0.75)))
    x = np.array([-1.5, 0.0, 0.5, 2.0])
    want = np.array([1 + 0.75, 1.0, 0.25 + 1.0 + 0.1875, 0.25 + 4.0 + 3.0])
    assert dec(pp.evaluate_fixed(enc(x), R)).tolist() == want.tolist()  # dyadic: exact
    assert np.allclose(pp(x), want)


def test_fit_reproduces_a_polynomial_and_keeps_fixed_segments():
    pp = A.PiecewisePolynomial.fit(
        lambda x: 3 * x**2 - x + 1, (-1.0, 1.0), 2, (-3, 3), fixed={0: [0.0]}
    )
    assert pp.coeffs[0] == (0.0, 0.0, 0.0)
    assert np.allclose(pp.table[1:], [[1, -1, 3], [1, -1, 3]], atol=1e-9)
    mm = A.PiecewisePolynomial.fit(np.exp, (0.0,), 1, (-1, 1), method="minimax")
    assert (
        mm.error(np.exp, -1, 1)[0]
        < A.PiecewisePolynomial.fit(np.exp, (0.0,), 1, (-1, 1)).error(np.exp, -1, 1)[0]
    )


@pytest.mark.parametrize(
    ("table", "refit"),
    [(A.GELU, A.fit_gelu), (A.SILU, A.fit_silu), (A.GELU_PUMA, A.fit_gelu_puma)],
)
def test_literal_tables_are_the_documented_fits(table, refit):
    fitted = refit()
    assert fitted.breakpoints == table.breakpoints
    assert np.allclose(fitted.table, table.table, rtol=0, atol=1e-8)


def test_gelu_paper_shape_and_error():
    assert A.GELU.breakpoints == (-5.0, -3.0, -1.0, 1.0, 3.0)
    assert A.GELU.degree == 2 and A.GELU.n_segments == 6
    # P4 = x + P2(−x), and the coefficients are close to the paper's.
    p2, p4 = A.GELU.table[2], A.GELU.table[4]
    assert np.allclose(p4, [p2[0], 1 - p2[1], p2[2]])
    assert np.allclose(A.GELU.table[3], [0.00486, 0.5, 0.3483], atol=2e-4)
    mx, mean = A.GELU.error(A.gelu_exact, -8, 8)
    assert mx <= 1.3e-2 and mean <= 2e-3
    x = np.linspace(-8, 8, 100_001)
    fixed = dec(A.GELU.evaluate_fixed(enc(x), R))
    assert np.abs(fixed - A.gelu_exact(x)).max() <= 1.3e-2
    assert np.abs(fixed - A.GELU(dec(enc(x)))).max() <= 5e-5  # dyadic breakpoints


def test_silu_error():
    mx, mean = A.SILU.error(A.silu_exact, -20, 20)
    assert mx <= 6e-3 and mean <= 2e-3
    x = np.linspace(-20, 20, 100_001)
    fixed = dec(A.SILU.evaluate_fixed(enc(x), R))
    assert np.abs(fixed - A.silu_exact(x)).max() <= 6e-3
    assert np.abs(fixed - A.SILU(dec(enc(x)))).max() <= 1e-4


def test_relu_is_exact():
    x = np.linspace(-4, 4, 4097)
    assert np.array_equal(A.RELU(x), np.maximum(x, 0))
    xe = enc(x)
    assert np.array_equal(A.RELU.evaluate_fixed(xe, R), np.where(dec(xe) > 0, xe, 0))


def test_gelu_puma_error_and_costlier_shape():
    assert A.GELU_PUMA.degree == 6 and A.GELU_PUMA.breakpoints == (-4.0, -1.95, 3.0)
    mx, mean = A.GELU_PUMA.error(A.gelu_exact, -8, 8)
    assert mx <= 2e-2 and mean <= 2e-3
    x = np.linspace(-8, 8, 100_001)
    assert np.abs(dec(A.GELU_PUMA.evaluate_fixed(enc(x), R)) - A.gelu_exact(x)).max() <= 2e-2


# --- exp, reciprocal, rsqrt -------------------------------------------------------------------


def test_exp_neg():
    x = np.linspace(-A.EXP_CLIP, 0, 200_001)
    assert np.abs(A.exp_neg(x) - np.exp(x)).max() <= 1.1e-3
    assert np.abs(dec(A.exp_neg_fixed(enc(x), R)) - np.exp(x)).max() <= 2e-3
    assert A.exp_neg(np.array([0.0]))[0] == 1.0
    assert dec(A.exp_neg_fixed(enc([0.0]), R))[0] == 1.0  # so softmax sums are ≥ 1
    far = np.array([-16.0, -20.0, -1e3])
    assert (A.exp_neg(far) == 0).all() and (A.exp_neg_fixed(enc(far), R) == 0).all()


@pytest.mark.parametrize(("k", "fixed_bound"), [(1, 3e-5), (3, 6e-5), (6, 4e-4), (8, 1e-3)])
def test_reciprocal(k, fixed_bound):
    s = np.geomspace(1, 2.0**k, 50_001)
    assert np.abs(A.reciprocal(s, k) * s - 1).max() <= 1.3e-5
    sd = dec(enc(s))
    assert np.abs(dec(A.reciprocal_fixed(enc(s), R, k)) * sd - 1).max() <= fixed_bound
    assert len(A.reciprocal_guess(k).breakpoints) == k - 1


def test_reciprocal_newton_iterations_matter():
    s = np.geomspace(1, 8, 10_001)
    errs = [np.abs(A.reciprocal(s, 3, n) * s - 1).max() for n in (0, 1, 2)]
    assert errs[0] > 5e-2 > errs[1] > 3e-3 > errs[2]


@pytest.mark.parametrize(
    ("lo", "hi", "fixed_bound"), [(-6, 8, 1e-4), (-4, 4, 3e-5), (-8, 14, 1e-3)]
)
def test_rsqrt(lo, hi, fixed_bound):
    v = np.geomspace(2.0**lo, 2.0**hi, 50_001)
    assert np.abs(A.rsqrt(v, lo, hi) * np.sqrt(v) - 1).max() <= 1e-6
    vd = dec(enc(v))
    assert np.abs(dec(A.rsqrt_fixed(enc(v), R, lo, hi)) * np.sqrt(vd) - 1).max() <= fixed_bound
    with pytest.raises(ValueError):
        A.rsqrt_guess(hi, lo)


# --- softmax and norms ------------------------------------------------------------------------


def test_softmax_float_and_fixed():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (4000, 8))
    want = exact_softmax(x)
    assert np.abs(A.softmax(x) - want).max() <= 4e-3
    got = dec(A.softmax_fixed(enc(x), R))
    assert np.abs(got - want).max() <= 4e-3
    assert np.abs(got.sum(axis=-1) - 1).max() <= 1e-3
    assert A.softmax_range_log2(8) == 3 and A.softmax_range_log2(9) == 4
    assert A.softmax_range_log2(1) == 1


def test_softmax_mask_gives_exact_zeros():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, (5, 6, 6))
    mask = np.tril(np.ones((6, 6), bool))
    got = dec(A.softmax_fixed(enc(x), R, mask))
    assert (got[..., ~mask] == 0).all()
    assert np.abs(got - exact_softmax(x, mask)).max() <= 4e-3
    assert np.abs(A.softmax(x, mask) - exact_softmax(x, mask)).max() <= 4e-3


def test_layernorm_and_rmsnorm():
    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 2.0, (64, 32))
    w, b = rng.normal(1, 0.1, 32), rng.normal(0, 0.1, 32)
    c = x - x.mean(-1, keepdims=True)
    ln = c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-5) * w + b
    rms = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
    assert np.abs(A.layernorm(x, w, b, 1e-5, (-6, 8)) - ln).max() <= 1e-5
    assert np.abs(A.rmsnorm(x, w, 1e-6, (-6, 8)) - rms).max() <= 1e-5
    assert np.abs(dec(A.layernorm_fixed(enc(x), R, w, b, 1e-5, (-6, 8))) - ln).max() <= 1e-3
    assert np.abs(dec(A.rmsnorm_fixed(enc(x), R, w, 1e-6, (-6, 8))) - rms).max() <= 1e-3


def test_smaller_ring_works_for_degree_two():
    ring = Ring(48, 16)
    x = np.linspace(-6, 6, 1001)
    got = ring.decode(A.GELU.evaluate_fixed(ring.encode(x), ring))
    assert np.abs(got - A.gelu_exact(x)).max() <= 1.3e-2
    assert math.isclose(ring.decode(A.exp_neg_fixed(ring.encode(0.0), ring)), 1.0)

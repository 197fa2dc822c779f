"""Plaintext specification of the approximations the secure operators use.

Everything here is pure numpy on public or plaintext data. Each approximation has two forms:

* a **float** form (``f(x)``), the approximation evaluated exactly in float64, and
* a **fixed-point** form (``f_fixed(x_ring, ring)``), which emulates bit for bit what the secure
  operator computes on reconstructed values: inputs and constants are fixed-point encoded
  (:class:`secmoe.crypto.ring.Ring`, f fractional bits), every product of two fixed-point values
  is followed by a truncation (:func:`trunc`: arithmetic shift right by f, i.e. floor), and a sum
  of products is truncated once after the sum (as a dot product is).

A secure operator is correct when its reconstructed output equals the fixed-point form up to
the error of its truncation protocol (a probabilistic truncation may be off by one ulp). The
float form minus the exact function is the *approximation error*; the fixed-point form minus the
float form is the *fixed-point error*; the secure output minus the fixed-point form is the
*protocol error*. The errors quoted in docstrings were measured on dense grids over the stated
ranges with ℓ = 64, f = 18; ``tests/model/test_approx.py`` asserts each bound.

Coefficient tables are literals (two parties must hold bit-identical public tables); the tests
re-fit them from their defining procedure and check that the literals are that fit. The
:class:`PiecewisePolynomial` machinery and the fixed-point primitives live in
:mod:`secmoe.ops.approx_piecewise` and are re-exported here.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from secmoe.crypto.ring import Ring
from secmoe.ops.approx_piecewise import (
    PiecewisePolynomial,
    div_public,
    gelu_exact,
    mirror,
    mul_fixed,
    ring_sum,
    silu_exact,
    trunc,
)

__all__ = [
    "EXP_CLIP",
    "EXP_SQUARINGS",
    "GELU",
    "GELU_PUMA",
    "GUESS_EXTRA_BITS",
    "RELU",
    "SILU",
    "PiecewisePolynomial",
    "div_public",
    "exp_neg",
    "exp_neg_fixed",
    "fit_gelu",
    "fit_gelu_puma",
    "fit_silu",
    "gelu_exact",
    "layernorm",
    "layernorm_fixed",
    "mul_fixed",
    "reciprocal",
    "reciprocal_fixed",
    "reciprocal_guess",
    "rmsnorm",
    "rmsnorm_fixed",
    "rsqrt",
    "rsqrt_fixed",
    "rsqrt_guess",
    "silu_exact",
    "softmax",
    "softmax_fixed",
    "softmax_range_log2",
    "trunc",
]

# GeLU, the paper's six segments (SecMoE): 0 | P1 | P2 | P3 | P4 = x + P2(−x) | x.
# Least squares per segment on 4001 points (see tests: refit == literals).
_GELU_P1 = (-0.03329661407191376, -0.01528837490821174, -0.0017437283960200787)
_GELU_P2 = (-0.36422441646972187, -0.23543412319131815, -0.038425704665658665)
_GELU_P3 = (0.004852713789112693, 0.5000000000000002, 0.34838901558248975)

#: GeLU by STC (SecMoE's six segments, degree 2). Breakpoints (−5, −3, −1, 1, 3): 0 on
#: (−∞,−5]; least-squares quadratics on (−5,−3], (−3,−1], (−1,1]; x + P2(−x) on (1,3]
#: (GeLU(x) = x + GeLU(−x)); x on (3,∞). Measured vs erf GeLU: max 1.19e-2 (at |x| ≈ 1), mean
#: 1.5e-3 on [−5, 5], 9.2e-4 on [−8, 8] (paper: 1.2e-2 / 1.7e-3); fixed-point form (f = 18) vs
#: float form: ≤ 1.3e-5.
GELU = PiecewisePolynomial(
    (-5.0, -3.0, -1.0, 1.0, 3.0),
    ((0.0,), _GELU_P1, _GELU_P2, _GELU_P3, mirror(_GELU_P2), (0.0, 1.0)),
)

# SiLU, our choice (the paper leaves SiLU open): symmetric segments, minimax quadratics.
_SILU_P1 = (-0.43031194845499643, -0.1252274351648037, -0.009205949363178851)
_SILU_P2 = (-0.29981613041712757, 0.014619204021033873, 0.022827255986080295)
_SILU_P3 = (0.005110084635479546, 0.49999999999999967, 0.22183745067410002)

#: SiLU by STC (ours). Breakpoints (−7.5, −3, −1.25, 1.25, 3, 7.5), degree 2: 0 on (−∞,−7.5];
#: minimax quadratics on (−7.5,−3], (−3,−1.25], (−1.25,1.25]; x + P(−x) mirrors on (1.25,3] and
#: (3,7.5] (SiLU(x) = x + SiLU(−x)); x on (7.5,∞). Six comparisons, three products.
#: Measured vs exact SiLU: max 5.1e-3; mean 2.9e-3 on [−8, 8], 1.7e-3 on [−16, 16];
#: fixed-point form vs float form: ≤ 7.1e-5.
SILU = PiecewisePolynomial(
    (-7.5, -3.0, -1.25, 1.25, 3.0, 7.5),
    (
        (0.0,),
        _SILU_P1,
        _SILU_P2,
        _SILU_P3,
        mirror(_SILU_P2),
        mirror(_SILU_P1),
        (0.0, 1.0),
    ),
)

#: ReLU as a two-segment piecewise polynomial: 0 on (−∞,0], x on (0,∞). Exact.
RELU = PiecewisePolynomial((0.0,), ((0.0, 0.0), (0.0, 1.0)))

# The compute-then-select baseline (PUMA / BumbleBee): least squares, degree 3 and degree 6.
_PUMA_P0 = (
    -0.501539260341871,
    -0.41836156610780145,
    -0.11696406948651493,
    -0.010939679703302434,
)
_PUMA_P1 = (
    0.006201721992858686,
    0.5049052843281903,
    0.3662380892850384,
    -0.007638717499795258,
    -0.038258777888718454,
    0.0020234932244861266,
    0.0013858527050720855,
)

#: GeLU of PUMA/BumbleBee (the compute-then-select baseline), our own least-squares fit:
#: 0 below −4, a cubic on (−4,−1.95], a degree-6 polynomial on (−1.95,3], x above 3
#: (right-closed here; PUMA's segments are left-closed, which differs only on the breakpoints).
#: Measured vs erf GeLU: max 1.79e-2 (near x = 3), mean 2.3e-3 on [−5, 5], 1.4e-3 on [−8, 8].
#: (PUMA's published coefficients give 2.0e-2 max.) −1.95 is not a multiple of 2^−f, so the
#: fixed-point form's breakpoint is round(−1.95·2^f)/2^f (it differs from the float form by
#: up to 1.1e-3 right at the breakpoint).
GELU_PUMA = PiecewisePolynomial(
    (-4.0, -1.95, 3.0),
    ((0.0,), _PUMA_P0, _PUMA_P1, (0.0, 1.0)),
)


def fit_gelu() -> PiecewisePolynomial:
    """Re-derive :data:`GELU` from its definition (for tests and documentation)."""
    pp = PiecewisePolynomial.fit(
        gelu_exact, (-5, -3, -1, 1, 3), 2, (-8, 8), fixed={0: [0.0], 5: [0.0, 1.0]}
    )
    return pp.with_segment(4, mirror(pp.coeffs[2]))


def fit_silu() -> PiecewisePolynomial:
    """Re-derive :data:`SILU` from its definition (minimax fits, mirrored right half)."""
    pp = PiecewisePolynomial.fit(
        silu_exact,
        (-7.5, -3.0, -1.25, 1.25, 3.0, 7.5),
        2,
        (-16, 16),
        fixed={0: [0.0], 4: [0.0], 5: [0.0], 6: [0.0, 1.0]},
        method="minimax",
    )
    return pp.with_segment(4, mirror(pp.coeffs[2])).with_segment(5, mirror(pp.coeffs[1]))


def fit_gelu_puma() -> PiecewisePolynomial:
    """Re-derive :data:`GELU_PUMA` (least squares on [−4,−1.95] and [−1.95,3])."""
    return PiecewisePolynomial.fit(
        gelu_exact, (-4.0, -1.95, 3.0), [0, 3, 6, 1], (-8, 8), fixed={0: [0.0], 3: [0.0, 1.0]}
    )


# --------------------------------------------------------------------------------------------
# exp on x ≤ 0
# --------------------------------------------------------------------------------------------

#: exp_neg(x) = 0 for x ≤ −EXP_CLIP (e^−16 ≈ 1.1e-7 is below one ulp at f = 18).
EXP_CLIP = 16.0
#: r: exp_neg computes (1 + x/2^r)^(2^r) with r squarings.
EXP_SQUARINGS = 8


def exp_neg(x: np.ndarray) -> np.ndarray:
    """e^x for x ≤ 0 (softmax after max subtraction): (1 + x/2^8)^(2^8), 0 on (−∞, −16].

    Measured on [−16, 0]: max abs error 1.06e-3 (near x = −2), mean 2.4e-4; the relative error
    is large only where e^x is tiny (0.41 at x = −16, e^x = 1.1e-7). Fixed-point form (f = 18)
    vs exact e^x: max abs error 1.41e-3, mean 3.0e-4.
    """
    x = np.asarray(x, dtype=np.float64)
    y = (1.0 + x / 2.0**EXP_SQUARINGS) ** (2**EXP_SQUARINGS)
    return np.where(x > -EXP_CLIP, y, 0.0)


def exp_neg_fixed(x: np.ndarray, ring: Ring) -> np.ndarray:
    """Fixed-point :func:`exp_neg`: keep = 1{x > −16}; t = 2^f + trunc_r(x); r times
    t ← trunc(t·t); result keep·t (a MUX on the comparison bit)."""
    x = ring.reduce(x)
    keep = ring.to_signed(x) > np.int64(round(-EXP_CLIP * ring.scale))
    t = ring.reduce(trunc(x, ring, EXP_SQUARINGS) + np.uint64(1 << ring.frac_bits))
    for _ in range(EXP_SQUARINGS):
        t = mul_fixed(t, t, ring)
    return np.where(keep, t, np.uint64(0))


# --------------------------------------------------------------------------------------------
# reciprocal and reciprocal square root: geometric segments + Newton
# --------------------------------------------------------------------------------------------

# Minimax-relative linear approximations on the unit octave [1, 2]; on [a, 2a] the guess is
# scaled: 1/x ≈ (A + B·x/a)/a, 1/√x ≈ (C + D·x/a)/√a (both problems are scale invariant).
_RECIP_UNIT = (24.0 / 17.0, -8.0 / 17.0)  # max relative error 1/17
_RSQRT_UNIT = (1.26411415, -0.286374)  # max relative error 2.23e-2
#: Extra fractional bits of the initial-guess coefficients (their slopes shrink like 2^−1.5j).
GUESS_EXTRA_BITS = 16


def reciprocal_guess(k: int) -> PiecewisePolynomial:
    """Initial guess for 1/s on [1, 2^K]: degree 1 on octaves, breakpoints 2^1, …, 2^(K−1).

    Each octave's line is the minimax-relative fit (max relative error 1/17).
    """
    if k < 1:
        raise ValueError(f"reciprocal range exponent K must be ≥ 1, got {k}")
    a0, a1 = _RECIP_UNIT
    rows = tuple((a0 / 2.0**j, a1 / 4.0**j) for j in range(k))
    return PiecewisePolynomial(tuple(2.0**j for j in range(1, k)), rows, GUESS_EXTRA_BITS)


def rsqrt_guess(lo: int, hi: int) -> PiecewisePolynomial:
    """Initial guess for 1/√v on [2^lo, 2^hi]: degree 1 on octaves, breakpoints 2^(lo+1), …,
    2^(hi−1); each octave's line is the minimax-relative fit (max relative error 2.2e-2)."""
    if not lo < hi:
        raise ValueError(f"rsqrt range needs lo < hi, got [2^{lo}, 2^{hi}]")
    c0, c1 = _RSQRT_UNIT
    rows = tuple((c0 / math.sqrt(2.0**j), c1 / (2.0**j * math.sqrt(2.0**j))) for j in range(lo, hi))
    return PiecewisePolynomial(tuple(2.0**j for j in range(lo + 1, hi)), rows, GUESS_EXTRA_BITS)


def reciprocal(s: np.ndarray, k: int, n_iter: int = 2) -> np.ndarray:
    """1/s for s ∈ [1, 2^K]: octave-linear guess, then ``n_iter`` Newton steps y ← y(2 − s·y).

    The relative error squares each step: 5.9e-2 → 3.5e-3 → 1.2e-5 (measured max relative
    error with the default 2 steps: 1.2e-5 on [1, 2^K] for any K). Fixed-point form, f = 18,
    limited by y ≈ 2^−K having f − K significant bits: 1.9e-5 (K = 1), 2.7e-5 (2), 4.1e-5 (3),
    7.2e-5 (4), 2.5e-4 (6), 9.9e-4 (8), 3.9e-3 (10): keep K ≤ 8 for ≤ 1e-3.
    """
    s = np.asarray(s, dtype=np.float64)
    y = _reciprocal_guess_cached(k)(s)
    for _ in range(n_iter):
        y = y * (2.0 - s * y)
    return y


def reciprocal_fixed(s: np.ndarray, ring: Ring, k: int, n_iter: int = 2) -> np.ndarray:
    """Fixed-point :func:`reciprocal`: y = guess.evaluate_fixed(s); then ``n_iter`` times
    t = trunc(s·y), y = trunc(y·(2·2^f − t))."""
    s = ring.reduce(s)
    y = _reciprocal_guess_cached(k).evaluate_fixed(s, ring)
    two = np.uint64(2 << ring.frac_bits)
    for _ in range(n_iter):
        t = mul_fixed(s, y, ring)
        y = mul_fixed(y, ring.reduce(two - t), ring)
    return y


def rsqrt(v: np.ndarray, lo: int, hi: int, n_iter: int = 2) -> np.ndarray:
    """1/√v for v ∈ [2^lo, 2^hi]: octave-linear guess, then ``n_iter`` Newton steps
    y ← y(3 − v·y²)/2. Relative error e → ≈1.5e²: 2.2e-2 → 7.5e-4 → 8.4e-7 (measured max with
    the default 2 steps: 8.4e-7 on any range). Fixed-point form, f = 18, vs the exact 1/√v of
    the encoded v: ≈ 2^(hi/2 − f) at the top of the range (y has f − hi/2 significant bits):
    6.1e-5 on [2^−6, 2^8] (the bundled model's range), 1.6e-5 on [2^−4, 2^4], 1.2e-4 on
    [2^−10, 2^10], 4.9e-4 on [2^−8, 2^14].
    """
    v = np.asarray(v, dtype=np.float64)
    y = _rsqrt_guess_cached(lo, hi)(v)
    for _ in range(n_iter):
        y = y * (3.0 - v * y * y) / 2.0
    return y


def rsqrt_fixed(v: np.ndarray, ring: Ring, lo: int, hi: int, n_iter: int = 2) -> np.ndarray:
    """Fixed-point :func:`rsqrt`: y = guess.evaluate_fixed(v); then ``n_iter`` times
    t = trunc(trunc(v·y)·y), y = trunc_{f+1}(y·(3·2^f − t)) (the /2 folded into the shift)."""
    v = ring.reduce(v)
    y = _rsqrt_guess_cached(lo, hi).evaluate_fixed(v, ring)
    three = np.uint64(3 << ring.frac_bits)
    for _ in range(n_iter):
        t = mul_fixed(mul_fixed(v, y, ring), y, ring)
        y = trunc(ring.reduce(y * ring.reduce(three - t)), ring, ring.frac_bits + 1)
    return y


@lru_cache(maxsize=64)
def _reciprocal_guess_cached(k: int) -> PiecewisePolynomial:
    return reciprocal_guess(k)


@lru_cache(maxsize=64)
def _rsqrt_guess_cached(lo: int, hi: int) -> PiecewisePolynomial:
    return rsqrt_guess(lo, hi)


# --------------------------------------------------------------------------------------------
# softmax and norms
# --------------------------------------------------------------------------------------------


def softmax_range_log2(n: int) -> int:
    """K with the softmax denominator in [1, 2^K] for rows of n entries: max(1, ⌈log2 n⌉).

    After max subtraction the largest term is exp_neg(0) = 1 exactly and every term is ≤ 1.
    """
    return max(1, math.ceil(math.log2(max(n, 1))))


def softmax(x: np.ndarray, mask: np.ndarray | None = None, n_iter: int = 2) -> np.ndarray:
    """Softmax over the last axis with :func:`exp_neg` and :func:`reciprocal` (float form).

    m = max (over unmasked entries); e = exp_neg(x − m)·mask; out = e · reciprocal(Σe, K)
    with K = :func:`softmax_range_log2` (row length). Masked entries (mask False) give 0.
    Measured max abs error vs exact softmax on rows of 8 logits ~ N(0, 3²): 3.3e-3 (float form),
    3.5e-3 (fixed-point form, mean 4.0e-4): exp_neg's error dominates.
    """
    x = np.asarray(x, dtype=np.float64)
    keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    m = np.max(np.where(keep, x, -np.inf), axis=-1, keepdims=True)
    e = np.where(keep, exp_neg(np.where(keep, x - m, 0.0)), 0.0)
    k = softmax_range_log2(x.shape[-1])
    return e * reciprocal(np.sum(e, axis=-1, keepdims=True), k, n_iter)


def softmax_fixed(
    x: np.ndarray, ring: Ring, mask: np.ndarray | None = None, n_iter: int = 2
) -> np.ndarray:
    """Fixed-point :func:`softmax` over the last axis of encoded x: m = max (exact, the secure
    max protocol); e = exp_neg_fixed(x − m), 0 where masked; s = Σe; r = reciprocal_fixed(s, K);
    out = trunc(e·r)."""
    x = ring.reduce(x)
    keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    xs = ring.to_signed(x)
    m = np.max(np.where(keep, xs, np.iinfo(np.int64).min), axis=-1, keepdims=True)
    d = ring.reduce(x - ring.from_signed(m))
    e = np.where(keep, exp_neg_fixed(d, ring), np.uint64(0))
    s = ring_sum(e, ring, keepdims=True)
    r = reciprocal_fixed(s, ring, softmax_range_log2(x.shape[-1]), n_iter)
    return mul_fixed(e, r, ring)


def layernorm(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    eps: float,
    var_range: tuple[int, int],
    n_iter: int = 2,
) -> np.ndarray:
    """LayerNorm over the last axis with :func:`rsqrt` on [2^lo, 2^hi] = ``var_range`` (float
    form): c = x − mean(x); y = rsqrt(mean(c²) + eps); out = c·y·weight + bias.
    Its error is rsqrt's relative error (8.4e-7) times |c·y·weight|."""
    x = np.asarray(x, dtype=np.float64)
    c = x - np.mean(x, axis=-1, keepdims=True)
    y = rsqrt(np.mean(c * c, axis=-1, keepdims=True) + eps, *var_range, n_iter=n_iter)
    out = c * y * weight
    return out if bias is None else out + bias


def layernorm_fixed(
    x: np.ndarray,
    ring: Ring,
    weight: np.ndarray,
    bias: np.ndarray | None,
    eps: float,
    var_range: tuple[int, int],
    n_iter: int = 2,
) -> np.ndarray:
    """Fixed-point :func:`layernorm` of encoded x (weight, bias float, encoded here):
    μ = ⌊Σx / d⌋; c = x − μ; var = ⌊trunc(Σc·c) / d⌋; y = rsqrt_fixed(var + enc(eps));
    out = trunc(trunc(c·y)·enc(weight)) + enc(bias)."""
    x = ring.reduce(x)
    d = x.shape[-1]
    mu = div_public(ring_sum(x, ring, keepdims=True), d, ring)
    c = ring.reduce(x - mu)
    var = div_public(trunc(ring_sum(c * c, ring, keepdims=True), ring), d, ring)
    v = ring.reduce(var + ring.encode(eps))
    y = rsqrt_fixed(v, ring, *var_range, n_iter=n_iter)
    out = mul_fixed(mul_fixed(c, y, ring), ring.encode(weight), ring)
    return out if bias is None else ring.reduce(out + ring.encode(bias))


def rmsnorm(
    x: np.ndarray, weight: np.ndarray, eps: float, var_range: tuple[int, int], n_iter: int = 2
) -> np.ndarray:
    """RMSNorm (T5 / Mixtral) over the last axis (float form): y = rsqrt(mean(x²) + eps) on
    [2^lo, 2^hi] = ``var_range``; out = x·y·weight."""
    x = np.asarray(x, dtype=np.float64)
    y = rsqrt(np.mean(x * x, axis=-1, keepdims=True) + eps, *var_range, n_iter=n_iter)
    return x * y * weight


def rmsnorm_fixed(
    x: np.ndarray,
    ring: Ring,
    weight: np.ndarray,
    eps: float,
    var_range: tuple[int, int],
    n_iter: int = 2,
) -> np.ndarray:
    """Fixed-point :func:`rmsnorm`: ms = ⌊trunc(Σx·x) / d⌋; y = rsqrt_fixed(ms + enc(eps));
    out = trunc(trunc(x·y)·enc(weight))."""
    x = ring.reduce(x)
    ms = div_public(trunc(ring_sum(x * x, ring, keepdims=True), ring), x.shape[-1], ring)
    y = rsqrt_fixed(ring.reduce(ms + ring.encode(eps)), ring, *var_range, n_iter=n_iter)
    return mul_fixed(mul_fixed(x, y, ring), ring.encode(weight), ring)

"""The piecewise-polynomial specification and the fixed-point primitives of secmoe.ops.approx.

:class:`PiecewisePolynomial` (segments, coefficient table, fitting, float evaluation and the
bit-exact fixed-point emulation of its select-then-compute evaluation), the ideal truncation and
public division, and the exact reference functions. Import these through
:mod:`secmoe.ops.approx`, which re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.polynomial import polynomial as npoly

from secmoe.crypto.ring import Ring

__all__ = [
    "PiecewisePolynomial",
    "div_public",
    "gelu_exact",
    "mirror",
    "mul_fixed",
    "ring_sum",
    "silu_exact",
    "trunc",
]

# --------------------------------------------------------------------------------------------
# Fixed-point primitives (ideal functionalities of truncation and public division)
# --------------------------------------------------------------------------------------------


def trunc(x: np.ndarray, ring: Ring, shift: int | None = None) -> np.ndarray:
    """Arithmetic right shift of ring elements by ``shift`` bits (default f): floor(x / 2^shift).

    The ideal functionality of the secure truncation protocol (which may add ±1 ulp).
    """
    s = ring.frac_bits if shift is None else shift
    return ring.from_signed(ring.to_signed(x) >> np.int64(s))


def mul_fixed(a: np.ndarray, b: np.ndarray, ring: Ring) -> np.ndarray:
    """Fixed-point product of two encoded arrays (broadcasting): trunc(a · b)."""
    prod = np.asarray(a, dtype=np.uint64) * np.asarray(b, dtype=np.uint64)
    return trunc(ring.reduce(prod), ring)


def div_public(x: np.ndarray, d: int, ring: Ring) -> np.ndarray:
    """Division of encoded values by a public positive integer d: floor(x / d) (scale kept).

    Used for means (÷ sequence length, ÷ d_model). Multiplying by an encoded 1/d instead would
    cost a relative error of up to d·2^−(f+1) (1.5e-3 at d = 768), too much for LayerNorm.
    """
    if d <= 0:
        raise ValueError(f"public divisor must be positive, got {d}")
    return ring.from_signed(np.floor_divide(ring.to_signed(x), np.int64(d)))


def ring_sum(x: np.ndarray, ring: Ring, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """Sum of ring elements along ``axis`` (mod 2^ℓ)."""
    return ring.reduce(np.sum(np.asarray(x, dtype=np.uint64), axis=axis, keepdims=keepdims))


# --------------------------------------------------------------------------------------------
# Exact reference functions
# --------------------------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    """Exact GeLU x·Φ(x) with the erf form (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def silu_exact(x: np.ndarray) -> np.ndarray:
    """Exact SiLU x·σ(x) (float64, overflow-safe)."""
    x = np.asarray(x, dtype=np.float64)
    return x * np.where(
        x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), 1.0 - 1.0 / (1.0 + np.exp(-np.abs(x)))
    )


# --------------------------------------------------------------------------------------------
# Piecewise polynomials
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiecewisePolynomial:
    """A function that is a polynomial on each of m+1 right-closed segments.

    ``breakpoints`` b_0 < … < b_{m−1} cut the real line into (−∞,b_0], (b_0,b_1], …,
    (b_{m−1},∞). ``coeffs[j]`` holds segment j's polynomial in ascending powers,
    p_j(x) = Σ_k a_jk x^k, zero-padded to a common degree.

    Secure evaluation by Select-Then-Compute (SecMoE): compare x with each breakpoint once,
    c_j = 1{x > b_j}; one-hot selector s_0 = ¬c_0, s_i = c_{i−1} ⊕ c_i, s_m = c_{m−1}; select
    the coefficient row sᵀ·C (public table, so local after B2A); compute the powers x^k once
    and Σ_k a_k·x^k. :meth:`evaluate_fixed` is that computation on reconstructed values.
    """

    breakpoints: tuple[float, ...]
    coeffs: tuple[tuple[float, ...], ...]
    #: Coefficients are encoded with f + coeff_extra_bits fractional bits in the fixed-point
    #: form (extra precision for tiny coefficients, e.g. the slopes of 1/√v at large v).
    coeff_extra_bits: int = 0

    def __post_init__(self) -> None:
        b = tuple(float(v) for v in self.breakpoints)
        rows = tuple(tuple(float(a) for a in row) for row in self.coeffs)
        if any(not b[i] < b[i + 1] for i in range(len(b) - 1)):
            raise ValueError(f"breakpoints must be strictly increasing, got {b}")
        if len(rows) != len(b) + 1:
            raise ValueError(
                f"{len(b)} breakpoints need {len(b) + 1} coefficient rows, got {len(rows)}"
            )
        width = max(len(r) for r in rows)
        rows = tuple(r + (0.0,) * (width - len(r)) for r in rows)
        object.__setattr__(self, "breakpoints", b)
        object.__setattr__(self, "coeffs", rows)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def fit(
        cls,
        fn: Callable[[np.ndarray], np.ndarray],
        breakpoints: Sequence[float],
        degree: int | Sequence[int],
        fit_range: tuple[float, float],
        fixed: Mapping[int, Sequence[float]] | None = None,
        method: str = "lstsq",
        relative: bool = False,
        n_points: int = 4001,
    ) -> PiecewisePolynomial:
        """Fit ``fn`` segment by segment with numpy.polynomial.

        Args:
            fn: the function to approximate (float64 array → array).
            breakpoints: b_0 < … < b_{m−1}.
            degree: one degree for every segment, or one per segment.
            fit_range: (lo, hi) bounding the two unbounded end segments: segment 0 is fitted on
                [lo, b_0], segment m on [b_{m−1}, hi].
            fixed: segment index → exact coefficients (e.g. ``{0: [0], m: [0, 1]}``), not fitted.
            method: ``"lstsq"`` (least squares on a uniform grid) or ``"minimax"`` (Lawson's
                iteratively reweighted least squares, converging to the minimax fit).
            relative: minimize the relative instead of the absolute error.
            n_points: grid size per segment.
        """
        b = [float(v) for v in breakpoints]
        lo, hi = fit_range
        if not lo < b[0] or not b[-1] < hi:
            raise ValueError(f"fit_range {fit_range} must enclose the breakpoints {b}")
        edges = [lo, *b, hi]
        degs = [degree] * (len(b) + 1) if isinstance(degree, int) else list(degree)
        if len(degs) != len(b) + 1:
            raise ValueError(f"need {len(b) + 1} degrees, got {len(degs)}")
        fixed = dict(fixed or {})
        rows: list[tuple[float, ...]] = []
        for j in range(len(b) + 1):
            if j in fixed:
                rows.append(tuple(float(a) for a in fixed[j]))
                continue
            x = np.linspace(edges[j], edges[j + 1], n_points)
            rows.append(tuple(_fit_segment(fn, x, degs[j], method, relative)))
        return cls(tuple(b), tuple(rows))

    def with_segment(self, j: int, coeffs: Sequence[float]) -> PiecewisePolynomial:
        """A copy with segment j's polynomial replaced."""
        rows = list(self.coeffs)
        rows[j] = tuple(float(a) for a in coeffs)
        return replace(self, coeffs=tuple(rows))

    # --- properties ---------------------------------------------------------------------------

    @property
    def table(self) -> np.ndarray:
        """Coefficient table, shape (m+1, degree+1), ascending powers."""
        return np.array(self.coeffs, dtype=np.float64)

    @property
    def degree(self) -> int:
        """Common (padded) degree of the segment polynomials."""
        return len(self.coeffs[0]) - 1

    @property
    def n_segments(self) -> int:
        """Number of segments m+1."""
        return len(self.coeffs)

    # --- float evaluation ---------------------------------------------------------------------

    def segment_index(self, x: np.ndarray) -> np.ndarray:
        """Index j of the right-closed segment containing each x (= #{b_i < x})."""
        return np.searchsorted(np.asarray(self.breakpoints), np.asarray(x, np.float64), "left")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float evaluation of the piecewise polynomial."""
        x = np.asarray(x, dtype=np.float64)
        c = self.table[self.segment_index(x)]
        powers = x[..., None] ** np.arange(self.degree + 1)
        return np.sum(c * powers, axis=-1)

    def error(
        self, fn: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, n: int = 200_001
    ) -> tuple[float, float]:
        """(max, mean) absolute error against ``fn`` on a uniform grid of [lo, hi]."""
        x = np.linspace(lo, hi, n)
        e = np.abs(self(x) - fn(x))
        return float(e.max()), float(e.mean())

    # --- fixed-point emulation ----------------------------------------------------------------

    def encoded_breakpoints(self, ring: Ring) -> np.ndarray:
        """Breakpoints as signed fixed-point integers round(b·2^f) (int64)."""
        return np.rint(np.asarray(self.breakpoints) * ring.scale).astype(np.int64)

    def encoded_table(self, ring: Ring) -> np.ndarray:
        """Coefficients as ring elements round(a·2^(f+e)), e = ``coeff_extra_bits`` (uint64),
        shape (m+1, degree+1)."""
        scaled = np.rint(self.table * 2.0 ** (ring.frac_bits + self.coeff_extra_bits))
        if np.any(np.abs(scaled) >= 2.0 ** (ring.bits - 1)):
            raise OverflowError(f"coefficient table does not fit the {ring.bits}-bit ring")
        return ring.from_signed(scaled.astype(np.int64))

    def selector_fixed(self, x: np.ndarray, ring: Ring) -> np.ndarray:
        """One-hot segment selector (…, m+1) of encoded x, built as the protocol builds it."""
        xs = ring.to_signed(x)
        c = xs[..., None] > self.encoded_breakpoints(ring)  # c_j = 1{x > b_j}, once each
        s = np.empty((*c.shape[:-1], self.n_segments), dtype=bool)
        if self.n_segments == 1:
            s[...] = True
            return s
        s[..., 0] = ~c[..., 0]
        s[..., 1:-1] = c[..., :-1] ^ c[..., 1:]
        s[..., -1] = c[..., -1]
        return s

    def evaluate_fixed(self, x: np.ndarray, ring: Ring) -> np.ndarray:
        """Fixed-point evaluation of encoded x (uint64 ring elements) → encoded p(x).

        Steps (the secure operator's): selector s; coefficient row a = sᵀ·C (C encoded at
        f+e bits, e = ``coeff_extra_bits``); powers x^1 = x, x^k = trunc(x^(k−1)·x);
        acc = a_0·2^f + Σ_{k≥1} a_k·x^k at scale 2f+e; result trunc_{f+e}(acc). Valid while
        |x|^degree·2^(2f+e) and |p(x)|·2^(2f+e) stay below 2^(ℓ−1) (no wrap).
        """
        x = ring.reduce(x)
        s = self.selector_fixed(x, ring).astype(np.uint64)
        a = ring.reduce(s @ self.encoded_table(ring))  # (…, degree+1)
        acc = ring.reduce(a[..., 0] << np.uint64(ring.frac_bits))
        power = x
        for k in range(1, self.degree + 1):
            if k > 1:
                power = mul_fixed(power, x, ring)
            acc = ring.reduce(acc + a[..., k] * power)
        return trunc(acc, ring, ring.frac_bits + self.coeff_extra_bits)


def _fit_segment(
    fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, deg: int, method: str, relative: bool
) -> np.ndarray:
    y = np.asarray(fn(x), dtype=np.float64)
    base = 1.0 / np.abs(y) if relative else np.ones_like(y)
    if method == "lstsq":
        return npoly.polyfit(x, y, deg, w=base)
    if method != "minimax":
        raise ValueError(f"unknown fit method {method!r} (lstsq or minimax)")
    w = np.full_like(x, 1.0 / x.size)
    c = npoly.polyfit(x, y, deg, w=base)
    for _ in range(300):  # Lawson: reweight by the current error, converges to minimax
        c = npoly.polyfit(x, y, deg, w=base * np.sqrt(w))
        e = np.abs(npoly.polyval(x, c) - y) * base
        w = w * e
        w /= w.sum()
    return c


def mirror(row: Sequence[float]) -> tuple[float, ...]:
    """Coefficients of x + p(−x) (for f with f(x) = x + f(−x): GeLU, SiLU)."""
    out = [a * (-1) ** k for k, a in enumerate(row)]
    out[1] += 1.0
    return tuple(out)

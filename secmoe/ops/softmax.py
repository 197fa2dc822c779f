"""Softmax along the last axis on shares: max, exp, sum, reciprocal, product.

Computes shares of :func:`secmoe.ops.approx.softmax_fixed` (up to the truncation protocol's
error, :func:`error_bound`) for arithmetic shares of encoded logits x (…, n) and an optional
public mask (True = keep; masked entries give 0, as in a causal mask). Nobody learns anything
but the shape and the mask.

Flow (each step vectorized over the whole tensor)::

    Step 1  m = max_j x_j: a tournament of ⌈log2 n⌉ rounds, each a comparison 1{v > u}
            (the breakpoint comparison of :mod:`.piecewise` against 0) and a MUX
            u + c·(v − u); masked entries enter as a public floor value
    Step 2  d = x − m ≤ 0 (local); exp_neg on the kept entries only:
            keep = 1{d > −16} (one comparison) ‖ t = 2^f + trunc_8(d), then 8 times
            t ← trunc(t²) with t's narrow shares (t ∈ (0, 1]: f + 3 bits, 21 + 2 COTs per
            square instead of 64); e = keep·t (a MUX)
    Step 3  s = Σ_j e_j (local), r = 1/s: the octave guess by STC (K − 1 breakpoints 2^j,
            K = ⌈log2 n⌉) and two Newton steps y ← y(2 − s·y) (row-level, cheap)
    Step 4  out = trunc(e·r): r is one narrow value per row, so each of its f + 4 bits is one
            COT whose message carries the whole row (:func:`.piecewise.mul_narrow`)

Measured on 12 × 128 × 128 (``secmoe bench softmax --source {silent,iknp}``): 405 MB with the
silent COT source, 1346 MB with IKNP; exp (eight narrow squarings, one comparison) is ~80%.

Range: |x| < 2^(bits−2−f) (the max tournament compares differences on ``bits`` bits; the
default 32 allows |x| < 4096). Every row keeps at least one entry.

Error: the secure exp's truncations (one ulp each) double through the eight squarings, so e
may differ from the specification by up to ~2^9 ulps (2e-3) where e ≈ 1; the spec's own error
against e^x is 1.4e-3. :func:`error_bound` gives the per-element bound that the tests check.

REF: exp by repeated squaring and the max-subtracted softmax follow BumbleBee (eprint 2023/1678)
and PUMA (eprint 2023/1327) §5; the paper (SecMoE) keeps that method.
"""

from __future__ import annotations

import asyncio

import numpy as np

from ..crypto.ring import Ring
from ..protocols import arith, boolean
from ..protocols.boolean import CLIENT
from ..protocols.cost import Cost
from ..protocols.ot.pool import OTPool
from ..protocols.party import Party
from . import approx
from .argmax import tournament, tournament_cost
from .piecewise import (
    DEFAULT_CMP_BITS,
    compare_breakpoints,
    compare_cost,
    mul_narrow,
    mul_narrow_cost,
    square_narrow,
    square_narrow_cost,
    stc,
    stc_cost,
)

#: Newton-step truncation slack of the reciprocal, in ulps (see :func:`error_bound`).
RECIP_SLACK = 8


def t_bits(ring: Ring) -> int:
    """Narrow width of the exp iterate t ∈ (0, 1]: |t| < 2^(f+1)."""
    return ring.frac_bits + 3


def r_bits(ring: Ring) -> int:
    """Narrow width of the reciprocal y ≤ 24/17 (< 2 with margin): |y| < 2^(f+2)."""
    return ring.frac_bits + 4


# --------------------------------------------------------------------------------------------
# Step 1: max
# --------------------------------------------------------------------------------------------


async def row_max(p: Party, x: np.ndarray, bits: int = DEFAULT_CMP_BITS) -> np.ndarray:
    """Shares of max_j x_j, shape ``x.shape[:-1] + (1,)``: a tournament of MUXed comparisons.

    Range: |x_i − x_j| < 2^(bits−1) in ring units. Cost: :func:`row_max_cost`.
    """
    return (await tournament(p, x, bits=bits))[0]


def row_max_cost(pool: OTPool, rows: int, n: int, ring: Ring, bits: int) -> Cost:
    """Declared cost of :func:`row_max` on ``rows`` rows of n entries."""
    return tournament_cost(pool, rows, n, ring, bits)


# --------------------------------------------------------------------------------------------
# Step 2: exp on d ≤ 0
# --------------------------------------------------------------------------------------------


def _clip(ring: Ring) -> np.ndarray:
    return np.array([round(-approx.EXP_CLIP * ring.scale)], dtype=np.int64)


async def exp_neg(p: Party, d: np.ndarray, bits: int = DEFAULT_CMP_BITS) -> np.ndarray:
    """Shares of :func:`approx.exp_neg_fixed` (d) for shared d ≤ 0 (any shape).

    Range: −2^(bits−1) < d ≤ 0 in ring units. Cost: :func:`exp_neg_cost`.
    """
    ring = p.ring
    d = ring.reduce(np.asarray(d, dtype=np.uint64))

    async def chain() -> np.ndarray:
        f = p.fork("sq")
        t = await arith.trunc(f, d, approx.EXP_SQUARINGS)
        if p.role == CLIENT:
            t = ring.reduce(t + np.uint64(1 << ring.frac_bits))
        for i in range(approx.EXP_SQUARINGS):
            g = f.fork(f"s{i}")
            t = await arith.trunc(g, await square_narrow(g.fork("x2"), t, t_bits(ring)))
        return t

    keep, t = await asyncio.gather(
        compare_breakpoints(p.fork("keep"), d, _clip(ring), bits), chain()
    )
    return await boolean.mux(p.fork("mux"), keep[..., 0], t)


def exp_neg_cost(pool: OTPool, n: int, ring: Ring, bits: int = DEFAULT_CMP_BITS) -> Cost:
    """Declared cost of :func:`exp_neg` on n elements."""
    trunc = arith.cost_trunc(pool, n, ring)
    chain = trunc + (square_narrow_cost(pool, n, ring, t_bits(ring)) + trunc).times(
        approx.EXP_SQUARINGS
    )
    keep = compare_cost(pool, n, _clip(ring), bits)
    return (keep | chain) + boolean.cost_mux(pool, n, ring.bits)


# --------------------------------------------------------------------------------------------
# Step 3: reciprocal
# --------------------------------------------------------------------------------------------


def recip_bits(k: int, ring: Ring) -> int:
    """Comparison width for s ∈ [~1, 2^K] against the breakpoints 2^j < 2^K."""
    return ring.frac_bits + k + 2


async def reciprocal(p: Party, s: np.ndarray, k: int, n_iter: int = 2) -> np.ndarray:
    """Shares of :func:`approx.reciprocal_fixed` (s, K): the guess by STC, then Newton.

    Range: 0 < s ≤ 2^K (the guess is fitted on [1, 2^K]). Cost: :func:`reciprocal_cost`.
    """
    ring = p.ring
    s = ring.reduce(np.asarray(s, dtype=np.uint64))
    y = await stc(p.fork("guess"), approx.reciprocal_guess(k), s, recip_bits(k, ring))
    two = np.uint64(2 << ring.frac_bits)
    for i in range(n_iter):
        f = p.fork(f"newton{i}")
        t = await arith.trunc(f.fork("t"), await mul_narrow(f.fork("st"), s, y, r_bits(ring)))
        e = ring.reduce(two - t) if p.role == CLIENT else ring.reduce(np.uint64(0) - t)
        y = await arith.trunc(f.fork("y"), await mul_narrow(f.fork("ye"), e, y, r_bits(ring)))
    return y


def reciprocal_cost(pool: OTPool, n: int, k: int, ring: Ring, n_iter: int = 2) -> Cost:
    """Declared cost of :func:`reciprocal` on n values."""
    c = stc_cost(pool, approx.reciprocal_guess(k), n, ring, recip_bits(k, ring))
    step = mul_narrow_cost(pool, n, 1, ring, r_bits(ring)) + arith.cost_trunc(pool, n, ring)
    return c + step.times(2 * n_iter)


# --------------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------------


def _keep(shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray:
    keep = np.ones(shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), shape)
    if not keep.any(axis=-1).all():
        raise ValueError("every softmax row must keep at least one entry")
    return keep


async def softmax(
    p: Party,
    x: np.ndarray,
    mask: np.ndarray | None = None,
    bits: int = DEFAULT_CMP_BITS,
    n_iter: int = 2,
) -> np.ndarray:
    """Shares of ``approx.softmax_fixed(x, mask)`` along the last axis (module docstring).

    Args:
        p: this party (forks ``max``, ``exp``, ``rcp``, ``out``).
        x: arithmetic shares of encoded logits (…, n).
        mask: public, broadcastable to x; False entries are excluded and give 0.
        bits: comparison width; range |x| < 2^(bits−2−f).
        n_iter: Newton steps of the reciprocal.

    Cost: :func:`softmax_cost`. Error: :func:`error_bound`.
    """
    ring = p.ring
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    keep = _keep(x.shape, mask)
    floor = np.uint64(ring.from_signed(np.int64(-(1 << (bits - 2)) + 1)))
    fill = floor if p.role == CLIENT else np.uint64(0)
    # Step 1.
    m = await row_max(p.fork("max"), np.where(keep, x, fill), bits)
    # Step 2: exp of the kept entries only (the mask is public).
    d = ring.reduce(x - m)
    e = np.zeros_like(x)
    e[keep] = await exp_neg(p.fork("exp"), d[keep], bits)
    # Step 3.
    s = ring.reduce(e.sum(axis=-1, keepdims=True))
    r = await reciprocal(p.fork("rcp"), s, approx.softmax_range_log2(x.shape[-1]), n_iter)
    # Step 4.
    f = p.fork("out")
    out = await arith.trunc(f, await mul_narrow(f.fork("er"), e, r, r_bits(ring)))
    return np.where(keep, out, np.uint64(0))  # masked: exactly 0 (trunc(0) may give −1)


def softmax_cost(
    pool: OTPool,
    shape: tuple[int, ...],
    ring: Ring,
    mask: np.ndarray | None = None,
    bits: int = DEFAULT_CMP_BITS,
    n_iter: int = 2,
) -> Cost:
    """Declared cost of :func:`softmax` on logits of ``shape``."""
    n = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    kept = int(_keep(tuple(shape), mask).sum())
    c = row_max_cost(pool, rows, n, ring, bits) + exp_neg_cost(pool, kept, ring, bits)
    c = c + reciprocal_cost(pool, rows, approx.softmax_range_log2(n), ring, n_iter)
    c = c + mul_narrow_cost(pool, rows, n, ring, r_bits(ring))
    return c + arith.cost_trunc(pool, rows * n, ring)


def ideal(x: np.ndarray, ring: Ring, mask: np.ndarray | None = None, n_iter: int = 2) -> np.ndarray:
    """The specification: :func:`approx.softmax_fixed`."""
    return approx.softmax_fixed(ring.reduce(np.asarray(x, dtype=np.uint64)), ring, mask, n_iter)


def exp_error_bound(d: np.ndarray, ring: Ring) -> np.ndarray:
    """Per element, max |secure − spec| of :func:`exp_neg` in ulps.

    t_0 is off by E_0 ≤ 1; a squaring t ← trunc(t²) maps E to ⌈E·(2t* + E)/2^f⌉ + 1 (t* the
    spec's iterate); the MUX is exact, and dropped entries are exactly 0.
    """
    f = ring.frac_bits
    d = ring.reduce(np.asarray(d, dtype=np.uint64))
    keep = ring.to_signed(d) > _clip(ring)[0]
    t = ring.to_signed(
        ring.reduce(approx.trunc(d, ring, approx.EXP_SQUARINGS) + np.uint64(1 << f))
    ).astype(np.float64)
    e = np.ones(d.shape)
    t = np.where(keep, t, 0.0)  # dropped entries are exactly 0 whatever t does
    for _ in range(approx.EXP_SQUARINGS):
        e = np.ceil(e * (2 * np.abs(t) + e) / 2**f) + 1
        t = np.floor(t * t / 2**f)
    return np.where(keep, e, 0.0)


def error_bound(x: np.ndarray, ring: Ring, mask: np.ndarray | None = None) -> np.ndarray:
    """Per element, a bound on |secure − spec| in ulps (first-order propagation).

    Δe from :func:`exp_error_bound`; Δs = Σ Δe; the reciprocal moves by Δs/s² plus
    :data:`RECIP_SLACK` ulps of Newton truncation; the product adds Δe·r + e·Δr + 1.
    """
    f = ring.frac_bits
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    keep = _keep(x.shape, mask)
    xs = ring.to_signed(x)
    m = np.max(np.where(keep, xs, np.iinfo(np.int64).min), axis=-1, keepdims=True)
    d = ring.reduce(x - ring.from_signed(m))
    de = np.where(keep, exp_error_bound(d, ring), 0.0)
    e = np.where(keep, ring.to_signed(approx.exp_neg_fixed(d, ring)), 0) / 2**f
    s = e.sum(axis=-1, keepdims=True)
    ds = de.sum(axis=-1, keepdims=True)
    r = 1.0 / np.maximum(s - ds / 2**f, 2.0**-f)
    dr = ds * r * r + RECIP_SLACK
    return np.ceil(de * r + e * dr + de * dr / 2**f) + 1.0


__all__ = [
    "error_bound",
    "exp_neg",
    "exp_neg_cost",
    "ideal",
    "reciprocal",
    "reciprocal_cost",
    "row_max",
    "row_max_cost",
    "softmax",
    "softmax_cost",
]

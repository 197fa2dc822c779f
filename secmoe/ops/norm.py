"""LayerNorm and RMSNorm on shares, with the server's weight and bias.

Computes shares of :func:`secmoe.ops.approx.layernorm_fixed` / :func:`~approx.rmsnorm_fixed`
(up to the truncation protocols' error, :func:`error_bound`) over the last axis of arithmetic
shares of encoded x (…, d). The norm's weight γ and bias β belong to the server (plaintext on
the server, ``None`` on the client); the client learns nothing, the server learns nothing; the
shape, ε, the rsqrt range and the weight width are public.

Flow (LayerNorm; RMSNorm skips the centring)::

    Step 1  μ = ⌊Σx / d⌋ (:func:`arith.div_public`, one COT per row); c = x − μ
    Step 2  Σc² with c's narrow shares (:func:`.piecewise.square_narrow`: |c| < 2^(x_bits−2−f),
            x_bits + 2 COTs per element instead of ℓ; or :func:`sum_squares_he`); var =
            ⌊Σc² / (2^f·d)⌋ (one division per row: the spec's ⌊⌊Σc²/2^f⌋/d⌋); v = var + ε
    Step 3  y = rsqrt(v): the octave guess by STC on [2^lo, 2^hi], two Newton steps
            y ← y(3 − v·y²)/2 (row-level, cheap)
    Step 4  z = trunc(c·y): y is one narrow value per row (:func:`.piecewise.mul_narrow`, or
            :func:`mul_rows_he`)
    Step 5  out = trunc(γ ⊙ z) + β: :func:`mul_server_weight`, then the server adds β; with
            ``weighted=False`` (γ folded into the next linear layer by the server,
            :mod:`secmoe.model.fold`) out = z + β: no product, no truncation

**Fewer bits on the wire.** Each product is followed by a truncation, so it is computed on
the smallest ring its value fits and with its low bits skipped: Σc² mod 2^(:func:`sq_bits`)
(Σc² < d·2^(hi+1+2f) by the rsqrt's range), c·y mod 2^(:func:`cy_bits`) (|c·y| ≤ √d·2^(2f):
|c_j| ≤ √(d·mean c²) and y ≤ 1/√v), z·γ mod 2^(:func:`w_ring_bits`); each COT value and
local term floored by 2^s first (``drop``, :func:`safe_drop`: at most one more ulp after the
truncation); the square's COT values also without their known low zero bits (per-OT widths).
:func:`trunc_from` then truncates and returns to ℓ bits in one COT (:func:`lift`: shares
mod 2^b times 2^(ℓ−b) are shares mod 2^ℓ); its COT carries only the ℓ − b + shift bits the
wrap needs (``arith.trunc``'s ``narrow``). Measured at 8 × 768 (Switch-Base, T = 8, silent
OT): 5.48 MB → 3.18 MB with γ, 2.46 MB without (Σc² 1.07 MB, c·y 1.28 MB; γ·z 0.66 MB).

**Row products by HE** (``he=True``, the parties holding ``HE_8K`` keys): Σc² and c·y are
sums and scalings *per row*, so their cross terms go as HE products of whole rows
(:mod:`secmoe.protocols.he_rowdot`) instead of one Gilboa product per element:
:func:`sum_squares_he` (c's narrow shares: the local squares, one HE inner product per row
for 2·u_c·u_s, one COT each way per element for the wrap) and :func:`mul_rows_he` (c·y with
y one value per row: two HE row scalings, x_c·u_s and u_c·v_s, and short COTs for the
wraps); both exact, each HE product returning only the bits of its ring (``out_bits``:
Σc² mod 2^62, c·y mod 2^44). :func:`he_products` takes each where it declares fewer bytes
(at one row the COTs stay). Measured (``secmoe bench rmsnorm --shape 8x768
--var-range=-8,12 [--folded] --products ot|he``, silent OT, online): 3.18 → 1.64 MB with γ,
2.44 → 0.95 MB folded (the HE products: Σc² 0.26 MB, c·y 0.54 MB); 128 × 768: 50.8 → 26.1
MB, 39.1 → 15.1 MB folded, but more computation (rows in groups of 8, 48 HE products of
N = 8192: 9–11 s against 2.7 s by COTs at load 5 on this 2-core machine; 0.5 s against 0.13 s
at 8 × 768). The model runs them with ``RunOptions(norm_products="he")``
(``--norm-products he``); COTs by default.

**γ ⊙ z with a server-private γ** (:func:`mul_server_weight`): γ·z = γ·z_s + γ·z_c. The server
computes γ·z_s itself. For γ·z_c it is the COT *receiver*, choosing with the w bits of each γ_j
(two's complement, |γ_j·2^f| < 2^(w−1)); the client sends, per bit i and column j, the
correlation 2^i·z_c[:, j] (−2^(w−1)·z_c for the sign bit) for all rows at once. So the server
gets X + γ_j,i·2^i·z_c and the client keeps −X: w COTs per column whatever the number of rows,
each carrying one value per row. The alternative (the server as sender of γ·2^i, the client
choosing with the ℓ bits of its share) costs ℓ COTs per *element*: measured at 128 × 768,
w = 24: 0.20 KB per element instead of 1.5 KB. The weight width w is public (both parties must
agree on the COT count): a public bound on the weights' magnitude, not their values.

REF: BumbleBee (eprint 2023/1678) and PUMA (eprint 2023/1327) §5 for LayerNorm by rsqrt with
a Newton refinement; Gilboa (CRYPTO 1999) for products from COT; SiRNN (eprint 2021/459) for
products with narrow operands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from ..crypto.he_params import FLOOD_UNION_BITS, HE_8K
from ..crypto.ring import Ring
from ..protocols import arith
from ..protocols.boolean import CLIENT
from ..protocols.cost import Cost
from ..protocols.he_rowdot import plan_rows, row_product, rows_cost
from ..protocols.ot.pool import OTPool
from ..protocols.party import Party
from . import approx
from .linear import HEState
from .piecewise import (
    _cross_pair,
    _narrow_shares,
    acot_cost,
    dropped,
    mul_narrow,
    mul_narrow_cost,
    square_narrow,
    square_narrow_cost,
    stc,
    stc_cost,
)

#: Default narrow width of the centred values: |c| < 2^(30−2−18) = 1024 (|x| < 512).
DEFAULT_X_BITS = 30
#: Default weight width: |γ| < 2^(24−1−18) = 32.
DEFAULT_W_BITS = 24
#: Newton-step truncation slack of the rsqrt, in ulps (see :func:`error_bound`).
RSQRT_SLACK = 8


def y_bits(lo: int, ring: Ring) -> int:
    """Narrow width of y ≈ 1/√v ≤ 1.03·2^(−lo/2) on [2^lo, 2^hi]."""
    return ring.frac_bits + max(0, -(lo // 2)) + 3


def rsqrt_bits(hi: int, ring: Ring) -> int:
    """Comparison width for v ≤ 2^hi against the breakpoints 2^j < 2^hi."""
    return ring.frac_bits + hi + 2


def _half_log2(d: int) -> int:
    """h = ⌈log2(d) / 2⌉: √d ≤ 2^h bounds |z| = |c|·y for a row of d values."""
    return ((d - 1).bit_length() + 1) // 2


def sq_bits(d: int, hi: int, ring: Ring, x_bits: int = DEFAULT_X_BITS) -> int:
    """Ring width of the row sums Σc²: Σc² < d·2^(hi+1)·2^(2f) (v < 2^(hi+1), as the rsqrt's
    comparisons need) is below 2^(bits−3); at least ``x_bits`` (the narrow shares' width)."""
    need = 2 * ring.frac_bits + hi + 1 + (d - 1).bit_length() + 3
    return min(ring.bits, max(x_bits, need))


def cy_bits(d: int, ring: Ring) -> int:
    """Ring width of c·y: |c_j|·y ≤ √d·(1 + 2^−10) (y ≤ 1/√v and v ≥ mean(c²) − 2 ulps), so
    |c·y| < 2^(2f+h+1) ≤ 2^(bits−2) with h = ⌈log2(d)/2⌉."""
    return min(ring.bits, 2 * ring.frac_bits + _half_log2(d) + 3)


def w_ring_bits(d: int, ring: Ring, w_bits: int = DEFAULT_W_BITS) -> int:
    """Ring width of z·γ: |z| < 2^(f+h+1), |enc(γ)| < 2^(w_bits−1), so |z·γ| < 2^(bits−2)."""
    return min(ring.bits, ring.frac_bits + _half_log2(d) + w_bits + 2)


def lift(x: np.ndarray, bits: int, ring: Ring) -> np.ndarray:
    """Shares mod 2^ℓ of x·2^(ℓ−bits) from shares mod 2^bits of x (local: the shares' wrap,
    a multiple of 2^bits, becomes a multiple of 2^ℓ)."""
    return ring.reduce(np.asarray(x, np.uint64) << np.uint64(ring.bits - bits))


async def trunc_from(p: Party, x: np.ndarray, bits: int, shift: int) -> np.ndarray:
    """Shares mod 2^ℓ of ⌊x / 2^shift⌋ (or one less) from shares mod 2^bits of x, for
    |x| < 2^(bits−2) − 2^shift: :func:`arith.trunc` of :func:`lift` (one COT per element, as a
    truncation on the full ring). Computing a product on the smaller ring 2^bits first sends
    bits instead of ℓ per COT value; the truncation's COT carries ℓ − bits + shift bits
    (``arith.trunc``'s ``narrow``). Cost: :func:`trunc_from_cost`."""
    return await arith.trunc(p, lift(x, bits, p.ring), p.ring.bits - bits + shift, narrow=True)


def trunc_from_cost(pool: OTPool, n: int, ring: Ring, bits: int, shift: int) -> Cost:
    """Declared cost of :func:`trunc_from` on n elements."""
    return arith.cost_trunc(pool, n, ring.with_bits(ring.bits - bits + shift))


# --------------------------------------------------------------------------------------------
# γ ⊙ z for a server-private γ
# --------------------------------------------------------------------------------------------


async def mul_server_weight(
    p: Party,
    z: np.ndarray,
    weight: np.ndarray | None,
    w_bits: int = DEFAULT_W_BITS,
    drop: int = 0,
) -> np.ndarray:
    """Shares of z·enc(γ) mod 2^ℓ (no truncation) for shared z (…, d) and the server's γ (d,);
    with ``drop`` = s, shares mod 2^(ℓ−s) of ⌊z·enc(γ) / 2^s⌋ − e, 0 ≤ e ≤ w_bits (each COT
    value and the server's local term floored first, as :func:`.piecewise.mul_narrow`).

    Args:
        p: this party (the pool's client→server COT direction).
        z: arithmetic shares (…, d).
        weight: the server's float γ (d,); ``None`` on the client.
        w_bits: public width: |round(γ·2^f)| < 2^(w_bits−1).
        drop: public; the low bits not computed.

    Raises:
        ValueError: on the server, if γ does not fit in ``w_bits``.

    Message flow: one COT batch, client → server: d·w COTs, each with one (ℓ − s)-bit value
    per row. Cost: :func:`mul_server_weight_cost`.
    """
    ring = p.ring
    out = ring.with_bits(ring.bits - drop)
    z = np.asarray(z, dtype=np.uint64)
    d = z.shape[-1]
    zr = z.reshape(-1, d)  # (R, d)
    rows = zr.shape[0]
    if p.role == CLIENT:
        signed = [1 << i for i in range(w_bits - 1)] + [-(1 << (w_bits - 1))]  # two's complement
        scale = ring.from_signed(np.array(signed, dtype=np.int64))
        corr = dropped(ring, zr.T[:, None, :] * scale[None, :, None], drop)  # (d, w, R)
        pads = await p.ot.acot_send(corr.reshape(d * w_bits, rows), out.bits)
        cross = np.uint64(0) - pads.reshape(d, w_bits, rows).sum(1)
        return out.reduce(cross.T).reshape(z.shape)
    g = _encode_weight(weight, d, w_bits, ring)
    bits = arith.step_bits(g.astype(np.uint64), w_bits)  # (d, w), two's complement
    got = await p.ot.acot_recv(bits.reshape(-1), out.bits, rows)
    cross = got.reshape(d, w_bits, rows).sum(1).T
    return out.reduce(cross + dropped(ring, zr * ring.from_signed(g), drop)).reshape(z.shape)


def _encode_weight(weight: np.ndarray | None, d: int, w_bits: int, ring: Ring) -> np.ndarray:
    if weight is None:
        raise ValueError("the server must supply the weight")
    g = ring.to_signed(ring.encode(np.broadcast_to(np.asarray(weight, np.float64), (d,))))
    if np.any(np.abs(g) >= 1 << (w_bits - 1)):
        raise ValueError(
            f"weights do not fit in {w_bits} bits (|γ| < 2^{w_bits - 1 - ring.frac_bits})"
        )
    return g


def mul_server_weight_cost(
    pool: OTPool, rows: int, d: int, ring: Ring, w_bits: int = DEFAULT_W_BITS, drop: int = 0
) -> Cost:
    """Declared cost of :func:`mul_server_weight` on ``rows`` rows of d."""
    return acot_cost(pool, CLIENT, d * w_bits, ring.with_bits(ring.bits - drop), rows)


def safe_drop(ring: Ring, terms: int) -> int:
    """The low bits s a product that is truncated by f next may skip when ``terms`` terms are
    floored (an error e < terms units of 2^s): the largest s with terms·2^s ≤ 2^f, so the
    truncated result loses at most one more ulp."""
    return max(0, ring.frac_bits - (terms - 1).bit_length())


# --------------------------------------------------------------------------------------------
# Σx² per row with the cross terms by HE
# --------------------------------------------------------------------------------------------


def _he_state(p: Party) -> HEState:
    if not isinstance(p.he, HEState):
        raise RuntimeError("the norm's HE products need HE keys: call setup_he in the setup phase")
    return p.he


async def _rows(
    p: Party, kind: str, mine: np.ndarray, d: int, w_bits: int, bits: int
) -> np.ndarray:
    """This party's shares mod 2^bits of the row product ``kind``
    (:mod:`secmoe.protocols.he_rowdot`)."""
    st = _he_state(p)
    he = st.client(HE_8K) if p.role == CLIENT else st.server(HE_8K)
    return await row_product(
        p.ch, he, kind, mine, d, w_bits, p.prg, union_bits=st.union_bits, out_bits=bits, ring=p.ring
    )


async def sum_squares_he(
    p: Party, x: np.ndarray, x_bits: int = DEFAULT_X_BITS, bits: int | None = None
) -> np.ndarray:
    """Shares mod 2^bits (default ℓ) of Σ_j x_j² over the last axis (shape
    ``x.shape[:-1] + (1,)``), exactly, for |x| < 2^(x_bits−2); bits > x_bits + 1.

    With the narrow shares y = x + B = u_c + u_s − 2^k·w (k = x_bits, B = 2^(k−2), w = a ∨ b
    the wrap from the two MSBs, :func:`.piecewise.square_narrow`):
    x² = (u_c² − 2B·u_c + B² + a·G_c) + (u_s² − 2B·u_s + b·G_s) + 2·u_c·u_s
    + b(1 − a)·G_c + a(1 − b)·G_s, with G_c = 2^(2k) + 2^(k+1)·B − 2^(k+1)·u_c and
    G_s = −2^(k+1)·u_s. The first two groups are local; the last two are one COT per element
    each way (the peer's MSB chooses; 2^(k+1)·(…): bits − k − 1 bits on the wire); and summed over
    a row the cross terms 2·u_c·u_s are one inner product per row of the client's u_c and the
    server's u_s < 2^k: :mod:`secmoe.protocols.he_rowdot` (HE, ``HE_8K``).

    Who learns what: nothing (COTs, and HE with masked, flooded results). Message flow: the
    COT pair (fork ``wrap``) and the row products (fork ``dot``), concurrently. Cost:
    :func:`sum_squares_he_cost`.
    """
    ring, k = p.ring, x_bits
    out = ring.with_bits(bits or ring.bits)
    if out.bits <= k + 1:
        raise ValueError(f"sum_squares_he: {out.bits} output bits must exceed {k + 1}")
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    d = x.shape[-1]
    u, top = _narrow_shares(p, x.reshape(-1), k)
    b_ = np.uint64(1 << (k - 2))
    k1 = np.uint64(1 << (k + 1))
    if p.role == CLIENT:
        g = np.uint64(((1 << (2 * k)) + (1 << (2 * k - 1))) % (1 << 64)) - k1 * u
        local = u * u - np.uint64(2) * b_ * u + b_ * b_ + top * g
    else:
        g = np.uint64(0) - k1 * u
        local = u * u - np.uint64(2) * b_ * u + top * g
    q = p.fork("wrap").with_ring(ring.with_bits(out.bits - k - 1))  # (…)/2^(k+1)
    corr = ((1 - top) * g) >> np.uint64(k + 1)
    wrap = _cross_pair(q, corr, top.astype(bool), 1)
    dot = _rows(p.fork("dot"), "dot", u.reshape(-1, d), d, k + 1, out.bits)
    (mine, got), s = await asyncio.gather(wrap, dot)
    cross = (mine.reshape(-1) + got.reshape(-1)) << np.uint64(k + 1)
    terms = (local + cross).reshape(-1, d).sum(axis=1)
    return out.reduce(terms + np.uint64(2) * s).reshape(*x.shape[:-1], 1)


async def mul_rows_he(
    p: Party, x: np.ndarray, y: np.ndarray, x_bits: int, y_bits: int, bits: int
) -> np.ndarray:
    """Shares mod 2^bits of x·y, exactly, for shared x (R, d), |x| < 2^(x_bits−2), and one
    shared y per row (R, 1), |y| < 2^(y_bits−2); bits > max(x_bits, y_bits).

    With y's narrow shares y + B = u_c + u_s − 2^k·w (k = y_bits, w = a ∨ b per row) and x's
    x + B' = v_c + v_s − 2^k'·w' (k' = x_bits, w' = a' ∨ b' per element),
    x·y = x·u_s + x·u_c − B·x − 2^k·w·x and x·u_c = (v_c + v_s − B' − 2^k'·w')·u_c:

    - x_c·u_s and u_c·v_s: the row products ``scale_c`` and ``scale_s`` of
      :mod:`secmoe.protocols.he_rowdot` (HE; the server's operands are its narrow shares);
    - w·x = a·x_c + b·x_s + b(1 − a)·x_c + a(1 − b)·x_s: one COT per row each way, the row of
      (1 − a)·x_c (or (1 − b)·x_s) as its message (bits − k bits a value: the term is a
      multiple of 2^k);
    - w'·u_c = a'·u_c + b'(1 − a')·u_c: one COT per element, client to server (bits − k'
      bits);
    - the rest is local: the client's u_c·(v_c − B' − 2^k'·a') − B·x_c − 2^k·a·x_c, the
      server's x_s·u_s − B·x_s − 2^k·b·x_s.

    Who learns what: nothing (COTs, and HE with masked, flooded results). Message flow: the
    two row products and the COTs, concurrently (forks ``sc``, ``ss``, ``w``, ``wx``).
    Cost: :func:`mul_rows_he_cost`.
    """
    ring = p.ring
    k, kx = y_bits, x_bits
    if bits <= max(k, kx):
        raise ValueError(f"mul_rows_he: {bits} output bits must exceed {max(k, kx)}")
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    rows, d = int(np.prod(x.shape[:-1], dtype=np.int64)), x.shape[-1]
    xr = x.reshape(rows, d)
    u, top = _narrow_shares(p, np.asarray(y, np.uint64).reshape(rows), k)
    v, topx = _narrow_shares(p, xr.reshape(-1), kx)
    v, topx = v.reshape(rows, d), topx.reshape(rows, d)
    rw, rx = ring.with_bits(bits - k), ring.with_bits(bits - kx)
    b_, bx = np.uint64(1 << (k - 2)), np.uint64(1 << (kx - 2))
    corr = rw.reduce(np.uint64(0) - (1 - top)[:, None] * xr)  # −(1 − msb)·x_own, per row
    wrap = _cross_pair(p.fork("w").with_ring(rw), corr, top.astype(bool), d)
    if p.role == CLIENT:
        sc = _rows(p.fork("sc"), "scale_c", xr, d, k + 1, bits)
        ss = _rows(p.fork("ss"), "scale_s", u, d, kx + 1, bits)
        cx = rx.reduce(np.uint64(0) - (1 - topx) * u[:, None]).reshape(-1)
        wx = p.fork("wx").ot.acot_send(cx, rx.bits)
        local = (
            u[:, None] * (v - bx - (topx << np.uint64(kx)))
            - (b_ + (top << np.uint64(k)))[:, None] * xr
        )
    else:
        sc = _rows(p.fork("sc"), "scale_c", u, d, k + 1, bits)
        ss = _rows(p.fork("ss"), "scale_s", v, d, kx + 1, bits)
        wx = p.fork("wx").ot.acot_recv(topx.reshape(-1).astype(bool), rx.bits)
        local = xr * u[:, None] - (b_ + (top << np.uint64(k)))[:, None] * xr
    a1, a2, (m1, m2), t = await asyncio.gather(sc, ss, wrap, wx)
    if p.role == CLIENT:
        t = np.uint64(0) - t
    cross_w = (m1 + m2).reshape(rows, d) << np.uint64(k)
    cross_x = np.asarray(t, np.uint64).reshape(rows, d) << np.uint64(kx)
    out = ring.with_bits(bits).reduce(local + a1 + a2 + cross_w + cross_x)
    return out.reshape(x.shape)


def mul_rows_he_cost(
    pool: OTPool, rows: int, d: int, x_bits: int, y_bits: int, bits: int, union_bits: int
) -> Cost:
    """Declared cost of :func:`mul_rows_he` on ``rows`` rows of d."""
    rw, rx = Ring().with_bits(bits - y_bits), Ring().with_bits(bits - x_bits)
    he = rows_cost("scale_c", rows, d, y_bits + 1, union_bits, bits) | rows_cost(
        "scale_s", rows, d, x_bits + 1, union_bits, bits
    )
    wrap = acot_cost(pool, CLIENT, rows, rw, d) | acot_cost(pool, "server", rows, rw, d)
    return he | wrap | acot_cost(pool, CLIENT, rows * d, rx)


def sum_squares_he_cost(
    pool: OTPool, rows: int, d: int, ring: Ring, x_bits: int = DEFAULT_X_BITS, **kw: int
) -> Cost:
    """Declared cost of :func:`sum_squares_he` on ``rows`` rows of d with output ``ring``
    (``union_bits``: κ)."""
    n, w = rows * d, ring.with_bits(ring.bits - x_bits - 1)
    cots = acot_cost(pool, CLIENT, n, w) | acot_cost(pool, "server", n, w)
    kappa = kw.get("union_bits", FLOOD_UNION_BITS)
    return cots | rows_cost("dot", rows, d, x_bits + 1, kappa, ring.bits)


# --------------------------------------------------------------------------------------------
# rsqrt
# --------------------------------------------------------------------------------------------


async def rsqrt(p: Party, v: np.ndarray, lo: int, hi: int, n_iter: int = 2) -> np.ndarray:
    """Shares of :func:`approx.rsqrt_fixed` (v, lo, hi): guess by STC, then Newton steps.

    Range: 2^lo ≤ v ≤ 2^hi (the guess's fit; the comparisons need v < 2^(hi+1)).
    Cost: :func:`rsqrt_cost`.
    """
    ring = p.ring
    v = ring.reduce(np.asarray(v, dtype=np.uint64))
    yb = y_bits(lo, ring)
    y = await stc(p.fork("guess"), approx.rsqrt_guess(lo, hi), v, rsqrt_bits(hi, ring))
    three = np.uint64(3 << ring.frac_bits)
    for i in range(n_iter):
        f = p.fork(f"newton{i}")
        t = await arith.trunc(f.fork("t1"), await mul_narrow(f.fork("vy"), v, y, yb))
        t = await arith.trunc(f.fork("t2"), await mul_narrow(f.fork("ty"), t, y, yb))
        e = ring.reduce(three - t) if p.role == CLIENT else ring.reduce(np.uint64(0) - t)
        prod = await mul_narrow(f.fork("ey"), e, y, yb)
        y = await arith.trunc(f.fork("y"), prod, ring.frac_bits + 1)
    return y


def rsqrt_cost(pool: OTPool, n: int, lo: int, hi: int, ring: Ring, n_iter: int = 2) -> Cost:
    """Declared cost of :func:`rsqrt` on n values."""
    c = stc_cost(pool, approx.rsqrt_guess(lo, hi), n, ring, rsqrt_bits(hi, ring))
    step = mul_narrow_cost(pool, n, 1, ring, y_bits(lo, ring)) + arith.cost_trunc(pool, n, ring)
    return c + step.times(3 * n_iter)


# --------------------------------------------------------------------------------------------
# the norms
# --------------------------------------------------------------------------------------------


async def _normalize(
    p: Party,
    c: np.ndarray,
    weight: np.ndarray | None,
    eps: float,
    var_range: tuple[int, int],
    n_iter: int,
    x_bits: int,
    w_bits: int,
    weighted: bool,
    he: bool,
) -> np.ndarray:
    """Steps 2–5 on the (centred) values c: trunc(trunc(c·rsqrt(⌊Σc² / (2^f·d)⌋ + ε))·γ)."""
    ring = p.ring
    d = c.shape[-1]
    if not weighted and weight is not None:
        raise ValueError("an unweighted norm (γ folded into the next layer) takes no weight")
    rows = int(np.prod(c.shape[:-1], dtype=np.int64))
    kappa = _he_state(p).union_bits if he else FLOOD_UNION_BITS
    he_sq, he_cy = (
        he_products(p.ot, rows, d, ring, var_range, x_bits, kappa) if he else (False, False)
    )
    sb = sq_bits(d, var_range[1], ring, x_bits)
    if he_sq:
        ds, ss = 0, await sum_squares_he(p.fork("sq"), c, x_bits, sb)
    else:
        ds = _sq_drop(ring, x_bits)
        sq = await square_narrow(p.fork("sq").with_ring(ring.with_bits(sb)), c, x_bits, ds)
        ss = sq.sum(axis=-1, keepdims=True)
    ss = lift(ss, sb - ds, ring)  # ⌊Σc²/2^ds⌋·2^(ℓ−sb+ds)
    var = await arith.div_public(p.fork("var"), ss, d << (ring.bits - sb + ring.frac_bits))
    v = ring.reduce(var + ring.encode(eps)) if p.role == CLIENT else var
    y = await rsqrt(p.fork("rsqrt"), v, *var_range, n_iter=n_iter)
    cb, yb = cy_bits(d, ring), y_bits(var_range[0], ring)
    if he_cy:
        cy = await mul_rows_he(p.fork("cy"), c, y, x_bits, _he_y_bits(yb, x_bits), cb)
        z = await trunc_from(p.fork("zt"), cy, cb, ring.frac_bits)
    else:
        dc = _cy_drop(ring, yb)
        cy = await mul_narrow(p.fork("cy").with_ring(ring.with_bits(cb)), c, y, yb, dc)
        z = await trunc_from(p.fork("zt"), cy, cb - dc, ring.frac_bits - dc)
    if not weighted:
        return z
    wb, dw = w_ring_bits(d, ring, w_bits), safe_drop(ring, w_bits + 1)
    q = p.fork("w").with_ring(ring.with_bits(wb))
    zw = await mul_server_weight(q, z, weight, w_bits, dw)
    return await trunc_from(p.fork("out"), zw, wb - dw, ring.frac_bits - dw)


def he_products(
    pool: OTPool,
    rows: int,
    d: int,
    ring: Ring,
    var_range: tuple[int, int],
    x_bits: int = DEFAULT_X_BITS,
    union_bits: int = FLOOD_UNION_BITS,
) -> tuple[bool, bool]:
    """Whether Σc² and c·y go by HE (:func:`sum_squares_he`, :func:`mul_rows_he`) when HE is
    allowed: each where it declares fewer bytes than by COTs and has an HE plan (a public
    function of the shapes; at one row of 768 the COTs win, at 8 rows the HE products do; at
    d = 4096 Σc² has no plan that holds the noise and stays with the COTs)."""
    sb = ring.with_bits(sq_bits(d, var_range[1], ring, x_bits))
    cb, yb = ring.with_bits(cy_bits(d, ring)), y_bits(var_range[0], ring)
    n, ds, ky = rows * d, _sq_drop(ring, x_bits), _he_y_bits(yb, x_bits)
    sq_ot = square_narrow_cost(pool, n, sb, x_bits, ds)
    cy_ot = mul_narrow_cost(pool, rows, d, cb, yb, _cy_drop(ring, yb))

    def cheaper(he_cost: Callable[[], Cost], ot: Cost) -> bool:
        try:
            return he_cost().bytes_total < ot.bytes_total
        except ValueError:  # no HE plan holds the noise at this width (d too large)
            return False

    return (
        cheaper(
            lambda: sum_squares_he_cost(pool, rows, d, sb, x_bits, union_bits=union_bits), sq_ot
        ),
        cheaper(lambda: mul_rows_he_cost(pool, rows, d, x_bits, ky, cb.bits, union_bits), cy_ot),
    )


def _he_y_bits(yb: int, x_bits: int) -> int:
    """The narrow width of y in :func:`mul_rows_he`: as wide as c's (any k ≥ y_bits holds
    y), so the per-row wrap's COT values (a multiple of 2^k) are shorter; the server's HE
    operand then has x_bits + 1 bits, as in the other products."""
    return max(yb, x_bits)


def he_coefficients(rows: int, d: int, x_bits: int = DEFAULT_X_BITS) -> int:
    """An upper bound on the coefficients one norm on ``rows`` rows of d returns under the
    ``HE_8K`` key (its flooding budget, :class:`secmoe.crypto.he.FloodBudget`) with ``he``:
    as if both products went by HE (:func:`he_products` may keep either on COTs); a function
    of the shapes only (:func:`~secmoe.protocols.he_rowdot.plan_rows`), whatever κ."""
    g = plan_rows("dot", rows, d, x_bits + 1)
    dot = sum(min(g, rows - s) ** 2 for s in range(0, rows, g))
    return dot + 2 * rows * d


def _sq_drop(ring: Ring, x_bits: int) -> int:
    """square_narrow's floored terms: e < k + 4 per element, so < (k + 4)·d·2^s in Σc², one
    ulp of var = Σc² / (2^f·d) at most."""
    return safe_drop(ring, x_bits + 4)


def _cy_drop(ring: Ring, yb: int) -> int:
    """mul_narrow's floored terms: e < 2k + 4."""
    return safe_drop(ring, 2 * yb + 4)


async def layernorm(
    p: Party,
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    var_range: tuple[int, int],
    n_iter: int = 2,
    x_bits: int = DEFAULT_X_BITS,
    w_bits: int = DEFAULT_W_BITS,
    weighted: bool = True,
    he: bool = False,
) -> np.ndarray:
    """Shares of ``approx.layernorm_fixed`` over the last axis (module docstring).

    Args:
        p: this party (forks ``mean``, ``sq``, ``var``, ``rsqrt``, ``cy``, ``zt``, ``w``,
            ``out``).
        x: arithmetic shares of encoded x (…, d); range |x| < 2^(x_bits−3−f).
        weight, bias: the server's γ and β (d,) (β may be None); ``None`` on the client.
        eps: public ε; var_range: public (lo, hi) with mean(c²) + ε ∈ [2^lo, 2^hi].
        n_iter: Newton steps; x_bits, w_bits: public widths (module docstring).
        weighted: public; ``False``: γ = 1 (folded into the next linear layer by the server,
            :func:`secmoe.model.fold.fold_norms`), no γ product (weight must be ``None``).
        he: public; ``True``: Σc² and c·y by HE where that declares fewer bytes
            (:func:`he_products`; the parties need :func:`secmoe.ops.linear.setup_he`'s
            ``HE_8K`` keys).

    Cost: :func:`layernorm_cost`. Error: :func:`error_bound`.
    """
    ring = p.ring
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    d = x.shape[-1]
    mu = await arith.div_public(p.fork("mean"), ring.reduce(x.sum(axis=-1, keepdims=True)), d)
    c = ring.reduce(x - mu)
    out = await _normalize(p, c, weight, eps, var_range, n_iter, x_bits, w_bits, weighted, he)
    if p.role != CLIENT and bias is not None:
        out = ring.reduce(out + ring.encode(np.broadcast_to(np.asarray(bias, np.float64), (d,))))
    return out


async def rmsnorm(
    p: Party,
    x: np.ndarray,
    weight: np.ndarray | None,
    eps: float,
    var_range: tuple[int, int],
    n_iter: int = 2,
    x_bits: int = DEFAULT_X_BITS,
    w_bits: int = DEFAULT_W_BITS,
    weighted: bool = True,
    he: bool = False,
) -> np.ndarray:
    """Shares of ``approx.rmsnorm_fixed`` over the last axis (T5, Mixtral): as
    :func:`layernorm` without the centring and the bias; range |x| < 2^(x_bits−2−f)."""
    ring = p.ring
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    return await _normalize(p, x, weight, eps, var_range, n_iter, x_bits, w_bits, weighted, he)


def norm_cost(
    pool: OTPool,
    shape: tuple[int, ...],
    ring: Ring,
    var_range: tuple[int, int],
    centred: bool = True,
    n_iter: int = 2,
    x_bits: int = DEFAULT_X_BITS,
    w_bits: int = DEFAULT_W_BITS,
    weighted: bool = True,
    he: bool = False,
    union_bits: int = FLOOD_UNION_BITS,
) -> Cost:
    """Declared cost of :func:`layernorm` (``centred``) or :func:`rmsnorm` (``union_bits``:
    the HE keys' κ, :attr:`secmoe.ops.linear.HEState.union_bits`, when ``he``)."""
    d = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    n = rows * d
    row, f = arith.cost_trunc(pool, rows, ring), ring.frac_bits
    c = row if centred else Cost()  # μ by div_public: one COT per row
    sq_ring = ring.with_bits(sq_bits(d, var_range[1], ring, x_bits))
    he_sq, he_cy = (
        he_products(pool, rows, d, ring, var_range, x_bits, union_bits) if he else (False, False)
    )
    if he_sq:
        c = c + sum_squares_he_cost(pool, rows, d, sq_ring, x_bits, union_bits=union_bits)
    else:
        c = c + square_narrow_cost(pool, n, sq_ring, x_bits, _sq_drop(ring, x_bits))
    c = c + row + rsqrt_cost(pool, rows, *var_range, ring, n_iter)  # ÷ (2^f·d), rsqrt
    cy_ring, yb = ring.with_bits(cy_bits(d, ring)), y_bits(var_range[0], ring)
    if he_cy:
        ky = _he_y_bits(yb, x_bits)
        c = c + mul_rows_he_cost(pool, rows, d, x_bits, ky, cy_ring.bits, union_bits)
    else:
        c = c + mul_narrow_cost(pool, rows, d, cy_ring, yb, _cy_drop(ring, yb))
    c = c + trunc_from_cost(pool, n, ring, cy_ring.bits, f)
    if not weighted:
        return c
    w_ring, dw = ring.with_bits(w_ring_bits(d, ring, w_bits)), safe_drop(ring, w_bits + 1)
    c = c + mul_server_weight_cost(pool, rows, d, w_ring, w_bits, dw)
    return c + trunc_from_cost(pool, n, ring, w_ring.bits, f)


def layernorm_cost(
    pool: OTPool, shape: tuple[int, ...], ring: Ring, var_range: tuple[int, int], **kw: int
) -> Cost:
    """Declared cost of :func:`layernorm`."""
    return norm_cost(pool, shape, ring, var_range, True, **kw)


def rmsnorm_cost(
    pool: OTPool, shape: tuple[int, ...], ring: Ring, var_range: tuple[int, int], **kw: int
) -> Cost:
    """Declared cost of :func:`rmsnorm`."""
    return norm_cost(pool, shape, ring, var_range, False, **kw)


def error_bound(
    x: np.ndarray,
    ring: Ring,
    weight: np.ndarray | None,
    eps: float,
    var_range: tuple[int, int],
    centred: bool = True,
) -> np.ndarray:
    """Per element, a bound on |secure − spec| in ulps (first-order propagation).

    Δμ ≤ 1 (div_public) so Δc ≤ 1; Δvar ≤ (Σ(2|c| + 1)/2^f + 2)/d + 3 (the division, the
    spec's two floors and the squares' floored low bits, :func:`safe_drop`); Δy ≤
    ½·v^(−3/2)·Δvar + :data:`RSQRT_SLACK`; then Δz ≤ Δc·y + |c|·Δy + Δc·Δy/2^f + 3 and
    Δout ≤ Δz·|γ| + 3 (a truncation and a product's floored low bits each; γ, y, c real);
    ``weight`` ``None`` (the unweighted norm): Δz.
    """
    f = ring.frac_bits
    xs = ring.to_signed(ring.reduce(np.asarray(x, dtype=np.uint64))).astype(np.float64)
    d = xs.shape[-1]
    c = xs - np.floor(xs.sum(-1, keepdims=True) / d) if centred else xs
    dc = 1.0 if centred else 0.0
    var = np.floor(np.floor((c * c).sum(-1, keepdims=True) / 2**f) / d) / 2**f + eps
    dvar = ((2 * np.abs(c) * dc + dc).sum(-1, keepdims=True) / 2**f + 2) / d + 3
    y = 1.0 / np.sqrt(np.maximum(var, 2.0 ** var_range[0]))
    dy = 0.5 * y**3 * dvar + RSQRT_SLACK
    dz = dc * y + np.abs(c) / 2**f * dy + dc * dy / 2**f + 3
    if weight is None:
        return np.ceil(dz)
    return np.ceil(dz * np.abs(np.asarray(weight, np.float64)) + 3)


def ideal_layernorm(
    x: np.ndarray,
    ring: Ring,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    var_range: tuple[int, int],
    n_iter: int = 2,
) -> np.ndarray:
    """The specification: :func:`approx.layernorm_fixed` (``weight`` ``None``: γ = 1, whose
    product trunc(z·2^f) is z exactly: the unweighted norm)."""
    w = 1.0 if weight is None else weight
    return approx.layernorm_fixed(ring.reduce(x), ring, w, bias, eps, var_range, n_iter)


def ideal_rmsnorm(
    x: np.ndarray,
    ring: Ring,
    weight: np.ndarray | None,
    eps: float,
    var_range: tuple[int, int],
    n_iter: int = 2,
) -> np.ndarray:
    """The specification: :func:`approx.rmsnorm_fixed` (``weight`` ``None``: γ = 1)."""
    w = 1.0 if weight is None else weight
    return approx.rmsnorm_fixed(ring.reduce(x), ring, w, eps, var_range, n_iter)


__all__ = [
    "cy_bits",
    "error_bound",
    "he_coefficients",
    "he_products",
    "ideal_layernorm",
    "ideal_rmsnorm",
    "layernorm",
    "layernorm_cost",
    "lift",
    "mul_rows_he",
    "mul_rows_he_cost",
    "mul_server_weight",
    "mul_server_weight_cost",
    "norm_cost",
    "rmsnorm",
    "rmsnorm_cost",
    "rsqrt",
    "rsqrt_cost",
    "safe_drop",
    "sq_bits",
    "sum_squares_he",
    "sum_squares_he_cost",
    "trunc_from",
    "trunc_from_cost",
    "w_ring_bits",
]

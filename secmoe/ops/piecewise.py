"""Piecewise polynomials on secret shares: Select-Then-Compute and the compute-then-select baseline.

Both evaluate a public :class:`~secmoe.ops.approx.PiecewisePolynomial` (breakpoints b_j, table
C of encoded coefficients, f + e fractional bits) on arithmetic shares of fixed-point x, and
return shares of exactly what :meth:`PiecewisePolynomial.evaluate_fixed` computes (up to the
truncation protocol's error, bounded by :func:`error_bound`). Nobody learns anything: every
intermediate value stays shared, and the public inputs are the table, the shape and the
comparison width.

**STC** (:func:`stc`, SecMoE, arXiv 2601.06790)::

    Step 1  c_j = 1{x > b_j}, once per breakpoint (Boolean shares)   ┐ concurrent
    Step 2  the monomials x^k once (x² by one square + trunc)         ┘
    Step 3  select the segment, either
            "mux"    (default): v_j = C_j·(2^f, x, x², …) locally (public C × shares), then
                     p = v_0 + Σ_j c_j·(v_{j+1} − v_j): one MUX per breakpoint;
            "onehot" (the paper's literal form): B2A of the thermometer c, s = (1 − c_0,
                     c_0 − c_1, …, c_{m−1}) locally, a = sᵀC locally, then a_k·x^k: one
                     secret × secret product per power;
    Step 4  one truncation by f + e (skipped when every coefficient is an integer).

Measured (the 6-segment GeLU, 32 × 3072): "mux" 38 MB with the silent COT source (235 MB with
IKNP), "onehot" 135 MB (520 MB): the products a_1·x and a_2·x² cost far more than the five
MUXes (two COTs each), so "mux" is the default. Both are select-then-compute: the secret
products are those of one polynomial (here one square), whatever the number of segments.

**Products** use narrow operands (:func:`square_narrow`, :func:`mul_narrow`: k + 2 COTs instead
of ℓ). The width is that of the segments that use the power (:func:`domain_bits`): elsewhere a
product may be garbage because the selected segment multiplies it by an exact 0. GeLU's x² runs
on 23 bits (|x| ≤ 5): 0.60 KB instead of 1.54 KB for a full square.

**CTC** (:func:`ctc`, PUMA eprint 2023/1327 / BumbleBee eprint 2023/1678): every power up to the
table's degree (PUMA's GeLU: degree 6, five products), every segment's value, then the one-hot
indicator s_j (Boolean, local from c) selects by one MUX per non-zero segment.

**Breakpoint comparisons** (:func:`compare_breakpoints`): 1{x > b} = MSB(b − x) on k bits,
valid when |x − b_j| < 2^(k−1−f) (callers state the range; the default k = 32 covers
|x| + |b| < 2^13, the range in which x² itself does not overflow the truncation's 2^(ℓ−2)).
Every breakpoint is compared against the same x, so work is shared:
the low t bits that all encoded b_j have zero (GeLU's odd integers: t = f) carry the same for
every j (one millionaires' for all), and each high digit is one 1-out-of-2^s OT whose messages
hold every breakpoint's (gt, eq) bits; an AND chain per breakpoint combines the digits. A
planner picks t, the radix and the digit size (:func:`compare_plan`). GeLU at k = 32: 1.50 KB
for the five comparisons with IKNP, against 4.83 KB for five separate 32-bit MSBs.

REF: SecMoE (arXiv 2601.06790) for STC; CrypTFlow2 (eprint 2020/1002) for MSB from the
millionaires' carry; PUMA (eprint 2023/1327) §5 for the GeLU baseline.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from ..crypto.ring import Ring
from ..protocols import arith, boolean, compare
from ..protocols.boolean import CLIENT
from ..protocols.cost import Cost
from ..protocols.ot.pool import OTPool
from ..protocols.party import Party, batch_sizes
from .approx import PiecewisePolynomial

#: Default comparison width k: sound for |x| + max|b_j| < 2^(k−1−f) = 2^13 at f = 18.
DEFAULT_CMP_BITS = 32
SELECTS = ("mux", "onehot")
METHODS = ("stc", "ctc")
#: Elements per batch of :func:`evaluate`. GeLU's comparisons, powers and MUXes hold ~7.6 KB
#: per element while in flight (both parties, silent OT; tracemalloc peak of 996 MB at 2^17
#: elements in one batch): 2^14 elements keep a batch near 125 MB, at a few rounds per batch.
EVAL_CHUNK = 1 << 14

# --------------------------------------------------------------------------------------------
# Declared costs: secmoe.protocols.cost.Cost (``+`` sequential, ``|`` concurrent; rounds are an
# upper bound for composites) from the protocols' own declarations and the OT pool's.
# --------------------------------------------------------------------------------------------


def acot_cost(
    pool: OTPool,
    sender: str,
    n: int,
    ring: Ring,
    k: int | None = None,
    widths: np.ndarray | None = None,
) -> Cost:
    """n additive correlated OTs of ℓ-bit (× k) messages (or per-OT ``widths``), ``sender``
    sending."""
    return Cost.of_ot(pool.cost("acot", n, ring.bits, k, widths=widths), sender)


def and_open_cost(n: int) -> Cost:
    """The opening of :func:`secmoe.protocols.boolean.and_` with given triples."""
    return Cost.exchange(np.zeros(2 * n, bool))


# --------------------------------------------------------------------------------------------
# Products with a narrow factor (SiRNN-style: the factor's k-bit shares and their wrap bit)
# --------------------------------------------------------------------------------------------


def _narrow_shares(p: Party, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, msb): this party's k-bit share of y + 2^(k−2) and that share's top bit.

    If |y| < 2^(k−2) then y + 2^(k−2) ∈ [0, 2^(k−1)), so its shares wrap (u_c + u_s ≥ 2^k) iff
    either top bit is set: w = a ∨ b = a + b(1 − a) = b + a(1 − b) with a, b the two MSBs.
    """
    u = ring_add_public(p, y, 1 << (k - 2)) & np.uint64((1 << k) - 1)
    return u, (u >> np.uint64(k - 1)) & np.uint64(1)


def ring_add_public(p: Party, x: np.ndarray, c: int) -> np.ndarray:
    """Shares of x + c for a public integer c, mod 2^64 (the client adds)."""
    x = np.asarray(x, dtype=np.uint64)
    return x + np.uint64(c % (1 << 64)) if p.role == CLIENT else x.copy()


async def _cross_pair(
    p: Party,
    corr: np.ndarray,
    choices: np.ndarray,
    width: int,
    shifts: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Both COT batches at once: this party sends ``corr`` (N, width) and chooses with
    ``choices`` (N,) in the peer's batch. Returns (−pads, received), each (N, width).

    ``shifts`` (scalar messages only: width 1): (this party's, the peer's) per-slot counts t_j
    of low zero bits of every value of slot j (period L, the slots of one element): slot j
    carries ℓ − t_j bits (the value / 2^t_j; both results are scaled back by 2^t_j)."""
    me, peer = (CLIENT, "server") if p.role == CLIENT else ("server", CLIENT)
    f_send, f_recv = p.fork(f"from_{me}"), p.fork(f"from_{peer}")
    bits = p.ring.bits
    if shifts is None:
        r, got = await asyncio.gather(
            f_send.ot.acot_send(corr.reshape(-1, width), bits),
            f_recv.ot.acot_recv(choices.reshape(-1), bits, width),
        )
        return np.uint64(0) - r.reshape(-1, width), got.reshape(-1, width)
    mine_t, peer_t = (np.asarray(t, np.uint64) for t in shifts)
    r, got = await asyncio.gather(
        f_send.ot.acot_send(
            (corr.reshape(-1, mine_t.size) >> mine_t).reshape(-1), bits, bits - mine_t
        ),
        f_recv.ot.acot_recv(choices.reshape(-1), bits, None, bits - peer_t),
    )
    mine = (np.uint64(0) - r.reshape(-1, mine_t.size)) << mine_t
    return mine.reshape(-1, 1), (got.reshape(-1, peer_t.size) << peer_t).reshape(-1, 1)


def _square_shifts(k: int, out_bits: int, drop: int) -> tuple[np.ndarray, np.ndarray]:
    """Low zero bits of :func:`square_narrow`'s COT values after ``drop``: the client's slot i
    (2u·2^i) has i + 1 − s, its wrap slot and the server's (multiples of 2^(k+1)) k + 1 − s
    (at most ℓ − 1: every slot sends at least one bit)."""
    t = np.minimum(np.maximum(np.arange(1, k + 2) - drop, 0), out_bits - 1)
    t[k] = min(max(k + 1 - drop, 0), out_bits - 1)
    return t, t[k:]


def dropped(ring: Ring, v: np.ndarray, drop: int) -> np.ndarray:
    """⌊(v mod 2^ℓ) / 2^drop⌋: a term of a product floored before it is sent or summed."""
    return ring.reduce(v) >> np.uint64(drop)


async def mul_narrow(
    p: Party, x: np.ndarray, y: np.ndarray, y_bits: int | None = None, drop: int = 0
) -> np.ndarray:
    """Shares of x·y mod 2^ℓ where y is one value per row of x (shape ``x.shape[:-1] + (1,)``)
    or one per element (``x.shape``), and |y| < 2^(y_bits−2) (``None``: any y, ℓ bits).

    With ``drop`` = s > 0 (for a product that is truncated next): shares mod 2^(ℓ−s) of
    ⌊x·y / 2^s⌋ − e, 0 ≤ e < 2k + 4: every COT value and each local term is floored by 2^s
    first (ℓ − s bits per value on the wire; the terms' sum is x·y + K·2^ℓ, so the sum of their
    floors is ⌊x·y/2^s⌋ + K·2^(ℓ−s) − e, one unit of e per floored term).

    With u_c + u_s = y + B + 2^k·w (B = 2^(k−2), k = y_bits, :func:`_narrow_shares`):
    x·y = x·u_c + x·u_s − 2^k·w·x − B·x. The cross terms x_s·u_c and x_c·u_s are Gilboa
    products over the k bits of u (the chooser's bits); w·x_c = a·x_c + b(1 − a)·x_c and
    w·x_s = b·x_s + a(1 − b)·x_s add one COT each. One COT serves a whole row of x (its
    message carries every element of the row).

    Message flow: one COT batch each way, concurrently: (k + 1) COTs per row of y, each with
    a row of (ℓ − s)-bit values (k = ℓ and no wrap slot when ``y_bits`` is None).
    Cost: :func:`mul_narrow_cost`. Exact (no truncation) when ``drop`` is 0.
    """
    ring = p.ring
    out = ring.with_bits(ring.bits - drop)
    x = np.asarray(x, dtype=np.uint64)
    y_shape = np.shape(y)
    if y_shape != x.shape and y_shape != (*x.shape[:-1], 1):
        raise ValueError(f"mul_narrow: y must be {x.shape} or {(*x.shape[:-1], 1)}, got {y_shape}")
    rows = int(np.prod(y_shape, dtype=np.int64))
    width = x.size // rows
    xr = x.reshape(rows, width)
    k, wrap = _narrow_width(y_bits, ring)
    if wrap:
        u, top = _narrow_shares(p, np.asarray(y, np.uint64).reshape(rows), k)
    else:
        u, top = np.asarray(y, np.uint64).reshape(rows), np.zeros(rows, np.uint64)
    scales = [np.broadcast_to(np.uint64(1) << np.arange(k, dtype=np.uint64), (rows, k))]
    choices = [arith.step_bits(u, k)]
    if wrap:  # the wrap slot: correlation −2^k·(1 − msb)·x, choice msb
        scales.append((np.uint64(0) - (np.uint64(1) - top) * np.uint64(1 << k))[:, None])
        choices.append(top.astype(bool)[:, None])
    sc = np.concatenate(scales, axis=1)  # (rows, k + wrap)
    corr = dropped(ring, xr[:, None, :] * sc[:, :, None], drop)
    mine, got = await _cross_pair(p.with_ring(out), corr, np.concatenate(choices, axis=1), width)
    slots = sc.shape[1]
    cross = mine.reshape(rows, slots, width).sum(1) + got.reshape(rows, slots, width).sum(1)
    local = xr * u[:, None]
    if wrap:
        local = local - np.uint64(1 << k) * top[:, None] * xr - np.uint64(1 << (k - 2)) * xr
    return out.reduce(dropped(ring, local, drop) + cross).reshape(x.shape)


def _narrow_width(bits: int | None, ring: Ring) -> tuple[int, bool]:
    if bits is None or bits >= ring.bits:
        return ring.bits, False
    if bits < 3:
        raise ValueError(f"narrow width must be ≥ 3 bits, got {bits}")
    return bits, True


def mul_narrow_cost(
    pool: OTPool, rows: int, width: int, ring: Ring, y_bits: int | None = None, drop: int = 0
) -> Cost:
    """Declared cost of :func:`mul_narrow` with ``rows`` values of y and rows of ``width``."""
    k, wrap = _narrow_width(y_bits, ring)
    n, out = rows * (k + int(wrap)), ring.with_bits(ring.bits - drop)
    return acot_cost(pool, CLIENT, n, out, width) | acot_cost(pool, "server", n, out, width)


async def square_narrow(
    p: Party, x: np.ndarray, x_bits: int | None = None, drop: int = 0
) -> np.ndarray:
    """Shares of x² mod 2^ℓ for |x| < 2^(x_bits−2) (``None``: :func:`arith.square`); with
    ``drop`` = s, shares mod 2^(ℓ−s) of ⌊x²/2^s⌋ − e, 0 ≤ e < k + 4, as :func:`mul_narrow`.

    With y = x + B = u_c + u_s − 2^k·w (:func:`_narrow_shares`, B = 2^(k−2)):
    x² = (u_c² − 2B·u_c + B²) + (u_s² − 2B·u_s) + 2·u_c·u_s + w·(G_c + G_s), where
    G_c = 2^(2k) + 2^(k+1)·B − 2^(k+1)·u_c and G_s = −2^(k+1)·u_s. The server chooses with the
    k bits of u_s and its MSB b (k + 1 COTs from the client), the client with its MSB a (one
    COT from the server).

    Cost: :func:`square_narrow_cost` (k + 2 COTs per element instead of ℓ). Exact when
    ``drop`` is 0.
    """
    ring = p.ring
    k, wrap = _narrow_width(x_bits, ring)
    if not wrap:
        if drop:
            raise ValueError("square_narrow: drop needs a narrow width x_bits")
        return await arith.square(p, x)
    out, q = ring.with_bits(ring.bits - drop), p.with_ring(ring.with_bits(ring.bits - drop))
    shifts = _square_shifts(k, out.bits, drop)  # (the client's slots, the server's)
    x = np.asarray(x, dtype=np.uint64)
    flat = x.reshape(-1)
    u, top = _narrow_shares(p, flat, k)
    b_ = np.uint64(1 << (k - 2))
    k1 = np.uint64(1 << (k + 1)) if k + 1 < 64 else np.uint64(0)
    if p.role == CLIENT:
        const = ((1 << (2 * k)) + (1 << (2 * k - 1))) % (1 << 64)  # 2^(2k) + 2^(k+1)·B
        g = np.uint64(const) - k1 * u
        local = u * u - np.uint64(2) * b_ * u + b_ * b_ + top * g
        sc = np.concatenate(
            [np.uint64(2) * u[:, None] << np.arange(k, dtype=np.uint64), ((1 - top) * g)[:, None]],
            axis=1,
        )
        mine, got = await _cross_pair(q, dropped(ring, sc, drop), top.astype(bool), 1, shifts)
        cross = mine.reshape(-1, k + 1).sum(1) + got.reshape(-1)
    else:
        g = np.uint64(0) - k1 * u
        local = u * u - np.uint64(2) * b_ * u + top * g
        choices = np.concatenate([arith.step_bits(u, k), top.astype(bool)[:, None]], axis=1)
        corr = dropped(ring, ((1 - top) * g)[:, None], drop)
        mine, got = await _cross_pair(q, corr, choices, 1, shifts[::-1])
        cross = mine.reshape(-1) + got.reshape(-1, k + 1).sum(1)
    return out.reduce(dropped(ring, local, drop) + cross).reshape(x.shape)


def square_narrow_cost(
    pool: OTPool, n: int, ring: Ring, x_bits: int | None = None, drop: int = 0
) -> Cost:
    """Declared cost of :func:`square_narrow` on n elements."""
    k, wrap = _narrow_width(x_bits, ring)
    if not wrap:
        return arith.cost_square(pool, n, ring)
    out = ring.with_bits(ring.bits - drop)
    tc, ts = _square_shifts(k, out.bits, drop)
    return acot_cost(pool, CLIENT, n * (k + 1), out, widths=out.bits - tc) | acot_cost(
        pool, "server", n, out, widths=out.bits - ts
    )


# --------------------------------------------------------------------------------------------
# Step 1: comparisons with public breakpoints
# --------------------------------------------------------------------------------------------

#: Largest digit of the threshold leaves (1-out-of-2^8 OT) and of the millionaires' radix.
MAX_DIGIT_BITS = 8
#: Thresholds per leaf OT message (2 bits each, 64-bit messages).
MAX_GROUP = 32


@dataclass(frozen=True)
class ComparePlan:
    """How :func:`compare_breakpoints` splits the k − 1 low bits of b_j − x.

    ``low``: the t low bits that no breakpoint affects (their carry is computed once, by a
    millionaires' of radix ``radix``); ``digits``: the sizes of the high digits (LSB first),
    each compared for every breakpoint by one shared leaf OT.
    """

    bits: int
    low: int
    radix: int
    digits: tuple[int, ...]


def shared_low_bits(thresholds: np.ndarray, bits: int) -> int:
    """t: the low bits that every encoded threshold has zero (at most bits − 1)."""
    t = bits - 1
    for b in np.asarray(thresholds, dtype=np.int64).reshape(-1):
        v = int(b) % (1 << (bits - 1))
        if v:
            t = min(t, (v & -v).bit_length() - 1)
    return t


def _split(h: int, size: int) -> tuple[int, ...]:
    q = -(-h // size)
    return tuple(h // q + (1 if i < h % q else 0) for i in range(q)) if h else ()


def _leaves_cost(pool: OTPool, n: int, m: int, size: int) -> Cost:
    out = Cost()
    for g0 in range(0, m, MAX_GROUP):
        g = min(MAX_GROUP, m - g0)
        out = out + Cost.of_ot(pool.cost("kkot", n, 2 * g, n_choices=1 << size), CLIENT)
    return out


def plan_cost(pool: OTPool, n: int, m: int, plan: ComparePlan) -> Cost:
    """Declared cost of :func:`compare_breakpoints` (n elements, m breakpoints) under ``plan``."""
    first = Cost()
    for size in plan.digits:  # the leaves run concurrently
        first = first | _leaves_cost(pool, n, m, size)
    if plan.low:
        first = first | compare.cost_millionaires(pool, n, plan.low, m=plan.radix)
    ands = len(plan.digits) - (0 if plan.low else 1)
    if ands > 0:
        first = first | boolean.cost_bit_triples(pool, n * m * ands)
    for _ in range(ands):
        first = first + and_open_cost(n * m)
    return first


#: Plan objective weights, in bytes at 1 Gbit/s (a LAN wall-clock proxy), measured on the
#: reference machine (2 cores, both parties): a round (0.5 ms) ≈ 64 KB; a COT's computation
#: (extension, transpose, hashing: ~250 ns for the two parties) ≈ 32 B; a hashed pad field of
#: a 1-out-of-2^s OT (s·2^(s−1) per transfer: ~50 ns) ≈ 6 B. Bytes alone would pick 7-bit
#: digits (GeLU: 1.21 KB, 3.2 s at n = 49k); this objective picks 3–4-bit digits
#: (1.50 KB, 1.3 s).
ROUND_BYTES = 1 << 16
COT_BYTES = 32
FIELD_BYTES = 6


def plan_work(n: int, m: int, plan: ComparePlan) -> tuple[int, int]:
    """(COTs, hashed pad fields) of the plan on n elements and m breakpoints."""
    groups = -(-m // MAX_GROUP)
    cots = groups * sum(plan.digits)
    fields = groups * sum(s << (s - 1) for s in plan.digits)
    if plan.low:
        q = -(-plan.low // plan.radix)
        cots += q * plan.radix + 2 * compare.and_count(q)
        fields += q * (plan.radix << (plan.radix - 1))
    cots += 2 * m * (len(plan.digits) - (0 if plan.low else 1))
    return n * cots, n * fields


def compare_plan(pool: OTPool, n: int, thresholds: np.ndarray, bits: int) -> ComparePlan:
    """The cheapest plan: shared low bits t ∈ {0, t_max}, the millionaires' radix and the digit
    size (≤ 8 bits) of the high part, minimizing bytes + :data:`ROUND_BYTES` × rounds +
    :data:`COT_BYTES` × COTs + :data:`FIELD_BYTES` × hashed fields (a LAN time proxy)."""
    m = len(thresholds)
    best: tuple[int, ComparePlan] | None = None
    for t in sorted({0, shared_low_bits(thresholds, bits)}):
        h = bits - 1 - t
        radices = range(1, MAX_DIGIT_BITS + 1) if t else (0,)
        sizes = range(1, MAX_DIGIT_BITS + 1) if h else (0,)
        for r in radices:
            for size in sizes:
                plan = ComparePlan(bits, t, r, _split(h, size) if h else ())
                cots, fields = plan_work(n, m, plan)
                c = plan_cost(pool, n, m, plan)
                b = c.bytes_total + ROUND_BYTES * c.rounds
                b += COT_BYTES * cots + FIELD_BYTES * fields
                if best is None or b < best[0]:
                    best = (b, plan)
    assert best is not None
    return best[1]


def compare_cost(pool: OTPool, n: int, thresholds: np.ndarray, bits: int) -> Cost:
    """Declared cost of :func:`compare_breakpoints` on n elements."""
    if len(thresholds) == 0:
        return Cost()
    return plan_cost(pool, n, len(thresholds), compare_plan(pool, n, thresholds, bits))


async def compare_breakpoints(
    p: Party, x: np.ndarray, thresholds: np.ndarray, bits: int = DEFAULT_CMP_BITS
) -> np.ndarray:
    """Boolean shares of c_j = 1{x > b_j}, shape ``x.shape + (m,)``.

    c_j = MSB(z_j) for z_j = b_j − x mod 2^k, = MSB(z_c) ⊕ MSB(z_s) ⊕ carry_j, where carry_j
    compares the low k − 1 bits of the shares (CrypTFlow2). The client's z_c,j = b_j − x_c
    differ only in the bits the b_j touch; the server's z_s = −x_s is the same for every j.
    So (:class:`ComparePlan`):

    Step 1a  the low t bits (t = common trailing zeros of the b_j): one millionaires' for all j;
    Step 1b  each high digit: one 1-out-of-2^s OT, the server choosing with its digit, the
             client's table holding (gt, eq) of all m breakpoints' digits (2m-bit messages);
    Step 1c  carry_j = gt_hi ⊕ (eq_hi ∧ (… ⊕ (eq_0 ∧ carry_low))): one AND per digit and j.

    Args:
        p: this party (forks ``lo``, ``d{i}``, ``tri``, ``and{i}``).
        x: arithmetic shares (ℓ-bit ring).
        thresholds: the encoded breakpoints (signed int64), public.
        bits: comparison width k. Range: |x − b_j| < 2^(k−1) in ring units for every j.

    Cost: :func:`compare_cost` (leaves: 2 rounds; then one AND round per digit).
    """
    if len(thresholds) == 0:  # a single segment: nothing to compare
        return np.zeros((*np.shape(x), 0), dtype=bool)
    thr = np.asarray(thresholds, dtype=np.int64).reshape(-1)
    m = thr.size
    x = np.asarray(x, dtype=np.uint64)
    shape = x.shape
    x = x.reshape(-1)
    plan = compare_plan(p.ot, x.size, thr, bits)
    kmask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    neg = (np.uint64(0) - x)[:, None]
    z = (neg + thr.astype(np.uint64)) if p.role == CLIENT else np.broadcast_to(neg, (x.size, m))
    z = z & kmask
    own = ((z >> np.uint64(bits - 1)) & np.uint64(1)).astype(bool)
    low = z & np.uint64((1 << (bits - 1)) - 1)
    t, h = plan.low, bits - 1 - plan.low
    lo, hi = low[:, 0] & np.uint64((1 << t) - 1), low >> np.uint64(t)
    if p.role != CLIENT:  # carry = 1{z_c' > 2^(k−1) − 1 − z_s'}
        lo, hi = np.uint64((1 << t) - 1) - lo, (np.uint64((1 << h) - 1) - hi)[:, 0]
    n_and = len(plan.digits) - (0 if t else 1)
    offs = np.cumsum((0, *plan.digits))
    tasks = [
        _threshold_leaves(
            p.fork(f"d{i}"), (hi >> np.uint64(offs[i])) & np.uint64((1 << size) - 1), size, m
        )
        for i, size in enumerate(plan.digits)
    ]
    if t:
        tasks.append(compare.millionaires(p.fork("lo"), lo, t, m=plan.radix))
    if n_and > 0:
        tasks.append(boolean.bit_triples(p.fork("tri"), x.size * m * n_and))
    # Steps 1a and 1b, concurrently.
    got = await asyncio.gather(*tasks)
    leaves = got[: len(plan.digits)]
    rest = got[len(plan.digits) :]
    carry = np.broadcast_to(rest.pop(0)[0][:, None], (x.size, m)) if t else leaves[0][0]
    triples = rest.pop(0) if n_and > 0 else None
    # Step 1c: the carry chain, from the lowest high digit up.
    start = 0 if t else 1
    for j, (gt, eq) in enumerate(leaves[start:]):
        tr = tuple(part[j * x.size * m : (j + 1) * x.size * m] for part in triples)
        carry = gt ^ await boolean.and_(p.fork(f"and{j}"), eq, carry, triples=tr)
    return (own ^ carry).reshape(*shape, m)


async def _threshold_leaves(
    p: Party, digit: np.ndarray, size: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean shares of (1{a_j > b}, 1{a_j = b}) for the client's digits a (n, m) and the
    server's digit b (n,): 1-out-of-2^size OTs with the server choosing b."""
    n = digit.shape[0]
    gts, eqs = [], []
    for g0 in range(0, m, MAX_GROUP):
        g = min(MAX_GROUP, m - g0)
        f = p.fork(f"g{g0}") if m > MAX_GROUP else p
        if p.role == CLIENT:
            gt_mask, eq_mask = p.prg.bits((n, g)), p.prg.bits((n, g))
            table = _leaf_table(digit[:, g0 : g0 + g], gt_mask, eq_mask, size)
            await f.ot.kkot_send(table, 2 * g)
            gts.append(gt_mask)
            eqs.append(eq_mask)
        else:
            msg = await f.ot.kkot_recv(digit.astype(np.int64), 1 << size, 2 * g)
            sh = np.arange(g, dtype=np.uint64) * np.uint64(2)
            gts.append(((msg[:, None] >> sh) & np.uint64(1)).astype(bool))
            eqs.append(((msg[:, None] >> (sh + np.uint64(1))) & np.uint64(1)).astype(bool))
    return np.concatenate(gts, axis=1), np.concatenate(eqs, axis=1)


def _leaf_table(a: np.ndarray, gt_mask: np.ndarray, eq_mask: np.ndarray, size: int) -> np.ndarray:
    """T[i, v] = ⨁-masked bits (1{a_ij > v}, 1{a_ij = v}) of every j, packed 2 bits per j, in the
    smallest unsigned dtype."""
    n, g = a.shape
    dtype = np.uint8 if g <= 4 else np.uint16 if g <= 8 else np.uint32 if g <= 16 else np.uint64
    v = np.arange(1 << size, dtype=np.uint64)
    table = np.zeros((n, 1 << size), dtype=dtype)
    for j in range(g):
        aj = a[:, j : j + 1]
        gt = np.greater(aj, v) ^ gt_mask[:, j : j + 1]
        eq = np.equal(aj, v) ^ eq_mask[:, j : j + 1]
        table |= gt.astype(dtype) << dtype(2 * j)
        table |= eq.astype(dtype) << dtype(2 * j + 1)
    return table


# --------------------------------------------------------------------------------------------
# Step 2: powers
# --------------------------------------------------------------------------------------------


def used_degree(pp: PiecewisePolynomial) -> int:
    """The highest power with a non-zero coefficient in some segment."""
    nz = np.flatnonzero(np.any(pp.table != 0.0, axis=0))
    return int(nz[-1]) if nz.size else 0


def domain_bits(pp: PiecewisePolynomial, ring: Ring, cmp_bits: int, powers_from: int = 2) -> int:
    """Narrow width for x in the products of powers ≥ ``powers_from``: |x_enc| < 2^(w−2) on
    every segment that has a non-zero coefficient of such a power.

    Elsewhere the products may be garbage: the selected segment multiplies them by an exact 0
    (a MUX of the segment values, or a product with a selected coefficient 0, which
    :func:`mul_narrow` computes as an exact 0 whatever its narrow factor). GeLU's quadratics
    live on (−5, 3]: 23 bits instead of the comparisons' 33. At most ``cmp_bits + 1``.
    """
    edges = [-math.inf, *pp.breakpoints, math.inf]
    bound = 0.0
    for j, row in enumerate(pp.table):
        if np.any(row[powers_from:] != 0.0):
            bound = max(bound, abs(edges[j]), abs(edges[j + 1]))
    if math.isinf(bound):
        return cmp_bits + 1
    enc = math.ceil(bound * ring.scale) + 1
    return min(enc.bit_length() + 2, cmp_bits + 1)


def power_bits(k: int, x_bits: int | None, ring: Ring) -> int | None:
    """A width w with |x^k| < 2^(w−2) (encoded, after truncations) when |x| < 2^(x_bits−2);
    ``None`` when it reaches ℓ."""
    if x_bits is None:
        return None
    w = k * (x_bits - 2) - (k - 1) * ring.frac_bits + 3
    return w if w < ring.bits else None


async def powers(
    p: Party, x: np.ndarray, degree: int, x_bits: int | None = None
) -> list[np.ndarray]:
    """Shares of [x, x², …, x^degree], as the spec computes them: x^k = trunc(x^(k−1)·x).

    |x| < 2^(x_bits−2) (ring units) lets the products use x's narrow shares:
    x² by :func:`square_narrow` (x_bits + 2 COTs), x^k by :func:`mul_narrow` (2·(x_bits + 1)
    COTs) instead of ℓ and 2ℓ. Each truncation may subtract one ulp.
    """
    out = [np.asarray(x, dtype=np.uint64)]
    for k in range(2, degree + 1):
        f = p.fork(f"x{k}")
        prod = (
            await square_narrow(f.fork("sq"), x, x_bits)
            if k == 2
            else await mul_narrow(f.fork("mul"), out[-1], x, x_bits)
        )
        out.append(await arith.trunc(f, prod))
    return out


def _coef_bits(pp: PiecewisePolynomial, ring: Ring, cmp_bits: int, k: int) -> int | None:
    """Narrow width of x^k in the product a_k·x^k ("onehot"): x^k's bound where a_k ≠ 0."""
    only_k = np.zeros_like(pp.table)
    only_k[:, k] = pp.table[:, k]
    sub = PiecewisePolynomial(pp.breakpoints, tuple(map(tuple, only_k)))
    return power_bits(k, domain_bits(sub, ring, cmp_bits, k), ring)


def powers_cost(pool: OTPool, n: int, degree: int, ring: Ring, x_bits: int | None = None) -> Cost:
    """Declared cost of :func:`powers`."""
    c = Cost()
    for k in range(2, degree + 1):
        prod = (
            square_narrow_cost(pool, n, ring, x_bits)
            if k == 2
            else mul_narrow_cost(pool, n, 1, ring, x_bits)
        )
        c = c + prod + arith.cost_trunc(pool, n, ring)
    return c


# --------------------------------------------------------------------------------------------
# Steps 3–4: selection and the final truncation
# --------------------------------------------------------------------------------------------


def _coeffs(pp: PiecewisePolynomial, ring: Ring) -> tuple[np.ndarray, int]:
    """(A, shift): the encoded table with the constant column pre-scaled by 2^f, and the final
    truncation (f + e), or the table divided by 2^(f+e) and shift 0 when that is exact."""
    a = ring.to_signed(pp.encoded_table(ring)).astype(object)
    a[:, 0] = a[:, 0] * (1 << ring.frac_bits)
    shift = ring.frac_bits + pp.coeff_extra_bits
    if all(int(v) % (1 << shift) == 0 for v in a.reshape(-1)):
        a = a // (1 << shift)
        shift = 0
    table = np.array([[int(v) % (1 << 64) for v in row] for row in a], dtype=np.uint64)
    return ring.reduce(table), shift


def _segment_values(p: Party, a: np.ndarray, pw: list[np.ndarray]) -> np.ndarray:
    """v_j = A_j0 + Σ_k A_jk·x^k for every segment (local): shape ``x.shape + (m+1,)``."""
    ring = p.ring
    one = np.ones_like(pw[0]) if p.role == CLIENT else np.zeros_like(pw[0])
    mono = np.stack([one, *pw], axis=-1)  # (…, d+1) shares of (1, x, x², …)
    return ring.reduce(mono @ a[:, : mono.shape[-1]].T)


async def _finish(p: Party, acc: np.ndarray, shift: int) -> np.ndarray:
    return await arith.trunc(p.fork("out"), acc, shift) if shift else acc


async def stc(
    p: Party,
    pp: PiecewisePolynomial,
    x: np.ndarray,
    bits: int = DEFAULT_CMP_BITS,
    select: str = "mux",
) -> np.ndarray:
    """Shares of ``pp.evaluate_fixed(x)`` by Select-Then-Compute (see the module docstring).

    Args:
        p: this party; the call forks ``cmp``, ``pow``, ``sel``, ``out``.
        pp: the public piecewise polynomial.
        x: arithmetic shares of encoded x (any shape).
        bits: comparison width k; range: |x| + max|b_j| < 2^(k−1−f).
        select: ``"mux"`` (default) or ``"onehot"`` (the paper's coefficient selection).

    Inputs of more than :data:`EVAL_CHUNK` elements go in consecutive batches.
    Cost: :func:`stc_cost`. Error: :func:`error_bound`.
    """
    if select not in SELECTS:
        raise ValueError(f"select must be one of {SELECTS}, got {select!r}")
    return await _in_batches(p, x, lambda sub, v: _stc_batch(sub, pp, v, bits, select))


async def _in_batches(
    p: Party, x: np.ndarray, run: Callable[[Party, np.ndarray], Awaitable[np.ndarray]]
) -> np.ndarray:
    """``run`` on consecutive batches of :data:`EVAL_CHUNK` elements of x (flattened)."""
    flat = p.ring.reduce(np.asarray(x, dtype=np.uint64)).reshape(-1)
    out = np.empty(flat.size, dtype=np.uint64)
    for sub, part in p.batches(flat.size, EVAL_CHUNK):
        out[part] = await run(sub, flat[part])
    return out.reshape(np.shape(x))


async def _stc_batch(
    p: Party, pp: PiecewisePolynomial, x: np.ndarray, bits: int, select: str
) -> np.ndarray:
    ring = p.ring
    a, shift = _coeffs(pp, ring)
    deg = used_degree(pp)
    # Steps 1–2, concurrently.
    c, pw = await asyncio.gather(
        compare_breakpoints(p.fork("cmp"), x, pp.encoded_breakpoints(ring), bits),
        powers(p.fork("pow"), x, deg, domain_bits(pp, ring, bits)),
    )
    # Step 3.
    if select == "mux":
        v = _segment_values(p, a, pw)
        d = ring.reduce(v[..., 1:] - v[..., :-1])
        acc = v[..., 0]
        if d.shape[-1]:
            acc = ring.reduce(acc + (await boolean.mux(p.fork("sel"), c, d)).sum(-1))
    else:
        ca = await boolean.b2a(p.fork("sel"), c)
        first = (np.ones_like(x) if p.role == CLIENT else np.zeros_like(x))[..., None]
        s = ring.reduce(np.concatenate([first, ca], -1) - np.concatenate([ca, 0 * first], -1))
        coef = ring.reduce(s @ a)  # (…, d+1): shares of the selected row
        cols = [k for k in range(1, deg + 1) if np.any(a[:, k])]
        prods = await asyncio.gather(
            *(
                mul_narrow(p.fork(f"c{k}"), coef[..., k], pw[k - 1], _coef_bits(pp, ring, bits, k))
                for k in cols
            )
        )
        acc = ring.reduce(coef[..., 0] + sum(prods, np.zeros_like(x)))
    # Step 4.
    return await _finish(p, acc, shift)


async def ctc(
    p: Party, pp: PiecewisePolynomial, x: np.ndarray, bits: int = DEFAULT_CMP_BITS
) -> np.ndarray:
    """Shares of ``pp.evaluate_fixed(x)`` by compute-then-select (PUMA/BumbleBee's method).

    Every power up to the table's degree, every segment's value, then the one-hot indicators
    s_0 = ¬c_0, s_j = c_{j−1} ⊕ c_j, s_m = c_{m−1} select them: one MUX per non-zero segment.
    Arguments and batches as :func:`stc`. Cost: :func:`ctc_cost`.
    """
    return await _in_batches(p, x, lambda sub, v: _ctc_batch(sub, pp, v, bits))


async def _ctc_batch(p: Party, pp: PiecewisePolynomial, x: np.ndarray, bits: int) -> np.ndarray:
    ring = p.ring
    a, shift = _coeffs(pp, ring)
    c, pw = await asyncio.gather(
        compare_breakpoints(p.fork("cmp"), x, pp.encoded_breakpoints(ring), bits),
        powers(p.fork("pow"), x, used_degree(pp), domain_bits(pp, ring, bits)),
    )
    v = _segment_values(p, a, pw)
    s = np.concatenate([boolean.not_(p, c[..., :1]), c[..., :-1] ^ c[..., 1:], c[..., -1:]], -1)
    rows = _nonzero_rows(a)
    picked = await boolean.mux(p.fork("sel"), s[..., rows], v[..., rows])
    return await _finish(p, ring.reduce(picked.sum(-1)), shift)


def _nonzero_rows(a: np.ndarray) -> list[int]:
    return [j for j in range(a.shape[0]) if np.any(a[j])]


async def evaluate(
    p: Party,
    pp: PiecewisePolynomial,
    x: np.ndarray,
    method: str = "stc",
    bits: int = DEFAULT_CMP_BITS,
    select: str = "mux",
) -> np.ndarray:
    """:func:`stc` (with ``select``) or :func:`ctc`."""
    if method == "stc":
        return await stc(p, pp, x, bits, select)
    if method == "ctc":
        return await ctc(p, pp, x, bits)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# --------------------------------------------------------------------------------------------
# Declared cost, ideal, error bound
# --------------------------------------------------------------------------------------------


def stc_cost(
    pool: OTPool,
    pp: PiecewisePolynomial,
    n: int,
    ring: Ring,
    bits: int = DEFAULT_CMP_BITS,
    select: str = "mux",
) -> Cost:
    """Declared cost of :func:`stc` on n elements (its batches, one after the other)."""
    return _batches_cost(n, lambda k: _stc_batch_cost(pool, pp, k, ring, bits, select))


def _batches_cost(n: int, one: Callable[[int], Cost]) -> Cost:
    total = Cost()
    for k in batch_sizes(n, EVAL_CHUNK):
        total = total + one(k)
    return total


def _stc_batch_cost(
    pool: OTPool, pp: PiecewisePolynomial, n: int, ring: Ring, bits: int, select: str
) -> Cost:
    a, shift = _coeffs(pp, ring)
    deg, m = used_degree(pp), len(pp.breakpoints)
    c = compare_cost(pool, n, pp.encoded_breakpoints(ring), bits) | powers_cost(
        pool, n, deg, ring, domain_bits(pp, ring, bits)
    )
    if select == "mux":
        c = c + (boolean.cost_mux(pool, n * m, ring.bits) if m else Cost())
    else:
        prods = Cost()
        for k in (k for k in range(1, deg + 1) if np.any(a[:, k])):
            prods = prods | mul_narrow_cost(pool, n, 1, ring, _coef_bits(pp, ring, bits, k))
        c = c + boolean.cost_b2a(pool, n * m, ring.bits) + prods
    return c + (arith.cost_trunc(pool, n, ring) if shift else Cost())


def ctc_cost(
    pool: OTPool, pp: PiecewisePolynomial, n: int, ring: Ring, bits: int = DEFAULT_CMP_BITS
) -> Cost:
    """Declared cost of :func:`ctc` on n elements (its batches, one after the other)."""
    return _batches_cost(n, lambda k: _ctc_batch_cost(pool, pp, k, ring, bits))


def _ctc_batch_cost(pool: OTPool, pp: PiecewisePolynomial, n: int, ring: Ring, bits: int) -> Cost:
    a, shift = _coeffs(pp, ring)
    c = compare_cost(pool, n, pp.encoded_breakpoints(ring), bits) | powers_cost(
        pool, n, used_degree(pp), ring, domain_bits(pp, ring, bits)
    )
    c = c + boolean.cost_mux(pool, n * len(_nonzero_rows(a)), ring.bits)
    return c + (arith.cost_trunc(pool, n, ring) if shift else Cost())


def cost(
    pool: OTPool,
    pp: PiecewisePolynomial,
    n: int,
    ring: Ring,
    method: str = "stc",
    bits: int = DEFAULT_CMP_BITS,
    select: str = "mux",
) -> Cost:
    """Declared cost of :func:`evaluate`."""
    if method == "ctc":
        return ctc_cost(pool, pp, n, ring, bits)
    return stc_cost(pool, pp, n, ring, bits, select)


def ideal(pp: PiecewisePolynomial, x: np.ndarray, ring: Ring) -> np.ndarray:
    """The plaintext functionality: ``pp.evaluate_fixed`` (exact truncations)."""
    return pp.evaluate_fixed(ring.reduce(np.asarray(x, dtype=np.uint64)), ring)


def error_bound(pp: PiecewisePolynomial, x: np.ndarray, ring: Ring) -> np.ndarray:
    """Per element, the largest |secure − ideal| in ulps that the truncation protocol allows.

    Each truncation returns ⌊v/2^s⌋ or one less. The powers' errors grow as
    E_2 = 1, E_k = ⌈E_{k−1}·|x|⌉ + 1 (|x| real); the selected segment's sum is off by at most
    D = Σ_k |a_k|·E_k (a_k real), and the final truncation adds one: bound ⌈D⌉ + 1 (or D when
    the coefficients are integers and no final truncation runs). Selection is exact.
    """
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    xr = np.abs(ring.decode(x))
    table = ring.to_signed(pp.encoded_table(ring)) / 2.0 ** (ring.frac_bits + pp.coeff_extra_bits)
    rows = table[np.argmax(pp.selector_fixed(x, ring), axis=-1)]  # (…, d+1), real
    _, shift = _coeffs(pp, ring)
    d = np.zeros(x.shape)
    e = np.zeros(x.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(2, used_degree(pp) + 1):
            e = np.ceil(e * xr) + 1.0 if k > 2 else np.ones(x.shape)
            d = d + np.where(rows[..., k] != 0.0, np.abs(rows[..., k]) * e, 0.0)
    return np.ceil(d) + 1.0 if shift else d


__all__ = [
    "DEFAULT_CMP_BITS",
    "compare_breakpoints",
    "compare_cost",
    "cost",
    "ctc",
    "ctc_cost",
    "error_bound",
    "evaluate",
    "ideal",
    "powers",
    "stc",
    "stc_cost",
]

"""Comparison: the millionaires' protocol, MSB/DReLU, ReLU, x < y, x > c, equality.

**Millionaires'** (client holds a, server holds b, both k-bit): Boolean shares of 1{a > b}
and of 1{a = b}. The values are cut into q = ⌈k/m⌉ digits of m bits; for each digit a
1-out-of-2^m OT gives the server shares of (gt_j, eq_j) = (1{a_j > b_j}, 1{a_j = b_j}) (the
client's shares are its random masks); an AND tree combines them from the top digit down:

    gt = gt_hi ⊕ (eq_hi ∧ gt_lo),   eq = eq_hi ∧ eq_lo.

Message flow::

    client (a)                                   server (b)
    Step 1: masks, tables T_j[v] = (gt⊕[a_j>v], eq⊕[a_j=v])
            ── 1-of-2^m OT, 2-bit messages ─────▶  Step 2: (gt_j, eq_j) shares = T_j[b_j]
    Step 3: ⌈log2 q⌉ levels of AND (bit triples made concurrently with Step 1)

**MSB** of a shared x mod 2^k: MSB(x) = MSB(x_c) ⊕ MSB(x_s) ⊕ carry, where the carry of the
low k−1 bits is 1{x_c' > 2^(k−1) − 1 − x_s'}: one millionaires' on k−1 bits.

Who learns what: nothing (OT and Beaver triples hide everything).

REF: Rathee, Rastogi, Gupta, Chandran, Sharma, "CrypTFlow2", eprint 2020/1002, §3 (Fig. 5,
millionaires' from 1-out-of-2^m OT; DReLU from the carry).

Range assumptions: comparing on k < ℓ bits requires the compared value to lie in
[−2^(k−1), 2^(k−1)); shares reduced mod 2^k remain valid shares of it. Callers state the range
at the call site.
"""

from __future__ import annotations

import asyncio

import numpy as np

from .boolean import CLIENT, and_, bit_triples, cost_bit_triples, cost_mux, mux, not_, xor
from .cost import Cost
from .ot.pool import OTPool
from .party import Party

DEFAULT_RADIX_BITS = 4


def step_digits(x: np.ndarray, bits: int, m: int) -> np.ndarray:
    """The low ``bits`` bits of x as q = ⌈bits/m⌉ digits of m bits, LSB digit first."""
    q = -(-bits // m)
    shifts = np.arange(q, dtype=np.uint64) * np.uint64(m)
    x = np.asarray(x, dtype=np.uint64)
    if bits < 64:
        x = x & np.uint64((1 << bits) - 1)
    return ((x[..., None] >> shifts) & np.uint64((1 << m) - 1)).astype(np.uint16)


def step_leaf_tables(
    digits: np.ndarray, gt_mask: np.ndarray, eq_mask: np.ndarray, m: int
) -> np.ndarray:
    """The client's OT messages: T[..., v] = (gt_mask ⊕ [d > v]) | (eq_mask ⊕ [d = v]) << 1."""
    v = np.arange(1 << m, dtype=np.uint16)
    d = digits[..., None]
    gt = (d > v) ^ gt_mask[..., None]
    eq = (d == v) ^ eq_mask[..., None]
    return (gt.astype(np.uint8) | (eq.astype(np.uint8) << 1)).astype(np.uint64)


def and_count(q: int, want_eq: bool) -> int:
    """ANDs used by the tree over q digits."""
    total = 0
    while q > 1:
        pairs = q // 2
        q = pairs + q % 2
        total += pairs * (2 if (q > 1 or want_eq) else 1)
    return total


def ideal_millionaires(a: np.ndarray, b: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(1{a > b}, 1{a = b}) on the low ``bits`` bits, unsigned."""
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    a, b = np.asarray(a, np.uint64) & mask, np.asarray(b, np.uint64) & mask
    return a > b, a == b


def ideal_msb(x: np.ndarray, bits: int) -> np.ndarray:
    """The bit ``bits − 1`` of x."""
    return ((np.asarray(x, np.uint64) >> np.uint64(bits - 1)) & np.uint64(1)).astype(bool)


async def millionaires(
    p: Party, value: np.ndarray, bits: int, *, want_eq: bool = False, m: int = DEFAULT_RADIX_BITS
) -> tuple[np.ndarray, np.ndarray | None]:
    """Boolean shares of 1{a > b} (and of 1{a = b} if ``want_eq``).

    ``value`` is a (client) or b (server): same shape on both sides, low ``bits`` bits used.
    Cost: n·q 1-out-of-2^m OTs with 2-bit messages + the AND tree (see :func:`and_count`).
    """
    shape = np.shape(value)
    digits = step_digits(np.asarray(value).reshape(-1), bits, m)  # (n, q)
    n, q = digits.shape
    n_and = n * and_count(q, want_eq)
    leaves = p.fork("leaves")

    async def leaf_ot() -> tuple[np.ndarray, np.ndarray]:
        if p.role == CLIENT:
            gt_mask, eq_mask = p.prg.bits((n, q)), p.prg.bits((n, q))
            tables = step_leaf_tables(digits, gt_mask, eq_mask, m)
            await leaves.ot.kkot_send(tables.reshape(n * q, 1 << m), 2)
            return gt_mask, eq_mask
        got = await leaves.ot.kkot_recv(digits.reshape(-1).astype(np.int64), 1 << m, 2)
        got = got.reshape(n, q)
        return (got & 1).astype(bool), (got >> 1 & 1).astype(bool)

    # Step 1–2 (leaves) and the tree's triples, concurrently.
    (gt, eq), triples = await asyncio.gather(leaf_ot(), bit_triples(p.fork("tri"), n_and))
    # Step 3: combine pairs (lo = 2i, hi = 2i + 1) level by level.
    used = 0
    level = 0
    while gt.shape[1] > 1:
        pairs = gt.shape[1] // 2
        lo_gt, hi_gt = gt[:, 0 : 2 * pairs : 2], gt[:, 1 : 2 * pairs : 2]
        lo_eq, hi_eq = eq[:, 0 : 2 * pairs : 2], eq[:, 1 : 2 * pairs : 2]
        last = pairs + gt.shape[1] % 2 == 1
        need_eq = not last or want_eq
        xs = np.concatenate([hi_eq, hi_eq], axis=1) if need_eq else hi_eq
        ys = np.concatenate([lo_gt, lo_eq], axis=1) if need_eq else lo_gt
        k = xs.size
        t = tuple(part[used : used + k] for part in triples)
        used += k
        z = await and_(p.fork(f"lvl{level}"), xs, ys, triples=t)
        new_gt = xor(hi_gt, z[:, :pairs])
        new_eq = z[:, pairs:] if need_eq else hi_eq
        if gt.shape[1] % 2:  # the odd top digit moves up unchanged
            new_gt = np.concatenate([new_gt, gt[:, -1:]], axis=1)
            new_eq = np.concatenate([new_eq, eq[:, -1:]], axis=1)
        gt, eq = new_gt, new_eq
        level += 1
    return gt.reshape(shape), (eq.reshape(shape) if want_eq else None)


async def msb(p: Party, x: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Boolean shares of the most significant bit of x mod 2^bits (default ℓ): 1{x < 0}.

    Range: x ∈ [−2^(bits−1), 2^(bits−1)) for the result to be the sign of x.
    Cost: one millionaires' on bits−1 bits.
    """
    k = p.ring.bits if bits is None else bits
    x = np.asarray(x, dtype=np.uint64)
    low_mask = np.uint64((1 << (k - 1)) - 1)
    own_msb = ((x >> np.uint64(k - 1)) & np.uint64(1)).astype(bool)
    low = x & low_mask
    # carry = 1{x_c' + x_s' ≥ 2^(k−1)} = 1{x_c' > 2^(k−1) − 1 − x_s'}
    value = low if p.role == CLIENT else low_mask - low
    carry, _ = await millionaires(p, value, k - 1)
    return xor(own_msb, carry)


async def drelu(p: Party, x: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Boolean shares of 1{x ≥ 0} (the derivative of ReLU)."""
    return not_(p, await msb(p, x, bits))


async def relu(p: Party, x: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Arithmetic shares of max(x, 0): DReLU then MUX. ``bits``: comparison width."""
    d = await drelu(p.fork("drelu"), x, bits)
    return await mux(p.fork("mux"), d, x)


async def less_than(p: Party, x: np.ndarray, y: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Boolean shares of 1{x < y} for shared x, y with |x − y| < 2^(bits−1)."""
    return await msb(p, p.ring.reduce(np.asarray(x, np.uint64) - np.asarray(y, np.uint64)), bits)


async def greater_than_public(
    p: Party, x: np.ndarray, c: np.ndarray | int, bits: int | None = None
) -> np.ndarray:
    """Boolean shares of 1{x > c} for shared x and public ring constant c (= MSB(c − x))."""
    c = np.asarray(c, dtype=np.uint64)
    neg = p.ring.reduce(np.uint64(0) - np.asarray(x, np.uint64))
    diff = p.ring.reduce(neg + c) if p.role == CLIENT else neg
    return await msb(p, diff, bits)


async def equal(p: Party, x: np.ndarray, y: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Boolean shares of 1{x = y} (mod 2^bits): z = x − y, then z_c = −z_s by millionaires'."""
    k = p.ring.bits if bits is None else bits
    z = p.ring.reduce(np.asarray(x, np.uint64) - np.asarray(y, np.uint64))
    value = z if p.role == CLIENT else p.ring.reduce(np.uint64(0) - z)
    _, eq = await millionaires(p, value, k, want_eq=True)
    return eq


def cost_millionaires(
    pool: OTPool, n: int, bits: int, want_eq: bool = False, m: int = DEFAULT_RADIX_BITS
) -> Cost:
    """Declared cost of :func:`millionaires` on n values (rounds: an upper bound)."""
    q = -(-bits // m)
    leaves = Cost.of_ot(pool.cost("kkot", n * q, 2, n_choices=1 << m), CLIENT)
    total = leaves | cost_bit_triples(pool, n * and_count(q, want_eq))
    while q > 1:
        pairs = q // 2
        q = pairs + q % 2
        k = n * pairs * (2 if (q > 1 or want_eq) else 1)
        total = total + Cost.exchange(np.zeros(2 * k, bool))
    return total


def cost_msb(pool: OTPool, n: int, bits: int) -> Cost:
    """Declared cost of :func:`msb` (and :func:`drelu`, :func:`less_than`, …)."""
    return cost_millionaires(pool, n, bits - 1)


def cost_relu(pool: OTPool, n: int, ring_bits: int, bits: int) -> Cost:
    """Declared cost of :func:`relu` with the comparison on ``bits`` bits."""
    return cost_msb(pool, n, bits) + cost_mux(pool, n, ring_bits)

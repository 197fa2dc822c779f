"""Comparison: the millionaires' protocol, MSB/DReLU, ReLU, x < y, x > c, equality.

**Millionaires'** (client holds a, server holds b, both k-bit): Boolean shares of 1{a > b}
and of 1{a = b}. The values are cut into q = ⌈k/m⌉ digits of m bits (the top one has the
remaining k − (q − 1)·m bits); for each digit a 1-out-of-2^s OT (s = its bits) gives the server
shares of (gt_j, eq_j) = (1{a_j > b_j}, 1{a_j = b_j}) (the client's shares are its random
masks); an AND tree combines them from the top digit down:

    gt = gt_hi ⊕ (eq_hi ∧ gt_lo),   eq = eq_hi ∧ eq_lo.

CrypTFlow2's savings: the group holding digit 0 is always a low side, so without ``want_eq``
its eq is never needed (the digit-0 leaf sends gt only, 1-bit messages, and the lowest node of
each level does one AND); the two ANDs of a node share eq_hi, so they use one correlated
triple (a, b_1, b_2) and open eq_hi ⊕ a once (3 bits per node each way instead of 4). With
silent OT a COT costs ~0.06 B and ANDs are cheap, so 3-bit digits (1-of-8 leaves: 16 bits of
messages) beat CrypTFlow2's 4-bit ones (:data:`RADIX_BITS`).

Message flow::

    client (a)                                   server (b)
    Step 1: masks, tables T_j[v] = (gt⊕[a_j>v], eq⊕[a_j=v])
            ── 1-of-2^s OT, 1- or 2-bit messages ─▶  Step 2: (gt_j, eq_j) shares = T_j[b_j]
    Step 3: ⌈log2 q⌉ levels of AND (correlated triples made concurrently with Step 1)

Cost per element, 63-bit MSB (64-bit ReLU's comparison), measured with
``secmoe bench compare --n 65536 --bits 64``: silent 68.5 B (m = 3), IKNP 1,558 B (m = 4);
exactly :func:`cost_millionaires`, plus the silent streams' GGM refills.

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
import itertools

import numpy as np

from .boolean import CLIENT, and_fanout, bit_triples, cost_bit_triples, cost_mux, mux, not_, xor
from .cost import Cost
from .ot.pool import OTPool
from .party import Party, batch_sizes

#: Digit bits of the millionaires' leaves per COT source. Measured at 63 bits, 2^16 elements
#: (bytes with the GGM refills; time side by side): silent m = 2 / 3 / 4: 67.9 / 67.7 / 83.2 B
#: per element, 4.0 / 3.1 / 3.0 s; IKNP (declared) m = 3 / 4 / 5: 1,703 / 1,558 / 1,494 B,
#: where m = 5 saves 4% of bytes for twice the leaf work, so CrypTFlow2's m = 4 stays.
RADIX_BITS = {"silent": 3, "iknp": 4}
#: Elements per batch: larger inputs go in batches (a few rounds each), so the peak memory (leaf
#: tables, pads, COTs: ~1 KB per element at 64 bits per batch in flight) does not grow with n.
COMPARE_CHUNK = 1 << 16
#: Batches in flight at once: while one batch waits on the peer (a leaf OT's flight, an AND
#: level), the other's work fills the gap.
COMPARE_IN_FLIGHT = 2


def default_radix(pool: OTPool) -> int:
    """The digit bits m used by :func:`millionaires` on this pool's COT source."""
    return RADIX_BITS.get(pool.source, 4)


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
    """The client's OT messages: T[..., v] = (gt_mask ⊕ [d > v]) | (eq_mask ⊕ [d = v]) << 1,
    as ``uint8``, for v < 2^m."""
    v = np.arange(1 << m)
    rows = ((v[:, None] > v) | (v[:, None] == v) << 1).astype(np.uint8)  # rows[d, v], unmasked
    masks = np.asarray(gt_mask, np.uint8) | np.asarray(eq_mask, np.uint8) << 1
    return rows[digits] ^ masks[..., None]


def leaf_groups(bits: int, m: int, want_eq: bool) -> list[tuple[int, int, int, int]]:
    """The leaf OTs: ``(first digit, digits, digit bits, message bits)`` per 1-of-2^s OT batch.

    The top digit has ``bits − (q − 1)·m`` bits (a smaller N); without ``want_eq`` the lowest
    digit sends only gt (1-bit messages): its eq is never used, since the group holding digit 0
    is always the low side of a combination.
    """
    q = -(-bits // m)
    keys = [
        (m if i < q - 1 else bits - (q - 1) * m, 2 if (want_eq or i > 0) else 1) for i in range(q)
    ]
    out: list[tuple[int, int, int, int]] = []
    for i, key in enumerate(keys):
        if out and (out[-1][2], out[-1][3]) == key:
            first, count, s, b = out[-1]
            out[-1] = (first, count + 1, s, b)
        else:
            out.append((i, 1, *key))
    return out


def tree_levels(q: int, want_eq: bool) -> list[tuple[int, int]]:
    """``(pairs, eq ANDs)`` of each level of the AND tree over q digits.

    Each pair (lo, hi) is one correlated triple: gt = gt_hi ⊕ (eq_hi ∧ gt_lo) and, if needed,
    eq = eq_hi ∧ eq_lo share eq_hi. eq is needed for every pair except the lowest one (unless
    ``want_eq``), which holds digit 0.
    """
    out = []
    while q > 1:
        pairs = q // 2
        out.append((pairs, pairs - (0 if want_eq else 1)))
        q = pairs + q % 2
    return out


def and_count(q: int) -> int:
    """Correlated triples (AND-tree nodes) used by the tree over q digits; 2 random OTs each."""
    return sum(pairs for pairs, _ in tree_levels(q, want_eq=True))


def ideal_millionaires(a: np.ndarray, b: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(1{a > b}, 1{a = b}) on the low ``bits`` bits, unsigned."""
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    a, b = np.asarray(a, np.uint64) & mask, np.asarray(b, np.uint64) & mask
    return a > b, a == b


def ideal_msb(x: np.ndarray, bits: int) -> np.ndarray:
    """The bit ``bits − 1`` of x."""
    return ((np.asarray(x, np.uint64) >> np.uint64(bits - 1)) & np.uint64(1)).astype(bool)


async def millionaires(
    p: Party, value: np.ndarray, bits: int, *, want_eq: bool = False, m: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Boolean shares of 1{a > b} (and of 1{a = b} if ``want_eq``).

    ``value`` is a (client) or b (server): same shape on both sides, low ``bits`` bits used;
    ``m``: digit bits (default :func:`default_radix`). Inputs of more than
    :data:`COMPARE_CHUNK` elements go in batches, :data:`COMPARE_IN_FLIGHT` at a time.
    Cost: per element, the leaf OTs of :func:`leaf_groups` + the AND tree of
    :func:`tree_levels` (see :func:`cost_millionaires`).
    """
    m = default_radix(p.ot) if m is None else m
    shape = np.shape(value)
    flat = np.asarray(value).reshape(-1)
    gt, eq = np.empty(flat.size, bool), np.empty(flat.size, bool)

    async def run(sub: Party, part: slice) -> None:
        gt[part], eq[part] = await _millionaires_batch(sub, flat[part], bits, want_eq, m)

    # Forked group by group (the generator forks as it advances): a group's forks start at the
    # depth its predecessor reached, so the measured rounds are those of this schedule.
    batches = p.batches(flat.size, COMPARE_CHUNK)
    while group := list(itertools.islice(batches, COMPARE_IN_FLIGHT)):
        await asyncio.gather(*(run(*b) for b in group))
    return gt.reshape(shape), (eq.reshape(shape) if want_eq else None)


async def _millionaires_batch(
    p: Party, value: np.ndarray, bits: int, want_eq: bool, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """One batch of :func:`millionaires` (1-D input); eq is garbage unless ``want_eq``."""
    digits = step_digits(value, bits, m)  # (n, q)
    n, q = digits.shape
    levels = tree_levels(q, want_eq)
    groups = leaf_groups(bits, m, want_eq)

    async def leaf_ot(first: int, count: int, s: int, msg_bits: int) -> np.ndarray:
        # Steps 1–2 for digits first .. first + count − 1: 1-of-2^s OTs, client as sender.
        sub = p.fork(f"leaves{first}")
        d = digits[:, first : first + count]
        if p.role == CLIENT:
            masks = p.prg.bits((2, n, count))
            tables = step_leaf_tables(d, masks[0], masks[1], s) & np.uint8((1 << msg_bits) - 1)
            await sub.ot.kkot_send(tables.reshape(n * count, 1 << s), msg_bits)
            return masks
        got = await sub.ot.kkot_recv(d.reshape(-1).astype(np.int64), 1 << s, msg_bits)
        got = got.reshape(n, count).astype(np.uint8)
        return np.stack([(got & 1).astype(bool), (got >> 1).astype(bool)])

    # Steps 1–2 (leaves) and the tree's correlated triples, concurrently.
    *leaves, triples = await asyncio.gather(
        *(leaf_ot(*g) for g in groups),
        bit_triples(p.fork("tri"), n * and_count(q), 2),
    )
    gt_eq = np.concatenate(leaves, axis=2)  # (2, n, q)
    gt, eq = gt_eq[0], gt_eq[1]
    # Step 3: combine pairs (lo = 2i, hi = 2i + 1) level by level.
    used = 0
    for level, (pairs, n_eq) in enumerate(levels):
        lo_gt, hi_gt = gt[:, 0 : 2 * pairs : 2], gt[:, 1 : 2 * pairs : 2]
        lo_eq, hi_eq = eq[:, 0 : 2 * pairs : 2], eq[:, 1 : 2 * pairs : 2]
        skip = pairs - n_eq  # 1 if the lowest pair's eq is not needed
        x = hi_eq.reshape(-1)
        y = np.concatenate([lo_gt.reshape(-1), lo_eq[:, skip:].reshape(-1)])
        at_eq = (np.arange(n)[:, None] * pairs + np.arange(skip, pairs)).reshape(-1)
        at = np.concatenate([np.arange(n * pairs), at_eq])
        a, b, c = (t[used : used + n * pairs] for t in triples)
        used += n * pairs
        tri = (a, np.concatenate([b[:, 0], b[at_eq, 1]]), np.concatenate([c[:, 0], c[at_eq, 1]]))
        z = await and_fanout(p.fork(f"lvl{level}"), x, y, at, tri)
        new_gt = xor(hi_gt, z[: n * pairs].reshape(n, pairs))
        new_eq = np.zeros((n, pairs), bool)
        new_eq[:, skip:] = z[n * pairs :].reshape(n, n_eq)
        if gt.shape[1] % 2:  # the odd top digit moves up unchanged
            new_gt = np.concatenate([new_gt, gt[:, -1:]], axis=1)
            new_eq = np.concatenate([new_eq, eq[:, -1:]], axis=1)
        gt, eq = new_gt, new_eq
    return gt[:, 0], eq[:, 0]


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
    pool: OTPool, n: int, bits: int, want_eq: bool = False, m: int | None = None
) -> Cost:
    """Declared cost of :func:`millionaires` on n values (rounds: an upper bound)."""
    m = default_radix(pool) if m is None else m
    total = Cost()
    for size in batch_sizes(n, COMPARE_CHUNK):
        q = -(-bits // m)
        one = cost_bit_triples(pool, size * and_count(q))
        for _, count, s, msg_bits in leaf_groups(bits, m, want_eq):
            one = one | Cost.of_ot(
                pool.cost("kkot", size * count, msg_bits, n_choices=1 << s), CLIENT
            )
        for pairs, n_eq in tree_levels(q, want_eq):
            one = one + Cost.exchange(np.zeros(size * (2 * pairs + n_eq), bool))
        # Batches in flight together share the OT streams, so one may wait on rows another's
        # draw made: their rounds are bounded by the sum, not the max.
        total = total + one
    return total


def cost_msb(pool: OTPool, n: int, bits: int) -> Cost:
    """Declared cost of :func:`msb` (and :func:`drelu`, :func:`less_than`, …)."""
    return cost_millionaires(pool, n, bits - 1)


def cost_relu(pool: OTPool, n: int, ring_bits: int, bits: int) -> Cost:
    """Declared cost of :func:`relu` with the comparison on ``bits`` bits."""
    return cost_msb(pool, n, bits) + cost_mux(pool, n, ring_bits)

"""Secret × secret multiplication and fixed-point truncation over Z_{2^ℓ}.

Shares are ``uint64`` arrays (:mod:`secmoe.protocols.shares`). Additive correlated OTs come
from the session's OT pool (``p.ot.acot_send``/``acot_recv``), so no trusted dealer is
involved.

Who learns what: nothing; OT outputs mask every value that crosses the wire.

REF: Gilboa, "Two party RSA key generation", CRYPTO 1999 (products from OT), as used in
Demmler–Schneider–Zohner ABY (NDSS 2015, §III-D); the truncation's wrap bit with a known most
significant bit follows Rathee et al., SiRnn (eprint 2021/459), §4 ("MSB-to-Wrap").
"""

from __future__ import annotations

import asyncio

import numpy as np

from ..crypto.ring import Ring
from .cost import Cost
from .ot.pool import OTPool
from .party import Party

CLIENT, SERVER = "client", "server"


def step_bits(x: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` bits of each element, LSB first: shape ``x.shape + (bits,)``, bool."""
    shifts = np.arange(bits, dtype=np.uint64)
    return ((np.asarray(x, dtype=np.uint64)[..., None] >> shifts) & np.uint64(1)).astype(bool)


def gilboa_widths(ring: Ring) -> np.ndarray:
    """ℓ − i for i < ℓ: the bits that the COT of bit i carries (its result is scaled by 2^i)."""
    return np.arange(ring.bits, 0, -1)


def ideal_mul(x: np.ndarray, y: np.ndarray, ring: Ring) -> np.ndarray:
    """x·y mod 2^ℓ."""
    return ring.reduce(np.asarray(x, np.uint64) * np.asarray(y, np.uint64))


def ideal_div_public(x: np.ndarray, d: int, ring: Ring) -> np.ndarray:
    """⌊x / d⌋ on the signed value (the protocol may differ by one)."""
    return ring.from_signed(np.floor_divide(ring.to_signed(x), np.int64(d)))


def ideal_trunc(x: np.ndarray, ring: Ring, shift: int | None = None) -> np.ndarray:
    """⌊x / 2^shift⌋ on the signed value (the protocol may return one less)."""
    s = ring.frac_bits if shift is None else shift
    return ring.from_signed(ring.to_signed(x) >> np.int64(s))


#: Elements per COT batch of a product: ℓ COTs (16 B each while in flight) and their inputs per
#: element are held at once, ~1.1 KB per 64-bit product and party (a batch of 2^16 held ~70 MB
#: per party: the peak of a 64-image demo session); larger tensors go in consecutive batches
#: (one more round each) instead of one unbounded batch.
MUL_CHUNK = 1 << 14


def _chunks(n: int) -> list[int]:
    return [min(MUL_CHUNK, n - start) for start in range(0, n, MUL_CHUNK)]


async def _cross(p: Party, sender: str, mine: np.ndarray) -> np.ndarray:
    """Shares of x_sender · y_receiver (this party's input ``mine``), by ℓ COTs per element.

    The receiver chooses with the bits of its y; the sender's correlation for bit i is x, in
    an additive COT mod 2^(ℓ−i) (ℓ − i bits on the wire: only those survive the scaling by
    2^i). The receiver gets Σ_i 2^i·(r_i + y_i·x) = R + x·y; the sender keeps −R with
    R = Σ_i 2^i·r_i. Consecutive batches of :data:`MUL_CHUNK` elements bound the memory.
    """
    flat = mine.reshape(-1)
    out = np.empty(flat.size, dtype=np.uint64)
    start = 0
    for size in _chunks(flat.size):
        out[start : start + size] = await _cross_batch(p, sender, flat[start : start + size])
        start += size
    return out.reshape(mine.shape)


async def _cross_batch(p: Party, sender: str, mine: np.ndarray) -> np.ndarray:
    """One batch of :func:`_cross` (1-D input)."""
    ring = p.ring
    widths = gilboa_widths(ring)
    scale = np.uint64(1) << np.arange(ring.bits, dtype=np.uint64)
    if p.role == sender:
        corr = np.repeat(ring.reduce(mine), ring.bits)
        r = await p.ot.acot_send(corr, ring.bits, widths)
        return ring.reduce(np.uint64(0) - (r.reshape(-1, ring.bits) * scale).sum(-1))
    got = await p.ot.acot_recv(step_bits(mine, ring.bits).reshape(-1), ring.bits, None, widths)
    return ring.reduce((got.reshape(-1, ring.bits) * scale).sum(-1, dtype=np.uint64))


async def mul(p: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shares of x·y mod 2^ℓ (elementwise; no truncation).

    Message flow: the two cross products x_c·y_s and x_s·y_c, one COT batch each way,
    concurrently. Cost: 2·n·ℓ COTs carrying ℓ(ℓ+1) bits per element (:func:`cost_mul`).
    """
    ring = p.ring
    x, y = (ring.reduce(np.asarray(v, dtype=np.uint64)) for v in np.broadcast_arrays(x, y))
    a, b = p.fork("mul_c"), p.fork("mul_s")
    # Step 1: x_c·y_s (client sends), Step 2: x_s·y_c (server sends), concurrently.
    t1, t2 = await asyncio.gather(
        _cross(a, CLIENT, x if p.role == CLIENT else y),
        _cross(b, SERVER, x if p.role == SERVER else y),
    )
    return ring.reduce(x * y + t1 + t2)


async def square(p: Party, x: np.ndarray) -> np.ndarray:
    """Shares of x² = x_c² + x_s² + 2·x_c·x_s: one cross product (half of :func:`mul`)."""
    ring = p.ring
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    t = await _cross(p.fork("sq"), CLIENT, x)
    return ring.reduce(x * x + np.uint64(2) * t)


def _cross_cost(pool: OTPool, c: int, ring: Ring, sender: str) -> Cost:
    acot = pool.cost("acot", c * ring.bits, ring.bits, widths=gilboa_widths(ring))
    return Cost.of_ot(acot, sender)


def cost_square(pool: OTPool, n: int, ring: Ring) -> Cost:
    """Declared cost of :func:`square`: n·ℓ additive COTs of ℓ − i bits for bit i (ℓ(ℓ+1)/2
    bits per element), client as sender, in batches of :data:`MUL_CHUNK` elements."""
    return sum((_cross_cost(pool, c, ring, CLIENT) for c in _chunks(n)), Cost())


def cost_mul(pool: OTPool, n: int, ring: Ring) -> Cost:
    """Declared cost of :func:`mul`: a :func:`square`-sized cross product each way,
    concurrently."""
    other = sum((_cross_cost(pool, c, ring, SERVER) for c in _chunks(n)), Cost())
    return cost_square(pool, n, ring) | other


def cost_trunc(pool: OTPool, n: int, ring: Ring) -> Cost:
    """Declared cost of :func:`trunc` and :func:`div_public`: n additive COTs of ℓ bits."""
    return Cost.of_ot(pool.cost("acot", n, ring.bits), CLIENT)


async def div_public(p: Party, x: np.ndarray, d: int, *, narrow: bool = False) -> np.ndarray:
    """Shares of ⌊x / d⌋ (±1) for a public integer d ≥ 1; truncation is d = 2^s.

    Requires |x| < 2^(ℓ−2) − d. Adding the public bias B = d·⌊2^(ℓ−2)/d⌋ makes y = x + B
    non-negative with MSB 0, so the wrap bit of the shares is w = MSB(y_c) ∨ MSB(y_s) (one COT
    for the AND). With y_i = d·q_i + r_i and 2^ℓ = d·Q + R:

        ⌊y/d⌋ = q_c + q_s − w·Q + ⌊(r_c + r_s − w·R)/d⌋,

    and the last term (in {−1, 0, 1}; in {0, 1} for d = 2^s, where R = 0) is dropped.

    Message flow: one additive-COT batch, client as sender. Cost: n COTs of ℓ bits; with
    ``narrow`` and d = 2^s, of s bits (a·b is only needed mod 2^s: w·2^(ℓ−s) mod 2^ℓ), i.e.
    :func:`cost_trunc` on ``ring.with_bits(s)``.
    """
    if d < 1:
        raise ValueError(f"public divisor must be ≥ 1, got {d}")
    ring = p.ring
    x = ring.reduce(np.asarray(x, dtype=np.uint64))
    bias = d * ((1 << (ring.bits - 2)) // d)
    y = ring.reduce(x + np.uint64(bias)) if p.role == CLIENT else x
    msb = ((y >> np.uint64(ring.bits - 1)) & np.uint64(1)).reshape(-1)
    # Step 1: arithmetic shares of a·b (a = the client's MSB, b = the server's) by one COT.
    cot = d.bit_length() - 1 if narrow and d > 1 and d & (d - 1) == 0 else ring.bits
    if p.role == CLIENT:
        ab = ring.reduce(np.uint64(0) - await p.ot.acot_send(msb, cot))
    else:
        ab = await p.ot.acot_recv(msb.astype(bool), cot)
    # Step 2: w = a + b − a·b, each party from its own MSB.
    w = ring.reduce(msb - ab).reshape(x.shape)
    # Step 3: divide each share, remove the wrap, remove the bias.
    wrap = np.uint64(((1 << ring.bits) // d) % (1 << 64))
    z = ring.reduce(y // np.uint64(d) - w * wrap)
    if p.role == CLIENT:
        z = ring.reduce(z - np.uint64(bias // d))
    return z


async def trunc(
    p: Party, x: np.ndarray, shift: int | None = None, *, narrow: bool = False
) -> np.ndarray:
    """Shares of ⌊x / 2^shift⌋ or one less (default shift f): :func:`div_public` by 2^shift
    (``narrow``: its COT on shift bits).

    Requires |x| < 2^(ℓ−2) − 2^shift (a fixed-point product of values below 2^10 in magnitude at
    f = 18 is below 2^56): never a gross (wrap-around) error inside that range.
    """
    s = p.ring.frac_bits if shift is None else shift
    return await div_public(p, x, 1 << s, narrow=narrow)


async def mul_fixed(p: Party, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fixed-point product: trunc(x·y) by f bits."""
    return await trunc(p, await mul(p, x, y))

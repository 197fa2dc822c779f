"""Boolean shares and the gates between Boolean and arithmetic shares.

A Boolean-shared bit tensor is a pair of ``bool`` arrays with b = b_c ⊕ b_s. XOR and NOT are
local; AND uses Beaver bit triples made from random OT; B2A and MUX use correlated OT.

OTs come from the session's pool ``p.ot`` (:class:`secmoe.protocols.ot.pool.OTPool`): random
OT with random choices (``rot_send``/``rot_recv_random``) and additive correlated OT over
Z_{2^ℓ} (``acot_send``: the sender gives a correlation c and gets x; ``acot_recv``: the receiver
with choice r gets x + r·c).

Who learns what: nothing; every message is one-time-padded by OT outputs or triples.

REF: Beaver, "Efficient multiparty protocols using circuit randomization", CRYPTO 1991 (AND);
Asharov–Lindell–Schneider–Zohner, eprint 2013/552, §5 (bit triples from two random OTs);
Rathee et al., CrypTFlow2, eprint 2020/1002, §3 (B2A and MUX from correlated OT).
"""

from __future__ import annotations

import asyncio

import numpy as np

from .cost import Cost
from .ot.pool import OTPool
from .party import Party

CLIENT, SERVER = "client", "server"


def xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shares of a ⊕ b (local)."""
    return np.logical_xor(a, b)


def not_(p: Party, a: np.ndarray) -> np.ndarray:
    """Shares of ¬a (the client flips its share)."""
    return np.logical_not(a) if p.role == CLIENT else np.asarray(a, dtype=bool)


def bits_of_01(x: np.ndarray) -> np.ndarray:
    """Boolean shares of a value known to be 0 or 1, from its arithmetic shares (local).

    x = x_c + x_s mod 2^ℓ with x ∈ {0, 1}: no carry reaches bit 0, so LSB(x_c) ⊕ LSB(x_s) = x.
    """
    return (np.asarray(x, dtype=np.uint64) & np.uint64(1)).astype(bool)


def public_bits(p: Party, bits: np.ndarray) -> np.ndarray:
    """Shares of public bits (the client holds them, the server zeros)."""
    bits = np.asarray(bits, dtype=bool)
    return bits.copy() if p.role == CLIENT else np.zeros_like(bits)


async def bit_triples(
    p: Party, n: int, k: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n Beaver bit triples (a, b, c) with c = a ∧ b, from two 1-bit random OTs each.

    With ``k``: n *correlated* triple groups (a, b_1..b_k, c_1..c_k), c_j = a ∧ b_j, for k ANDs
    that share an input (:func:`and_fanout`); b and c are then ``(n, k)``. The OTs carry k-bit
    random messages, which cost what 1-bit ones do.

    Message flow: one random OT each way (concurrent forks); nothing else.
    Cost: the OT pool's cost of 2n random OTs (whatever k).
    """
    # Step 1: a_s·b_c with the client as OT sender: b_c = m0 ⊕ m1, u_c = m0, v_s = m_{a_s}.
    # Step 2: a_c·b_s symmetrically with the server as sender.
    one, two = p.fork("triple1"), p.fork("triple2")
    if p.role == CLIENT:
        (m0, m1), (a, v) = await asyncio.gather(
            one.ot.rot_send(n, 1, k, random_choices=True), two.ot.rot_recv_random(n, 1, k)
        )
    else:
        (a, v), (m0, m1) = await asyncio.gather(
            one.ot.rot_recv_random(n, 1, k), two.ot.rot_send(n, 1, k, random_choices=True)
        )
    a, b, u = np.asarray(a, bool), (m0 ^ m1).astype(bool), m0.astype(bool)
    ab = a & b if k is None else a[:, None] & b
    c = ab ^ u ^ v.astype(bool)
    return a, b, c


Triples = tuple[np.ndarray, np.ndarray, np.ndarray]


async def and_(
    p: Party, x: np.ndarray, y: np.ndarray, triples: Triples | None = None
) -> np.ndarray:
    """Shares of x ∧ y (elementwise, any shape), with precomputed ``triples`` if given.

    Message flow (after the triples): both parties send (d, e) = (x ⊕ a, y ⊕ b) at once.
    Cost: triples for n ANDs + 2n bits each way (bit-packed), one flight.
    """
    x, y = np.broadcast_arrays(np.asarray(x, bool), np.asarray(y, bool))
    if triples is None:
        triples = await bit_triples(p.fork("and"), x.size)
    at = np.arange(x.size)
    return (await and_fanout(p, x.reshape(-1), y.reshape(-1), at, triples)).reshape(x.shape)


async def and_fanout(
    p: Party, x: np.ndarray, y: np.ndarray, at: np.ndarray, triples: Triples
) -> np.ndarray:
    """Shares of x[at[j]] ∧ y[j] for every j: ANDs that share inputs open each x once.

    ``x`` is ``(X,)``, ``y`` and ``at`` are ``(Y,)``; ``triples`` = (a ``(X,)``, b ``(Y,)``,
    c ``(Y,)``) with c = a[at] ∧ b (correlated triples from :func:`bit_triples` with k).

    Message flow: both parties send (x ⊕ a, y ⊕ b) at once. Cost: X + Y bits each way
    (bit-packed), one flight.
    """
    a, b, c = triples
    if a.size != x.size or b.size != y.size or c.size != y.size or at.size != y.size:
        raise ValueError(f"triples ({a.size}, {b.size}) for {x.size} inputs and {y.size} ANDs")
    d, e = np.asarray(x, bool) ^ a, np.asarray(y, bool) ^ b
    await p.ch.send(np.concatenate([d, e]), tag="and/de")
    de = await p.ch.recv(tag="and/de")
    d = (d ^ de[: x.size])[at]
    e = e ^ de[x.size :]
    z = c ^ (d & b) ^ (e & a[at])
    if p.role == CLIENT:
        z ^= d & e
    return z


async def b2a(p: Party, b: np.ndarray) -> np.ndarray:
    """Arithmetic shares (mod 2^ℓ) of Boolean-shared bits: b = b_c + b_s − 2·b_c·b_s.

    Message flow: one correlated OT per bit, the client as sender (correlation b_c).
    Cost: n COTs of ℓ bits, 1 flight + the COT's.
    """
    ring = p.ring
    bits = np.asarray(b, dtype=bool)
    flat = bits.reshape(-1)
    if p.role == CLIENT:
        r = await p.ot.acot_send(flat.astype(np.uint64), ring.bits)
        prod = ring.reduce(np.uint64(0) - r)  # client's share of b_c·b_s
    else:
        prod = await p.ot.acot_recv(flat, ring.bits)
    out = ring.reduce(flat.astype(np.uint64) - np.uint64(2) * prod)
    return out.reshape(bits.shape)


async def mux(p: Party, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Arithmetic shares of b·x for Boolean-shared bits b and arithmetic-shared x (same shape).

    (b_c ⊕ b_s)·x_i = b_c·x_i + b_s·(1 − 2b_c)·x_i for each party's x_i, so each cross term is
    one correlated OT: the holder of x_i and b_i is the sender with correlation (1 − 2b_i)·x_i,
    the other party chooses with its bit. Two COT batches, one each way, run concurrently.

    Cost: 2n COTs of ℓ bits.
    """
    ring = p.ring
    bits = np.asarray(b, dtype=bool).reshape(-1)
    xs = ring.reduce(np.asarray(x, dtype=np.uint64)).reshape(-1)
    if bits.shape != xs.shape:
        raise ValueError(f"mux shapes differ: bits {np.shape(b)}, values {np.shape(x)}")
    mine = ring.reduce(bits.astype(np.uint64) * xs)  # b_i·x_i
    corr = ring.reduce((np.uint64(1) - np.uint64(2) * bits.astype(np.uint64)) * xs)
    me, other = (CLIENT, SERVER) if p.role == CLIENT else (SERVER, CLIENT)
    f_send, f_recv = p.fork(f"mux_{me}"), p.fork(f"mux_{other}")
    r, got = await asyncio.gather(
        f_send.ot.acot_send(corr, ring.bits), f_recv.ot.acot_recv(bits, ring.bits)
    )
    return ring.reduce(mine - r + got).reshape(np.shape(x))


async def reveal_bits(p: Party, b: np.ndarray, to: str = "both") -> np.ndarray | None:
    """Open Boolean shares to ``to`` (``"client"``, ``"server"`` or ``"both"``).

    Cost: n bits (bit-packed) from each sending party, one flight.
    """
    if to not in ("client", "server", "both"):
        raise ValueError(f"reveal to 'client', 'server' or 'both', not {to!r}")
    b = np.asarray(b, dtype=bool)
    if to == "both" or p.role != to:
        await p.ch.send(b, tag="reveal/bits")
        if to != "both":
            return None
    other = np.asarray(await p.ch.recv(tag="reveal/bits"), dtype=bool)
    if other.shape != b.shape:
        raise ValueError(f"reveal shape mismatch: ours {b.shape}, the peer's {other.shape}")
    return b ^ other


def cost_bit_triples(pool: OTPool, n: int) -> Cost:
    """Declared cost of :func:`bit_triples` (any k): n random OTs each way, concurrently."""
    rot = pool.cost("rot", n, random_choices=True)
    return Cost.of_ot(rot, CLIENT) | Cost.of_ot(rot, SERVER)


def cost_and(pool: OTPool, n: int) -> Cost:
    """Declared cost of :func:`and_` on n bits (triples included)."""
    return cost_bit_triples(pool, n) + Cost.exchange(np.zeros(2 * n, bool))


def cost_b2a(pool: OTPool, n: int, bits: int) -> Cost:
    """Declared cost of :func:`b2a` on n bits into Z_{2^bits}."""
    return Cost.of_ot(pool.cost("acot", n, bits), CLIENT)


def cost_mux(pool: OTPool, n: int, bits: int) -> Cost:
    """Declared cost of :func:`mux` on n elements of Z_{2^bits}."""
    return cost_b2a(pool, n, bits) | Cost.of_ot(pool.cost("acot", n, bits), SERVER)

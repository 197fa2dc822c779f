"""Additive secret shares over Z_{2^ℓ}: share, reveal, and the local (free) operations.

A shared tensor x is a pair of ``uint64`` arrays, one per party, with x = x_c + x_s mod 2^ℓ.
Each party holds only its own array; nothing here is a class wrapping both. Fixed-point values
carry f fractional bits (:class:`secmoe.crypto.ring.Ring`).

Who learns what:

- :func:`share`: the non-owner learns only the shape (its share is a PRG expansion of a seed
  the owner sends; it is independent of x).
- :func:`reveal`: the receiving party (or both) learns x; nothing else.
- local operations (add, subtract, multiply by a public integer, add a public constant) send
  nothing.

REF: the ABY framework (Demmler–Schneider–Zohner, NDSS 2015) for the notation; seeded sharing
is the standard "PRG-compressed share".
"""

from __future__ import annotations

import numpy as np

from ..crypto.prg import PRG, SEED_BYTES
from ..crypto.ring import Ring
from ..net.codec import encode
from .party import Party


def ideal_share(x: np.ndarray, ring: Ring, prg: PRG) -> tuple[np.ndarray, np.ndarray]:
    """Plaintext sharing: (x − r, r) with r uniform."""
    r = prg.ring(x.shape, ring.bits)
    return ring.reduce(x - r), r


def reconstruct(a: np.ndarray, b: np.ndarray, ring: Ring) -> np.ndarray:
    """x = a + b mod 2^ℓ (for tests and the ideal functions)."""
    return ring.reduce(np.asarray(a, dtype=np.uint64) + np.asarray(b, dtype=np.uint64))


async def share(
    p: Party, x: np.ndarray | None, owner: str, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    """Secret-share ``x`` (held by ``owner``) between the two parties.

    Message flow: owner ─[seed (16 B), shape]→ other. The other party's share is
    ``PRG(seed).ring(shape)``; the owner keeps ``x − that``.

    Cost: 16 bytes + the shape, one flight, whatever the size of x.

    Args:
        p: this party.
        x: the owner's ring elements (``None`` on the other party).
        owner: ``"client"`` or ``"server"``.
        shape: optional on the non-owner: checked against the owner's shape if given.

    Returns:
        this party's share.
    """
    if p.role == owner:
        if x is None:
            raise ValueError("the owner must supply x")
        x = p.ring.reduce(np.asarray(x))
        seed = p.prg.random_bytes(SEED_BYTES)
        await p.ch.send([seed, list(x.shape)], tag="share/seed")
        return p.ring.reduce(x - PRG(seed).ring(x.shape, p.ring.bits))
    seed, got_shape = await p.ch.recv(tag="share/seed")
    got_shape = tuple(got_shape)
    if shape is not None and tuple(shape) != got_shape:
        raise ValueError(
            f"share shape mismatch: expected {tuple(shape)}, the {owner} has {got_shape}"
        )
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError("malformed share seed from the peer")
    return PRG(seed).ring(got_shape, p.ring.bits)


def share_cost(shape: tuple[int, ...]) -> dict[str, int]:
    """Declared payload bytes from the owner and flights of :func:`share`."""
    return {"bytes": len(encode([b"\0" * SEED_BYTES, list(shape)])), "rounds": 1}


async def reveal(p: Party, x: np.ndarray, to: str = "both") -> np.ndarray | None:
    """Open a shared tensor to ``to`` (``"client"``, ``"server"`` or ``"both"``).

    Message flow: each party that does not receive sends its share; with ``"both"`` both send
    (one flight each way, concurrently in one round).

    Returns:
        x on the receiving party, ``None`` on the other.
    """
    if to not in ("client", "server", "both"):
        raise ValueError(f"reveal to 'client', 'server' or 'both', not {to!r}")
    x = p.ring.reduce(np.asarray(x))
    if to == "both":
        await p.ch.send(x, tag="reveal/share")
        other = await p.ch.recv(tag="reveal/share")
    elif p.role == to:
        other = await p.ch.recv(tag="reveal/share")
    else:
        await p.ch.send(x, tag="reveal/share")
        return None
    other = np.asarray(other, dtype=np.uint64)
    if other.shape != x.shape:
        raise ValueError(f"reveal shape mismatch: ours {x.shape}, the peer's {other.shape}")
    return reconstruct(x, other, p.ring)


def add_public(p: Party, x: np.ndarray, c: np.ndarray | int) -> np.ndarray:
    """Shares of x + c for a public ring constant c (the client adds it)."""
    if p.role == "client":
        return p.ring.reduce(x + np.asarray(c, dtype=np.uint64))
    return x


def mul_public(ring: Ring, x: np.ndarray, c: np.ndarray | int) -> np.ndarray:
    """Shares of x · c for a public integer c (no truncation: rescale afterwards if fixed)."""
    return ring.reduce(x * ring.from_signed(np.asarray(c, dtype=np.int64)))

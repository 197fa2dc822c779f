"""Maximum and argmax along the last axis on shares: a tournament that carries payloads.

:func:`tournament` computes shares of max_j x_j over n entries in ⌈log2 n⌉ levels. Each
level pairs the candidates (u, v) = (x_{2i}, x_{2i+1}) (an odd last one has a bye) and
computes, vectorized over every pair of every row::

    c   = 1{v − u > 0}           one comparison against 0 (:func:`.piecewise.compare_breakpoints`)
    win = u + c·(v − u)          one MUX (Boolean c, arithmetic v − u)
    p_w = p_u + c·(p_v − p_u)    for every carried payload, in the same MUX batch

so ties keep the lower-index candidate (u's entries all precede v's), as ``numpy.argmax``.
The payload is what the winner drags along: nothing for the softmax's max
(:func:`secmoe.ops.softmax.row_max`), the entries' own index for :func:`argmax_index` (the
greedy decoder's next token: 2 MUXed elements per match, not the one-hot of
:func:`secmoe.protocols.select.argmax` whose width doubles each level, so a 32K vocabulary
costs n − 1 comparisons and 2(n − 1) MUXes in 15 levels).

Who learns what: nothing (only the shape); the caller reveals what it wants, to whom.
Range: |x_i − x_j| < 2^(bits−1) in ring units (``bits`` = 32: |Δ| < 8192 at f = 18).
Cost: :func:`tournament_cost`; rounds: ⌈log2 n⌉ times those of one comparison and one MUX.

REF: the tournament is the standard oblivious argmax (CrypTFlow2's ArgMax, eprint 2020/1002
§5); carrying the index rather than a one-hot is its usual form.
"""

from __future__ import annotations

import numpy as np

from ..crypto.ring import Ring
from ..protocols import boolean
from ..protocols.boolean import CLIENT
from ..protocols.cost import Cost
from ..protocols.ot.pool import OTPool
from ..protocols.party import Party
from .piecewise import DEFAULT_CMP_BITS, compare_breakpoints, compare_cost


def _pairs(a: np.ndarray, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    return a[..., 0 : 2 * pairs : 2], a[..., 1 : 2 * pairs : 2]


async def tournament(
    p: Party, x: np.ndarray, carry: np.ndarray | None = None, bits: int = DEFAULT_CMP_BITS
) -> tuple[np.ndarray, np.ndarray | None]:
    """Shares of max_j x_j, shape ``x.shape[:-1] + (1,)``, and of the winner's payload.

    Args:
        p: this party (forks ``lvl{i}/cmp``, ``lvl{i}/mux``).
        x: arithmetic shares (…, n).
        carry: optional arithmetic shares (m, …, n): m payloads per entry, MUXed alongside.
        bits: comparison width; range |x_i − x_j| < 2^(bits−1).

    Returns:
        (max (…, 1), the winner's payloads (m, …, 1) or ``None``). Cost: :func:`tournament_cost`.
    """
    ring = p.ring
    cand = ring.reduce(np.asarray(x, dtype=np.uint64))
    level = 0
    while cand.shape[-1] > 1:
        pairs = cand.shape[-1] // 2
        u, v = _pairs(cand, pairs)
        f = p.fork(f"lvl{level}")
        diff = ring.reduce(v - u)
        c = (await compare_breakpoints(f.fork("cmp"), diff, np.zeros(1, np.int64), bits))[..., 0]
        if carry is None:
            win = ring.reduce(u + await boolean.mux(f.fork("mux"), c, diff))
        else:
            cu, cv = _pairs(carry, pairs)
            both = np.concatenate([diff[None], ring.reduce(cv - cu)])
            got = await boolean.mux(f.fork("mux"), np.broadcast_to(c, both.shape), both)
            win = ring.reduce(u + got[0])
            carry = np.concatenate([ring.reduce(cu + got[1:]), carry[..., 2 * pairs :]], axis=-1)
        cand = np.concatenate([win, cand[..., 2 * pairs :]], axis=-1)
        level += 1
    return cand, carry


def tournament_cost(
    pool: OTPool, rows: int, n: int, ring: Ring, bits: int, carried: int = 0
) -> Cost:
    """Declared cost of :func:`tournament` on ``rows`` rows of n entries, ``carried``
    payloads per entry."""
    c = Cost()
    while n > 1:
        pairs = n // 2
        c = c + compare_cost(pool, rows * pairs, np.zeros(1, np.int64), bits)
        c = c + boolean.cost_mux(pool, rows * pairs * (1 + carried), ring.bits)
        n -= pairs
    return c


async def argmax_index(
    p: Party, x: np.ndarray, bits: int = DEFAULT_CMP_BITS
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of (max_j x_j, the first j reaching it) along the last axis, each x.shape[:-1]:
    the index is an integer ring element (not fixed point), for :func:`~secmoe.protocols.
    shares.reveal` to whoever should learn it. Cost: :func:`argmax_index_cost`."""
    x = np.asarray(x, dtype=np.uint64)
    idx = np.broadcast_to(np.arange(x.shape[-1], dtype=np.uint64), x.shape)
    mine = idx if p.role == CLIENT else np.zeros_like(idx)
    best, won = await tournament(p, x, mine[None], bits)
    assert won is not None
    return best[..., 0], won[0, ..., 0]


def argmax_index_cost(
    pool: OTPool, rows: int, n: int, ring: Ring, bits: int = DEFAULT_CMP_BITS
) -> Cost:
    """Declared cost of :func:`argmax_index` on ``rows`` rows of n entries."""
    return tournament_cost(pool, rows, n, ring, bits, carried=1)


__all__ = ["argmax_index", "argmax_index_cost", "tournament", "tournament_cost"]

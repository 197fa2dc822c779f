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
costs n − 1 comparisons and 2(n − 1) MUXes in 15 levels). :func:`topk_index`: the k largest
entries and their indices by k such tournaments, each winner knocked out through the one-hot
of its index (top-k sampling, :mod:`secmoe.ops.sampling`).

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
from ..protocols.compare import cost_millionaires
from ..protocols.cost import Cost
from ..protocols.ot.pool import OTPool
from ..protocols.party import Party
from ..protocols.select import onehot
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


def index_bits(n: int) -> int:
    """Bits of an index in [0, n) for the equality tests of :func:`topk_index`."""
    return max(2, (n - 1).bit_length())


async def topk_index(
    p: Party, x: np.ndarray, k: int, bits: int = DEFAULT_CMP_BITS
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of the k largest entries along the last axis and of their indices, each
    x.shape[:-1] + (k,), best first (ties to the lower index, as a stable descending sort).

    k rounds of :func:`argmax_index`; after each but the last, the winner is pushed down by
    2^(bits−2) ring units (its one-hot from :func:`secmoe.protocols.select.onehot`: n equality
    tests of :func:`index_bits` bits and a B2A, then a local product with the public
    constant), below every entry still in the race. Range: |x_i − x_j| < 2^(bits−2) ring
    units (4096 at f = 18). Who learns what: nothing. Cost: :func:`topk_index_cost`.
    """
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    ring = p.ring
    vals = ring.reduce(np.asarray(x, dtype=np.uint64))
    best, where = [], []
    for j in range(k):
        f = p.fork(f"top{j}")
        m, i = await argmax_index(f.fork("argmax"), vals, bits)
        best.append(m)
        where.append(i)
        if j + 1 < k:
            hot = await onehot(f.fork("out"), i, n, index_bits(n))
            vals = ring.reduce(vals - hot * np.uint64(1 << (bits - 2)))
    return np.stack(best, axis=-1), np.stack(where, axis=-1)


def topk_index_cost(
    pool: OTPool, rows: int, n: int, k: int, ring: Ring, bits: int = DEFAULT_CMP_BITS
) -> Cost:
    """Declared cost of :func:`topk_index` on ``rows`` rows of n entries."""
    out = cost_millionaires(pool, rows * n, index_bits(n), want_eq=True)
    out = out + boolean.cost_b2a(pool, rows * n, ring.bits)
    return argmax_index_cost(pool, rows, n, ring, bits).times(k) + out.times(k - 1)


__all__ = [
    "argmax_index",
    "argmax_index_cost",
    "index_bits",
    "topk_index",
    "topk_index_cost",
    "tournament",
    "tournament_cost",
]

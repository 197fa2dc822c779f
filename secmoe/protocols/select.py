"""Selection: max/argmax as a one-hot (tournament tree), top-k, one-hot of a shared index.

**Argmax** along the last axis of shared values V (…, E): a tournament of ⌈log2 E⌉ rounds.
Each match compares two candidates u (lower index) and v: b = 1{u ≥ v} (so ties go to the
lower index, like ``numpy.argmax``), the winner's value is v + b·(u − v) and its one-hot is
[b·O_u, O_v − b·O_v]. The one-hot comes out arithmetic-shared, ready for the MoE layer; the
index is Σ_e e·O_e (local).

**Top-k**: k rounds of argmax; after each, the winner is pushed below every other value by
subtracting 2^(w−1)·O (local: the one-hot is shared, the constant public).

**One-hot of a shared index** i ∈ [0, E): Boolean shares of 1{i = e} for every e (E
equality tests), then B2A.

Who learns what: nothing. Range: the compared differences must lie in [−2^(w−1), 2^(w−1))
for the comparison width w (``bits``; default ℓ).

REF: the tournament is the standard oblivious argmax (e.g. CrypTFlow2's Argmax, eprint
2020/1002 §5); top-k by repeated argmax with masking.
"""

from __future__ import annotations

import numpy as np

from ..crypto.ring import Ring
from .boolean import b2a, mux, not_
from .compare import equal, less_than
from .party import Party


def ideal_topk(values: np.ndarray, k: int, ring: Ring) -> tuple[np.ndarray, np.ndarray]:
    """Top-k signed values (…, k) and one-hots (…, k, E); ties go to the lowest index."""
    v = ring.to_signed(values)
    order = np.argsort(-v, axis=-1, kind="stable")[..., :k]
    hots = (order[..., None] == np.arange(v.shape[-1])).astype(np.uint64)
    return ring.from_signed(np.take_along_axis(v, order, axis=-1)), hots


async def argmax(
    p: Party, values: np.ndarray, bits: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of (max, one-hot argmax) along the last axis; ties go to the lowest index.

    Cost: E − 1 comparisons and, per round r, E/2^(r+1) value MUXes plus E one-hot MUXes.
    """
    ring = p.ring
    vals = ring.reduce(np.asarray(values, dtype=np.uint64))
    lead, n_e = vals.shape[:-1], vals.shape[-1]
    # candidates: value (…, c) and one-hot over the leaves of each candidate (…, c, s)
    cand = vals
    onehot = np.zeros((*lead, n_e, 1), dtype=np.uint64)
    if p.role == "client":
        onehot[...] = 1
    rnd = 0
    while cand.shape[-1] > 1:
        c = cand.shape[-1]
        pairs = c // 2
        u, v = cand[..., 0 : 2 * pairs : 2], cand[..., 1 : 2 * pairs : 2]
        ou, ov = onehot[..., 0 : 2 * pairs : 2, :], onehot[..., 1 : 2 * pairs : 2, :]
        f = p.fork(f"round{rnd}")
        # Step 1: b = 1{u ≥ v} = ¬(u < v)
        lt = await less_than(f.fork("cmp"), u, v, bits)
        ge = not_(p, lt)
        # Step 2: one batch of MUXes: b·(u − v) and b·O_u, b·O_v
        s = ou.shape[-1]
        bb = np.repeat(ge[..., None], 1 + 2 * s, axis=-1)
        xs = np.concatenate([ring.reduce(u - v)[..., None], ou, ov], axis=-1)
        prod = await mux(f.fork("mux"), bb, xs)
        win = ring.reduce(v + prod[..., 0])
        new_oh = np.concatenate([prod[..., 1 : 1 + s], ring.reduce(ov - prod[..., 1 + s :])], -1)
        if c % 2:  # the odd last candidate gets a bye (its one-hot padded with zeros)
            win = np.concatenate([win, cand[..., -1:]], axis=-1)
            pad = np.zeros((*lead, 1, 2 * s), dtype=np.uint64)
            pad[..., :, : onehot.shape[-1]] = onehot[..., -1:, :]
            new_oh = np.concatenate([new_oh, pad], axis=-2)
        cand, onehot = win, new_oh
        rnd += 1
    return cand[..., 0], onehot[..., 0, :n_e]


async def topk(
    p: Party, values: np.ndarray, k: int, bits: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of the top-k values (…, k) and their one-hots (…, k, E), best first.

    Ties go to the lowest index. Requires every value to lie in [−2^(w−3), 2^(w−3)) for the
    comparison width w (the masking subtracts 2^(w−2)).
    """
    ring = p.ring
    w = ring.bits if bits is None else bits
    if not 1 <= k <= np.shape(values)[-1]:
        raise ValueError(f"k must be in [1, {np.shape(values)[-1]}], got {k}")
    vals = ring.reduce(np.asarray(values, dtype=np.uint64))
    best, hots = [], []
    for j in range(k):
        m, oh = await argmax(p.fork(f"top{j}"), vals, bits)
        best.append(m)
        hots.append(oh)
        vals = ring.reduce(vals - oh * np.uint64(1 << (w - 2)))
    return np.stack(best, axis=-1), np.stack(hots, axis=-2)


async def onehot(p: Party, index: np.ndarray, n: int, bits: int | None = None) -> np.ndarray:
    """Arithmetic shares of the one-hot (…, n) of a shared index in [0, n)."""
    idx = np.asarray(index, dtype=np.uint64)[..., None]
    cands = np.broadcast_to(np.arange(n, dtype=np.uint64), (*idx.shape[:-1], n))
    public = cands if p.role == "client" else np.zeros_like(cands)
    eq = await equal(p.fork("eq"), np.broadcast_to(idx, cands.shape), public, bits)
    return await b2a(p.fork("b2a"), eq)

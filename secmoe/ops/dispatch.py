"""Oblivious capacity dispatch: the MoE strategy whose server work does not grow with E.

Real MoE systems (GShard, Switch) route tokens into per-expert buckets of a fixed capacity C.
Done obliviously, every bucket is always computed and always full, so the server's HE work is
E·C rows (≈ cf·k·T, whatever E is) instead of the E·T of ``all`` or the per-token selection
over every expert of ``select``, and nothing about the routing shows.

From the secret routing one-hots O (A × E), one row per assignment a = (t, j) in token order:

1. positions: P = cumsum_a O (local); pos_a = Σ_e O[a, e]·(P[a, e] − 1) — bit × value, so
   MUXes with the free Boolean shares of O (its low bits);
2. H[a, c] = 1{pos_a = c} for c < C (equality on 16 bits, then B2A); a token whose position is
   ≥ C gets an all-zero row: it is dropped, and the residual carries it (Switch semantics);
3. D[a, e, c] = O[a, e] ∧ H[a, c] (Boolean AND, then B2A): the secret dispatch tensor;
4. buckets X_b = Dᵀ·X (secret × secret, exact: D is 0/1, so MUXes or HE, whichever is
   cheaper: :func:`~secmoe.ops.linear.matmul_01`), each expert's FFN on its own bucket of
   exactly C rows with the server's weights, and the combine Y = D·Y_b.

Public: T, k, E, C and the FFN kind. Nothing else leaks: the message pattern, the sizes and
the server's work are the same for every routing and every bucket load, overflow included.

The same positions give the capacity's drop mask for the strategies that do not bucket
(:func:`kept`: 1{pos_a < C}, one comparison on 16 bits per assignment), so ``select`` and
``all`` compute the same function as ``dispatch`` under a binding capacity.

REF: Lepikhin et al., GShard (arXiv 2006.16668) and Fedus et al., Switch Transformers (arXiv
2101.03961) for capacity routing; the oblivious construction is secmoe's.
"""

from __future__ import annotations

import numpy as np

from ..protocols.boolean import and_, b2a, bits_of_01, mux, not_
from ..protocols.compare import equal, greater_than_public
from ..protocols.party import Party
from .linear import matmul_01

#: Positions are below T·k ≤ 2^15, so equality on 16 bits is sound.
POSITION_BITS = 16


def ideal_dispatch(experts: np.ndarray, n_experts: int, capacity: int) -> np.ndarray:
    """Plaintext D (A, E, C) for assignments ``experts`` (A,) in token order."""
    onehot = experts[:, None] == np.arange(n_experts)
    pos = (np.cumsum(onehot, axis=0) - 1)[np.arange(experts.size), experts]
    d = np.zeros((experts.size, n_experts, capacity), dtype=np.uint64)
    kept = pos < capacity
    d[np.nonzero(kept)[0], experts[kept], pos[kept]] = 1
    return d


async def positions(p: Party, onehot: np.ndarray) -> np.ndarray:
    """Arithmetic shares of each assignment's position in its expert's queue (…, A):
    pos_a = Σ_e O[a, e]·(P[a, e] − 1) with P = cumsum_a O (step 1 above), from arithmetic shares
    of the one-hots O (…, A, E); leading axes are independent sequences.

    Who learns what: nothing. Cost: one MUX per one-hot entry (2·A·E COTs of ℓ bits), 1 round.
    """
    a = onehot.shape[-2]
    if a >= 1 << (POSITION_BITS - 1):
        raise ValueError(f"{a} assignments exceed the position range 2^{POSITION_BITS - 1}")
    ring = p.ring
    prefix = np.cumsum(onehot, axis=-2, dtype=np.uint64)  # P[a, e] (shares, local)
    one = np.uint64(1) if p.role == "client" else np.uint64(0)
    picked = await mux(p, bits_of_01(onehot), ring.reduce(prefix - one))
    return ring.reduce(picked.sum(axis=-1, dtype=np.uint64))


async def kept(p: Party, onehot: np.ndarray, capacity: int) -> np.ndarray:
    """Boolean shares (…, A) of 1{pos_a < C}: whether each assignment fits in its expert's
    capacity C (public), for one-hots O (…, A, E) in token order per sequence (leading axes).

    Who learns what: nothing. Cost: :func:`positions`, then one comparison with the public
    C − 1 on :data:`POSITION_BITS` bits per assignment (positions are < 2^15).
    """
    pos = await positions(p.fork("pos"), onehot)
    over = await greater_than_public(p.fork("over"), pos, capacity - 1, POSITION_BITS)
    return not_(p, over)


async def dispatch_tensor(p: Party, onehot: np.ndarray, capacity: int) -> np.ndarray:
    """Arithmetic shares of D (…, A, E, C) from arithmetic shares of one-hots O (…, A, E);
    leading axes are independent sequences (capacity is per sequence)."""
    *lead, a, _ = onehot.shape
    o_bits = bits_of_01(onehot)
    # Step 1: pos_a = Σ_e O[a, e]·(P[a, e] − 1)
    pos = await positions(p.fork("pos"), onehot)  # (…, A)
    # Step 2: H[a, c] = 1{pos_a = c}, c < C
    shape = (*lead, a, capacity)
    cs = np.arange(capacity, dtype=np.uint64)
    public = np.broadcast_to(cs if p.role == "client" else np.zeros_like(cs), shape)
    mask = np.uint64((1 << POSITION_BITS) - 1)
    h_bits = await equal(
        p.fork("slot"), np.broadcast_to(pos[..., None], shape) & mask, public, POSITION_BITS
    )
    # Step 3: D = O ∧ H, then arithmetic
    d_bits = await and_(p.fork("and"), o_bits[..., :, :, None], h_bits[..., :, None, :])
    return await b2a(p.fork("b2a"), d_bits)


async def gather_buckets(p: Party, d: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Shares of the buckets X_b (…, E, C, d_model) = Dᵀ·X for D (…, A, E, C), X (…, A, d)."""
    *lead, a, n_e, cap = d.shape
    flat = np.swapaxes(d.reshape(*lead, a, n_e * cap), -1, -2)  # (…, E·C, A)
    return (await matmul_01(p, flat, x)).reshape(*lead, n_e, cap, -1)


async def scatter_outputs(p: Party, d: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shares of each assignment's output (…, A, d_model) = D·Y_b for Y_b (…, E, C, d)."""
    *lead, a, n_e, cap = d.shape
    flat_y = y.reshape(*lead, n_e * cap, -1)
    return await matmul_01(p, d.reshape(*lead, a, n_e * cap), flat_y)

"""The next token on shares: greedy, or sampled with temperature and top-k from the client's
randomness.

:func:`next_token` takes shares of the logits z (B, V) and returns shares of one index per
row, for the caller to reveal to the client only:

- **greedy** (no noise, no top-k): argmax_j z_j (:func:`secmoe.ops.argmax.argmax_index`).
- **temperature τ**: the client adds τ·g_j to its share of every z_j, g_j i.i.d. Gumbel(0, 1)
  from its own PRG (:func:`gumbel_noise`); argmax_j (z_j + τ·g_j) = argmax_j (z_j/τ + g_j)
  is distributed as softmax(z/τ) (the Gumbel-max trick). The addition is local: the messages
  are those of greedy decoding, so the server learns neither τ nor whether the client samples.
- **top-k**: first the k largest z_j and their indices on shares
  (:func:`secmoe.ops.argmax.topk_index`, noise-free, ties to the lower index), then the client
  adds τ·g to its shares of those k values and the argmax over the k slots carries the slot's
  index. The slots' noise is i.i.d. and independent of which token holds which slot, so the
  result is distributed as softmax(z/τ) restricted to the k largest logits (transformers'
  ``TopKLogitsWarper`` then softmax sampling, except that it keeps every logit tied with the
  k-th and this keeps exactly k). k is public (it shapes the messages); top-k without a
  temperature samples at τ = 1; k = 1 is greedy.

:func:`ideal_next_token` is the same function in plaintext on the fixed-point logits (the
specification the tests compare against).

Who learns what: the server learns nothing (it sees shares and, with top-k, k); the client
learns the revealed index only — knowing its noise, that index tells it z_i + τ·g_i ≥ z_j +
τ·g_j for the candidates j (as a greedy index tells z_i ≥ z_j); semi-honest: the client draws
its noise as specified. The client's noise comes from a PRG of its
own (:func:`sampling_prg`: fresh from the operating system, or from a seed for reproducible
samples; never the protocol's PRG, so a known seed reveals nothing about the shares).

Range: the tournament compares differences below 2^(32−1−f) = 8192 at f = 18; 53-bit uniforms
give g ∈ [−3.62, 37.43] (:data:`GUMBEL_RANGE`), so τ ≤ :data:`MAX_TEMPERATURE` = 100 keeps
|τ·Δg| < 4110 and logits within a range of 4000 are compared exactly (top-k's knock-out
needs a range below 4096).

Cost: greedy and temperature: V − 1 comparisons and 2(V − 1) MUXed elements, ⌈log2 V⌉
levels; top-k: k such tournaments, (k − 1)·V equality tests and B2As, and one over k
(:func:`next_token_cost`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np

from ..crypto.prg import PRG, SEED_BYTES
from ..crypto.ring import Ring
from ..protocols.boolean import CLIENT
from ..protocols.cost import Cost
from ..protocols.ot.pool import OTPool
from ..protocols.party import Party
from .argmax import argmax_index, argmax_index_cost, topk_index, topk_index_cost, tournament

#: Sampling noise: a function of a shape giving the float noise the client adds to its share.
Noise = Callable[[tuple[int, ...]], np.ndarray]
#: The largest temperature: τ·(max g − min g) stays below 4110 (see the module docstring).
MAX_TEMPERATURE = 100.0
#: The range of −log(−log u) for the 53-bit uniforms u ∈ [2^−54, 1 − 2^−54] drawn here.
GUMBEL_RANGE = (-math.log(54 * math.log(2)), 54 * math.log(2))


def sampling_prg(seed: int | None = None) -> PRG:
    """The client's sampling PRG: fresh from the operating system, or derived from ``seed``
    (SHA-256) for reproducible samples."""
    if seed is None:
        return PRG()
    digest = hashlib.sha256(f"secmoe/sampling/{seed}".encode()).digest()
    return PRG(digest[:SEED_BYTES])


def check_sampling(temperature: float | None, top_k: int | None, vocab: int | None = None) -> None:
    """``ValueError`` unless τ is None or finite in (0, :data:`MAX_TEMPERATURE`] and k is None
    or an integer in [1, vocab]."""
    if temperature is not None and not (
        np.isfinite(temperature) and 0 < temperature <= MAX_TEMPERATURE
    ):
        raise ValueError(
            f"the temperature must be a finite number in (0, {MAX_TEMPERATURE:g}], "
            f"got {temperature}"
        )
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top-k must be an integer ≥ 1, got {top_k!r}")
        if vocab is not None and top_k > vocab:
            raise ValueError(f"top-k {top_k} exceeds the vocabulary ({vocab} tokens)")


def gumbel_noise(prg: PRG, temperature: float) -> Noise:
    """τ·Gumbel(0, 1) noise from the client's PRG (53-bit uniforms u, −log(−log u)): the
    argmax of logits + τ·g is a sample of softmax(logits/τ) (the Gumbel-max trick).
    ``ValueError`` unless τ is finite in (0, :data:`MAX_TEMPERATURE`]."""
    check_sampling(temperature, None)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        u = ((prg.uint64(shape) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
        return temperature * -np.log(-np.log(u))

    return draw


def _with_noise(p: Party, x: np.ndarray, noise: Noise | None) -> np.ndarray:
    """The client adds its noise to its share (local; the server's share is unchanged)."""
    if noise is None or p.role != CLIENT:
        return x
    return p.ring.reduce(x + p.ring.encode(noise(x.shape)))


async def next_token(
    p: Party, logits: np.ndarray, top_k: int | None = None, noise: Noise | None = None
) -> np.ndarray:
    """Shares of the next token per row of the shared logits (B, V): greedy, or a sample with
    the client's ``noise`` (client only: τ·Gumbel, :func:`gumbel_noise`), restricted to the
    ``top_k`` largest logits when given (public, both parties). Forks ``argmax`` (and
    ``topk``). See the module docstring for who learns what and the cost."""
    if noise is not None and p.role != CLIENT:
        raise ValueError("the sampling noise is the client's")
    n = logits.shape[-1]
    check_sampling(None, top_k, n)
    if top_k is None or top_k == n:  # no restriction
        _, index = await argmax_index(p.fork("argmax"), _with_noise(p, logits, noise))
        return index
    vals, where = await topk_index(p.fork("topk"), logits, top_k)
    _, won = await tournament(p.fork("argmax"), _with_noise(p, vals, noise), where[None])
    assert won is not None
    return won[0, ..., 0]


def next_token_cost(pool: OTPool, rows: int, n: int, ring: Ring, top_k: int | None = None) -> Cost:
    """Declared cost of :func:`next_token` on ``rows`` rows of n logits."""
    if top_k is None or top_k == n:
        return argmax_index_cost(pool, rows, n, ring)
    return topk_index_cost(pool, rows, n, top_k, ring) + argmax_index_cost(pool, rows, top_k, ring)


def ideal_next_token(
    logits: np.ndarray, ring: Ring, top_k: int | None = None, noise: np.ndarray | None = None
) -> np.ndarray:
    """The function :func:`next_token` computes, in plaintext: ``logits`` are the fixed-point
    ring elements (B, V), ``noise`` the client's float noise (B, V), or (B, k) with top-k
    (one value per slot, best first); ties go to the lower index (slot)."""
    z = ring.to_signed(np.asarray(logits, dtype=np.uint64))
    if top_k is None or top_k == z.shape[-1]:
        order = np.broadcast_to(np.arange(z.shape[-1]), z.shape)
    else:
        order = np.argsort(-z, axis=-1, kind="stable")[..., :top_k]
    vals = np.take_along_axis(z, order, axis=-1)
    if noise is not None:
        vals = ring.to_signed(ring.reduce(ring.from_signed(vals) + ring.encode(noise)))
    return np.take_along_axis(order, vals.argmax(axis=-1)[..., None], axis=-1)[..., 0]


__all__ = [
    "GUMBEL_RANGE",
    "MAX_TEMPERATURE",
    "Noise",
    "check_sampling",
    "gumbel_noise",
    "ideal_next_token",
    "next_token",
    "next_token_cost",
    "sampling_prg",
]

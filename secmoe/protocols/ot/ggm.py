"""GGM-tree single-point COT (SPCOT) and multi-point COT with regular noise (MPCOT), semi-honest.

Computes, for t trees of depth h (n = t·2^h outputs): the sender, holding Δ, gets n blocks v;
the receiver gets a noise position α_i ∈ [0, 2^h) in each tree i (uniform, its secret) and the
n blocks w = v ⊕ e·Δ, where e is the regular weight-t vector with one 1 per tree. That is n
COTs whose choice vector is e: the sparse noise of Ferret's LPN step.

Who learns what (semi-honest): the sender learns nothing about α (its view is the base COTs'
q values, independent of the receiver's choices); the receiver learns every leaf v_j except
v_{α_i} (the GGM tree punctured at α_i is pseudorandom there) and v_{α_i} ⊕ Δ, nothing of Δ.

REF: Ferret (K. Yang, C. Weng, X. Lan, J. Zhang, X. Wang, CCS 2020, eprint 2020/924), Fig. 6
(Π_spCOT) and §4 (Π_mpCOT with regular noise), semi-honest variant (no consistency check); GGM
(Goldreich–Goldwasser–Micali 1986) puncturable PRF.

Construction (vectorized over a batch of trees, level by level):
- Length-doubling PRG from fixed-key AES: G(x) = (π_0(x) ⊕ x, π_1(x) ⊕ x), π_β = AES-128
  under the public keys :data:`GGM_KEYS` (emp-ot's two-key PRP; a PRG when π_β is modelled as
  an ideal permutation, Guo–Katz–Wang–Yu eprint 2019/074).
- Trees go in batches of :data:`LEAVES_PER_BATCH` leaves (:func:`batches`); in a batch of b
  trees, level ℓ is one ``(2^ℓ·b, 2)`` array, node-major (entry p·b + i is node p of tree i).
  The left children of level ℓ are entries [0, 2^ℓ·b) of level ℓ + 1, the right children
  [2^ℓ·b, 2^{ℓ+1}·b): AES runs over whole contiguous slices, and leaf j = Σ_ℓ β_ℓ·2^ℓ where
  β_ℓ is the branch taken at depth ℓ + 1. The noise is thus regular over fixed public buckets
  (:func:`leaf_rows`), strided rather than contiguous; for the LPN step (whose rows are
  i.i.d.) any fixed public partition is as good as contiguous buckets.
- K_β^ℓ[i] = ⨁ of the side-β children at depth ℓ + 1 of tree i.
- The receiver's base COT (ℓ, i) has random choice r = r_{ℓ,i}; it learns K_r^ℓ[i], so the
  path goes the other way: α's bit ℓ is 1 − r. Using the random choices as the path needs no
  derandomization message (one flight instead of two).
- Leaves are output with bit 0 cleared (both sides): then if lsb(Δ) = 1, lsb(w_j) = e_j, so
  the receiver's choice bits ride in its blocks (emp-ot's convention); Ferret relies on it.

Message flow, per batch (base COTs (q, r, t_b = q ⊕ r·Δ) indexed (ℓ, i), tweak ι = index0 + ℓ·t
+ i)::

    sender (Δ, root seeds)                           receiver (r)
    Step 1: expand the b trees; K_0^ℓ, K_1^ℓ
    Step 2: M_β^ℓ[i] = K_β^ℓ[i] ⊕ H(ι, q ⊕ β·Δ)
            c[i] = Δ ⊕ ⨁_j lsb0(v_{j,i})
                    ── M (2·h·b blocks), c (b blocks) ──▶
                                                     Step 3: K_r^ℓ[i] = M_r^ℓ[i] ⊕ H(ι, t_b)
                                                     Step 4: expand level by level, the path's
                                                             sibling from K_r;
                                                             w_α = c ⊕ ⨁_{j≠α} w_j

Cost (:func:`cost`): sender → receiver 16·t·(2h + 1) bytes in one message per batch (one
flight: nothing comes back); t·h base COTs. One message per batch lets the sender hand each
batch's leaves on and reuse its buffers instead of holding all n. Compute per party: ~2n AES
blocks (one per node), ~2n block XORs, 2·t·h (sender) or t·h (receiver) tweakable hashes.
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secmoe.crypto import kernels
from secmoe.crypto.aes_hash import tccr
from secmoe.crypto.prg import PRG
from secmoe.net import Channel, ProtocolError
from secmoe.protocols.ot.base import Cost, bin_size

TAG_M = "ot/ggm/m"

#: The public keys of π_0 and π_1 (nothing up the sleeve: hashes of labels).
GGM_KEYS: tuple[bytes, bytes] = (
    hashlib.sha256(b"secmoe/ggm/prg/left/v1").digest()[:16],
    hashlib.sha256(b"secmoe/ggm/prg/right/v1").digest()[:16],
)

#: Nodes per AES/XOR slice (256 KiB: input, output and parent stay in the L2 cache).
SLICE_BLOCKS = 1 << 14

#: Leaves per batch of trees expanded together (8 MiB; measured best of 2^16..2^20): a batch's
#: levels stay in a small reused scratch, and only the leaves go to the output array. Both
#: parties must use the same value: it fixes the messages and the order of the outputs.
LEAVES_PER_BATCH = 1 << 19

_LSB_CLEAR = ~np.uint64(1)


def batches(t: int, h: int) -> list[tuple[int, int]]:
    """The tree batches ``[(i0, i1), …]`` of :data:`LEAVES_PER_BATCH` leaves (the last may be
    smaller). Batch (i0, i1) is one message and output rows [i0·2^h, i1·2^h)."""
    size = max(1, LEAVES_PER_BATCH >> h)
    return [(i0, min(i0 + size, t)) for i0 in range(0, t, size)]


def message_bytes(b: int, h: int) -> int:
    """Raw bytes of one batch's message: 2·h·b blocks of M and b blocks of c."""
    return 16 * b * (2 * h + 1)


def cost(t: int, h: int) -> Cost:
    """Declared cost of one MPCOT of t trees of depth h (random-choice base COTs)."""
    bs = batches(t, h)
    return Cost(sum(bin_size(message_bytes(i1 - i0, h)) for i0, i1 in bs), 0, len(bs), 1)


def leaf_rows(alpha: np.ndarray, h: int) -> np.ndarray:
    """Output rows of leaf α_i of each tree i (the noise positions).

    In batch (i0, i1) of b trees, row i0·2^h + j·b + (i − i0) is leaf j of tree i.
    """
    alpha = np.asarray(alpha, np.int64)
    rows = np.empty(alpha.shape[0], dtype=np.int64)
    for i0, i1 in batches(alpha.shape[0], h):
        rows[i0:i1] = (i0 << h) + alpha[i0:i1] * (i1 - i0) + np.arange(i1 - i0)
    return rows


def tweaks(index0: int, t: int, h: int, i0: int, i1: int) -> np.ndarray:
    """Hash-tweak indices of the base COTs of trees [i0, i1): index0 + ℓ·t + i, ``(h, b)``."""
    lvl = np.arange(h, dtype=np.uint64)[:, None] * np.uint64(t)
    return np.uint64(index0) + lvl + np.arange(i0, i1, dtype=np.uint64)[None, :]


def _encryptors() -> list:
    return [Cipher(algorithms.AES(key), modes.ECB()).encryptor() for key in GGM_KEYS]


def _zero_children() -> np.ndarray:
    """G(0): the children of an all-zero node, ``(2, 2)`` uint64 (π_0(0), π_1(0))."""
    return np.stack(
        [np.frombuffer(e.update(bytes(16)), dtype="<u8").astype(np.uint64) for e in _encryptors()]
    )


def step_expand(
    x: np.ndarray, out: np.ndarray, t: int, clear_lsb: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One GGM level for t trees: out[:m] = π_0(x) ⊕ x, out[m:2m] = π_1(x) ⊕ x (m = len(x)).

    ``out`` needs at least 2m + 1 rows (the last one is AES slack). Returns the per-tree sums
    (S_0, S_1), each ``(t, 2)``, of the left and right children, taken before ``clear_lsb``
    clears bit 0 of every child.
    """
    m = x.shape[0]
    if m % t or out.shape[0] < 2 * m + 1:
        raise ValueError(f"level of {m} nodes for {t} trees, out of {out.shape[0]} rows")
    xb = x.reshape(-1).view(np.uint8)
    ob = out.reshape(-1).view(np.uint8)
    step = t * max(1, SLICE_BLOCKS // t)
    sums = np.zeros((2, t, 2), np.uint64)
    for side, enc in enumerate(_encryptors()):
        base = side * m
        for s in range(0, m, step):
            e = min(s + step, m)
            enc.update_into(xb[16 * s : 16 * e], ob[16 * (base + s) : 16 * (base + e) + 15])
            kernels.ggm_children(out[base + s : base + e], x[s:e], t, sums[side], clear_lsb)
    return sums[0], sums[1]


class Scratch:
    """Reusable buffers for trees of depth h in batches of up to b trees: the output of one
    batch (``leaves``, b·2^h + 1 rows) and two level buffers (fresh pages are slow to fault
    in, so a caller that expands many batches keeps one of these)."""

    def __init__(self, b: int, h: int) -> None:
        self.b, self.h = b, h
        self.leaves = np.empty(((b << h) + 1, 2), np.uint64)
        self._lv = (
            np.empty(((b << h) // 2 + b + 1, 2), np.uint64),
            np.empty(((b << h) // 4 + b + 1, 2), np.uint64),
        )

    def level(self, ell: int, leaves: np.ndarray) -> np.ndarray:
        """Where level ℓ lives: the leaves (ℓ = h) in ``leaves``, the others alternate."""
        return leaves if ell == self.h else self._lv[(self.h - ell - 1) % 2]

    def detach(self) -> None:
        """Leave the current leaves to whoever holds views of them: the next batch gets a
        fresh buffer (the level buffers, internal, stay)."""
        self.leaves = np.empty_like(self.leaves)

    def fits(self, b: int, h: int) -> bool:
        return h == self.h and b <= self.b


def _scratch(scratch: Scratch | None, b: int, h: int) -> Scratch:
    if h < 1:
        raise ValueError("trees need depth h ≥ 1")
    return scratch if scratch is not None and scratch.fits(b, h) else Scratch(b, h)


def step_sender_expand(
    seeds: np.ndarray, h: int, scratch: Scratch | None = None, clear_lsb: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 for one batch: expand b trees from their root seeds ``(b, 2)``.

    Returns the leaves ``(b·2^h, 2)`` (row j·b + i = leaf j of tree i; a view of the
    scratch) and the level sums K ``(h, 2, b, 2)``: K[ℓ, β] = K_β^ℓ.
    """
    b = seeds.shape[0]
    sc = _scratch(scratch, b, h)
    leaves = sc.leaves[: (b << h) + 1]
    sc.level(0, leaves)[:b] = seeds
    sums = np.empty((h, 2, b, 2), np.uint64)
    for ell in range(h):
        x = sc.level(ell, leaves)[: b << ell]
        sums[ell] = step_expand(x, sc.level(ell + 1, leaves), b, clear_lsb and ell == h - 1)
    return leaves[: b << h], sums


def step_sender_message(
    sums: np.ndarray,
    delta: np.ndarray,
    q: np.ndarray,
    tweak: np.ndarray,
    domain: int,
    clear_lsb: bool = True,
) -> bytes:
    """Step 2: M_β^ℓ[i] = K_β^ℓ[i] ⊕ H(ι, q ⊕ β·Δ) and c = Δ ⊕ ⨁_j v_j; the wire message.

    ``q`` ``(h, b, 2)`` and ``tweak`` ``(h, b)`` are the batch's base COTs and their tweaks.
    """
    h, _, b, _ = sums.shape
    qf, idx = q.reshape(h * b, 2), tweak.reshape(h * b)
    delta = np.asarray(delta, np.uint64)
    msg = np.empty((h, 2, b, 2), np.uint64)
    msg[:, 0] = sums[:, 0] ^ tccr(qf, idx, domain).reshape(h, b, 2)
    msg[:, 1] = sums[:, 1] ^ tccr(qf ^ delta, idx, domain).reshape(h, b, 2)
    total = sums[h - 1, 0] ^ sums[h - 1, 1]  # ⨁ of all leaves of each tree
    if clear_lsb:
        total[:, 0] &= _LSB_CLEAR
    return msg.tobytes() + (total ^ delta).tobytes()


def step_receiver_keys(
    msg: bytes, r: np.ndarray, tb: np.ndarray, tweak: np.ndarray, domain: int
) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: K_r^ℓ[i] = M_r^ℓ[i] ⊕ H(ι, t_b); returns (K_r ``(h, b, 2)``, c ``(b, 2)``)."""
    h, b = r.shape
    arr = np.frombuffer(msg, dtype="<u8").astype(np.uint64)
    m = arr[: 4 * h * b].reshape(h, 2, b, 2)
    c = arr[4 * h * b :].reshape(b, 2)
    pad = tccr(tb.reshape(h * b, 2), tweak.reshape(h * b), domain).reshape(h, b, 2)
    return np.where(r[:, :, None], m[:, 1], m[:, 0]) ^ pad, c


def step_receiver_expand(
    ksib: np.ndarray,
    r: np.ndarray,
    c: np.ndarray,
    scratch: Scratch | None = None,
    clear_lsb: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 for one batch: rebuild the b punctured trees; returns (w ``(b·2^h, 2)``, α ``(b,)``).

    The path node of each level is kept at zero, so its children are the constants G(0), which
    are removed from the sums; the path's sibling is K_r ⊕ (the other side-r children).
    """
    h, b = r.shape
    sc = _scratch(scratch, b, h)
    leaves = sc.leaves[: (b << h) + 1]
    g0 = _zero_children()
    trees = np.arange(b)
    sc.level(0, leaves)[:b] = 0  # the roots are on every path
    p = np.zeros(b, dtype=np.int64)  # the path node of each tree at the current level
    for ell in range(h):
        last = ell == h - 1
        nxt = sc.level(ell + 1, leaves)
        s0, s1 = step_expand(sc.level(ell, leaves)[: b << ell], nxt, b, clear_lsb and last)
        s0 ^= g0[0]
        s1 ^= g0[1]
        side = r[ell]
        sib = ksib[ell] ^ np.where(side[:, None], s1, s0)
        other = np.where(side[:, None], s0, s1)
        if last and clear_lsb:
            sib[:, 0] &= _LSB_CLEAR
        p_sib = p + (side.astype(np.int64) << ell)
        p = p + ((~side).astype(np.int64) << ell)
        nxt[p_sib * b + trees] = sib
        nxt[p * b + trees] = 0
    # Step 4 (end): w_α = c ⊕ ⨁_{j≠α} w_j; the known leaves sum to K_r^{h−1} ⊕ other.
    known = ksib[h - 1] ^ other
    if clear_lsb:
        known[:, 0] &= _LSB_CLEAR
    leaves[p * b + trees] = c ^ known
    return leaves[: b << h], p


async def send_batch(
    ch: Channel,
    delta: np.ndarray,
    q: np.ndarray,
    seeds: np.ndarray,
    tweak: np.ndarray,
    domain: int,
    scratch: Scratch | None = None,
    clear_lsb: bool = True,
) -> np.ndarray:
    """Steps 1–2 for one batch of b trees (seeds ``(b, 2)``, base COTs q ``(h, b, 2)``):
    sends the batch's message, returns its leaves v ``(b·2^h, 2)`` (a view of the scratch)."""
    h = q.shape[0]

    def work() -> tuple[np.ndarray, bytes]:
        leaves, sums = step_sender_expand(seeds, h, scratch, clear_lsb)
        return leaves, step_sender_message(sums, delta, q, tweak, domain, clear_lsb)

    leaves, msg = await asyncio.to_thread(work)
    await ch.send(msg, tag=TAG_M)
    return leaves


async def recv_batch(
    ch: Channel,
    r: np.ndarray,
    tb: np.ndarray,
    tweak: np.ndarray,
    domain: int,
    scratch: Scratch | None = None,
    clear_lsb: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 3–4 for one batch (choices r ``(h, b)``, base COTs t_b ``(h, b, 2)``): returns
    (w ``(b·2^h, 2)``, α ``(b,)``)."""
    h, b = r.shape
    msg = await ch.recv(tag=TAG_M)
    if not isinstance(msg, bytes) or len(msg) != message_bytes(b, h):
        raise ProtocolError(f"MPCOT: expected {message_bytes(b, h)} bytes for {b} trees")

    def work() -> tuple[np.ndarray, np.ndarray]:
        ksib, c = step_receiver_keys(msg, r, tb, tweak, domain)
        return step_receiver_expand(ksib, r, c, scratch, clear_lsb)

    return await asyncio.to_thread(work)


async def send(
    ch: Channel,
    delta: np.ndarray,
    q: np.ndarray,
    t: int,
    h: int,
    prg: PRG,
    index0: int,
    domain: int,
    clear_lsb: bool = True,
) -> np.ndarray:
    """MPCOT sender: returns v, ``(t·2^h, 2)`` uint64 (the receiver gets v ⊕ e·Δ).

    Args:
        ch: the channel.
        delta: Δ, a ``(2,)`` uint64 block (the base COTs' Δ).
        q: the sender's t·h base COT blocks, level-major: ``(h·t, 2)`` or ``(h, t, 2)``.
        t, h: trees and depth.
        prg: the source of the root seeds.
        index0: hash-tweak index of the first base COT (unique within ``domain``).
        domain: 48-bit hash-tweak domain.
        clear_lsb: clear bit 0 of every leaf (see the module docstring).
    """
    seeds = prg.uint64((t, 2))
    q = np.asarray(q, np.uint64).reshape(h, t, 2)
    out = np.empty((t << h, 2), np.uint64)
    sc = Scratch(batches(t, h)[0][1], h)
    for i0, i1 in batches(t, h):
        tw = tweaks(index0, t, h, i0, i1)
        v = await send_batch(ch, delta, q[:, i0:i1], seeds[i0:i1], tw, domain, sc, clear_lsb)
        out[i0 << h : i1 << h] = v
    return out


async def recv(
    ch: Channel,
    r: np.ndarray,
    tb: np.ndarray,
    t: int,
    h: int,
    index0: int,
    domain: int,
    clear_lsb: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """MPCOT receiver: returns (w ``(t·2^h, 2)``, α ``(t,)``); w = v ⊕ e·Δ, where e is 1 at
    the rows :func:`leaf_rows` (α) only.

    ``r`` (t·h bools) and ``tb`` (``(t·h, 2)`` blocks) are the receiver's base COTs, in the
    sender's order; α_i's bit ℓ is 1 − r_{ℓ,i}.
    """
    rr = np.asarray(r, dtype=bool).reshape(h, t)
    tb = np.asarray(tb, np.uint64).reshape(h, t, 2)
    out = np.empty((t << h, 2), np.uint64)
    alpha = np.empty(t, np.int64)
    sc = Scratch(batches(t, h)[0][1], h)
    for i0, i1 in batches(t, h):
        tw = tweaks(index0, t, h, i0, i1)
        w, a = await recv_batch(ch, rr[:, i0:i1], tb[:, i0:i1], tw, domain, sc, clear_lsb)
        out[i0 << h : i1 << h], alpha[i0:i1] = w, a
    return out, alpha


def ideal(delta: np.ndarray, t: int, h: int, prg: PRG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plaintext MPCOT: (v, w, α) with lsb(v) = 0 and w = v ⊕ e·Δ for regular e."""
    v = prg.uint64((t << h, 2))
    v[:, 0] &= _LSB_CLEAR
    alpha = prg.below(1 << h, t).astype(np.int64)
    w = v.copy()
    w[leaf_rows(alpha, h)] ^= np.asarray(delta, np.uint64)
    return v, w, alpha

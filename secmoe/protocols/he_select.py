"""Encrypted expert selection (SecMoE's Select-Then-Compute step) with HE.

**What it computes.** For each token k < T: a one-hot routing vector t_k ∈ {0,1}^E, additively
shared over Z_{2^ℓ} (client t_c, server t_s), the token's input x_k ∈ Z_{2^ℓ}^d, shared too,
and the server's E experts' weight matrices W_j,m (d×h_m, signed, |W| < 2^(w_bits−1); m indexes
several matrices per expert, e.g. W1 and V of a gated FFN). Both parties end with fresh shares
of x_k·W_{r_k},m mod 2^ℓ where r_k is the selected expert, exactly. Nobody learns r_k.

**Who learns what.** The server sees ciphertexts only. The client decrypts uniformly masked
values from re-randomized, flooded ciphertexts (as in :mod:`secmoe.protocols.he_linear`); it
learns nothing about the weights (of any expert) beyond the public shapes and bound. Every
layout, block size and packing is a public function of (T, E, d, h_m): the same whatever the
routing, so neither party learns which token uses which expert.

**Method** (the paper's steps 4-7; REF SecMoE, arXiv 2601.06790; query expansion from SealPIR,
Angel et al., S&P 2018, eprint 2017/1142; coefficient packing from Cheetah, eprint 2022/207;
packing of results from Chen–Dai–Kim–Song's PackLWEs, eprint 2020/015):

1. The client packs its shares of all T·E one-hot entries into *one* ciphertext (BFV,
   message scaled by q/2^(ℓ+λ) with 2^λ ≥ T·E) and its inputs x_c into BGV-style ciphertexts
   (phase x + 2^ℓ·e, one per token and input block of d_b; x̂ = Σ_j x_j·X^(−j), a negative
   power wrapping with its sign).
2. The server adds t_s and x_s, then expands the packed ciphertext into T·E ciphertexts of
   constants with λ levels of X ↦ X^(N/2^j+1) automorphisms (Galois keys sent in setup); the
   2^λ factor of the expansion cancels the pre-scaling (and the wraps of t_c + t_s).
3. [[W_r]] = Σ_j [[t_j]]·Ŵ_j (plaintext products, per token, per weight block,
   ŵ = Σ_{j,l} W[j, l]·X^(l·d_b + j)): the selected expert's weights, encrypted. Computed in
   the NTT domain on numpy residues (:class:`~secmoe.crypto.he_mac.RnsMac`, bit for bit
   SEAL's multiply_plain + add_inplace): each weight block is transformed once per call, all
   the blocks of one output block multiplied in one pass over the expanded ciphertexts, the
   products summed lazily; step 4's tensor likewise.
4. [[x·W_r]] = [[W_r]] ⊗ [[x]]: the tensor product mod q of a BFV and a BGV ciphertext is a BFV
   ciphertext of the product mod 2^ℓ with no rescaling (t = 2^ℓ is beyond SEAL's own BFV
   multiplication); accumulated over blocks, switched down to the plan's evaluation level
   (the lowest whose modulus still absorbs the flood of the switched noise; there the key
   switches of relinearization and packing cost about half), multiplied by 2^(−P) mod q (a
   constant; the packing's factor 2^P cancels it exactly) and relinearized once per product
   ciphertext. Output l of a block sits at coefficient l·d_b (a multiple of 2^P, P ≤ the
   2-adic valuation of d_b).
5. Packing: the T·Σ⌈h_m/h_b⌉ product ciphertexts, each with h_b useful coefficients, are
   merged 2^P at a time into one by a binary tree whose merge at depth j is
   (A + X^(2^j)·B) + σ_j(A − X^(2^j)·B), σ_j: X ↦ X^(N/2^j + 1): on the multiples of 2^j it
   keeps (doubled) those of 2^(j+1) of A and of B, moving B's up by 2^j, and cancels the
   others; σ_j maps the other coefficients (garbage, never returned) among themselves. Member
   r's outputs land at l·d_b + rev_P(r) (P bits reversed, so the tree merges the products in
   the order they are made, holding ≤ P + 1 ciphertexts); a member past the last is no
   ciphertext, and merging with it is 2A (its slots are not returned). With the products'
   2^(−P), the useful coefficients come out unchanged (PackLWEs).
6. Re-randomize, mask, flood (at the evaluation level), switch to q_L, return (as in
   protocol 1): c1 of each packed ciphertext and c0 at the useful coefficients only.

**Message flow** (one round trip)::

    client                                                   server
      ── he/sel/x: plan, seed_t, c0_t [1 × N], seed_x, c0_x [T·⌈d/d_b⌉ × N] ──▶
                                                     expand, select, multiply, pack, mask
      ◀── he/sel/y: c1 [⌈T·Σ⌈h_m/h_b⌉ / 2^P⌉ × N], c0 at outputs ──────────
      shares x_k·W_{r_k} + R                                 −R

**Cost.** c2s: (1 + T·⌈d/d_b⌉)·N·B_in + 32 bytes (c0 only, a as seeds), s2c:
⌈T·Σ⌈h_m/h_b⌉/2^P⌉·⌈N·b1/8⌉ + ⌈T·Σh_m·b0/8⌉ bytes (b1, b0: the bits of each returned
coefficient decryption needs, :func:`~secmoe.crypto.he_params.plan_return_bits`):
**independent of E** (E only enters the noise, hence possibly the input level). Setup: the
public key, relinearization keys and the Galois keys of X ↦ X^(N/2^j + 1) for
j < ⌈log2 T·E⌉ (expansion) and j < P (packing; setup sends these for every product anyway,
:func:`~secmoe.protocols.he_setup.packing_galois_elements`). Server work grows
linearly with E: T·E·⌈d/d_b⌉·Σ⌈h_m/h_b⌉ plaintext products and E·⌈d/d_b⌉·Σ⌈h_m/h_b⌉
NTTs of weight blocks (the selection), plus T·E − 1 automorphisms (expansion),
2·T·⌈d/d_b⌉·Σ⌈h_m/h_b⌉ products (the tensor), T·Σ⌈h_m/h_b⌉ relinearizations and about
as many automorphisms (packing). :func:`plan_select` picks d_b, h_b and P for the fewest
bytes, a key switch counting as :data:`KEY_SWITCH_BYTES`.

**Scale-out** (:mod:`secmoe.distributed`): steps 2-4 are :func:`shard_products`, which runs
on any subset of the experts (a :class:`SelectWeights` shard): the expansion computes only the
nodes above its experts' leaves (level j splits on bit j of i = k·E + j', so experts
j' ≡ w (mod W), W | E, are one subtree: T·E/W − 1 + log2 W automorphisms), and the tensor
product being bilinear, the shards' accumulators add up to the whole, bit for bit. A
:class:`ShardedSelect` stands for experts held by workers: the server sums their accumulators
and does steps 4 (switch, relinearize) to 6 itself; the wire is unchanged.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Protocol

import numpy as np
import tenseal.sealapi as sealapi

from ..crypto.he import (
    HEContext,
    HEError,
    ReturnPacker,
    add_rns,
    encode_scaled_exact,
    expand_a,
    pack_fresh,
    pack_returned,
    unpack_fresh,
    unpack_returned,
)
from ..crypto.he_mac import RnsMac
from ..crypto.he_params import (
    CBD_ETA,
    FLOOD_UNION_BITS,
    HE_16K,
    HEParams,
    ReturnBits,
    level_bits,
    params_for,
    plan_noise,
    plan_return_bits,
)
from ..crypto.he_rns import centered_to_rns
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING, Ring
from ..net import Channel
from .he_common import block_candidates, encoded_size, ret_bytes
from .he_setup import ClientHE, ServerHE, setup_client, setup_server

__all__ = [
    "KEY_SWITCH_BYTES",
    "ExpertWorkers",
    "SelectPlan",
    "SelectWeights",
    "ShardedSelect",
    "encode_select_weights",
    "ideal_select",
    "plan_select",
    "select_client",
    "select_cost",
    "select_server",
    "shard_products",
    "shard_products_arrays",
]

U64 = np.uint64
#: Bytes of transformed weight blocks the server holds at once (one pass over the expanded
#: one-hot ciphertexts multiplies them all: the fewer passes, the less memory traffic).
_WEIGHT_BATCH_BYTES = 256 << 20
#: What one key switch (a relinearization or an automorphism, ~15 ms at N = 16384) weighs
#: against bytes on the wire when :func:`plan_select` compares packings.
KEY_SWITCH_BYTES = 1 << 14


def _ceil_log2(v: int) -> int:
    return max(0, (v - 1).bit_length())


def _valuation2(v: int) -> int:
    return (v & -v).bit_length() - 1


def _rev(r: int, bits: int) -> int:
    """r with its ``bits`` low bits reversed."""
    return int(f"{r:0{bits}b}"[::-1], 2) if bits else 0


@dataclass(frozen=True)
class SelectPlan:
    """Public parameters of one encrypted selection (both parties compute it).

    Attributes:
        params: name of the HE parameter set; n: its ring dimension N.
        t, e, d, hs: T tokens, E experts, inputs of d, weight matrices d×hs[m].
        db, hb: weight blocks d_b×h_b (d_b·h_b ≤ N).
        pack: merge levels P (2^P product ciphertexts per returned one; 0: none).
        w_bits: public bound, |W| < 2^(w_bits−1).
        level: primes in the client's ciphertexts; beta: flooding bits.
        eval_level: primes at which the products are relinearized, packed and flooded
            (≤ level: switched down first where the noise allows; key switches cost less).
    """

    params: str
    n: int
    t: int
    e: int
    d: int
    hs: tuple[int, ...]
    db: int
    hb: int
    pack: int
    w_bits: int
    level: int
    beta: int
    eval_level: int

    @property
    def lam(self) -> int:
        """Expansion levels λ = ⌈log2(T·E)⌉ (at least 1)."""
        return max(1, _ceil_log2(self.t * self.e))

    @property
    def nb(self) -> int:
        return -(-self.d // self.db)

    def nc(self, m: int) -> int:
        return -(-self.hs[m] // self.hb)

    @property
    def n_x(self) -> int:
        """Input ciphertexts (one per token and block)."""
        return self.t * self.nb

    @property
    def n_prod(self) -> int:
        """Product ciphertexts, before packing."""
        return self.t * sum(self.nc(m) for m in range(len(self.hs)))

    @property
    def n_out(self) -> int:
        """Returned ciphertexts."""
        return -(-self.n_prod // (1 << self.pack))

    @property
    def n_positions(self) -> int:
        return self.t * sum(self.hs)

    @property
    def outputs(self) -> list[tuple[int, int]]:
        """The output blocks (m, c), in the order the server computes them."""
        return [(m, c) for m in range(len(self.hs)) for c in range(self.nc(m))]

    @property
    def galois_elements(self) -> tuple[int, ...]:
        """Automorphisms X ↦ X^(N/2^j + 1) used, j < max(λ, P)."""
        return tuple(self.n // (1 << j) + 1 for j in range(max(self.lam, self.pack)))

    def products(self) -> Iterator[tuple[int, int, int, int]]:
        """(m, c, k, hc) of each product ciphertext in packing order: block-major, tokens
        inner (the order the server produces them)."""
        for m, h in enumerate(self.hs):
            for c in range(self.nc(m)):
                for k in range(self.t):
                    yield m, c, k, min(self.hb, h - c * self.hb)

    def groups(self) -> list[list[tuple[int, int, int, np.ndarray]]]:
        """Per returned ciphertext, its members (m, c, k, coefficients of the hc outputs)."""
        out: list[list] = [[] for _ in range(self.n_out)]
        for i, (m, c, k, hc) in enumerate(self.products()):
            g, r = divmod(i, 1 << self.pack)
            out[g].append((m, c, k, np.arange(hc) * self.db + _rev(r, self.pack)))
        return out

    @cached_property
    def ret_bits(self) -> ReturnBits:
        """Bits sent per returned c1 and c0 coefficient."""
        params = params_for(self.params)
        return plan_return_bits(
            params, self.beta, self.eval_level, self.n_out * self.n, self.n_positions
        )

    def wire(self) -> list[int]:
        """The plan as integers (sent by the client, checked by the server)."""
        return [self.n, self.t, self.e, self.d, len(self.hs), *self.hs, self.db, self.hb,
                self.pack, self.w_bits, self.level, self.beta, self.eval_level]  # fmt: skip


def select_noise_log2(
    params: HEParams,
    e: int,
    lam: int,
    db: int,
    hb: int,
    w_bits: int,
    pack: int = 0,
    drop: float = 0.0,
) -> float:
    """log2 of the worst-case noise of one returned coefficient before flooding.

    Expanded constants: 2^λ·(η + 2 + B_ks). Selected weights:
    F ≤ E·d_b·h_b·2^(w_bits−1)·(B_t + 1). Tensor with the BGV input (message |x̂| < 2^63, noise
    2^ℓ·g, |g| ≤ η + 2): F·x̂ + 2^ℓ·F·g ≤ F·2^ℓ·(N·(η + 2) + d_b). The packing is exact on
    this part (the 2^(−P) pre-scaling cancels its trace); what it adds: the relinearization's
    key-switching noise, multiplied by the trace's 2^P, and each merge's, multiplied by 2^j at
    depth j (disjoint supports per depth): ≤ 2^(P+1)·B_ks in all. With ``drop`` > 0 bits
    (the products switched from the input level to a level log2 q smaller by ``drop`` before
    relinearizing): the tensor's part scaled by 2^(−drop), plus the switch's rounding of
    A + B = (a0, a1 + b0, b1), |δ| ≤ 1 per coefficient: ≤ 1 + N + N² (‖s²‖₁ ≤ N²), within
    the (N + 1)² counted (the bound of switching A and B apart).
    """
    ks = 2.0 ** params.keyswitch_noise_bits()
    bt = 2.0**lam * (CBD_ETA + 2 + ks)
    f = e * db * hb * 2.0 ** (w_bits - 1) * (bt + 1)
    main = f * 2.0**params.plain_bits * (params.n * (CBD_ETA + 2) + db)
    switch = main * 2.0**-drop + (params.n + 1) ** 2 if drop > 0 else main
    return math.log2(switch + 2.0 ** (pack + 1) * ks)


def _merges(count: int, pack: int) -> int:
    """Automorphisms of packing ``count`` product ciphertexts 2^pack at a time."""
    total = 0
    for lo in range(0, count, 1 << pack):
        n = min(1 << pack, count - lo)
        total += sum(-(-n // (1 << h)) for h in range(1, pack + 1))
    return total


def plan_select(
    t: int,
    e: int,
    d: int,
    hs: Sequence[int],
    params: HEParams = HE_16K,
    *,
    w_bits: int = 16,
    union_bits: int = FLOOD_UNION_BITS,
) -> SelectPlan:
    """The blocks (d_b, h_b, d_b·h_b ≤ N) and packing levels P minimizing the bytes on the wire
    plus :data:`KEY_SWITCH_BYTES` per key switch of the server (flooding for 2^κ returned
    coefficients per key, κ = ``union_bits``)."""
    hs = tuple(int(h) for h in hs)
    if not hs or min(t, e, d, *hs) < 1 or t * e > params.n:
        raise ValueError("selection shapes must be positive with T·E ≤ N")
    n = params.n
    lam = max(1, _ceil_log2(t * e))
    hmax = max(hs)
    best = None
    for db in block_candidates(d, n):
        cap = min(hmax, n // db)
        hb = -(-hmax // -(-hmax // cap))
        nb = -(-d // db)
        n_prod = t * sum(-(-h // hb) for h in hs)
        pack = min(_valuation2(db), params.pack_log, _ceil_log2(n_prod))
        try:
            bound = select_noise_log2(params, e, lam, db, hb, w_bits, pack)
            noise = plan_noise(params, bound, union_bits=union_bits)
        except ValueError:
            continue
        level = noise.level
        for ev_level in range(params.out_primes, level + 1):  # the lowest that still floods
            drop = level_bits(params, level) - level_bits(params, ev_level)
            bound = select_noise_log2(params, e, lam, db, hb, w_bits, pack, drop)
            low = plan_noise(params, bound, union_bits=union_bits)
            if low.level <= ev_level:
                break
        n_out = -(-n_prod // (1 << pack))
        in_bytes = n * sum(params.byte_widths[:level])
        bits = plan_return_bits(params, low.beta, ev_level, n_out * n, t * sum(hs))
        cost = (1 + t * nb) * in_bytes + ret_bytes(bits, n_out, n, t * sum(hs))
        switches = n_prod + _merges(n_prod, pack)
        key = (cost + KEY_SWITCH_BYTES * switches, nb * n_prod)
        if best is None or key < best[0]:
            best = (key, db, hb, pack, level, low.beta, ev_level)
    if best is None:
        raise ValueError(f"{params.name}: no packing fits the selection noise (E={e})")
    _k, db, hb, pack, level, beta, ev_level = best
    return SelectPlan(params.name, n, t, e, d, hs, db, hb, pack, w_bits, level, beta, ev_level)


@dataclass
class SelectWeights:
    """The server's expert weights in the selection layout: ``polys[i][m]`` is (nb, nc, N), for
    expert ``experts[i]`` (all E in order when ``experts`` is None; a worker of
    :mod:`secmoe.distributed` holds a shard), of every output block (m, c) — or, with
    ``outputs`` (indices into ``plan.outputs``), of those only: ``polys[i][m]`` then has one
    column per held block of matrix m, in order (a worker that holds a part of the blocks).

    As in :class:`~secmoe.protocols.he_common.EncodedWeights`, zero blocks cost the same work
    as any other unless ``skip_zero_blocks`` (an operator option that LEAKS, through the
    server's timing, which blocks of the experts' weights are zero).
    """

    plan: SelectPlan
    polys: list[list[np.ndarray]]
    skip_zero_blocks: bool = False
    experts: tuple[int, ...] | None = None
    outputs: tuple[int, ...] | None = None

    @property
    def expert_ids(self) -> tuple[int, ...]:
        return tuple(range(self.plan.e)) if self.experts is None else self.experts

    @cached_property
    def held_outputs(self) -> list[tuple[int, int]]:
        """The output blocks (m, c) held here, in plan order."""
        outs = self.plan.outputs
        return outs if self.outputs is None else [outs[o] for o in self.outputs]

    @cached_property
    def column(self) -> dict[tuple[int, int], int]:
        """Output block (m, c) → its column in ``polys[i][m]``."""
        out: dict[tuple[int, int], int] = {}
        for m, c in self.held_outputs:
            out[m, c] = sum(1 for mm, _c in out if mm == m)
        return out

    @cached_property
    def local(self) -> dict[int, int]:
        """Expert index → its row of ``polys``."""
        return {j: i for i, j in enumerate(self.expert_ids)}

    @cached_property
    def owned(self) -> np.ndarray:
        """Per one-hot entry i = k·E + j (i < T·E): whether expert j is held here."""
        mask = np.zeros(self.plan.e, dtype=bool)
        mask[list(self.expert_ids)] = True
        return np.tile(mask, self.plan.t)

    @cached_property
    def zero_blocks(self) -> dict[tuple[int, tuple[int, int, int]], bool]:
        """(j, (m, c, b)) → whether expert j's block (b, c) of matrix m is all zero."""
        return {
            (j, (m, c, b)): not self.polys[i][m][b, col].any()
            for j, i in self.local.items()
            for (m, c), col in self.column.items()
            for b in range(self.plan.nb)
        }

    @property
    def nbytes(self) -> int:
        """Memory of the encoded weights (bytes)."""
        return sum(poly.nbytes for row in self.polys for poly in row)


@dataclass
class ShardedSelect:
    """The coordinator's handle on expert weights held by workers (:mod:`secmoe.distributed`):
    ``products(root, x0, x1)`` yields, per output block (m, c) in plan order, the sum over the
    shards of :func:`shard_products_arrays`' accumulators: ``(present (T,), acc (T, 3, L,
    N))``, A + B of each token in NTT form at ``plan.level`` (zero where not present). It
    holds none of the experts' weights."""

    plan: SelectPlan
    products: Callable[[np.ndarray, np.ndarray, np.ndarray], Iterator[tuple]]
    skip_zero_blocks: bool = False


def _layout_w(w: np.ndarray, plan: SelectPlan, m: int) -> np.ndarray:
    """Weight polynomials (nb, nc, N): ŵ[l·d_b + j] = W[b·d_b + j, c·h_b + l]."""
    db, hb, nb, nc = plan.db, plan.hb, plan.nb, plan.nc(m)
    wp = np.zeros((nb * db, nc * hb), dtype=np.int64)
    wp[: plan.d, : plan.hs[m]] = w
    blocks = wp.reshape(nb, db, nc, hb).transpose(0, 2, 3, 1)  # [b, c, l, j]
    polys = np.zeros((nb, nc, plan.n), dtype=np.int64)
    polys[..., : hb * db] = blocks.reshape(nb, nc, hb * db)
    return polys


def encode_select_weights(
    weights: Sequence[Sequence[np.ndarray]],
    plan: SelectPlan,
    *,
    skip_zero_blocks: bool = False,
    experts: Sequence[int] | None = None,
    outputs: Sequence[int] | None = None,
) -> SelectWeights:
    """Lay out ``weights[i][m]`` (expert i, or ``experts[i]`` for a shard; matrix m, d×h_m
    signed) for ``plan`` (setup): every output block, or those of ``outputs`` (indices into
    ``plan.outputs``)."""
    ids = tuple(range(plan.e)) if experts is None else tuple(int(j) for j in experts)
    if len(weights) != len(ids) or not set(ids) <= set(range(plan.e)) or len(set(ids)) != len(ids):
        raise ValueError(f"plan has {plan.e} experts, got {len(weights)} for experts {ids}")
    held = None if outputs is None else tuple(sorted({int(o) for o in outputs}))
    if held is not None and not set(held) <= set(range(len(plan.outputs))):
        raise ValueError(f"plan has {len(plan.outputs)} output blocks, got {held}")
    cols = [
        [c for o, (mm, c) in enumerate(plan.outputs) if mm == m and (held is None or o in held)]
        for m in range(len(plan.hs))
    ]
    polys = []
    for ws in weights:
        if len(ws) != len(plan.hs):
            raise ValueError(f"each expert needs {len(plan.hs)} matrices")
        row = []
        for m, w in enumerate(ws):
            w = np.asarray(w, dtype=np.int64)
            if w.shape != (plan.d, plan.hs[m]):
                raise ValueError(f"weight shape {w.shape}, expected {(plan.d, plan.hs[m])}")
            if w.size and int(np.abs(w).max()) >= 1 << (plan.w_bits - 1):
                raise ValueError(f"weights exceed the public bound 2^{plan.w_bits - 1}")
            poly = _layout_w(w, plan, m)
            row.append(poly if held is None else np.ascontiguousarray(poly[:, cols[m]]))
        polys.append(row)
    primes = params_for(plan.params).primes
    for level in {plan.level, plan.eval_level}:  # the kernels' tables, now (setup)
        _rns_mac(tuple(primes[:level])).prepare(plan.n)
    return SelectWeights(plan, polys, skip_zero_blocks, None if experts is None else ids, held)


class ExpertWorkers(Protocol):
    """Where the server's experts live when it scales out (a session's view of a
    :class:`secmoe.distributed.ExpertPool`): ``prepare`` lays out each worker's experts
    (``ints_of(experts)``: per expert, its d×h_m integer matrices) and returns the handle."""

    def prepare(
        self,
        key: tuple,
        plan: SelectPlan,
        ints_of: Callable[[Sequence[int]], list[list[np.ndarray]]],
        skip: bool,
    ) -> ShardedSelect: ...


# --- local steps ----------------------------------------------------------------------------


def _onehot_poly(t_sh: np.ndarray, plan: SelectPlan) -> np.ndarray:
    m = np.zeros((1, plan.n), dtype=U64)
    m[0, : plan.t * plan.e] = np.asarray(t_sh, dtype=U64).reshape(-1)
    return m


def _x_polys(x: np.ndarray, plan: SelectPlan) -> np.ndarray:
    """Input polynomials (T·nb, N), index k·nb + b: x̂ = Σ_j X[k, b·d_b + j]·X^(−j)."""
    db = plan.db
    xp = np.zeros((plan.t, plan.nb * db), dtype=U64)
    xp[:, : plan.d] = x
    blocks = xp.reshape(plan.n_x, db)
    polys = np.zeros((plan.n_x, plan.n), dtype=U64)
    polys[:, 0] = blocks[:, 0]
    if db > 1:  # X^(−j) = −X^(N−j)
        polys[:, plan.n - db + 1 :] = (U64(0) - blocks[:, 1:])[:, ::-1]
    return polys


def step_client_encrypt(he: ClientHE, t_c: np.ndarray, x_c: np.ndarray, plan: SelectPlan, prg):
    """(seed_t, c0_t, seed_x, c0_x) packed for the wire."""
    sk, lv = he.sk, plan.level
    bits = he.ctx.params.plain_bits + plan.lam
    seed_t, c0_t = sk.encrypt(_onehot_poly(t_c, plan), prg, scale_bits=bits, level=lv)
    seed_x, c0_x = sk.encrypt(_x_polys(x_c, plan), prg, encoding="bgv", level=lv)
    return seed_t, pack_fresh(he.ctx, c0_t, lv), seed_x, pack_fresh(he.ctx, c0_x, lv)


def _check_galois(he: ServerHE, plan: SelectPlan) -> None:
    levels = max(plan.lam, plan.pack)
    for j in range(levels):
        if he.ctx.n // (1 << j) + 1 not in he.galois_elements:
            raise HEError(f"missing Galois key for element {he.ctx.n // (1 << j) + 1}")


def _needed(owned: np.ndarray, depth: int, i: int) -> bool:
    """Whether the expansion node i at ``depth`` (leaves i' ≡ i mod 2^depth) has a leaf held
    here."""
    return bool(owned[i :: 1 << depth].any())


def _children(ctx: HEContext, galois, c, j: int, mono_pt, odd: bool, last: bool) -> tuple:
    """One expansion step on c (coefficient form; consumed): (c + σ(c), (c − σ(c))·X^(−2^j)
    or None), in NTT form at the last level. X^(−2^j) = −X^(N − 2^j): (σ(c) − c) times the
    monomial ``mono_pt`` = X^(N − 2^j), a negacyclic shift in coefficient form (SEAL's
    monomial path: no transform)."""
    ev = ctx.evaluator
    sig = sealapi.Ciphertext(ctx.seal)
    ev.apply_galois(c, ctx.n // (1 << j) + 1, galois, sig)
    o = None
    if odd:
        o = sealapi.Ciphertext(ctx.seal)
        ev.sub(sig, c, o)
        ev.multiply_plain_inplace(o, mono_pt)
        if last:
            ev.transform_to_ntt_inplace(o)
    ev.add_inplace(c, sig)
    if last:
        ev.transform_to_ntt_inplace(c)
    return c, o


def _monomials(ctx: HEContext, plan: SelectPlan) -> list[sealapi.Plaintext]:
    """X^(N − 2^j) as coefficient-form plaintexts, j < λ."""
    return [ctx.plain_monomial(ctx.n - (1 << j)) for j in range(plan.lam)]


def _expand(ctx: HEContext, galois, ct, plan: SelectPlan, owned: np.ndarray) -> list:
    """SealPIR expansion: ct of Σ_i m_i X^i → [ct of 2^λ·m_i] (i < T·E, None where
    ``owned[i]`` is false), NTT form, breadth first (parents are dropped as their children
    appear). Level j splits on bit j of i, so a node none of whose leaves is owned is not
    computed: a worker holding the experts j ≡ w (mod 2^s) expands only its own subtree."""
    want, monos = plan.t * plan.e, _monomials(ctx, plan)
    cts: list = [ct]
    for j in range(plan.lam):
        half = len(cts)
        new: list = [None] * min(2 * half, want)
        for i in range(half):
            c, cts[i] = cts[i], None
            if c is None:
                continue
            odd = i + half < len(new) and _needed(owned, j + 1, i + half)
            even, o = _children(ctx, galois, c, j, monos[j], odd, j == plan.lam - 1)
            new[i] = even if _needed(owned, j + 1, i) else None
            if o is not None:
                new[i + half] = o
        cts = new
    return cts


def _expand_depth_first(ctx: HEContext, galois, ct, plan: SelectPlan, owned: np.ndarray):
    """The same expansion, depth first: yields (i, ct of 2^λ·m_i) for the owned i, holding
    ≤ λ + 1 ciphertexts."""
    want, monos = plan.t * plan.e, _monomials(ctx, plan)
    stack = [(ct, 0, 0)]
    while stack:
        c, j, i = stack.pop()
        if j == plan.lam:
            yield i, c
            continue
        i_odd = i + (1 << j)
        odd = i_odd < want and _needed(owned, j + 1, i_odd)
        even, o = _children(ctx, galois, c, j, monos[j], odd, j == plan.lam - 1)
        if o is not None:
            stack.append((o, j + 1, i_odd))
        if _needed(owned, j + 1, i):
            stack.append((even, j + 1, i))


@cache
def _rns_mac(primes: tuple[int, ...]) -> RnsMac:
    """The NTT-domain kernels at one level (their NTT tables built once per process)."""
    return RnsMac(primes)


def _weight_ntt(
    mac: RnsMac, weights: SelectWeights, items: Sequence[tuple[int, tuple]], buf: np.ndarray
) -> np.ndarray:
    """NTT-form residues (len(items), L, N) of Ŵ_j,m[b, c] for each (j, (m, c, b)) of
    ``items`` (j held here), SEAL's transform bit for bit, in the first rows of ``buf``."""
    polys = [weights.polys[weights.local[j]][m][b, weights.column[m, c]] for j, (m, c, b) in items]
    return mac.ntt(mac.small_to_rns(np.stack(polys), buf[: len(items)]))


def _leaves_fused(
    ctx: HEContext,
    mac: RnsMac,
    galois,
    ct_t,
    weights: SelectWeights,
    blocks: list[tuple[int, int, int]],
    zero: dict,
) -> np.ndarray:
    """Step 3 with the depth-first expansion (few blocks): each expanded [[t_kj]] is used at
    once for every block; returns [[Σ_j t_kj·Ŵ_j,m[b, c]]] (T·len(blocks), 2, L, N), row
    k·len(blocks) + block. Each expert's blocks are transformed once (on its first leaf)."""
    plan, nbl = weights.plan, len(blocks)
    wsel = np.zeros((plan.t * nbl, 2, plan.level, plan.n), dtype=U64)
    wntt: dict[int, np.ndarray] = {}
    for i, tct in _expand_depth_first(ctx, galois, ct_t, plan, weights.owned):
        k, j = divmod(i, plan.e)
        if j not in wntt:
            buf = np.empty((nbl, plan.level, plan.n), dtype=U64)
            wntt[j] = _weight_ntt(mac, weights, [(j, blk) for blk in blocks], buf)
        pairs = [
            (k * nbl + x, 0, x)
            for x in range(nbl)
            if not (weights.skip_zero_blocks and zero[j, blocks[x]])
        ]
        mac.mac(wsel, ctx.export_ct(tct)[None], wntt[j], pairs)
    return wsel


def shard_products(
    ctx: HEContext,
    galois: sealapi.GaloisKeys,
    ct_t: sealapi.Ciphertext,
    x0: np.ndarray,
    x1: np.ndarray,
    weights: SelectWeights,
    times: dict[str, float],
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Steps 2-4 for the experts ``weights`` holds (all of them, or a worker's shard): per
    output block (m, c) it holds (all, or a worker's part), in plan order, ``(present (T,)
    bool, acc (T, 3, L, N))``: for each token k the size-3 ciphertext acc[k] = A_k + B_k =
    (a0, a1 + b0, b1) of the accumulators A_k, B_k =
    Σ_b (Σ_j [[t_kj]]·Ŵ_j,m[b, c]) ⊗ (x0, x1)[k·nb + b], NTT form at the input level (not
    present, and zero, where every held expert's blocks (m, c) are zero). The tensor product
    is bilinear, so the shards' accumulators add up to the whole.

    ``ct_t`` is [[t]] (coefficient form; consumed), ``x0``/``x1`` (n_x, L, N) the input
    ciphertexts' c0 and c1 in NTT form. The products (selection and tensor) run in the NTT
    domain on numpy residues (:class:`~secmoe.crypto.he_mac.RnsMac`: the weight blocks
    transformed once per call, every product summed lazily), bit for bit what SEAL's
    multiply_plain + add_inplace give. Zero weight blocks cost the same work as any other
    unless ``skip_zero_blocks``. When the experts have fewer weight blocks than the selection
    has one-hot entries (E·n_blocks + T·n_blocks < T·E, small d), the expansion runs depth
    first and each expanded constant is used at once, so the T·E ciphertexts never coexist.
    ``times`` receives expand/select/tensor seconds and this generator's own CPU seconds
    (``expand_cpu``, ``products_cpu``: all of it so far, the expansion included)."""
    plan = weights.plan
    nb, t, e, lv, n = plan.nb, plan.t, plan.e, plan.level, plan.n
    primes = ctx.primes[:lv]
    mac = _rns_mac(tuple(primes))
    outs = weights.held_outputs
    held = weights.expert_ids
    zero = weights.zero_blocks
    xw = np.concatenate([x0, x1])  # the tensor's multipliers: x0 rows, then x1 rows
    fused = (e + t) * nb * len(outs) < t * e
    blocks = [(m, c, b) for m, c in outs for b in range(nb)]
    t0, c0, cpu = time.perf_counter(), time.thread_time(), 0.0  # cpu: this generator's own
    if fused:  # expansion and selection for every block at once
        wsel_all = _leaves_fused(ctx, mac, galois, ct_t, weights, blocks, zero)
        times.update(expand=0.0, expand_cpu=0.0)
        t_sel = time.perf_counter() - t0
    else:
        tcts = _expand(ctx, galois, ct_t, plan, weights.owned)
        leaves = np.empty((t * len(held), 2, lv, n), dtype=U64)  # row k·J + (j's index)
        for r, (k, j) in enumerate((k, j) for k in range(t) for j in held):
            leaves[r], tcts[k * e + j] = ctx.export_ct(tcts[k * e + j]), None
        times.update(expand=time.perf_counter() - t0, expand_cpu=time.thread_time() - c0)
        t_sel = 0.0
    t_ten = 0.0
    # buffers reused for every output block (fresh ones cost a page fault per 4 KiB)
    wsel = np.empty((t * nb, 2, lv, n), dtype=U64)  # row k·nb + b: [[Σ_j t_kj·Ŵ_j,m[b, c]]]
    batch = min(nb * len(held), max(1, _WEIGHT_BATCH_BYTES // (lv * n * 8)))
    wbuf = np.empty((0 if fused else batch, lv, n), dtype=U64)  # transformed weight blocks
    for o, (m, c) in enumerate(outs):
        s0 = time.perf_counter()
        # live (b, x): the blocks multiplied (all, unless skip_zero_blocks)
        live = [
            (b, x)
            for b in range(nb)
            for x, j in enumerate(held)
            if not (weights.skip_zero_blocks and zero[j, (m, c, b)])
        ]
        if fused:
            wsel.reshape(t, nb, 2, lv, n)[:] = wsel_all.reshape(t, -1, 2, lv, n)[
                :, o * nb : (o + 1) * nb
            ]
        else:  # all nb blocks in one pass over the leaves (each leaf read once per (m, c))
            wsel.fill(0)
            for lo in range(0, len(live), batch):
                part = live[lo : lo + batch]
                w = _weight_ntt(mac, weights, [(held[x], (m, c, b)) for b, x in part], wbuf)
                pairs = [
                    (k * nb + b, k * len(held) + x, y)
                    for y, (b, x) in enumerate(part)
                    for k in range(t)
                ]
                mac.mac(wsel, leaves, w, pairs)
        s1 = time.perf_counter()
        # tensor: (W0, W1) ⊗ (x0, x1), summed over the blocks b as A_k (row k), B_k (T + k)
        acc = np.zeros((2 * t, 2, lv, n), dtype=U64)
        rows = sorted({k * nb + b for b, _x in live for k in range(t)})
        pairs = [(r // nb, r, r) for r in rows] + [(t + r // nb, r, plan.n_x + r) for r in rows]
        mac.mac(acc, wsel, xw, pairs)
        a = acc.reshape(2, t, 2, lv, n)  # A_k = a[0, k], B_k = a[1, k]
        c3 = np.empty((t, 3, lv, n), dtype=U64)  # A + B = (a0, a1 + b0, b1) per token
        c3[:, 0], c3[:, 2] = a[0, :, 0], a[1, :, 1]
        c3[:, 1] = add_rns(a[0, :, 1], a[1, :, 0], primes)
        t_sel += s1 - s0
        t_ten += time.perf_counter() - s1
        cpu += time.thread_time() - c0
        times.update(select=t_sel, tensor=t_ten, products_cpu=cpu)
        present = not all(zero[j, (m, c, b)] for j in held for b in range(nb))
        yield np.full(t, present), c3
        c0 = time.thread_time()


def shard_products_arrays(
    ctx: HEContext,
    galois: sealapi.GaloisKeys,
    root: np.ndarray,
    x0: np.ndarray,
    x1: np.ndarray,
    weights: SelectWeights,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`shard_products` on numpy arrays (a worker's side of :class:`ShardedSelect`):
    ``root`` is [[t]] (2, L, N) in coefficient form, ``x0``/``x1`` (n_x, L, N) in NTT form;
    yields per output block ``(present (T,) bool, acc (T, 3, L, N) uint64)``."""
    yield from shard_products(ctx, galois, ctx.import_ct(root, ntt=False), x0, x1, weights, {})


class _PackTree:
    """Step 5, streamed: product ciphertexts (coefficient form, or None for zero) arrive in
    packing order; every 2^P of them leave as one merged ciphertext. Holds ≤ P + 1 of them."""

    def __init__(self, he: ServerHE, pack: int) -> None:
        self.he, self.pack = he, pack
        self.stack: list[tuple[int, sealapi.Ciphertext | None]] = []  # (height, ct)
        self.monos = [he.ctx.plain_monomial(1 << j) for j in range(pack)]  # X^(2^j)

    def _merge(self, a, b, height: int):
        """(A + X^(2^j)·B) + σ_j(A − X^(2^j)·B), j = P − 1 − height (None is zero)."""
        ctx = self.he.ctx
        ev, j = ctx.evaluator, self.pack - 1 - height
        g = ctx.n // (1 << j) + 1
        if b is None:
            if a is not None:
                sig = sealapi.Ciphertext(ctx.seal)
                ev.apply_galois(a, g, self.he.galois, sig)
                ev.add_inplace(a, sig)
            return a
        xb = sealapi.Ciphertext(ctx.seal)
        ev.multiply_plain(b, self.monos[j], xb)
        diff = sealapi.Ciphertext(ctx.seal)
        if a is None:
            ev.negate(xb, diff)
            a = xb
        else:
            ev.sub(a, xb, diff)
            ev.add_inplace(a, xb)
        ev.apply_galois_inplace(diff, g, self.he.galois)
        ev.add_inplace(a, diff)
        return a

    def push(self, ct) -> Iterator:
        """Add the next product ciphertext; yields a merged one when 2^P are in."""
        node = (0, ct)
        while self.stack and self.stack[-1][0] == node[0]:
            h, left = self.stack.pop()
            node = (h + 1, self._merge(left, node[1], h))
        if node[0] == self.pack:
            yield node[1]
        else:
            self.stack.append(node)

    def close(self) -> Iterator:
        """Complete the last group: a member past the end is no ciphertext, and merging with
        it is just 2A (its slots, left with garbage, are not returned)."""
        while self.stack:
            h, ct = self.stack.pop()
            if ct is not None:
                self.he.ctx.evaluator.add_inplace(ct, ct)
            node = (h + 1, ct)
            while self.stack and self.stack[-1][0] == node[0]:
                h2, left = self.stack.pop()
                node = (h2 + 1, self._merge(left, node[1], h2))
            if node[0] == self.pack:
                yield node[1]
            else:
                self.stack.append(node)


def _scatter(plan: SelectPlan, groups: list, vals: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One T×h_m array per matrix from the values at each returned ciphertext's positions."""
    shares = [np.zeros((plan.t, h), dtype=U64) for h in plan.hs]
    for members, v in zip(groups, vals, strict=True):
        off = 0
        for m, c, k, pos in members:
            shares[m][k, c * plan.hb : c * plan.hb + len(pos)] = v[off : off + len(pos)]
            off += len(pos)
    return shares


def step_server_eval(
    he: ServerHE,
    weights: SelectWeights | ShardedSelect,
    t_s: np.ndarray,
    x_s: np.ndarray,
    msg: dict,
    prg: PRG,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict]:
    """Server's work: its shares (one T×h_m per matrix), packed c1, c0 and timings.

    Steps 2-4 run here (:func:`shard_products`) or, for a :class:`ShardedSelect`, on the
    workers holding the experts (their accumulators summed); steps 4 (switch, relinearize)
    to 6 run here either way, so the bytes returned are the same.
    """
    ctx, ev = he.ctx, he.ctx.evaluator
    plan = weights.plan
    lv, primes, n = plan.level, ctx.primes[: plan.level], ctx.n
    t = plan.t
    _check_galois(he, plan)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    # Step 2a: [[t]] = [[t_c]] + t_s (expanded into T·E constants by shard_products).
    bits = ctx.params.plain_bits + plan.lam
    c0_t = unpack_fresh(ctx, msg["c0_t"], 1, lv)
    c0_t = add_rns(
        c0_t, ctx.ntt(encode_scaled_exact(_onehot_poly(t_s, plan), primes, bits)), primes
    )
    a_t = expand_a(bytes(msg["seed_t"]), 1, primes, n)
    ct_t = ctx.import_ct(np.concatenate([c0_t, a_t]), ntt=True)
    ev.transform_from_ntt_inplace(ct_t)
    # Step 2b: [[x]] = [[x_c]] + x_s (BGV: the share is added unscaled), NTT form.
    c0_x = unpack_fresh(ctx, msg["c0_x"], plan.n_x, lv)
    xs = np.moveaxis(centered_to_rns(_x_polys(x_s, plan), primes), 0, 1)
    c0_x = add_rns(c0_x, ctx.ntt(xs), primes)
    a_x = expand_a(bytes(msg["seed_x"]), plan.n_x, primes, n)
    if isinstance(weights, SelectWeights):
        blocks = shard_products(ctx, he.galois, ct_t, c0_x, a_x, weights, times)
    else:  # the experts are on workers
        blocks = weights.products(ctx.export_ct(ct_t), c0_x, a_x)
    low = ctx.pid[plan.eval_level]
    lv_eval = _rns_mac(tuple(ctx.primes[: plan.eval_level]))
    inv = [pow(2, -plan.pack, q) for q in ctx.primes[: plan.eval_level]]  # 2^(−P) mod q
    packer = ReturnPacker(ctx, he.pk, plan.beta)
    tree = _PackTree(he, plan.pack)
    returned: list[tuple] = []
    t_pack = 0.0
    groups = plan.groups()

    def finish(ct) -> None:
        members = groups[len(returned)]
        positions = np.concatenate([p for *_, p in members])
        returned.append(packer.finish(ct, positions, prg, plan.eval_level))

    t_prod, s2, cpu = 0.0, time.perf_counter(), 0.0
    for present, acc in blocks:  # steps 4-5 per output block (m, c), for all tokens at once
        t_prod += time.perf_counter() - s2
        s2, c2 = time.perf_counter(), time.thread_time()
        for k in range(t):
            ct = None
            if present[k]:  # A + B, NTT form at the input level
                ct = ctx.import_ct(acc[k], ntt=True)
                ev.transform_from_ntt_inplace(ct)
                if plan.eval_level < lv:  # down to the evaluation level
                    ev.mod_switch_to_inplace(ct, low)
                # × 2^(−P) (cancelled by the packing): a constant, the same in either domain
                ct = ctx.import_ct(lv_eval.scale(ctx.export_ct(ct), inv), ntt=False)
                ev.relinearize_inplace(ct, he.relin)
            for packed in tree.push(ct):
                finish(packed)
        t_pack += time.perf_counter() - s2
        cpu += time.thread_time() - c2
        s2 = time.perf_counter()
    t_prod += time.perf_counter() - s2
    s2, c2 = time.perf_counter(), time.thread_time()
    for packed in tree.close():
        finish(packed)
    t_pack += time.perf_counter() - s2
    cpu += time.thread_time() - c2
    # products: steps 2-4, here or on the workers; *_cpu: this thread's CPU seconds
    times.update(products=t_prod, finish=t_pack, finish_cpu=cpu)
    shares = _scatter(plan, groups, [U64(0) - r[0] for r in returned])
    c1 = np.stack([r[1] for r in returned])
    c0 = np.concatenate([r[2] for r in returned], axis=1)
    c1b, c0b = pack_returned(ctx, c1, c0, plan.ret_bits)
    times["server_total"] = time.perf_counter() - t0
    return shares, c1b, c0b, times


def step_client_decrypt(he: ClientHE, plan: SelectPlan, c1b, c0b) -> list[np.ndarray]:
    """The client's shares x_k·W_{r_k},m + R (one T×h_m array per matrix)."""
    c1, c0 = unpack_returned(he.ctx, c1b, c0b, plan.ret_bits, plan.n_out, plan.n_positions)
    groups = plan.groups()
    positions = [np.concatenate([p for *_, p in members]) for members in groups]
    splits = np.cumsum([len(p) for p in positions])[:-1]
    vals = he.sk.decrypt_returned(c1, np.split(c0, splits, axis=1), positions)
    return _scatter(plan, groups, vals)


# --- the protocol ---------------------------------------------------------------------------


def _check_inputs(t_sh, x_sh, plan: SelectPlan, ring: Ring):
    t_sh = ring.reduce(np.asarray(t_sh, dtype=U64))
    x_sh = ring.reduce(np.asarray(x_sh, dtype=U64))
    if t_sh.shape != (plan.t, plan.e) or x_sh.shape != (plan.t, plan.d):
        raise ValueError(
            f"one-hot {t_sh.shape} and input {x_sh.shape} do not match the plan "
            f"{(plan.t, plan.e)}, {(plan.t, plan.d)}"
        )
    return t_sh, x_sh


async def select_client(
    ch: Channel,
    he: ClientHE,
    t_c: np.ndarray,
    x_c: np.ndarray,
    plan: SelectPlan,
    prg: PRG,
    *,
    ring: Ring = DEFAULT_RING,
) -> list[np.ndarray]:
    """Client side: its shares of x_k·W_{r_k},m (one T×h_m array per matrix m)."""
    t_c, x_c = _check_inputs(t_c, x_c, plan, ring)
    st, ct_, sx, cx = await asyncio.to_thread(step_client_encrypt, he, t_c, x_c, plan, prg)
    msg = {"plan": plan.wire(), "seed_t": st, "c0_t": ct_, "seed_x": sx, "c0_x": cx}
    await ch.send(msg, tag="he/sel/x")
    reply = await ch.recv(tag="he/sel/y")
    shares = await asyncio.to_thread(step_client_decrypt, he, plan, reply["c1"], reply["c0"])
    return [ring.reduce(s) for s in shares]


async def select_server(
    ch: Channel,
    he: ServerHE,
    t_s: np.ndarray,
    x_s: np.ndarray,
    weights: SelectWeights | ShardedSelect,
    prg: PRG,
    *,
    ring: Ring = DEFAULT_RING,
    timings: dict | None = None,
) -> list[np.ndarray]:
    """Server side: its shares; ``timings`` (if given) receives the server's step times."""
    plan = weights.plan
    t_s, x_s = _check_inputs(t_s, x_s, plan, ring)
    if he.relin is None or he.galois is None:
        raise HEError("encrypted selection needs relinearization and Galois keys from setup")
    msg = await ch.recv(tag="he/sel/x")
    if [int(v) for v in msg["plan"]] != plan.wire():
        raise HEError(f"selection plans differ: server {plan.wire()}, client {msg['plan']}")
    shares, c1b, c0b, times = await asyncio.to_thread(
        step_server_eval, he, weights, t_s, x_s, msg, prg
    )
    if timings is not None:
        timings.update(times)
    await ch.send({"c1": c1b, "c0": c0b}, tag="he/sel/y")
    return [ring.reduce(s) for s in shares]


def ideal_select(
    t_c: np.ndarray,
    t_s: np.ndarray,
    x_c: np.ndarray,
    x_s: np.ndarray,
    weights: Sequence[Sequence[np.ndarray]],
    ring: Ring = DEFAULT_RING,
) -> list[np.ndarray]:
    """Plaintext reference: Σ_j t_kj·(x_k·W_j,m) mod 2^ℓ (t = t_c + t_s, x = x_c + x_s)."""
    t = ring.reduce(np.asarray(t_c, dtype=U64) + np.asarray(t_s, dtype=U64))
    x = ring.reduce(np.asarray(x_c, dtype=U64) + np.asarray(x_s, dtype=U64))
    out = []
    for m in range(len(weights[0])):
        acc = np.zeros((x.shape[0], np.shape(weights[0][m])[1]), dtype=U64)
        for j, ws in enumerate(weights):
            y = x @ np.asarray(ws[m], dtype=np.int64).astype(U64)
            acc += t[:, j : j + 1] * y
        out.append(ring.reduce(acc))
    return out


def select_cost(plan: SelectPlan) -> dict[str, int]:
    """Declared online cost: payload bytes each direction (exact), rounds, messages."""
    params = params_for(plan.params)
    w_in = plan.n * sum(params.byte_widths[: plan.level])
    bits = plan.ret_bits
    c2s = {
        "plan": plan.wire(),
        "seed_t": bytes(16),
        "c0_t": np.zeros((1, w_in), dtype=np.uint8),
        "seed_x": bytes(16),
        "c0_x": np.zeros((plan.n_x, w_in), dtype=np.uint8),
    }
    s2c = {
        "c1": np.zeros((plan.n_out, -(-plan.n * bits.bits_c1 // 8)), dtype=np.uint8),
        "c0": np.zeros(-(-plan.n_positions * bits.bits_c0 // 8), dtype=np.uint8),
    }
    return {
        "bytes_c2s": encoded_size(c2s),
        "bytes_s2c": encoded_size(s2c),
        "rounds": 2,
        "messages": 2,
    }


async def setup_select_client(ch: Channel, prg: PRG, plan: SelectPlan) -> ClientHE:
    """HE setup with the keys encrypted selection needs (public, relinearization, Galois)."""
    params = params_for(plan.params)
    return await setup_client(ch, prg, params, relin=True, galois=plan.galois_elements)


async def setup_select_server(ch: Channel, plan: SelectPlan) -> ServerHE:
    """Server side of :func:`setup_select_client`."""
    params = params_for(plan.params)
    return await setup_server(ch, params, relin=True, galois=plan.galois_elements)

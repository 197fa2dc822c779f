"""What the HE matrix-product protocols share: packing plans, layouts, encoded weights, the
two parties' local steps and the wire shapes of returned ciphertexts.

:mod:`secmoe.protocols.he_linear` (shared X × the server's W), :mod:`secmoe.protocols.he_secret`
(shared × shared as two such products) and :mod:`secmoe.protocols.he_select` (encrypted expert
selection) build on this module; it holds no protocol (no messages) itself.

**Packing** (Cheetah, eprint 2022/207, §3.1). X is cut into T_b×d_b blocks and each W_m into
d_b×h_b blocks. With a stride S ≥ d_b and T_b·h_b·S ≤ N, x̂[i·S·h_b + j] = X[i, j] and
ŵ = Σ_{j,l} W[j, l]·X^(l·S − j) (a negative power wraps with its sign, X^N = −1), so x̂·ŵ holds
Σ_j X[i, j]·W[j, l] at coefficient (i·h_b + l)·S, every multiple of S below T_b·h_b·S.

**Output packing** (BumbleBee, eprint 2023/1678; PackLWEs, eprint 2020/015). One product uses
T_b·h_b of the N coefficients; when S is a power of two, :class:`ProductPacker` merges 2^p
products into one returned ciphertext with p levels of Galois automorphisms (keys sent once
in setup, :func:`~secmoe.protocols.he_setup.packing_galois_elements`), so the server returns
⌈products/2^p⌉ ciphertexts. The flood then covers the packed ciphertext's noise
(:func:`noise_log2_bound`). :func:`plan_matmul` picks T_b, d_b, h_b, S and p per call from the
public shapes: the fewest bytes, plus a small charge per key switch.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import tenseal.sealapi as sealapi

from ..crypto.he import (
    HEContext,
    HEError,
    ReturnPacker,
    add_rns,
    expand_a,
    pack_fresh,
    pack_returned,
    unpack_fresh,
    unpack_returned,
)
from ..crypto.he_params import (
    CBD_ETA,
    FLOOD_UNION_BITS,
    HEParams,
    ReturnBits,
    params_for,
    plan_noise,
    plan_return_bits,
)
from ..crypto.he_rns import centered_to_rns
from ..crypto.prg import PRG
from .he_setup import ClientHE, ServerHE

U64 = np.uint64
FULL_RANGE = 64  # w_bits for plaintexts that are arbitrary ring elements (secret shares)


# --- packing plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class MatmulPlan:
    """Public packing and noise parameters of one batched product (both parties compute it).

    Attributes:
        params: name of the HE parameter set.
        n: ring dimension N.
        t, d, hs: X is t×d; the weight matrices are d×hs[m].
        tb, db, hb: block sizes, tb·hb·S ≤ N (S: :attr:`step`).
        w_bits: public bound, |W| < 2^(w_bits−1) (64: arbitrary ring elements).
        level: primes in the client's ciphertexts.
        beta: flooding bits.
        stride: S, the distance between a product's outputs (0: d_b); a power of two when
            ``pack`` > 0.
        pack: the returned ciphertexts merge 2^pack products each (:class:`ProductPacker`).
        out_bits: b, the results are wanted mod 2^b only (ℓ: all of Z_{2^ℓ}). With b < ℓ both
            parties scale their shares of X by 2^(ℓ−b) (:func:`lift_x`), so the result's
            lowest wanted bit sits at weight q/2^b: decryption tolerates 2^(ℓ−b) times more
            noise, and the returned coefficients carry ℓ − b fewer bits
            (:attr:`ret_bits`); the shares come back mod 2^b.
    """

    params: str
    n: int
    t: int
    d: int
    hs: tuple[int, ...]
    tb: int
    db: int
    hb: int
    w_bits: int
    level: int
    beta: int
    stride: int = 0
    pack: int = 0
    out_bits: int = 64

    @property
    def step(self) -> int:
        """S: outputs of one product sit at the multiples of S."""
        return self.stride or self.db

    @property
    def nr(self) -> int:
        return -(-self.t // self.tb)

    @property
    def nb(self) -> int:
        return -(-self.d // self.db)

    def nc(self, m: int) -> int:
        return -(-self.hs[m] // self.hb)

    @property
    def n_in(self) -> int:
        return self.nr * self.nb

    @property
    def n_leaves(self) -> int:
        """Products (before packing): one per row block and column block of each matrix."""
        return self.nr * sum(self.nc(m) for m in range(len(self.hs)))

    @property
    def n_out(self) -> int:
        """Returned ciphertexts: the products merged 2^pack at a time."""
        return -(-self.n_leaves >> self.pack)

    @property
    def keyswitches(self) -> int:
        """Galois automorphisms of the packing (one per merge of two products)."""
        return self.n_leaves - self.n_out

    @property
    def n_positions(self) -> int:
        return self.t * sum(self.hs)

    @property
    def products(self) -> int:
        """Plaintext × ciphertext products (fewer if the server skips zero weight blocks)."""
        return self.nb * self.n_leaves

    def wire(self) -> list[int]:
        """The plan as integers (sent by the client, checked by the server)."""
        return [self.n, self.t, self.d, *self.hs, self.tb, self.db, self.hb, self.w_bits,
                self.level, self.beta, self.step, self.pack, self.out_bits]  # fmt: skip

    def positions(self, tr: int, hc: int) -> np.ndarray:
        """Coefficients holding the tr×hc outputs of one product (row-major): (i·h_b + l)·S."""
        i = np.arange(tr)[:, None] * self.hb
        return ((i + np.arange(hc)[None, :]) * self.step).reshape(-1)

    def outputs(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(m, r, c, tr, hc) for every product, in wire order (m, c, r)."""
        for m, h in enumerate(self.hs):
            for c in range(self.nc(m)):
                hc = min(self.hb, h - c * self.hb)
                for r in range(self.nr):
                    yield m, r, c, min(self.tb, self.t - r * self.tb), hc

    def returned_positions(self) -> list[np.ndarray]:
        """Coefficients read in each returned ciphertext: product k of a group of 2^pack
        moved by Σ_j k_j·S/2^(j+1) (:class:`ProductPacker`), the group's products in order."""
        outs = [self.positions(tr, hc) for *_, tr, hc in self.outputs()]
        size = 1 << self.pack
        shift = [
            sum(self.step >> (j + 1) for j in range(self.pack) if k >> j & 1) for k in range(size)
        ]
        return [
            np.concatenate([p + shift[k] for k, p in enumerate(outs[g : g + size])])
            for g in range(0, len(outs), size)
        ]

    def galois_elements(self) -> tuple[int, ...]:
        """The automorphisms X ↦ X^(2N/s + 1) the packing applies (s = S, S/2, …)."""
        return tuple(2 * self.n // (self.step >> j) + 1 for j in range(self.pack))

    @cached_property
    def ret_bits(self) -> ReturnBits:
        """Bits sent per returned c1 and c0 coefficient
        (:func:`~secmoe.crypto.he_params.plan_return_bits`)."""
        params = params_for(self.params)
        return plan_return_bits(
            params, self.beta, self.level, self.n_out * self.n, self.n_positions, self.out_bits
        )

    def ct_bytes(self, count: int = 1) -> tuple[int, int]:
        """Ciphertext bytes of ``count`` products in one message each way: client→server
        count·n_in·N·B_in + 16 (one seed); server→client count·n_out·⌈N·b1/8⌉ for c1 and
        ⌈count·T·Σh·b0/8⌉ for c0 (b1, b0: :attr:`ret_bits`)."""
        params = params_for(self.params)
        b_in = sum(params.byte_widths[: self.level])
        c2s = count * self.n_in * self.n * b_in + 16
        return c2s, ret_bytes(self.ret_bits, count * self.n_out, self.n, count * self.n_positions)

    def score(self, count: int = 1) -> float:
        """What :func:`plan_matmul` minimizes: the bytes of ``count`` products, plus
        :data:`KEYSWITCH_WEIGHT` returned c1 (of N·80 bits) per key switch."""
        return sum(self.ct_bytes(count)) + count * self.keyswitches * _ks_bytes(self.n)

    def cache_bytes(self, level_primes: int | None = None) -> int:
        """Memory of the NTT-form weight plaintexts (at most one per block)."""
        blocks = self.nb * sum(self.nc(m) for m in range(len(self.hs)))
        return blocks * self.n * 8 * (level_primes or self.level)


def ret_bytes(bits: ReturnBits, k: int, n: int, p: int) -> int:
    """Bytes of k returned c1 (N coefficients each) and c0 at P positions in all."""
    return k * (-(-n * bits.bits_c1 // 8)) + (-(-p * bits.bits_c0 // 8))


def noise_log2_bound(
    nb: int, db: int, hb: int, w_bits: int, params: HEParams | None = None, pack: int = 0
) -> float:
    """log2 of the worst-case W-dependent noise at one output coefficient before flooding.

    Σ_b (e_b + ε_b)·ŵ_b with |e| ≤ η (the client's fresh noise), |ε| ≤ 1 (the rounding of
    the client's and the server's exact-scaling encodings) and ‖ŵ_b‖₁ ≤ d_b·h_b·2^(w_bits−1);
    with ``pack`` levels of packing, plus (2^pack − 1) key switches' noise
    (:class:`ProductPacker`: the one added at each level is doubled by the levels above).
    """
    bound = (CBD_ETA + 1) * nb * db * hb * 2.0 ** (w_bits - 1)
    if pack:
        assert params is not None
        bound += ((1 << pack) - 1) * 2.0 ** params.keyswitch_noise_bits()
    return math.log2(bound)


def block_candidates(total: int, cap: int) -> list[int]:
    """Block sizes ⌈total/k⌉ (each count of blocks once), at most ``cap``."""
    out = sorted({-(-total // k) for k in range(1, total + 1)})
    return [v for v in out if v <= cap]


#: Weight of one key switch in :func:`plan_matmul`'s objective, in returned c1 ciphertexts
#: (bytes): a merge saves one c1 and costs one key switch; a layout with more products but
#: fewer input ciphertexts is taken only if it saves more than this per added key switch.
KEYSWITCH_WEIGHT = 0.25


def plan_matmul(
    t: int,
    d: int,
    hs: Sequence[int],
    params: HEParams,
    *,
    w_bits: int = 16,
    union_bits: int = FLOOD_UNION_BITS,
    out_bits: int = 64,
) -> MatmulPlan:
    """The packing that minimizes the bytes on the wire plus :data:`KEYSWITCH_WEIGHT` returned
    c1 per key switch (ties: fewer products).

    Candidates: every T_b, d_b (as many blocks as each count needs), the stride S = d_b
    (no packing) or the power of two S ≥ d_b (up to 2^pack_log), h_b as large as
    T_b·h_b·S ≤ N allows (balanced), and for a power-of-two S every packing depth
    p ≤ log2 S (merging 2^p products per returned ciphertext).

    Args:
        t, d: X is t×d.
        hs: output widths of the weight matrices (each d×h).
        params: the HE parameter set.
        w_bits: public bound on the weights, |W| < 2^(w_bits−1); 64 for arbitrary ring elements.
        union_bits: κ, log2 of the coefficients the key's flooding must cover (β grows with it).
        out_bits: the results are wanted mod 2^out_bits only (:class:`MatmulPlan`).
    """
    hs = tuple(int(h) for h in hs)
    if t < 1 or d < 1 or not hs or min(hs) < 1:
        raise ValueError("matmul shapes must be positive")
    if not 1 <= out_bits <= params.plain_bits:
        raise ValueError(f"out_bits must be in [1, {params.plain_bits}], got {out_bits}")
    return _plan_matmul(t, d, hs, params, w_bits, union_bits, out_bits)


def _ks_bytes(n: int) -> float:
    return KEYSWITCH_WEIGHT * n * 80 / 8


@functools.lru_cache(maxsize=1024)
def _plan_matmul(
    t: int,
    d: int,
    hs: tuple[int, ...],
    params: HEParams,
    w_bits: int,
    union_bits: int,
    out_bits: int,
) -> MatmulPlan:
    n = params.n
    hmax = max(hs)
    best: tuple | None = None
    for tb in block_candidates(t, n):
        for db in block_candidates(d, n // tb):
            pow2 = 1 << (db - 1).bit_length()
            strides = [db] + ([pow2] if pow2 != db and pow2 <= 1 << params.pack_log else [])
            for stride in strides:
                cap = n // (tb * stride)
                if cap < 1:
                    continue
                hb = -(-hmax // -(-hmax // min(cap, hmax)))  # balanced blocks, same count
                nb, nr = -(-d // db), -(-t // tb)
                leaves = nr * sum(-(-h // hb) for h in hs)
                packable = stride == pow2 and stride <= 1 << params.pack_log
                depth = min(stride.bit_length() - 1, (leaves - 1).bit_length()) if packable else 0
                for pack in range(depth + 1):
                    try:
                        bound = noise_log2_bound(nb, db, hb, w_bits, params, pack)
                        noise = plan_noise(params, bound, union_bits=union_bits, out_bits=out_bits)
                    except ValueError:
                        continue
                    n_out = -(-leaves >> pack)
                    in_bytes = n * sum(params.byte_widths[: noise.level])
                    bits = plan_return_bits(
                        params, noise.beta, noise.level, n_out * n, t * sum(hs), out_bits
                    )
                    cost = nr * nb * in_bytes + ret_bytes(bits, n_out, n, t * sum(hs))
                    score = cost + _ks_bytes(n) * (leaves - n_out)
                    key = (score, cost, nb * leaves, -tb)
                    if best is None or key < best[0]:
                        plan = (tb, db, hb, noise.level, noise.beta, stride, pack)
                        best = (key, plan)
    if best is None:
        raise ValueError(f"{params.name}: no packing fits noise for w_bits={w_bits}, d={d}")
    tb, db, hb, level, beta, stride, pack = best[1]
    return MatmulPlan(
        params.name, n, t, d, hs, tb, db, hb, w_bits, level, beta, stride, pack, out_bits
    )


# --- layouts -------------------------------------------------------------------------------


def layout_x(x: np.ndarray, plan: MatmulPlan) -> np.ndarray:
    """Input polynomials (n_in, N), index r·nb + b: x̂[i·S·h_b + j] = X[r·T_b + i, b·d_b + j]."""
    t, d, tb, db, hb, n, s = plan.t, plan.d, plan.tb, plan.db, plan.hb, plan.n, plan.step
    xp = np.zeros((plan.nr * tb, plan.nb * db), dtype=U64)
    xp[:t, :d] = x
    blocks = xp.reshape(plan.nr, tb, plan.nb, db).transpose(0, 2, 1, 3)
    out = np.zeros((plan.nr, plan.nb, tb, s * hb), dtype=U64)
    out[..., :db] = blocks
    flat = out.reshape(plan.nr * plan.nb, tb * s * hb)
    polys = np.zeros((plan.n_in, n), dtype=U64)
    polys[:, : flat.shape[1]] = flat
    return polys


def _w_index(plan: MatmulPlan) -> tuple[np.ndarray, np.ndarray]:
    """(d_b, h_b) coefficient indices of ŵ = Σ W[j, l]·X^(l·S − j), and where they wrap
    (X^(−j) = −X^(N−j): those coefficients are negated)."""
    pos = np.arange(plan.hb)[None, :] * plan.step - np.arange(plan.db)[:, None]
    return np.where(pos < 0, pos + plan.n, pos), pos < 0


def layout_w(w: np.ndarray, plan: MatmulPlan, m: int) -> np.ndarray:
    """Weight polynomials (nb, nc, N): ŵ = Σ_{j,l} W[b·d_b + j, c·h_b + l]·X^(l·S − j)."""
    db, hb = plan.db, plan.hb
    nc = plan.nc(m)
    wp = np.zeros((plan.nb * db, nc * hb), dtype=w.dtype)
    wp[: plan.d, : plan.hs[m]] = w
    blocks = wp.reshape(plan.nb, db, nc, hb).transpose(0, 2, 1, 3)
    idx, neg = _w_index(plan)
    polys = np.zeros((plan.nb, nc, plan.n), dtype=w.dtype)
    polys[..., idx.reshape(-1)] = np.where(neg, np.negative(blocks), blocks).reshape(
        plan.nb, nc, -1
    )
    return polys


# --- server setup: weights encoded once ---------------------------------------------------


@dataclass
class EncodedWeights:
    """The server's weights for one plan, encoded in setup.

    With ``plains`` (the default when it fits in memory) every d_b×h_b block is an NTT-form
    plaintext at the plan's level, encoded once and reused by every call; otherwise only the
    compact matrices are kept and each block is encoded when a call first needs it (once per
    call, reused across row blocks). ``zero[m]`` (nb, nc) marks the all-zero blocks.

    By default the server does the same work for a zero block as for any other (a product by
    a dummy plaintext whose result is discarded), so its timing does not reveal which blocks
    of W are zero. With ``skip_zero_blocks`` (an operator option) zero blocks are neither
    encoded nor multiplied: faster on sparse weights, but the client can learn from the
    server's timing which blocks are zero (a LEAK of W's sparsity pattern). ``public_zero[m]``
    (nb, nc), if given, marks blocks that are zero by a public structure (the off-diagonal
    blocks of a block-diagonal matrix): they are always skipped, which reveals nothing.
    """

    plan: MatmulPlan
    plains: list[list[list[sealapi.Plaintext | None]]] | None
    matrices: list[np.ndarray]
    zero: list[np.ndarray]
    skip_zero_blocks: bool = False
    public_zero: list[np.ndarray] | None = None

    def skipped(self, m: int, b: int, c: int) -> bool:
        """Whether block (b, c) of matrix m is neither encoded nor multiplied."""
        if self.public_zero is not None and self.public_zero[m][b, c]:
            return True
        return self.skip_zero_blocks and bool(self.zero[m][b, c])

    def plain(self, ctx: HEContext, m: int, b: int, c: int) -> sealapi.Plaintext | None:
        """The plaintext of block (b, c) of matrix m; None if it is zero and skipped."""
        if self.skipped(m, b, c):
            return None
        if self.plains is not None:
            return self.plains[m][b][c]
        return _to_plain(ctx, block_poly(self.matrices[m], self.plan, b, c), self.plan)


def mul_acc(
    ctx: HEContext,
    ct: sealapi.Ciphertext,
    pt: sealapi.Plaintext,
    acc: sealapi.Ciphertext | None,
    tmp: sealapi.Ciphertext,
) -> sealapi.Ciphertext:
    """acc + ct·pt (ct·pt when acc is None), into acc; ``tmp`` is scratch space."""
    if acc is None:
        acc = sealapi.Ciphertext(ctx.seal)
        ctx.evaluator.multiply_plain(ct, pt, acc)
    else:
        ctx.evaluator.multiply_plain(ct, pt, tmp)
        ctx.evaluator.add_inplace(acc, tmp)
    return acc


def dummy_plain(ctx: HEContext, level: int) -> sealapi.Plaintext:
    """The constant 1 at ``level``: the stand-in for a zero block (SEAL refuses products that
    are exactly zero), whose product is computed and discarded."""
    one = np.zeros(ctx.n, dtype=np.int64)
    one[0] = 1
    return ctx.plain_small(one, level)


def block_poly(w: np.ndarray, plan: MatmulPlan, b: int, c: int) -> np.ndarray:
    """ŵ for block (b, c) (:func:`layout_w`)."""
    db, hb = plan.db, plan.hb
    blk = np.zeros((db, hb), dtype=w.dtype)
    part = w[b * db : (b + 1) * db, c * hb : (c + 1) * hb]
    blk[: part.shape[0], : part.shape[1]] = part
    idx, neg = _w_index(plan)
    poly = np.zeros(plan.n, dtype=w.dtype)
    poly[idx] = np.where(neg, np.negative(blk), blk)
    return poly


def _to_plain(ctx: HEContext, poly: np.ndarray, plan: MatmulPlan) -> sealapi.Plaintext:
    if plan.w_bits <= 36:
        return ctx.plain_small(poly.astype(np.int64), plan.level)
    res = centered_to_rns(poly.astype(U64), ctx.primes[: plan.level])  # (L, N)
    return ctx.plains_rns(res[None])[0]


#: Largest NTT plaintext cache :func:`encode_weights` builds with ``cache="auto"``.
MAX_CACHE_BYTES = 1 << 30


def encode_weights(
    ctx: HEContext,
    weights: Sequence[np.ndarray],
    plan: MatmulPlan,
    *,
    cache: str = "auto",
    max_cache_bytes: int = MAX_CACHE_BYTES,
    skip_zero_blocks: bool = False,
    public_zero: Sequence[np.ndarray] | None = None,
) -> EncodedWeights:
    """Encode W_1..W_M for ``plan`` (setup).

    Args:
        ctx: the server's HE context.
        weights: signed integer matrices (|W| < 2^(w_bits−1)), or ring elements (``uint64``)
            when ``plan.w_bits`` is 64.
        plan: the product's plan.
        cache: ``"ntt"`` (NTT plaintexts of every block, fastest online), ``"blocks"`` (only
            the matrices; blocks encoded on use) or ``"auto"`` (NTT if it takes at most
            ``max_cache_bytes``, i.e. n·8·L bytes per block of d_b·h_b weights).
        skip_zero_blocks: neither encode nor multiply all-zero blocks (faster on sparse
            weights; LEAKS which blocks are zero through the server's timing, see
            :class:`EncodedWeights`).
        public_zero: per matrix, (nb, nc) flags of blocks zero by public structure (skipped;
            the weights must be zero there).
    """
    if ctx.params.name != plan.params:
        raise HEError(f"plan is for {plan.params}, context is {ctx.params.name}")
    if len(weights) != len(plan.hs):
        raise ValueError(f"plan has {len(plan.hs)} matrices, got {len(weights)}")
    if cache == "auto":
        cache = "ntt" if plan.cache_bytes() <= max_cache_bytes else "blocks"
    if cache not in ("ntt", "blocks"):
        raise ValueError(f"unknown cache policy {cache!r}")
    mats: list[np.ndarray] = []
    for m, w in enumerate(weights):
        w = np.asarray(w)
        if w.shape != (plan.d, plan.hs[m]):
            raise ValueError(f"weight {m} has shape {w.shape}, plan expects {(plan.d, plan.hs[m])}")
        if plan.w_bits < FULL_RANGE:
            w = w.astype(np.int64)
            if w.size and int(np.abs(w).max()) >= 1 << (plan.w_bits - 1):
                raise ValueError(f"weight {m} exceeds the public bound 2^{plan.w_bits - 1}")
        else:
            w = w.astype(U64)
        mats.append(w)
    polys_m = [layout_w(w, plan, m) for m, w in enumerate(mats)]
    zero = [~polys.any(axis=-1) for polys in polys_m]
    pz = None if public_zero is None else [np.asarray(z, dtype=bool) for z in public_zero]
    if pz is not None and any((p & ~z).any() for p, z in zip(pz, zero, strict=True)):
        raise ValueError("a block marked public_zero holds nonzero weights")
    enc = EncodedWeights(plan, None, mats, zero, skip_zero_blocks, pz)
    if cache == "blocks":
        return enc
    plains: list[list[list[sealapi.Plaintext | None]]] = []
    for m, polys in enumerate(polys_m):
        rows: list[list[sealapi.Plaintext | None]] = [[None] * plan.nc(m) for _ in range(plan.nb)]
        blocks = [(b, c) for b in range(plan.nb) for c in range(plan.nc(m))]
        idx = [(b, c) for b, c in blocks if not enc.skipped(m, b, c)]
        if plan.w_bits <= 36:
            for b, c in idx:
                rows[b][c] = _to_plain(ctx, polys[b, c], plan)
        elif idx:  # arbitrary ring elements: batched NTTs of the residues
            sel = np.stack([polys[b, c] for b, c in idx]).astype(U64)
            res = np.moveaxis(centered_to_rns(sel, ctx.primes[: plan.level]), 0, 1)
            for (b, c), pt in zip(idx, ctx.plains_rns(res), strict=True):
                rows[b][c] = pt
        plains.append(rows)
    enc.plains = plains
    return enc


# --- the two sides' local steps -------------------------------------------------------------


def lift_x(x: np.ndarray, plan: MatmulPlan) -> np.ndarray:
    """A party's share of X as it enters the ciphertext: X·2^(ℓ−b) for results wanted mod
    2^b (b = ``plan.out_bits``; shares of X mod 2^b suffice)."""
    shift = params_for(plan.params).plain_bits - plan.out_bits
    return np.asarray(x, dtype=U64) << U64(shift)


def _low_bits(v: np.ndarray, plan: MatmulPlan) -> np.ndarray:
    """v mod 2^out_bits."""
    return v & U64((1 << plan.out_bits) - 1) if plan.out_bits < 64 else v


def step_client_encrypt(
    he: ClientHE, xs: Sequence[np.ndarray], plan: MatmulPlan, prg: PRG
) -> tuple[bytes, np.ndarray]:
    """Encrypt the client's shares of one or more X (same plan): (seed, packed c0).

    The ciphertexts of X_k are rows k·n_in … (k+1)·n_in − 1.
    """
    polys = np.concatenate([layout_x(lift_x(x, plan), plan) for x in xs])
    seed, c0 = he.sk.encrypt(polys, prg, level=plan.level)
    return seed, pack_fresh(he.ctx, c0, plan.level)


def step_server_import(
    he: ServerHE,
    plan: MatmulPlan,
    seed: bytes,
    c0b: np.ndarray,
    x_s: Sequence[np.ndarray | None],
) -> list[list[sealapi.Ciphertext]]:
    """The client's ciphertexts for each X_k, with the server's share X_s,k added if given."""
    res = server_inputs(he, plan, seed, c0b, x_s)
    cts = [he.ctx.import_ct(r, ntt=True) for r in res]
    return [cts[i * plan.n_in : (i + 1) * plan.n_in] for i in range(len(x_s))]


def server_inputs(
    he: ServerHE,
    plan: MatmulPlan,
    seed: bytes,
    c0b: np.ndarray,
    x_s: Sequence[np.ndarray | None],
) -> np.ndarray:
    """:func:`step_server_import`'s ciphertexts as residues (k·n_in, 2, L, N), NTT form."""
    ctx = he.ctx
    level = plan.level
    primes = ctx.primes[:level]
    k = len(x_s)
    c0 = unpack_fresh(ctx, c0b, k * plan.n_in, level)
    a = expand_a(seed, k * plan.n_in, primes, ctx.n)
    mine = [i for i, x in enumerate(x_s) if x is not None]
    if mine:  # X = X_c + X_s inside the ciphertext
        polys = np.concatenate([layout_x(lift_x(x_s[i], plan), plan) for i in mine])
        add = ctx.ntt(ctx.encode_bfv(polys, level))
        for j, i in enumerate(mine):
            sl = slice(i * plan.n_in, (i + 1) * plan.n_in)
            c0[sl] = add_rns(c0[sl], add[j * plan.n_in : (j + 1) * plan.n_in], primes)
    return np.stack([c0, a], axis=1)


def _products(
    he: ServerHE,
    enc: EncodedWeights,
    cts: Sequence[sealapi.Ciphertext],
    lo: int = 0,
    hi: int | None = None,
) -> Iterator[sealapi.Ciphertext | None]:
    """Σ_b ct_{r,b}·ŵ_{b,c} (NTT form; None: no terms) for products lo … hi − 1 (default:
    every product), in wire order."""
    ctx, plan = he.ctx, enc.plan
    hi = plan.n_leaves if hi is None else hi
    tmp = sealapi.Ciphertext(ctx.seal)
    dummy, discarded = dummy_plain(ctx, plan.level), None
    first = 0  # the wire index of the column's product r = 0
    for m in range(len(plan.hs)):
        for c in range(plan.nc(m)):
            rows = range(max(lo - first, 0), min(hi - first, plan.nr))
            first += plan.nr
            if not rows:
                continue  # none of this column's products is asked for
            accs: list[sealapi.Ciphertext | None] = [None] * plan.nr
            for b in range(plan.nb):
                pt = enc.plain(ctx, m, b, c)  # encoded once per call, reused for every r
                if pt is None:
                    continue  # a zero block the operator chose to skip
                zero = enc.zero[m][b, c]
                for r in rows:
                    ct_in = cts[r * plan.nb + b]
                    if zero:  # the same work as any block, the result discarded
                        discarded = mul_acc(ctx, ct_in, dummy, discarded, tmp)
                    else:
                        accs[r] = mul_acc(ctx, ct_in, pt, accs[r], tmp)
            for r in rows:
                yield accs[r]
                accs[r] = None


class _Zero:
    """A product with no terms (an encryption of zero) inside :class:`ProductPacker`."""


ZERO = _Zero()


class ProductPacker:
    """Server: merge 2^p products into one ciphertext (PackLWEs-style, on RLWE ciphertexts).

    Each product's outputs sit at the multiples of S (its other coefficients hold garbage
    that is never sent). merge(a, b) at stride s (a, b with outputs at multiples of s):
    a + X^(s/2)·b + τ(a − X^(s/2)·b), τ: X ↦ X^(2N/s + 1), which fixes X^j for j ≡ 0 and
    negates it for j ≡ s/2 (mod s) — so the result holds 2a's outputs at the multiples of s
    and 2b's moved by s/2, the garbage there cancelling; τ maps the other coefficients among
    themselves. Neighbours merge first (at stride S, then pairs of pairs at S/2, …), as the
    products arrive, so at most p + 1 ciphertexts are held; product k of a group ends at its
    positions + Σ_j k_j·S/2^(j+1) (k_j: the bits of k), multiplied by 2^p. Each product is
    first multiplied by 2^(−p) mod q (q is odd), so the phase there is exactly the
    product's, plus the key switches' noise (one per merge, doubled by each level above:
    ≤ (2^p − 1)·2^ks in all, where
    :meth:`~secmoe.crypto.he_params.HEParams.keyswitch_noise_bits` bounds one). An absent
    member (past the last product) is merge(a, ·) = 2a, no key switch.

    REF: Chen, Dai, Kim, Song, "Efficient homomorphic conversion from ring learning with
    errors to learning with errors" (PackLWEs, eprint 2020/015); BumbleBee (eprint
    2023/1678) packs Cheetah's sparse outputs the same way.
    """

    def __init__(self, he: ServerHE, plan: MatmulPlan) -> None:
        missing = sorted(set(plan.galois_elements()) - set(he.galois_elements))
        if missing or he.galois is None:
            raise HEError(f"packing needs Galois keys for elements {missing} (sent in setup)")
        self.he, self.plan = he, plan
        ctx = he.ctx
        inv = [pow(2, -plan.pack, q) for q in ctx.primes[: plan.level]]
        self.scale = ctx.plain_from_ntt(np.array(inv, dtype=U64)[:, None].repeat(ctx.n, 1))
        self.monos = [ctx.plain_monomial(plan.step >> (j + 1)) for j in range(plan.pack)]

    def pack(
        self, products: Iterable[sealapi.Ciphertext | None], height: int | None = None
    ) -> sealapi.Ciphertext | None:
        """One ciphertext (coefficient form) for up to 2^height products (NTT form, consumed;
        None: no terms), or None if every one is zero. By default height = p: a returned
        ciphertext; a lower subtree (products k·2^height …, a server worker's unit) is
        completed into it by :meth:`join`."""
        ev = self.he.ctx.evaluator

        def leaves() -> Iterator[tuple[int, object]]:
            for acc in products:
                if acc is None:
                    yield 0, ZERO
                    continue
                ev.multiply_plain_inplace(acc, self.scale)
                ev.transform_from_ntt_inplace(acc)
                yield 0, acc

        return self._tree(leaves(), self.plan.pack if height is None else height)

    def join(
        self, parts: Iterable[sealapi.Ciphertext | None], height: int
    ) -> sealapi.Ciphertext | None:
        """One returned ciphertext from its consecutive subtrees of 2^height products each
        (:meth:`pack`'s ciphertexts; None: zero): the same merges, so the same ciphertext,
        as :meth:`pack` of all its products."""
        return self._tree(((height, ZERO if x is None else x) for x in parts), self.plan.pack)

    def _tree(self, items: Iterable[tuple[int, object]], top: int) -> sealapi.Ciphertext | None:
        """Merge (level, ciphertext | ZERO) items, neighbours first, into one at level top."""
        stack: list[tuple[int, object]] = []  # (level, ciphertext | ZERO), levels decreasing
        for level, x in items:
            while stack and stack[-1][0] == level:
                x = self._merge(stack.pop()[1], x, level)
                level += 1
            stack.append((level, x))
        level, x = stack.pop()
        while level < top:  # the members after x are absent
            below = stack.pop()[1] if stack and stack[-1][0] == level else None
            x = self._merge(x, None, level) if below is None else self._merge(below, x, level)
            level += 1
        return None if x is ZERO else x

    def _merge(self, a, b, level: int):
        """merge(a, b) at stride S/2^level (b None: absent)."""
        ctx = self.he.ctx
        ev = ctx.evaluator
        if b is None:  # no member there: 2a
            if a is ZERO:
                return ZERO
            out = sealapi.Ciphertext(ctx.seal)
            ev.add(a, a, out)
            return out
        if a is ZERO and b is ZERO:
            return ZERO
        v = sealapi.Ciphertext(ctx.seal)
        if b is ZERO:
            u = v = a  # τ is applied out of place
        else:
            bx = sealapi.Ciphertext(ctx.seal)
            ev.multiply_plain(b, self.monos[level], bx)
            if a is ZERO:
                u = bx
                ev.negate(bx, v)
            else:
                ev.sub(a, bx, v)
                ev.add_inplace(a, bx)
                u = a
        w = sealapi.Ciphertext(ctx.seal)
        ev.apply_galois(v, 2 * ctx.n // (self.plan.step >> level) + 1, self.he.galois, w)
        ev.add_inplace(u, w)
        return u


def step_server_eval(
    he: ServerHE, enc: EncodedWeights, cts: Sequence[sealapi.Ciphertext], prg: PRG
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Products of one X's ciphertexts by the encoded weights, packed 2^p per returned
    ciphertext, masked, flooded, switched.

    Returns the server's shares −R_m, c1 (n_out, 2, N) and c0 at the outputs (2, P).
    """
    plan = enc.plan
    groups = pack_products(he, enc, cts, 0, plan.n_leaves, plan.pack)
    return step_server_finish(he, plan, groups, prg)


def pack_products(
    he: ServerHE,
    enc: EncodedWeights,
    cts: Sequence[sealapi.Ciphertext],
    lo: int,
    hi: int,
    height: int,
) -> Iterator[sealapi.Ciphertext | None]:
    """Products lo … hi − 1 (wire order, lo a multiple of 2^height ≤ 2^p) packed 2^height
    at a time (:meth:`ProductPacker.pack`: a returned ciphertext when height = p, else a
    subtree of one); for unpacked plans (p = 0) the products themselves (NTT form)."""
    plan = enc.plan
    products = _products(he, enc, cts, lo, hi)
    if not plan.pack:
        yield from products
        return
    packer = ProductPacker(he, plan)
    for start in range(lo, hi, 1 << height):
        yield packer.pack(itertools.islice(products, min(1 << height, hi - start)), height)


def step_server_finish(
    he: ServerHE, plan: MatmulPlan, groups: Iterable[sealapi.Ciphertext | None], prg: PRG
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Mask, flood and switch each returned ciphertext (``groups``: :func:`pack_products`'
    of every product with height p, in order): the server's shares −R_m, c1 and c0 as
    :func:`step_server_eval` returns them. The randomness comes from ``prg``, group by group."""
    ctx = he.ctx
    flood = ReturnPacker(ctx, he.pk, plan.beta, plan.out_bits)
    shares = [np.zeros((plan.t, h), dtype=U64) for h in plan.hs]
    c1_out = np.empty((plan.n_out, ctx.out, ctx.n), dtype=U64)
    c0_out = []
    outs, size = list(plan.outputs()), 1 << plan.pack
    for g, (pos, ct) in enumerate(zip(plan.returned_positions(), groups, strict=True)):
        rmask, c1, c0p = flood.finish(ct, pos, prg, plan.level)
        c1_out[g] = c1
        c0_out.append(c0p)
        off = 0
        for m, r, c, tr, hc in outs[g * size : (g + 1) * size]:
            part = _low_bits(U64(0) - rmask[off : off + tr * hc], plan).reshape(tr, hc)
            shares[m][r * plan.tb : r * plan.tb + tr, c * plan.hb : c * plan.hb + hc] = part
            off += tr * hc
    return shares, c1_out, np.concatenate(c0_out, axis=1)


def pack_results(he: ServerHE | ClientHE, plan: MatmulPlan, c1: np.ndarray, c0: np.ndarray):
    """Wire form of returned ciphertexts of ``plan``: c1 (k, 2, N), c0 (2, P) → two ``uint8``
    arrays with :attr:`MatmulPlan.ret_bits` bits per coefficient."""
    return pack_returned(he.ctx, c1, c0, plan.ret_bits)


def step_client_decrypt(
    he: ClientHE, plan: MatmulPlan, c1b: np.ndarray, c0b: np.ndarray, count: int = 1
) -> list[list[np.ndarray]]:
    """Client's shares X_k·W_m + R_m (``count`` products of the same plan, in order)."""
    c1, c0 = unpack_returned(
        he.ctx, c1b, c0b, plan.ret_bits, count * plan.n_out, count * plan.n_positions
    )
    positions = plan.returned_positions() * count
    splits = np.cumsum([len(p) for p in positions])[:-1]
    vals = np.concatenate(he.sk.decrypt_returned(c1, np.split(c0, splits, axis=1), positions))
    shift = he.ctx.params.plain_bits - plan.out_bits
    if shift:  # round off the noise below the lowest wanted bit
        vals = _low_bits((vals + U64(1 << (shift - 1))) >> U64(shift), plan)
    outs = list(plan.outputs())
    result, off = [], 0
    for _ in range(count):
        shares = [np.zeros((plan.t, h), dtype=U64) for h in plan.hs]
        for m, r, c, tr, hc in outs:
            rows = slice(r * plan.tb, r * plan.tb + tr)
            shares[m][rows, c * plan.hb : c * plan.hb + hc] = vals[off : off + tr * hc].reshape(
                tr, hc
            )
            off += tr * hc
        result.append(shares)
    return result


def check_context(ctx: HEContext, plan: MatmulPlan) -> None:
    if ctx.params.name != plan.params:
        raise HEError(f"plan is for {plan.params}, HE context is {ctx.params.name}")


def encoded_size(msg: dict) -> int:
    from ..net.codec import encode

    return len(encode(msg))


def returned_shapes(plan: MatmulPlan, count: int = 1) -> dict[str, np.ndarray]:
    """Zero arrays shaped as :func:`pack_results` of ``count`` products (for declared costs)."""
    bits = plan.ret_bits
    return {
        "c1": np.zeros((count * plan.n_out, -(-plan.n * bits.bits_c1 // 8)), dtype=np.uint8),
        "c0": np.zeros(-(-count * plan.n_positions * bits.bits_c0 // 8), dtype=np.uint8),
    }

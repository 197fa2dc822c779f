"""Shared input × server weights, ``<Y> = <X>·W``, with BFV coefficient encoding (no rotations).

**What it computes.** X (T×d) is additively shared over Z_{2^ℓ} (client X_c, server X_s); the
server holds plaintext weight matrices W_1..W_M (d×h_m, signed fixed-point integers with
|W| < 2^(w_bits−1)), all multiplied by the same X in one call (Q/K/V, or all experts). Both
parties end with fresh additive shares of X·W_m mod 2^ℓ, exactly (t = 2^ℓ, see
:mod:`secmoe.crypto.he_params`).

**Who learns what.** The server sees only ciphertexts under the client's key (RLWE, 128-bit).
The client decrypts Y_m + R_m with R_m uniform in Z_{2^ℓ} from the server's PRG, and ciphertexts
whose c1 is re-randomized with the public key and whose noise at every decryptable coefficient
is flooded (statistical distance ≤ 2^−40 from noise independent of W, see
:mod:`secmoe.crypto.he_params`); it learns nothing about W beyond the public shapes and the
public bound w_bits. The packing (T_b, d_b, h_b) is a public function of the shapes.

**REF.** Cheetah (Huang, Lu, Hong, Ding; USENIX Security 2022, eprint 2022/207), §3.1
coefficient encoding of matrix products; BumbleBee (Lu et al., NDSS 2025, eprint 2023/1678) for
the output side (only the needed coefficients of c0 are returned). Noise flooding: Gentry's
thesis / the smudging lemma.

**Packing.** X is cut into T_b×d_b blocks and each W_m into d_b×h_b blocks with
T_b·d_b·h_b ≤ N. With x̂[i·d_b·h_b + j] = X[i, j] and ŵ[l·d_b + d_b − 1 − j] = W[j, l], the
product x̂·ŵ holds Σ_j X[i, j]·W[j, l] at coefficient i·d_b·h_b + l·d_b + d_b − 1 (Cheetah).
:func:`plan_matmul` picks the blocks that minimize the bytes on the wire.

**Message flow** (one round trip)::

    client                                           server (setup: ŵ encoded, NTT, cached)
      x̂ ← layout(X_c); c0 = NTT(Δ·x̂ + e) − a·s
      ── he/mm/x: plan, seed(a), c0 [n_in × N] ──▶    ct ← (c0 + NTT(Δ·x̂_s), a)   (X = X_c+X_s)
                                                      y ← Σ_b ct_b · ŵ_{b,c}        (NTT domain)
                                                      y ← y + u·pk + (e1 + Δ·R + flood, e2)
                                                      y ← modswitch(y, q_L), low bits cut
      ◀── he/mm/y: c1 [n_out × N], c0 at outputs ──
      Y_c = decrypt = X·W + R                         Y_s = −R

**Cost.** c2s: n_in·N·B_in + 16 bytes (only c0; a = c1 travels as its 16-byte seed); s2c:
n_out·⌈N·b1/8⌉ + ⌈T·Σh_m·b0/8⌉ bytes, with n_in = ⌈T/T_b⌉⌈d/d_b⌉,
n_out = ⌈T/T_b⌉·Σ_m⌈h_m/h_b⌉, B_in = Σ bytes of the input level's primes (22 for ``HE_8K``'s
top level), and b1, b0 the bits of each returned c1 and c0 coefficient that decryption needs
(:func:`~secmoe.crypto.he_params.plan_return_bits`: 75 and 66 of q_L's 80 at ``HE_8K``);
plus the codec's framing (:func:`matmul_cost` is exact). Two flights (one round trip).
Server work: n_in·Σ⌈h_m/h_b⌉ plaintext products in the NTT domain.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
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
from ..crypto.ring import DEFAULT_RING, Ring
from ..net import Channel
from .he_setup import ClientHE, ServerHE

__all__ = [
    "EncodedWeights",
    "MatmulPlan",
    "encode_weights",
    "ideal_matmul",
    "matmul_client",
    "matmul_cost",
    "matmul_server",
    "plan_matmul",
]

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
        tb, db, hb: block sizes, tb·db·hb ≤ N.
        w_bits: public bound, |W| < 2^(w_bits−1) (64: arbitrary ring elements).
        level: primes in the client's ciphertexts.
        beta: flooding bits.
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
    def n_out(self) -> int:
        return self.nr * sum(self.nc(m) for m in range(len(self.hs)))

    @property
    def n_positions(self) -> int:
        return self.t * sum(self.hs)

    @property
    def products(self) -> int:
        """Plaintext × ciphertext products (fewer if the server skips zero weight blocks)."""
        return self.nb * self.n_out

    def wire(self) -> list[int]:
        """The plan as integers (sent by the client, checked by the server)."""
        return [self.n, self.t, self.d, *self.hs, self.tb, self.db, self.hb, self.w_bits,
                self.level, self.beta]  # fmt: skip

    def positions(self, tr: int, hc: int) -> np.ndarray:
        """Coefficients holding the tr×hc outputs of one block (row-major)."""
        i = np.arange(tr)[:, None] * (self.db * self.hb)
        l_ = np.arange(hc)[None, :] * self.db
        return (i + l_ + self.db - 1).reshape(-1)

    def outputs(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(m, r, c, tr, hc) for every output ciphertext, in wire order (m, c, r)."""
        for m, h in enumerate(self.hs):
            for c in range(self.nc(m)):
                hc = min(self.hb, h - c * self.hb)
                for r in range(self.nr):
                    yield m, r, c, min(self.tb, self.t - r * self.tb), hc

    @cached_property
    def ret_bits(self) -> ReturnBits:
        """Bits sent per returned c1 and c0 coefficient
        (:func:`~secmoe.crypto.he_params.plan_return_bits`)."""
        params = params_for(self.params)
        return plan_return_bits(
            params, self.beta, self.level, self.n_out * self.n, self.n_positions
        )

    def ct_bytes(self, count: int = 1) -> tuple[int, int]:
        """Ciphertext bytes of ``count`` products in one message each way: client→server
        count·n_in·N·B_in + 16 (one seed); server→client count·n_out·⌈N·b1/8⌉ for c1 and
        ⌈count·T·Σh·b0/8⌉ for c0 (b1, b0: :attr:`ret_bits`)."""
        params = params_for(self.params)
        b_in = sum(params.byte_widths[: self.level])
        c2s = count * self.n_in * self.n * b_in + 16
        return c2s, ret_bytes(self.ret_bits, count * self.n_out, self.n, count * self.n_positions)

    def cache_bytes(self, level_primes: int | None = None) -> int:
        """Memory of the NTT-form weight plaintexts (at most one per block)."""
        blocks = self.nb * sum(self.nc(m) for m in range(len(self.hs)))
        return blocks * self.n * 8 * (level_primes or self.level)


def ret_bytes(bits: ReturnBits, k: int, n: int, p: int) -> int:
    """Bytes of k returned c1 (N coefficients each) and c0 at P positions in all."""
    return k * (-(-n * bits.bits_c1 // 8)) + (-(-p * bits.bits_c0 // 8))


def noise_log2_bound(nb: int, db: int, hb: int, w_bits: int) -> float:
    """log2 of the worst-case W-dependent noise at one output coefficient before flooding.

    Σ_b (e_b + ε_b)·ŵ_b with |e| ≤ η (the client's fresh noise), |ε| ≤ 1 (the rounding of
    the client's and the server's exact-scaling encodings) and ‖ŵ_b‖₁ ≤ d_b·h_b·2^(w_bits−1).
    """
    return math.log2((CBD_ETA + 1) * nb * db * hb) + (w_bits - 1)


def block_candidates(total: int, cap: int) -> list[int]:
    """Block sizes ⌈total/k⌉ (each count of blocks once), at most ``cap``."""
    out = sorted({-(-total // k) for k in range(1, total + 1)})
    return [v for v in out if v <= cap]


def plan_matmul(
    t: int,
    d: int,
    hs: Sequence[int],
    params: HEParams,
    *,
    w_bits: int = 16,
    union_bits: int = FLOOD_UNION_BITS,
) -> MatmulPlan:
    """The packing that minimizes the bytes on the wire (ties: fewer products).

    Args:
        t, d: X is t×d.
        hs: output widths of the weight matrices (each d×h).
        params: the HE parameter set.
        w_bits: public bound on the weights, |W| < 2^(w_bits−1); 64 for arbitrary ring elements.
        union_bits: κ, log2 of the coefficients the key's flooding must cover (β grows with it).
    """
    hs = tuple(int(h) for h in hs)
    if t < 1 or d < 1 or not hs or min(hs) < 1:
        raise ValueError("matmul shapes must be positive")
    n = params.n
    hmax = max(hs)
    best: tuple | None = None
    for tb in block_candidates(t, n):
        for db in block_candidates(d, n // tb):
            cap = n // (tb * db)
            if cap < 1:
                continue
            hb = -(-hmax // -(-hmax // min(cap, hmax)))  # balanced blocks, same count
            nb = -(-d // db)
            try:
                noise = plan_noise(
                    params, noise_log2_bound(nb, db, hb, w_bits), union_bits=union_bits
                )
            except ValueError:
                continue
            nr = -(-t // tb)
            n_out = nr * sum(-(-h // hb) for h in hs)
            in_bytes = n * sum(params.byte_widths[: noise.level])
            bits = plan_return_bits(params, noise.beta, noise.level, n_out * n, t * sum(hs))
            cost = nr * nb * in_bytes + ret_bytes(bits, n_out, n, t * sum(hs))
            key = (cost, nb * n_out, -tb)
            if best is None or key < best[0]:
                best = (key, tb, db, hb, noise)
    if best is None:
        raise ValueError(f"{params.name}: no packing fits noise for w_bits={w_bits}, d={d}")
    _key, tb, db, hb, noise = best
    return MatmulPlan(params.name, n, t, d, hs, tb, db, hb, w_bits, noise.level, noise.beta)


# --- layouts -------------------------------------------------------------------------------


def layout_x(x: np.ndarray, plan: MatmulPlan) -> np.ndarray:
    """Input polynomials (n_in, N), index r·nb + b: x̂[i·d_b·h_b + j] = X[r·T_b + i, b·d_b + j]."""
    t, d, tb, db, hb, n = plan.t, plan.d, plan.tb, plan.db, plan.hb, plan.n
    xp = np.zeros((plan.nr * tb, plan.nb * db), dtype=U64)
    xp[:t, :d] = x
    blocks = xp.reshape(plan.nr, tb, plan.nb, db).transpose(0, 2, 1, 3)
    out = np.zeros((plan.nr, plan.nb, tb, db * hb), dtype=U64)
    out[..., :db] = blocks
    flat = out.reshape(plan.nr * plan.nb, tb * db * hb)
    polys = np.zeros((plan.n_in, n), dtype=U64)
    polys[:, : flat.shape[1]] = flat
    return polys


def layout_w(w: np.ndarray, plan: MatmulPlan, m: int) -> np.ndarray:
    """Weight polynomials (nb, nc, N): ŵ[l·d_b + d_b − 1 − j] = W[b·d_b + j, c·h_b + l]."""
    db, hb, n = plan.db, plan.hb, plan.n
    nc = plan.nc(m)
    wp = np.zeros((plan.nb * db, nc * hb), dtype=w.dtype)
    wp[: plan.d, : plan.hs[m]] = w
    blocks = wp.reshape(plan.nb, db, nc, hb).transpose(0, 2, 3, 1)[..., ::-1]
    polys = np.zeros((plan.nb, nc, n), dtype=w.dtype)
    polys[..., : hb * db] = blocks.reshape(plan.nb, nc, hb * db)
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
    """ŵ for block (b, c): ŵ[l·d_b + d_b − 1 − j] = W[b·d_b + j, c·h_b + l]."""
    db, hb = plan.db, plan.hb
    blk = w[b * db : (b + 1) * db, c * hb : (c + 1) * hb]
    poly = np.zeros(plan.n, dtype=w.dtype)
    j, l_ = np.meshgrid(np.arange(blk.shape[0]), np.arange(blk.shape[1]), indexing="ij")
    poly[l_ * db + db - 1 - j] = blk
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


def step_client_encrypt(
    he: ClientHE, xs: Sequence[np.ndarray], plan: MatmulPlan, prg: PRG
) -> tuple[bytes, np.ndarray]:
    """Encrypt the client's shares of one or more X (same plan): (seed, packed c0).

    The ciphertexts of X_k are rows k·n_in … (k+1)·n_in − 1.
    """
    polys = np.concatenate([layout_x(np.asarray(x, dtype=U64), plan) for x in xs])
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
    ctx = he.ctx
    level = plan.level
    primes = ctx.primes[:level]
    k = len(x_s)
    c0 = unpack_fresh(ctx, c0b, k * plan.n_in, level)
    a = expand_a(seed, k * plan.n_in, primes, ctx.n)
    mine = [i for i, x in enumerate(x_s) if x is not None]
    if mine:  # X = X_c + X_s inside the ciphertext
        polys = np.concatenate([layout_x(np.asarray(x_s[i], dtype=U64), plan) for i in mine])
        add = ctx.ntt(ctx.encode_bfv(polys, level))
        for j, i in enumerate(mine):
            sl = slice(i * plan.n_in, (i + 1) * plan.n_in)
            c0[sl] = add_rns(c0[sl], add[j * plan.n_in : (j + 1) * plan.n_in], primes)
    cts = [ctx.import_ct(np.stack([c0[i], a[i]]), ntt=True) for i in range(k * plan.n_in)]
    return [cts[i * plan.n_in : (i + 1) * plan.n_in] for i in range(k)]


def step_server_eval(
    he: ServerHE, enc: EncodedWeights, cts: Sequence[sealapi.Ciphertext], prg: PRG
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Products of one X's ciphertexts by the encoded weights, masked, flooded, switched.

    Returns the server's shares −R_m, c1 (n_out, 2, N) and c0 at the outputs (2, P).
    """
    ctx, plan = he.ctx, enc.plan
    packer = ReturnPacker(ctx, he.pk, plan.beta)
    shares = [np.zeros((plan.t, h), dtype=U64) for h in plan.hs]
    c1_out = np.empty((plan.n_out, ctx.out, ctx.n), dtype=U64)
    c0_out = []
    tmp = sealapi.Ciphertext(ctx.seal)
    dummy, discarded = dummy_plain(ctx, plan.level), None
    outs = iter(enumerate(plan.outputs()))
    for m in range(len(plan.hs)):
        for c in range(plan.nc(m)):
            accs: list[sealapi.Ciphertext | None] = [None] * plan.nr
            for b in range(plan.nb):
                pt = enc.plain(ctx, m, b, c)  # encoded once per call, reused for every r
                if pt is None:
                    continue  # a zero block the operator chose to skip
                zero = enc.zero[m][b, c]
                for r in range(plan.nr):
                    ct_in = cts[r * plan.nb + b]
                    if zero:  # the same work as any block, the result discarded
                        discarded = mul_acc(ctx, ct_in, dummy, discarded, tmp)
                    else:
                        accs[r] = mul_acc(ctx, ct_in, pt, accs[r], tmp)
            for r in range(plan.nr):
                k, (m_, r_, c_, tr, hc) = next(outs)
                assert (m_, r_, c_) == (m, r, c)
                rmask, c1, c0p = packer.finish(accs[r], plan.positions(tr, hc), prg, plan.level)
                accs[r] = None
                c1_out[k] = c1
                c0_out.append(c0p)
                shares[m][r * plan.tb : r * plan.tb + tr, c * plan.hb : c * plan.hb + hc] = (
                    U64(0) - rmask
                ).reshape(tr, hc)
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
    outs = list(plan.outputs())
    positions = [plan.positions(tr, hc) for (_m, _r, _c, tr, hc) in outs] * count
    splits = np.cumsum([len(p) for p in positions])[:-1]
    vals = he.sk.decrypt_returned(c1, np.split(c0, splits, axis=1), positions)
    result = []
    for k in range(count):
        shares = [np.zeros((plan.t, h), dtype=U64) for h in plan.hs]
        for (m, r, c, tr, hc), v in zip(outs, vals[k * len(outs) :], strict=False):
            rows = slice(r * plan.tb, r * plan.tb + tr)
            shares[m][rows, c * plan.hb : c * plan.hb + hc] = v.reshape(tr, hc)
        result.append(shares)
    return result


def _check_plan(got, plan: MatmulPlan) -> None:
    if [int(v) for v in got] != plan.wire():
        raise HEError(f"matmul plans differ: server {plan.wire()}, client {list(got)}")


# --- protocol 1 -----------------------------------------------------------------------------


async def matmul_client(
    ch: Channel,
    he: ClientHE,
    x_c: np.ndarray,
    plan: MatmulPlan,
    prg: PRG,
    *,
    ring: Ring = DEFAULT_RING,
) -> list[np.ndarray]:
    """Client side of ``<Y_m> = <X>·W_m``. Returns its shares (one t×h_m array per matrix)."""
    _check_context(he.ctx, plan)
    x_c = ring.reduce(np.asarray(x_c, dtype=U64))
    if x_c.shape != (plan.t, plan.d):
        raise ValueError(f"X has shape {x_c.shape}, plan expects {(plan.t, plan.d)}")
    seed, c0b = await asyncio.to_thread(step_client_encrypt, he, [x_c], plan, prg)
    await ch.send({"plan": plan.wire(), "seed": seed, "c0": c0b}, tag="he/mm/x")
    reply = await ch.recv(tag="he/mm/y")
    shares = await asyncio.to_thread(step_client_decrypt, he, plan, reply["c1"], reply["c0"])
    return [ring.reduce(s) for s in shares[0]]


async def matmul_server(
    ch: Channel,
    he: ServerHE,
    x_s: np.ndarray,
    weights: EncodedWeights,
    prg: PRG,
    *,
    ring: Ring = DEFAULT_RING,
) -> list[np.ndarray]:
    """Server side of ``<Y_m> = <X>·W_m``: returns its shares −R_m."""
    plan = weights.plan
    _check_context(he.ctx, plan)
    x_s = ring.reduce(np.asarray(x_s, dtype=U64))
    if x_s.shape != (plan.t, plan.d):
        raise ValueError(f"X has shape {x_s.shape}, plan expects {(plan.t, plan.d)}")
    msg = await ch.recv(tag="he/mm/x")
    _check_plan(msg["plan"], plan)

    def work():
        (cts,) = step_server_import(he, plan, bytes(msg["seed"]), np.asarray(msg["c0"]), [x_s])
        shares, c1, c0 = step_server_eval(he, weights, cts, prg)
        return shares, *pack_results(he, plan, c1, c0)

    shares, c1b, c0b = await asyncio.to_thread(work)
    await ch.send({"c1": c1b, "c0": c0b}, tag="he/mm/y")
    return [ring.reduce(s) for s in shares]


def _check_context(ctx: HEContext, plan: MatmulPlan) -> None:
    if ctx.params.name != plan.params:
        raise HEError(f"plan is for {plan.params}, HE context is {ctx.params.name}")


def ideal_matmul(
    x_c: np.ndarray, x_s: np.ndarray, weights: Sequence[np.ndarray], ring: Ring = DEFAULT_RING
) -> list[np.ndarray]:
    """Plaintext reference: (X_c + X_s)·W_m mod 2^ℓ for each m (weights signed or ring)."""
    x = ring.reduce(np.asarray(x_c, dtype=U64) + np.asarray(x_s, dtype=U64))
    return [ring.reduce(x @ np.asarray(w).astype(np.int64).astype(U64)) for w in weights]


def encoded_size(msg: dict) -> int:
    from ..net.codec import encode

    return len(encode(msg))


def matmul_cost(plan: MatmulPlan) -> dict[str, int]:
    """Declared cost: payload bytes each direction (exact, codec included), rounds, messages.

    The ciphertext part is :meth:`MatmulPlan.ct_bytes`; the codec adds a few dozen bytes per
    message.
    """
    params = params_for(plan.params)
    b_in = sum(params.byte_widths[: plan.level])
    c2s = {
        "plan": plan.wire(),
        "seed": bytes(16),
        "c0": np.zeros((plan.n_in, plan.n * b_in), dtype=np.uint8),
    }
    s2c = returned_shapes(plan)
    return {
        "bytes_c2s": encoded_size(c2s),
        "bytes_s2c": encoded_size(s2c),
        "ct_bytes_c2s": plan.ct_bytes()[0],
        "ct_bytes_s2c": plan.ct_bytes()[1],
        "rounds": 2,
        "messages": 2,
    }


def returned_shapes(plan: MatmulPlan, count: int = 1) -> dict[str, np.ndarray]:
    """Zero arrays shaped as :func:`pack_results` of ``count`` products (for declared costs)."""
    bits = plan.ret_bits
    return {
        "c1": np.zeros((count * plan.n_out, -(-plan.n * bits.bits_c1 // 8)), dtype=np.uint8),
        "c0": np.zeros(-(-count * plan.n_positions * bits.bits_c0 // 8), dtype=np.uint8),
    }

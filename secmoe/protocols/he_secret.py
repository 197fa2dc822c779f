"""Secret × secret matrix products ``<C> = <A>·<B>`` through two HE cross products.

**What it computes.** For k = 1..K (attention heads, or any batch of same-shape products),
A_k (T×d) and B_k (d×h) are both additively shared over Z_{2^ℓ}; both parties end with fresh
shares of A_k·B_k mod 2^ℓ, exactly. With A = A_c + A_s and B = B_c + B_s,

    A·B = A_c·B_c  +  A_s·B_s  +  A_c·B_s  +  (B_cᵀ·A_sᵀ)ᵀ
          client      server      HE          HE

and each cross product is one plain-weight product of :mod:`secmoe.protocols.he_linear` in
which the server's "weights" are its shares (arbitrary ring elements, ``w_bits`` = 64): the
client encrypts A_c and B_cᵀ, the server multiplies by B_s and A_sᵀ, masks, floods and returns.
Both cross products travel in the same two messages.

**Heads fused.** Small products would each fill a whole ciphertext (at T = 8, one head of
q·kᵀ uses 512 of N = 16384 coefficients, both ways). So the K products go in groups of g:
one product [A_1 | … | A_g]·diag(B_1, …, B_g) of shape (T, g·d)·(g·d, g·h), whose
block-diagonal "weights" the server holds (and [B_1ᵀ | … | B_gᵀ]·diag(A_1ᵀ, …, A_gᵀ) for the
other cross term); head j's result is its column block. The packing's blocks then span several
heads on the input side, and the blocks outside the diagonal, zero by this public structure,
are not multiplied (which reveals nothing). Each cross product's sparse results are packed
into few returned ciphertexts (:class:`~secmoe.protocols.he_common.ProductPacker`).
:func:`plan_secret_matmul` picks g (a divisor of K) and each side's plan that minimize the
bytes plus a small charge per key switch — a public function of the shapes.

**Who learns what.** As in :mod:`secmoe.protocols.he_linear`: the server sees only
ciphertexts; the client decrypts uniformly masked values, with the noise at each decryptable
coefficient flooded against the server's shares (now 64-bit plaintexts, hence the 2^64-times
larger flood and the N = 16384 parameter set ``HE_16K``).

**REF.** Cheetah (eprint 2022/207) and BumbleBee (eprint 2023/1678) compute secret × secret
products as HE cross terms; packing as in Cheetah §3.1.

**Message flow** (one round trip)::

    client                                              server
      ── he/ss/x: plan, seed_l, c0_l = Enc(A_c), seed_r, c0_r = Enc(B_cᵀ) ──▶
                                          Y_l = Enc(A_c)·B_s + R_l, Y_r = Enc(B_cᵀ)·A_sᵀ + R_r
      ◀── he/ss/y: c1_l, c0_l, c1_r, c0_r (masked, flooded, at q_L) ───────
      C_c = A_c·B_c + (A_c·B_s + R_l) + (A_s·B_c + R_rᵀ)       C_s = A_s·B_s − R_l − R_rᵀ

**Cost.** Two plain-weight products per group, K/g groups (:func:`secret_matmul_cost` is
exact): c2s (K/g)·(n_in,l·B_in,l + n_in,r·B_in,r)·N + 32, s2c the returned ciphertexts of both
(:meth:`~secmoe.protocols.he_common.MatmulPlan.ct_bytes`); two flights. Server work: the
plaintext products and the packing's key switches of both sides. At T = 8, d = 64, h = 8,
K = 12 (attention's q·kᵀ at Switch-Base dims): g = 12, 2.35 MB (6.75 MB with g = 4 and no
packing; 16.1 MB with one product per head and all 80 bits of each returned coefficient).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from ..crypto.he import HEError
from ..crypto.he_params import FLOOD_UNION_BITS, HE_16K, HEParams
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING, Ring
from ..net import Channel
from .he_common import (
    FULL_RANGE,
    MatmulPlan,
    encode_weights,
    encoded_size,
    pack_results,
    plan_matmul,
    returned_shapes,
    step_client_decrypt,
    step_client_encrypt,
    step_server_eval,
    step_server_import,
)
from .he_setup import ClientHE, ServerHE

__all__ = [
    "SecretMatmulPlan",
    "block_diagonal_zero",
    "ideal_secret_matmul",
    "plan_secret_matmul",
    "secret_matmul_client",
    "secret_matmul_cost",
    "secret_matmul_server",
]

U64 = np.uint64


@dataclass(frozen=True)
class SecretMatmulPlan:
    """K products (T×d)·(d×h) in K/g groups of g heads: ``left`` packs the group's
    [A_c,1 | … | A_c,g]·diag(B_s,1, …) (T×g·d by g·d×g·h), ``right`` packs
    [B_c,1ᵀ | … | B_c,gᵀ]·diag(A_s,1ᵀ, …) (h×g·d by g·d×g·T)."""

    heads: int
    group: int
    left: MatmulPlan
    right: MatmulPlan

    @property
    def groups(self) -> int:
        return self.heads // self.group

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, d, h) of one product."""
        return self.left.t, self.left.d // self.group, self.left.hs[0] // self.group

    def wire(self) -> list[int]:
        """As integers (g is implied: ``left``'s d is g·d)."""
        return [self.heads, *self.left.wire(), *self.right.wire()]

    def ct_bytes(self) -> int:
        """Ciphertext bytes of the call, both directions."""
        return sum(self.left.ct_bytes(self.groups)) + sum(self.right.ct_bytes(self.groups))

    def score(self) -> float:
        """Bytes plus the charge for key switches (:meth:`MatmulPlan.score`)."""
        return self.left.score(self.groups) + self.right.score(self.groups)


def plan_secret_matmul(
    t: int,
    d: int,
    h: int,
    heads: int = 1,
    params: HEParams = HE_16K,
    *,
    union_bits: int = FLOOD_UNION_BITS,
) -> SecretMatmulPlan:
    """Public plan for ``heads`` products (T×d)·(d×h) of shared matrices (flooding for 2^κ
    returned coefficients per key, κ = ``union_bits``): the group size g (a divisor of
    ``heads``) with the fewest ciphertext bytes plus the charge for the packing's key
    switches (:meth:`~secmoe.protocols.he_common.MatmulPlan.score`; ties: the smaller g)."""
    best: SecretMatmulPlan | None = None
    for g in (g for g in range(1, heads + 1) if heads % g == 0):
        left = plan_matmul(t, g * d, (g * h,), params, w_bits=FULL_RANGE, union_bits=union_bits)
        right = plan_matmul(h, g * d, (g * t,), params, w_bits=FULL_RANGE, union_bits=union_bits)
        plan = SecretMatmulPlan(heads, g, left, right)
        if best is None or plan.score() < best.score():
            best = plan
    assert best is not None
    return best


def block_diagonal_zero(plan: MatmulPlan, group: int) -> np.ndarray:
    """(nb, nc) flags: blocks of a block-diagonal (g·d', g·h') matrix outside the diagonal."""
    d, h = plan.d // group, plan.hs[0] // group
    rows = np.arange(plan.nb) * plan.db
    cols = np.arange(plan.nc(0)) * plan.hb
    r_lo, r_hi = rows // d, (np.minimum(rows + plan.db, plan.d) - 1) // d
    c_lo, c_hi = cols // h, (np.minimum(cols + plan.hb, plan.hs[0]) - 1) // h
    return (r_hi[:, None] < c_lo[None, :]) | (c_hi[None, :] < r_lo[:, None])


def _hcat(x: np.ndarray) -> np.ndarray:
    """[X_1 | … | X_g] of a stack (g, r, c) → (r, g·c)."""
    g, r, c = x.shape
    return x.transpose(1, 0, 2).reshape(r, g * c)


def _block_diag(x: np.ndarray) -> np.ndarray:
    """diag(X_1, …, X_g) of a stack (g, r, c) → (g·r, g·c)."""
    g, r, c = x.shape
    out = np.zeros((g * r, g * c), dtype=x.dtype)
    for j in range(g):
        out[j * r : (j + 1) * r, j * c : (j + 1) * c] = x[j]
    return out


def _split(y: np.ndarray, group: int) -> np.ndarray:
    """Column blocks of (r, g·c) as a stack (g, r, c)."""
    r, gc = y.shape
    return y.reshape(r, group, gc // group).transpose(1, 0, 2)


def _check(a: np.ndarray, b: np.ndarray, plan: SecretMatmulPlan, ring: Ring):
    a = ring.reduce(np.asarray(a, dtype=U64))
    b = ring.reduce(np.asarray(b, dtype=U64))
    if a.ndim == 2:
        a, b = a[None], b[None]
    k, (t, d, h) = plan.heads, plan.shape
    if a.shape != (k, t, d) or b.shape != (k, d, h):
        raise ValueError(f"shapes {a.shape}·{b.shape} do not match the plan {(k, t, d, h)}")
    return a, b


async def secret_matmul_client(
    ch: Channel,
    he: ClientHE,
    a_c: np.ndarray,
    b_c: np.ndarray,
    plan: SecretMatmulPlan,
    prg: PRG,
    *,
    ring: Ring = DEFAULT_RING,
) -> np.ndarray:
    """Client side: shares of A_k·B_k, shape (K, T, h) (or (T, h) for 2-D inputs)."""
    flat = np.ndim(a_c) == 2
    a_c, b_c = _check(a_c, b_c, plan, ring)

    g = plan.group
    a_g = a_c.reshape(plan.groups, g, *a_c.shape[1:])
    b_g = b_c.reshape(plan.groups, g, *b_c.shape[1:])

    def enc():
        sl, cl = step_client_encrypt(he, [_hcat(a) for a in a_g], plan.left, prg)
        b_t = [_hcat(b.transpose(0, 2, 1)) for b in b_g]
        sr, cr = step_client_encrypt(he, b_t, plan.right, prg)
        return sl, cl, sr, cr

    sl, cl, sr, cr = await asyncio.to_thread(enc)
    msg = {"plan": plan.wire(), "seed_l": sl, "c0_l": cl, "seed_r": sr, "c0_r": cr}
    await ch.send(msg, tag="he/ss/x")
    reply = await ch.recv(tag="he/ss/y")

    def dec():
        n = plan.groups
        yl = step_client_decrypt(he, plan.left, reply["c1_l"], reply["c0_l"], n)
        yr = step_client_decrypt(he, plan.right, reply["c1_r"], reply["c0_r"], n)
        cross_l = np.concatenate([_split(y[0], g) for y in yl])
        cross_r = np.concatenate([_split(y[0], g) for y in yr]).transpose(0, 2, 1)
        return a_c @ b_c + cross_l + cross_r

    out = ring.reduce(await asyncio.to_thread(dec))
    return out[0] if flat else out


async def secret_matmul_server(
    ch: Channel,
    he: ServerHE,
    a_s: np.ndarray,
    b_s: np.ndarray,
    plan: SecretMatmulPlan,
    prg: PRG,
    *,
    ring: Ring = DEFAULT_RING,
) -> np.ndarray:
    """Server side: shares of A_k·B_k, shape (K, T, h) (or (T, h) for 2-D inputs)."""
    flat = np.ndim(a_s) == 2
    a_s, b_s = _check(a_s, b_s, plan, ring)
    msg = await ch.recv(tag="he/ss/x")
    if [int(v) for v in msg["plan"]] != plan.wire():
        raise HEError(f"secret-matmul plans differ: server {plan.wire()}, client {msg['plan']}")

    def work():
        g, n = plan.group, plan.groups
        none = [None] * n
        cts_l = step_server_import(he, plan.left, bytes(msg["seed_l"]), msg["c0_l"], none)
        cts_r = step_server_import(he, plan.right, bytes(msg["seed_r"]), msg["c0_r"], none)
        zero_l, zero_r = [block_diagonal_zero(plan.left, g)], [block_diagonal_zero(plan.right, g)]
        out = a_s @ b_s
        c1l, c0l, c1r, c0r = [], [], [], []
        for i in range(n):
            heads = slice(i * g, (i + 1) * g)
            w_l = _block_diag(b_s[heads])
            # one-use weights: each block encoded when the product reaches it (every block is
            # used once per call), not all cached up front
            enc_l = encode_weights(he.ctx, [w_l], plan.left, cache="blocks", public_zero=zero_l)
            sh_l, c1, c0 = step_server_eval(he, enc_l, cts_l[i], prg)
            c1l.append(c1)
            c0l.append(c0)
            w_r = _block_diag(a_s[heads].transpose(0, 2, 1))
            enc_r = encode_weights(he.ctx, [w_r], plan.right, cache="blocks", public_zero=zero_r)
            sh_r, c1, c0 = step_server_eval(he, enc_r, cts_r[i], prg)
            c1r.append(c1)
            c0r.append(c0)
            out[heads] += _split(sh_l[0], g) + _split(sh_r[0], g).transpose(0, 2, 1)
        pl = pack_results(he, plan.left, np.concatenate(c1l), np.concatenate(c0l, axis=1))
        pr = pack_results(he, plan.right, np.concatenate(c1r), np.concatenate(c0r, axis=1))
        return out, pl, pr

    out, (c1l, c0l), (c1r, c0r) = await asyncio.to_thread(work)
    await ch.send({"c1_l": c1l, "c0_l": c0l, "c1_r": c1r, "c0_r": c0r}, tag="he/ss/y")
    out = ring.reduce(out)
    return out[0] if flat else out


def ideal_secret_matmul(
    a_c: np.ndarray, a_s: np.ndarray, b_c: np.ndarray, b_s: np.ndarray, ring: Ring = DEFAULT_RING
) -> np.ndarray:
    """Plaintext reference: (A_c + A_s)·(B_c + B_s) mod 2^ℓ (batched over a leading axis)."""
    a = ring.reduce(np.asarray(a_c, dtype=U64) + np.asarray(a_s, dtype=U64))
    b = ring.reduce(np.asarray(b_c, dtype=U64) + np.asarray(b_s, dtype=U64))
    return ring.reduce(a @ b)


def secret_matmul_cost(plan: SecretMatmulPlan) -> dict[str, int]:
    """Declared cost: payload bytes each direction (exact, codec included), rounds, messages."""
    from ..crypto.he_params import params_for

    params = params_for(plan.left.params)
    k = plan.groups

    def c0(p: MatmulPlan) -> np.ndarray:
        width = p.n * sum(params.byte_widths[: p.level])
        return np.zeros((k * p.n_in, width), dtype=np.uint8)

    left, right = returned_shapes(plan.left, k), returned_shapes(plan.right, k)
    c2s = {
        "plan": plan.wire(),
        "seed_l": bytes(16),
        "c0_l": c0(plan.left),
        "seed_r": bytes(16),
        "c0_r": c0(plan.right),
    }
    s2c = {"c1_l": left["c1"], "c0_l": left["c0"], "c1_r": right["c1"], "c0_r": right["c0"]}
    return {
        "bytes_c2s": encoded_size(c2s),
        "bytes_s2c": encoded_size(s2c),
        "rounds": 2,
        "messages": 2,
    }

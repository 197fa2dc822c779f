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

**Cost.** Two plain-weight products (:func:`secret_matmul_cost` is exact), two flights.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from ..crypto.he import HEError
from ..crypto.he_params import HE_16K, HEParams
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING, Ring
from ..net import Channel
from .he_linear import (
    FULL_RANGE,
    MatmulPlan,
    _barrier,
    _encoded_size,
    _reveal_check,
    bench_figures,
    encode_weights,
    pack_results,
    plan_matmul,
    plan_summary,
    step_client_decrypt,
    step_client_encrypt,
    step_server_eval,
    step_server_import,
)
from .he_setup import ClientHE, ServerHE, setup_client, setup_server

__all__ = [
    "SecretMatmulPlan",
    "bench_secret",
    "ideal_secret_matmul",
    "plan_secret_matmul",
    "secret_matmul_client",
    "secret_matmul_cost",
    "secret_matmul_server",
]

U64 = np.uint64


@dataclass(frozen=True)
class SecretMatmulPlan:
    """K products (T×d)·(d×h): ``left`` packs A_c·B_s, ``right`` packs B_cᵀ·A_sᵀ."""

    heads: int
    left: MatmulPlan
    right: MatmulPlan

    def wire(self) -> list[int]:
        return [self.heads, *self.left.wire(), *self.right.wire()]


def plan_secret_matmul(
    t: int, d: int, h: int, heads: int = 1, params: HEParams = HE_16K
) -> SecretMatmulPlan:
    """Public plan for ``heads`` products (T×d)·(d×h) of shared matrices."""
    left = plan_matmul(t, d, (h,), params, w_bits=FULL_RANGE)
    right = plan_matmul(h, d, (t,), params, w_bits=FULL_RANGE)
    return SecretMatmulPlan(heads, left, right)


def _check(a: np.ndarray, b: np.ndarray, plan: SecretMatmulPlan, ring: Ring):
    a = ring.reduce(np.asarray(a, dtype=U64))
    b = ring.reduce(np.asarray(b, dtype=U64))
    if a.ndim == 2:
        a, b = a[None], b[None]
    k, t, d, h = plan.heads, plan.left.t, plan.left.d, plan.left.hs[0]
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

    def enc():
        sl, cl = step_client_encrypt(he, list(a_c), plan.left, prg)
        sr, cr = step_client_encrypt(he, [b.T for b in b_c], plan.right, prg)
        return sl, cl, sr, cr

    sl, cl, sr, cr = await asyncio.to_thread(enc)
    msg = {"plan": plan.wire(), "seed_l": sl, "c0_l": cl, "seed_r": sr, "c0_r": cr}
    await ch.send(msg, tag="he/ss/x")
    reply = await ch.recv(tag="he/ss/y")

    def dec():
        k = plan.heads
        yl = step_client_decrypt(he, plan.left, reply["c1_l"], reply["c0_l"], k)
        yr = step_client_decrypt(he, plan.right, reply["c1_r"], reply["c0_r"], k)
        return np.stack([a_c[i] @ b_c[i] + yl[i][0] + yr[i][0].T for i in range(k)])

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
        k = plan.heads
        none = [None] * k
        cts_l = step_server_import(he, plan.left, bytes(msg["seed_l"]), msg["c0_l"], none)
        cts_r = step_server_import(he, plan.right, bytes(msg["seed_r"]), msg["c0_r"], none)
        out, c1l, c0l, c1r, c0r = [], [], [], [], []
        for i in range(k):
            enc_l = encode_weights(he.ctx, [b_s[i]], plan.left)
            sh_l, c1, c0 = step_server_eval(he, enc_l, cts_l[i], prg)
            c1l.append(c1)
            c0l.append(c0)
            enc_r = encode_weights(he.ctx, [a_s[i].T], plan.right)
            sh_r, c1, c0 = step_server_eval(he, enc_r, cts_r[i], prg)
            c1r.append(c1)
            c0r.append(c0)
            out.append(a_s[i] @ b_s[i] + sh_l[0] + sh_r[0].T)
        pl = pack_results(he, np.concatenate(c1l), np.concatenate(c0l, axis=1))
        pr = pack_results(he, np.concatenate(c1r), np.concatenate(c0r, axis=1))
        return np.stack(out), pl, pr

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
    b_out = params.out_coeff_bytes
    k = plan.heads

    def c0(p: MatmulPlan) -> np.ndarray:
        width = p.n * sum(params.byte_widths[: p.level])
        return np.zeros((k * p.n_in, width), dtype=np.uint8)

    def res(p: MatmulPlan) -> tuple[np.ndarray, np.ndarray]:
        c1 = np.zeros((k * p.n_out, p.n * b_out), dtype=np.uint8)
        return c1, np.zeros(k * p.n_positions * b_out, dtype=np.uint8)

    c1l, c0l = res(plan.left)
    c1r, c0r = res(plan.right)
    c2s = {
        "plan": plan.wire(),
        "seed_l": bytes(16),
        "c0_l": c0(plan.left),
        "seed_r": bytes(16),
        "c0_r": c0(plan.right),
    }
    s2c = {"c1_l": c1l, "c0_l": c0l, "c1_r": c1r, "c0_r": c0r}
    return {
        "bytes_c2s": _encoded_size(c2s),
        "bytes_s2c": _encoded_size(s2c),
        "rounds": 2,
        "messages": 2,
    }


async def bench_secret(
    ch: Channel,
    shape: tuple[int, int, int],
    heads: int = 1,
    *,
    seed: bytes = b"secmoe-bench-ss!",
    params: HEParams | None = None,
) -> dict:
    """Benchmark ``heads`` secret × secret products (T×D)·(D×H); both parties call it."""
    params = params or HE_16K
    t, d, h = shape
    data = PRG(seed)
    a_c, a_s = data.ring((heads, t, d)), data.ring((heads, t, d))
    b_c, b_s = data.ring((heads, d, h)), data.ring((heads, d, h))
    prg = PRG()
    plan = plan_secret_matmul(t, d, h, heads, params)
    t0 = time.perf_counter()
    snap0 = ch.stats.snapshot()
    if ch.role == "client":
        he = await setup_client(ch, prg, params)
    else:
        he_s = await setup_server(ch, params)
    await _barrier(ch)
    setup = ch.stats.since(snap0)
    t1 = time.perf_counter()
    snap = ch.stats.snapshot()
    with ch.phase("online"):
        if ch.role == "client":
            mine = await secret_matmul_client(ch, he, a_c, b_c, plan, prg)
        else:
            mine = await secret_matmul_server(ch, he_s, a_s, b_s, plan, prg)
    online = ch.stats.since(snap)
    t2 = time.perf_counter()
    ideal = ideal_secret_matmul(a_c, a_s, b_c, b_s)
    check = await _reveal_check(ch, [mine], [ideal])
    return {
        "op": "matmul",
        "mode": "secret-secret",
        "shape": list(shape),
        "heads": heads,
        "params": params.name,
        "plan": {"left": plan_summary(plan.left), "right": plan_summary(plan.right)},
        **bench_figures(online, setup, t0, t1, t2),
        "declared": secret_matmul_cost(plan),
        **check,
    }

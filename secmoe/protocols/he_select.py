"""Encrypted expert selection (SecMoE's Select-Then-Compute step) with HE.

**What it computes.** For each token k < T: a one-hot routing vector t_k ∈ {0,1}^E, additively
shared over Z_{2^ℓ} (client t_c, server t_s), the token's input x_k ∈ Z_{2^ℓ}^d, shared too,
and the server's E experts' weight matrices W_j,m (d×h_m, signed, |W| < 2^(w_bits−1); m indexes
several matrices per expert, e.g. W1 and V of a gated FFN). Both parties end with fresh shares
of x_k·W_{r_k},m mod 2^ℓ where r_k is the selected expert, exactly. Nobody learns r_k.

**Who learns what.** The server sees ciphertexts only. The client decrypts uniformly masked
values from re-randomized, flooded ciphertexts (as in :mod:`secmoe.protocols.he_linear`); it
learns nothing about the weights (of any expert) beyond the public shapes and bound.

**Method** (the paper's steps 4-7; REF SecMoE, arXiv 2601.06790; query expansion from SealPIR,
Angel et al., S&P 2018, eprint 2017/1142; coefficient packing from Cheetah, eprint 2022/207):

1. The client packs its shares of all T·E one-hot entries into *one* ciphertext (BFV,
   message scaled by q/2^(ℓ+λ) with 2^λ ≥ T·E) and its inputs x_c into BGV-style ciphertexts
   (phase x + 2^ℓ·e, one per token and input block).
2. The server adds t_s and x_s, then expands the packed ciphertext into T·E ciphertexts of
   constants with λ levels of X ↦ X^(N/2^j+1) automorphisms (Galois keys sent in setup); the
   2^λ factor of the expansion cancels the pre-scaling (and the wraps of t_c + t_s).
3. [[W_r]] = Σ_j [[t_j]]·Ŵ_j (plaintext products, per token, per weight block): the selected
   expert's weights, encrypted, in Cheetah's layout.
4. [[x·W_r]] = [[W_r]] ⊗ [[x]]: the tensor product mod q of a BFV and a BGV ciphertext is a BFV
   ciphertext of the product mod 2^ℓ with no rescaling (t = 2^ℓ is beyond SEAL's own BFV
   multiplication); accumulated over blocks, relinearized once per output ciphertext.
5. Re-randomize, mask, flood, switch to q_L, return (as in protocol 1).

**Message flow** (one round trip)::

    client                                                   server
      ── he/sel/x: plan, seed_t, c0_t [1 × N], seed_x, c0_x [T·⌈d/d_b⌉ × N] ──▶
                                                             expand, select, multiply, mask
      ◀── he/sel/y: c1 [T·Σ⌈h_m/h_b⌉ × N], c0 at outputs ───────────────────
      shares x_k·W_{r_k} + R                                 −R

**Cost.** c2s: (1 + T·⌈d/d_b⌉)·N·B_in + 32 bytes (c0 only, a as seeds), s2c:
T·Σ⌈h_m/h_b⌉·⌈N·b1/8⌉ + ⌈T·Σh_m·b0/8⌉ bytes (b1, b0: the bits of each returned coefficient
decryption needs, :func:`~secmoe.crypto.he_params.plan_return_bits`):
**independent of E** (E only enters the noise, hence possibly the input level). Setup: the
public key, relinearization keys and ⌈log2 T·E⌉ Galois keys. Server work grows linearly with E:
T·E·⌈d/d_b⌉·Σ⌈h_m/h_b⌉ plaintext products (the selection), plus T·E − 1 automorphisms and
2·T·⌈d/d_b⌉·Σ⌈h_m/h_b⌉ products for the tensor.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as sealapi

from ..crypto.he import (
    HEError,
    ReturnPacker,
    add_rns,
    encode_scaled_exact,
    expand_a,
    pack_fresh,
    unpack_fresh,
)
from ..crypto.he_params import (
    CBD_ETA,
    FLOOD_UNION_BITS,
    HE_16K,
    HEParams,
    params_for,
    plan_noise,
    plan_return_bits,
)
from ..crypto.he_rns import centered_to_rns
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING, Ring
from ..net import Channel
from .he_linear import (
    MatmulPlan,
    block_candidates,
    dummy_plain,
    encoded_size,
    layout_w,
    layout_x,
    mul_acc,
    pack_results,
    ret_bytes,
    returned_shapes,
    step_client_decrypt,
)
from .he_setup import ClientHE, ServerHE, expansion_galois_elements, setup_client, setup_server

__all__ = [
    "SelectPlan",
    "SelectWeights",
    "encode_select_weights",
    "ideal_select",
    "plan_select",
    "select_client",
    "select_cost",
    "select_server",
]

U64 = np.uint64


@dataclass(frozen=True)
class SelectPlan:
    """Public parameters of one encrypted selection (both parties compute it).

    ``token`` is the per-token product plan (T_b = 1) that fixes the layouts and outputs.
    """

    t: int
    e: int
    token: MatmulPlan

    @property
    def params(self) -> str:
        return self.token.params

    @property
    def n(self) -> int:
        return self.token.n

    @property
    def level(self) -> int:
        return self.token.level

    @property
    def lam(self) -> int:
        """Expansion levels λ = ⌈log2(T·E)⌉ (at least 1)."""
        return max(1, (self.t * self.e - 1).bit_length())

    @property
    def n_x(self) -> int:
        return self.t * self.token.n_in

    @property
    def n_out(self) -> int:
        return self.t * self.token.n_out

    def wire(self) -> list[int]:
        return [self.t, self.e, *self.token.wire()]


def keyswitch_noise_log2(params: HEParams, level: int) -> float:
    """log2 bound on SEAL's hybrid key-switching noise at ``level``.

    Σ_i [c]_{q_i}·e_i / P + rounding: ≤ L·N·η·max q_i / P + (N + 1)/2 (worst case).
    """
    qmax = max(params.primes[:level])
    special = params.all_primes[-1]
    return math.log2(level * params.n * CBD_ETA * qmax / special + (params.n + 1) / 2)


def select_noise_log2(params: HEParams, e: int, lam: int, db: int, hb: int, w_bits: int, level):
    """log2 of the worst-case noise of one returned coefficient before flooding.

    Expanded constants: 2^λ·(η + 2 + B_ks). Selected weights:
    F ≤ E·d_b·h_b·2^(w_bits−1)·(B_t + 1). Tensor with the BGV input (message |x̂| < 2^63, noise
    2^ℓ·g, |g| ≤ η + 2): F·x̂ + 2^ℓ·F·g ≤ F·2^ℓ·(N·(η + 2) + d_b). Plus relinearization.
    """
    ks = 2.0 ** keyswitch_noise_log2(params, level)
    bt = 2.0**lam * (CBD_ETA + 2 + ks)
    f = e * db * hb * 2.0 ** (w_bits - 1) * (bt + 1)
    total = f * 2.0**params.plain_bits * (params.n * (CBD_ETA + 2) + db) + ks
    return math.log2(total)


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
    """The block sizes (d_b, h_b, d_b·h_b ≤ N) minimizing the bytes on the wire (flooding for
    2^κ returned coefficients per key, κ = ``union_bits``)."""
    hs = tuple(int(h) for h in hs)
    if min(t, e, d, *hs) < 1 or t * e > params.n:
        raise ValueError("selection shapes must be positive with T·E ≤ N")
    n = params.n
    lam = max(1, (t * e - 1).bit_length())
    hmax = max(hs)
    best = None
    for db in block_candidates(d, n):
        cap = min(hmax, n // db)
        hb = -(-hmax // -(-hmax // cap))
        level = None
        for lv in range(params.out_primes, len(params.primes) + 1):
            try:
                bound = select_noise_log2(params, e, lam, db, hb, w_bits, lv)
                noise = plan_noise(params, bound, union_bits=union_bits)
            except ValueError:
                continue
            if noise.level <= lv:
                level = lv
                break
        if level is None:
            continue
        nb = -(-d // db)
        n_out = t * sum(-(-h // hb) for h in hs)
        in_bytes = n * sum(params.byte_widths[:level])
        bits = plan_return_bits(params, noise.beta, level, n_out * n, t * sum(hs))
        cost = (1 + t * nb) * in_bytes + ret_bytes(bits, n_out, n, t * sum(hs))
        key = (cost, nb * n_out)
        if best is None or key < best[0]:
            best = (key, db, hb, level, noise.beta)
    if best is None:
        raise ValueError(f"{params.name}: no packing fits the selection noise (E={e})")
    _k, db, hb, level, beta = best
    token = MatmulPlan(params.name, n, 1, d, hs, 1, db, hb, w_bits, level, beta)
    return SelectPlan(t, e, token)


@dataclass
class SelectWeights:
    """The server's expert weights in the per-token layout: ``polys[j][m]`` is (nb, nc, N).

    As in :class:`~secmoe.protocols.he_linear.EncodedWeights`, zero blocks cost the same work
    as any other unless ``skip_zero_blocks`` (an operator option that LEAKS, through the
    server's timing, which blocks of the experts' weights are zero).
    """

    plan: SelectPlan
    polys: list[list[np.ndarray]]
    skip_zero_blocks: bool = False


def encode_select_weights(
    weights: Sequence[Sequence[np.ndarray]], plan: SelectPlan, *, skip_zero_blocks: bool = False
) -> SelectWeights:
    """Lay out ``weights[j][m]`` (expert j, matrix m, d×h_m signed) for ``plan`` (setup)."""
    tok = plan.token
    if len(weights) != plan.e:
        raise ValueError(f"plan has {plan.e} experts, got {len(weights)}")
    polys = []
    for ws in weights:
        if len(ws) != len(tok.hs):
            raise ValueError(f"each expert needs {len(tok.hs)} matrices")
        row = []
        for m, w in enumerate(ws):
            w = np.asarray(w, dtype=np.int64)
            if w.shape != (tok.d, tok.hs[m]):
                raise ValueError(f"weight shape {w.shape}, expected {(tok.d, tok.hs[m])}")
            if w.size and int(np.abs(w).max()) >= 1 << (tok.w_bits - 1):
                raise ValueError(f"weights exceed the public bound 2^{tok.w_bits - 1}")
            row.append(layout_w(w, tok, m))
        polys.append(row)
    return SelectWeights(plan, polys, skip_zero_blocks)


# --- local steps ----------------------------------------------------------------------------


def _onehot_poly(t_sh: np.ndarray, plan: SelectPlan) -> np.ndarray:
    m = np.zeros((1, plan.n), dtype=U64)
    m[0, : plan.t * plan.e] = np.asarray(t_sh, dtype=U64).reshape(-1)
    return m


def _x_polys(x: np.ndarray, plan: SelectPlan) -> np.ndarray:
    return np.concatenate([layout_x(x[k : k + 1], plan.token) for k in range(plan.t)])


def step_client_encrypt(he: ClientHE, t_c: np.ndarray, x_c: np.ndarray, plan: SelectPlan, prg):
    """(seed_t, c0_t, seed_x, c0_x) packed for the wire."""
    sk, lv = he.sk, plan.level
    bits = he.ctx.params.plain_bits + plan.lam
    seed_t, c0_t = sk.encrypt(_onehot_poly(t_c, plan), prg, scale_bits=bits, level=lv)
    seed_x, c0_x = sk.encrypt(_x_polys(x_c, plan), prg, encoding="bgv", level=lv)
    return seed_t, pack_fresh(he.ctx, c0_t, lv), seed_x, pack_fresh(he.ctx, c0_x, lv)


def _children(he: ServerHE, c, j: int, mono_pt, odd: bool, last: bool) -> tuple:
    """One expansion step on c (coefficient form; consumed): (c + σ(c), (c − σ(c))·X^(−2^j)
    or None), in NTT form at the last level."""
    ev = he.ctx.evaluator
    sig = sealapi.Ciphertext(he.ctx.seal)
    ev.apply_galois(c, he.ctx.n // (1 << j) + 1, he.galois, sig)
    o = None
    if odd:
        o = sealapi.Ciphertext(he.ctx.seal)
        ev.sub(c, sig, o)
        ev.transform_to_ntt_inplace(o)
        ev.multiply_plain_inplace(o, mono_pt)
        if not last:
            ev.transform_from_ntt_inplace(o)
    ev.add_inplace(c, sig)
    if last:
        ev.transform_to_ntt_inplace(c)
    return c, o


def _monomials(he: ServerHE, plan: SelectPlan) -> list[sealapi.Plaintext]:
    """X^(−2^j) = −X^(N−2^j) as NTT plaintexts, j < λ (checking the Galois keys)."""
    n, out = he.ctx.n, []
    for j in range(plan.lam):
        if n // (1 << j) + 1 not in he.galois_elements:
            raise HEError(f"missing Galois key for element {n // (1 << j) + 1}")
        mono = np.zeros(n, dtype=np.int64)
        mono[n - (1 << j)] = -1
        out.append(he.ctx.plain_small(mono, plan.level))
    return out


def _expand(he: ServerHE, ct: sealapi.Ciphertext, plan: SelectPlan) -> list[sealapi.Ciphertext]:
    """SealPIR expansion: ct of Σ_i m_i X^i → [ct of 2^λ·m_i] (i < T·E), NTT form, breadth
    first (all T·E at once; parents are dropped as their children appear; children with no
    index below T·E are not computed)."""
    want, monos = plan.t * plan.e, _monomials(he, plan)
    cts: list = [ct]
    for j in range(plan.lam):
        half = len(cts)
        new: list = [None] * min(2 * half, want)
        for i in range(half):
            c, cts[i] = cts[i], None
            last = j == plan.lam - 1
            new[i], odd = _children(he, c, j, monos[j], i + half < len(new), last)
            if odd is not None:
                new[i + half] = odd
        cts = new
    return cts


def _expand_depth_first(he: ServerHE, ct: sealapi.Ciphertext, plan: SelectPlan) -> Iterator:
    """The same expansion, depth first: yields (i, ct of 2^λ·m_i) holding ≤ λ + 1 ciphertexts."""
    want, monos = plan.t * plan.e, _monomials(he, plan)
    stack = [(ct, 0, 0)]
    while stack:
        c, j, i = stack.pop()
        if j == plan.lam:
            yield i, c
            continue
        even, odd = _children(he, c, j, monos[j], i + (1 << j) < want, j == plan.lam - 1)
        if odd is not None:
            stack.append((odd, j + 1, i + (1 << j)))
        stack.append((even, j + 1, i))


def _select(ctx, weights: SelectWeights, leaves, blocks, tmp, keep: bool) -> tuple[dict, dict]:
    """Step 3 over ``leaves`` ((k, j, [[t_kj]]) in any order) for ``blocks`` ((m, c, b)):
    ({(k, m, c, b): [[Σ_j t_kj·Ŵ_j,m[b, c]]]}, {k: [[t_k0]]}). Each plaintext is converted
    once while consecutive leaves share it (all of them kept if ``keep``); zero blocks are
    multiplied (by the constant 1) and discarded unless ``skip_zero_blocks``."""
    lv, e = weights.plan.level, weights.plan.e
    dummy, discarded = dummy_plain(ctx, lv), None
    wsel: dict = {}
    first: dict = {}
    pts: dict = {}
    for i, tct in leaves:
        k, j = divmod(i, e)
        if j == 0:
            first[k] = tct
        for m, c, b in blocks:
            poly = weights.polys[j][m][b, c]
            zero = not poly.any()
            if zero and weights.skip_zero_blocks:
                continue
            pt = pts.get((j, m, c, b))
            if pt is None:
                if not keep:
                    pts.clear()
                pt = pts[(j, m, c, b)] = ctx.plain_small(poly, lv)  # even if zero (same time)
            if zero:
                discarded = mul_acc(ctx, tct, dummy, discarded, tmp)
            else:
                wsel[(k, m, c, b)] = mul_acc(ctx, tct, pt, wsel.get((k, m, c, b)), tmp)
    return wsel, first


def step_server_eval(
    he: ServerHE,
    weights: SelectWeights,
    t_s: np.ndarray,
    x_s: np.ndarray,
    msg: dict,
    prg: PRG,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict]:
    """Server's work: its shares (one T×h_m per matrix), packed c1, c0 and timings.

    When the experts have fewer weight blocks than the selection has one-hot entries
    (E·n_blocks + T·n_blocks < T·E, small d), the expansion runs depth first and each
    expanded constant is used at once, so the T·E ciphertexts never coexist.
    """
    ctx, ev = he.ctx, he.ctx.evaluator
    plan, tok = weights.plan, weights.plan.token
    lv, primes, n = plan.level, ctx.primes[: plan.level], ctx.n
    nb, t, e = tok.nb, plan.t, plan.e
    outs = [(m, c) for m in range(len(tok.hs)) for c in range(tok.nc(m))]
    fused = (e + t) * nb * len(outs) < t * e
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    # Step 2a: [[t]] = [[t_c]] + t_s, expanded into T·E constants.
    bits = ctx.params.plain_bits + plan.lam
    c0_t = unpack_fresh(ctx, msg["c0_t"], 1, lv)
    c0_t = add_rns(
        c0_t, ctx.ntt(encode_scaled_exact(_onehot_poly(t_s, plan), primes, bits)), primes
    )
    a_t = expand_a(bytes(msg["seed_t"]), 1, primes, n)
    ct_t = ctx.import_ct(np.concatenate([c0_t, a_t]), ntt=True)
    ev.transform_from_ntt_inplace(ct_t)
    tcts = [] if fused else _expand(he, ct_t, plan)
    times["expand"] = time.perf_counter() - t0
    # Step 2b: [[x]] = [[x_c]] + x_s (BGV: the share is added unscaled), as NTT plaintexts.
    c0_x = unpack_fresh(ctx, msg["c0_x"], plan.n_x, lv)
    xs = np.moveaxis(centered_to_rns(_x_polys(x_s, plan), primes), 0, 1)
    c0_x = add_rns(c0_x, ctx.ntt(xs), primes)
    a_x = expand_a(bytes(msg["seed_x"]), plan.n_x, primes, n)
    x0 = [ctx.plain_from_ntt(c0_x[i]) for i in range(plan.n_x)]
    x1 = [ctx.plain_from_ntt(a_x[i]) for i in range(plan.n_x)]
    packer = ReturnPacker(ctx, he.pk, tok.beta)
    results: dict[tuple[int, int, int], tuple] = {}
    tmp = sealapi.Ciphertext(ctx.seal)
    discarded = None
    t_sel = t_ten = t_fin = 0.0
    if fused:  # expansion and selection for every block at once
        s0 = time.perf_counter()
        blocks = [(m, c, b) for m, c in outs for b in range(nb)]
        leaves = _expand_depth_first(he, ct_t, plan)
        wsel_all, first = _select(ctx, weights, leaves, blocks, tmp, keep=True)
        t_sel += time.perf_counter() - s0
    # Steps 3-5 per output block (m, c), for all tokens at once.
    for m, c in outs:
        acc_a: list = [None] * t
        acc_b: list = [None] * t
        for b in range(nb):
            s0 = time.perf_counter()
            if not fused:
                leaves = ((k * e + j, tcts[k * e + j]) for j in range(e) for k in range(t))
                wsel_all, first = _select(ctx, weights, leaves, [(m, c, b)], tmp, keep=False)
            wsel = [wsel_all.pop((k, m, c, b), None) for k in range(t)]
            s1 = time.perf_counter()
            for k in range(t):  # tensor: (W0, W1) ⊗ (x0, x1), accumulated as A and B
                if wsel[k] is None and weights.skip_zero_blocks:
                    continue
                for acc, xp in ((acc_a, x0), (acc_b, x1)):
                    if wsel[k] is None:  # the block is zero in every expert
                        discarded = mul_acc(ctx, first[k], xp[k * nb + b], discarded, tmp)
                    else:
                        acc[k] = mul_acc(ctx, wsel[k], xp[k * nb + b], acc[k], tmp)
            t_sel += s1 - s0
            t_ten += time.perf_counter() - s1
        s2 = time.perf_counter()
        hc = min(tok.hb, tok.hs[m] - c * tok.hb)
        pos = tok.positions(1, hc)
        for k in range(t):
            ct = None
            if acc_a[k] is not None:  # (a0, a1, 0) + (0, b0, b1), in SEAL but for B
                ct, cb = acc_a[k], ctx.export_ct(acc_b[k])
                ct.resize(3)
                ev.add_inplace(
                    ct, ctx.import_ct(np.concatenate([np.zeros_like(cb[:1]), cb]), ntt=True)
                )
                ev.transform_from_ntt_inplace(ct)
                ev.relinearize_inplace(ct, he.relin)
            results[(k, m, c)] = packer.finish(ct, pos, prg, lv)
        t_fin += time.perf_counter() - s2
    times.update(select=t_sel, tensor=t_ten, finish=t_fin)
    # Output order: token-major, then the token plan's (m, c) order.
    shares = [np.zeros((t, h), dtype=U64) for h in tok.hs]
    c1s, c0s = [], []
    for k in range(t):
        for m, _r, c, _tr, hc in tok.outputs():
            rmask, c1, c0p = results[(k, m, c)]
            c1s.append(c1)
            c0s.append(c0p)
            shares[m][k, c * tok.hb : c * tok.hb + hc] = U64(0) - rmask
    c1b, c0b = pack_results(he, tok, np.stack(c1s), np.concatenate(c0s, axis=1))
    times["server_total"] = time.perf_counter() - t0
    return shares, c1b, c0b, times


# --- the protocol ---------------------------------------------------------------------------


def _check_inputs(t_sh, x_sh, plan: SelectPlan, ring: Ring):
    t_sh = ring.reduce(np.asarray(t_sh, dtype=U64))
    x_sh = ring.reduce(np.asarray(x_sh, dtype=U64))
    if t_sh.shape != (plan.t, plan.e) or x_sh.shape != (plan.t, plan.token.d):
        raise ValueError(
            f"one-hot {t_sh.shape} and input {x_sh.shape} do not match the plan "
            f"{(plan.t, plan.e)}, {(plan.t, plan.token.d)}"
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
    per_tok = await asyncio.to_thread(
        step_client_decrypt, he, plan.token, reply["c1"], reply["c0"], plan.t
    )
    return [ring.reduce(np.concatenate([p[m] for p in per_tok])) for m in range(len(plan.token.hs))]


async def select_server(
    ch: Channel,
    he: ServerHE,
    t_s: np.ndarray,
    x_s: np.ndarray,
    weights: SelectWeights,
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
    c2s = {
        "plan": plan.wire(),
        "seed_t": bytes(16),
        "c0_t": np.zeros((1, w_in), dtype=np.uint8),
        "seed_x": bytes(16),
        "c0_x": np.zeros((plan.n_x, w_in), dtype=np.uint8),
    }
    s2c = returned_shapes(plan.token, plan.t)
    return {
        "bytes_c2s": encoded_size(c2s),
        "bytes_s2c": encoded_size(s2c),
        "rounds": 2,
        "messages": 2,
    }


async def setup_select_client(ch: Channel, prg: PRG, plan: SelectPlan) -> ClientHE:
    """HE setup with the keys encrypted selection needs (public, relinearization, Galois)."""
    params = params_for(plan.params)
    galois = expansion_galois_elements(params.n, plan.t * plan.e)
    return await setup_client(ch, prg, params, relin=True, galois=galois)


async def setup_select_server(ch: Channel, plan: SelectPlan) -> ServerHE:
    """Server side of :func:`setup_select_client`."""
    params = params_for(plan.params)
    galois = expansion_galois_elements(params.n, plan.t * plan.e)
    return await setup_server(ch, params, relin=True, galois=galois)

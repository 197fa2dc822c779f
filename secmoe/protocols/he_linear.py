"""Shared input × server weights, ``<Y> = <X>·W``, with BFV coefficient encoding.

**What it computes.** X (T×d) is additively shared over Z_{2^ℓ} (client X_c, server X_s); the
server holds plaintext weight matrices W_1..W_M (d×h_m, signed fixed-point integers with
|W| < 2^(w_bits−1)), all multiplied by the same X in one call (Q/K/V, or all experts). Both
parties end with fresh additive shares of X·W_m mod 2^ℓ, exactly (t = 2^ℓ, see
:mod:`secmoe.crypto.he_params`).

**Who learns what.** The server sees only ciphertexts under the client's key (RLWE, 128-bit).
The client decrypts Y_m + R_m with R_m uniform in Z_{2^ℓ} from the server's PRG, and ciphertexts
whose c1 is re-randomized with the public key and whose noise at every decryptable coefficient
is flooded (statistical distance ≤ 2^−40 from noise independent of W, see
:mod:`secmoe.crypto.he_params`; the flood covers the packing's key switches too); it learns
nothing about W beyond the public shapes and the public bound w_bits. The plan (blocks,
stride, packing depth) is a public function of the shapes.

**REF.** Cheetah (Huang, Lu, Hong, Ding; USENIX Security 2022, eprint 2022/207), §3.1
coefficient encoding of matrix products; BumbleBee (Lu et al., NDSS 2025, eprint 2023/1678) for
the output side (only the needed coefficients of c0 are returned, sparse products packed into
few ciphertexts with PackLWEs, Chen–Dai–Kim–Song eprint 2020/015). Noise flooding: Gentry's
thesis / the smudging lemma.

**Packing** (:mod:`secmoe.protocols.he_common`). X is cut into T_b×d_b blocks and each W_m
into d_b×h_b blocks; each product (one row block × one column block) holds its T_b·h_b outputs
at the multiples of a stride S ≥ d_b. When S is a power of two, the server merges 2^p
products into one returned ciphertext (:class:`~secmoe.protocols.he_common.ProductPacker`,
one Galois automorphism per merge, with keys sent once in setup). :func:`plan_matmul` picks
the blocks, S and p that minimize the bytes plus a small charge per automorphism. At T = 8
(Switch-Base, w_bits = 24) the client's input fills fewer, denser ciphertexts and the server
returns 1–3 ciphertexts instead of 37–77.

**Message flow** (one round trip)::

    client                                           server (setup: ŵ encoded, NTT, cached)
      x̂ ← layout(X_c); c0 = NTT(Δ·x̂ + e) − a·s
      ── he/mm/x: plan, seed(a), c0 [n_in × N] ──▶    ct ← (c0 + NTT(Δ·x̂_s), a)   (X = X_c+X_s)
                                                      y ← Σ_b ct_b · ŵ_{b,c}        (NTT domain)
                                                      y ← pack 2^p products (automorphisms)
                                                      y ← y + u·pk + (e1 + Δ·R + flood, e2)
                                                      y ← modswitch(y, q_L), low bits cut
      ◀── he/mm/y: c1 [n_out × N], c0 at outputs ──
      Y_c = decrypt = X·W + R                         Y_s = −R

**Cost.** c2s: n_in·N·B_in + 16 bytes (only c0; a = c1 travels as its 16-byte seed); s2c:
n_out·⌈N·b1/8⌉ + ⌈T·Σh_m·b0/8⌉ bytes, with n_in = ⌈T/T_b⌉⌈d/d_b⌉,
n_out = ⌈⌈T/T_b⌉·Σ_m⌈h_m/h_b⌉ / 2^p⌉, B_in = Σ bytes of the input level's primes (22 for
``HE_8K``'s top level), and b1, b0 the bits of each returned c1 and c0 coefficient that
decryption needs (:func:`~secmoe.crypto.he_params.plan_return_bits`: about 75 and 66 of q_L's
80 at ``HE_8K``); plus the codec's framing (:func:`matmul_cost` is exact). Two flights (one
round trip). Server work: n_in·Σ⌈h_m/h_b⌉ plaintext products in the NTT domain and
⌈T/T_b⌉·Σ_m⌈h_m/h_b⌉ − n_out key switches. Setup: the Galois keys of
:func:`~secmoe.protocols.he_setup.packing_galois_elements` (10 at ``HE_8K``, 1.06 MB each).

**Scale-out** (:mod:`secmoe.distributed`). The products of a plan and their packing tree split
into subtrees of 2^k products (units, :func:`linear_units`): a worker holding the weight
blocks of its units' columns (:func:`encode_shard`) computes their products and packs each
unit (:func:`~secmoe.protocols.he_common.pack_products`); the server (the coordinator) sends
every worker the client's ciphertexts with its share added, once, joins each returned group's
units (the upper 2^(p−k) levels of the same tree, :meth:`ProductPacker.join`) and masks,
floods and switches as above. Every step is exact arithmetic mod q and the tree is the same
wherever its nodes are computed, so the reply is the same bit for bit, and the server's
randomness comes from its PRG in the same order: the wire does not change with the workers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import tenseal.sealapi as sealapi

from ..crypto.he import HEContext, HEError
from ..crypto.he_params import params_for
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING, Ring
from ..net import Channel
from .he_common import (
    EncodedWeights,
    MatmulPlan,
    ProductPacker,
    check_context,
    encode_weights,
    encoded_size,
    pack_results,
    plan_matmul,
    returned_shapes,
    server_inputs,
    step_client_decrypt,
    step_client_encrypt,
    step_server_eval,
    step_server_finish,
)
from .he_setup import ClientHE, ServerHE

__all__ = [
    "EncodedWeights",
    "LinearWorkers",
    "MatmulPlan",
    "ShardedWeights",
    "encode_shard",
    "encode_weights",
    "ideal_matmul",
    "linear_units",
    "matmul_client",
    "matmul_cost",
    "matmul_server",
    "plan_matmul",
]

U64 = np.uint64


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
    check_context(he.ctx, plan)
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
    weights: EncodedWeights | ShardedWeights,
    prg: PRG,
    *,
    ring: Ring = DEFAULT_RING,
    timings: dict | None = None,
) -> list[np.ndarray]:
    """Server side of ``<Y_m> = <X>·W_m``: returns its shares −R_m. With
    :class:`ShardedWeights` the products and most of the packing run on the workers holding
    the weights (the same reply, see the module's docstring). ``timings`` (if given): its
    ``cpu`` grows by this process's CPU seconds in the product (the workers' not counted)."""
    plan = weights.plan
    check_context(he.ctx, plan)
    x_s = ring.reduce(np.asarray(x_s, dtype=U64))
    if x_s.shape != (plan.t, plan.d):
        raise ValueError(f"X has shape {x_s.shape}, plan expects {(plan.t, plan.d)}")
    msg = await ch.recv(tag="he/mm/x")
    _check_plan(msg["plan"], plan)

    def work():
        cpu = time.thread_time()
        inputs = server_inputs(he, plan, bytes(msg["seed"]), np.asarray(msg["c0"]), [x_s])
        if isinstance(weights, ShardedWeights):
            groups = _joined(he, weights, inputs)
            shares, c1, c0 = step_server_finish(he, plan, groups, prg)
        else:
            cts = [he.ctx.import_ct(r, ntt=True) for r in inputs]
            shares, c1, c0 = step_server_eval(he, weights, cts, prg)
        return shares, *pack_results(he, plan, c1, c0), time.thread_time() - cpu

    shares, c1b, c0b, cpu = await asyncio.to_thread(work)
    if timings is not None:  # here, in the event loop: products run side by side in threads
        timings["cpu"] = timings.get("cpu", 0.0) + cpu
    await ch.send({"c1": c1b, "c0": c0b}, tag="he/mm/y")
    return [ring.reduce(s) for s in shares]


# --- scale-out: the products on workers ------------------------------------------------------


def linear_units(plan: MatmulPlan, workers: int) -> tuple[int, list[tuple[int, int]]]:
    """How ``workers`` workers share the products of ``plan``: units of 2^k consecutive
    products (wire order; k ≤ ``plan.pack``, so a unit is a subtree of one returned group's
    packing tree), worker w taking products [lo_w, hi_w) (contiguous whole units, as even as
    whole units allow; empty for a worker left without one). Returns (k, [(lo_w, hi_w)]).

    k minimizes the busiest worker's products plus the merges left to the coordinator (units
    − returned ciphertexts; each merge is one automorphism, about a product's work), the
    larger k on ties (fewer, bigger messages)."""
    if workers < 1:
        raise ValueError(f"a product needs at least one worker, got {workers}")
    n = plan.n_leaves

    def cost(k: int) -> tuple[int, int]:
        units = -(-n // (1 << k))
        return min(-(-units // workers) << k, n) + units - plan.n_out, -k

    k = min(range(plan.pack + 1), key=cost)
    units = -(-n // (1 << k))
    bounds = [min((w * units // workers) << k, n) for w in range(workers + 1)]
    return k, list(itertools.pairwise(bounds))


def encode_shard(
    ctx: HEContext,
    weights: Sequence[np.ndarray],
    plan: MatmulPlan,
    lo: int,
    hi: int,
    *,
    skip_zero_blocks: bool = False,
    public_zero: Sequence[np.ndarray] | None = None,
) -> EncodedWeights:
    """A worker's share of :func:`encode_weights`: the NTT plaintexts of the weight blocks
    (every row block b) of the columns (m, c) that products [lo, hi) use; the other blocks
    are not encoded (None: never used by this worker)."""
    enc = encode_weights(
        ctx,
        weights,
        plan,
        cache="blocks",
        skip_zero_blocks=skip_zero_blocks,
        public_zero=public_zero,
    )
    cols = {(m, c) for m, _r, c, _tr, _hc in itertools.islice(plan.outputs(), lo, hi)}
    enc.plains = [
        [
            [enc.plain(ctx, m, b, c) if (m, c) in cols else None for c in range(plan.nc(m))]
            for b in range(plan.nb)
        ]
        for m in range(len(plan.hs))
    ]
    return enc


@dataclass
class ShardedWeights:
    """The server's handle on a product's weights held by workers (:mod:`secmoe.distributed`):
    no weights, only the plan, the units' height k (:func:`linear_units`) and ``parts``, which
    given the client's ciphertexts with the server's share added (residues (n_in, 2, L, N),
    NTT form) yields every unit's packed ciphertext in order (residues (2, L, N); coefficient
    form, or NTT form for unpacked plans (pack = 0): the product itself; None: zero)."""

    plan: MatmulPlan
    height: int
    parts: Callable[[np.ndarray], Iterator[np.ndarray | None]]


class LinearWorkers(Protocol):
    """Where the server's weights live when it scales out (a session's view of a
    :class:`secmoe.distributed.ExpertPool`): ``prepare_linear`` gives each worker its units'
    weight blocks (``weights()``: the signed integer matrices, as :func:`encode_weights`
    takes them) and returns the handle."""

    def prepare_linear(
        self,
        key: tuple,
        plan: MatmulPlan,
        weights: Callable[[], list[np.ndarray]],
        skip: bool,
        public_zero: list[np.ndarray] | None,
    ) -> ShardedWeights: ...


def _joined(
    he: ServerHE, weights: ShardedWeights, inputs: np.ndarray
) -> Iterator[sealapi.Ciphertext | None]:
    """Each returned group's ciphertext from the workers' units (:meth:`ProductPacker.join`)."""
    plan, ctx = weights.plan, he.ctx
    units = weights.parts(inputs)
    packer = ProductPacker(he, plan) if plan.pack else None
    per_group = 1 << (plan.pack - weights.height)
    for _ in range(plan.n_out):
        cts = [
            None if a is None else ctx.import_ct(a, ntt=packer is None)
            for a in itertools.islice(units, per_group)
        ]
        yield cts[0] if packer is None else packer.join(cts, weights.height)


def ideal_matmul(
    x_c: np.ndarray, x_s: np.ndarray, weights: Sequence[np.ndarray], ring: Ring = DEFAULT_RING
) -> list[np.ndarray]:
    """Plaintext reference: (X_c + X_s)·W_m mod 2^ℓ for each m (weights signed or ring)."""
    x = ring.reduce(np.asarray(x_c, dtype=U64) + np.asarray(x_s, dtype=U64))
    return [ring.reduce(x @ np.asarray(w).astype(np.int64).astype(U64)) for w in weights]


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

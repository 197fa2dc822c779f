"""Linear algebra on shares: the server's weights meet the client's data (HE).

- :func:`linear`: shares of trunc(X·W) for shared X (…, d) and the server's float weights W
  (d, h), encoded at f fractional bits exactly as :class:`secmoe.model.fixed.FixedOps` does.
  The product is the BFV protocol of :mod:`secmoe.protocols.he_linear` (coefficient packing,
  no rotations, noise flooding); then one truncation.
- :func:`linear_fused`: several weights W_m multiplied by the same X in one product (the
  client's X is encrypted once): attention's q, k and v.
- :func:`linear_batched`: M products X_m·W_m with their own inputs, concurrently.
- :func:`matmul`: shares of A·B for shared A (…, m, k) and B (…, k, n) (attention's QKᵀ and
  PV), by the two HE cross products of :mod:`secmoe.protocols.he_secret`.
- :func:`matmul_01`: the same when A's entries are 0 or 1 (MoE one-hots, dispatch tensors):
  exact, by MUXes or by :func:`matmul`, whichever declares fewer bytes for the shapes.
- :func:`select_linear`: shares of x_t·W_{r_t} for each token t, where r_t is given by a
  secret one-hot and the server holds every expert's W: the paper's encrypted selection
  (:mod:`secmoe.protocols.he_select`); bytes do not grow with E, the server's work does.

The server's weights are encoded once, explicitly, by :func:`prepare` in the ``setup`` phase
(cached per stored weight and row count; with ``HEState.pool``, on the server's workers, which
then compute the products: :mod:`secmoe.distributed`). A product whose row count is only known
online (the INSECURE ``reveal`` MoE strategy, where each expert gets the tokens routed to it)
encodes its weight when first used, and that time is part of the run.

Who learns what: the client decrypts only masked, noise-flooded results; the server sees only
ciphertexts. Public: the shapes and the weight bound ``W_BITS`` (|encoded W| < 2^(W_BITS−1)).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..crypto.he import FloodBudget
from ..crypto.he_params import FLOOD_UNION_BITS, HE_8K, HE_16K, HEParams
from ..crypto.ring import DEFAULT_RING, Ring
from ..protocols import arith
from ..protocols.boolean import bits_of_01, cost_mux, mux
from ..protocols.he_linear import (
    EncodedWeights,
    LinearWorkers,
    ShardedWeights,
    encode_weights,
    matmul_client,
    matmul_server,
    plan_matmul,
)
from ..protocols.he_secret import (
    block_diagonal_zero,
    plan_secret_matmul,
    secret_matmul_client,
    secret_matmul_cost,
    secret_matmul_server,
)
from ..protocols.he_select import (
    ExpertWorkers,
    SelectWeights,
    ShardedSelect,
    encode_select_weights,
    plan_select,
    select_client,
    select_server,
)
from ..protocols.he_setup import (
    ClientHE,
    ServerHE,
    expansion_galois_elements,
    setup_client,
    setup_server,
)
from ..protocols.party import Party

#: The server's default memory budget for cached weight plaintexts (4 GiB).
DEFAULT_CACHE_BUDGET = 4 << 30
#: Public bound on encoded weights: |round(W·2^f)| < 2^(W_BITS−1), i.e. |W| < 2^5 at f = 18.
W_BITS = 24


class ServerWorkers(ExpertWorkers, LinearWorkers, Protocol):
    """The server's workers (a session's view of a :class:`secmoe.distributed.ExpertPool`):
    they hold the experts of the encrypted selections and the weight blocks of the
    plain-weight products, and compute on them."""


@dataclass
class HEState:
    """A party's HE state, per parameter set: its keys (client) or the client's public keys
    (server); and the server's cache of encoded weights."""

    keys: dict[str, ClientHE | ServerHE]
    encoded: dict[tuple, EncodedWeights | ShardedWeights] = field(default_factory=dict)
    selects: dict[tuple, SelectWeights | ShardedSelect] = field(default_factory=dict)
    #: Server: bytes of NTT plaintexts the weight cache may hold; past it, weight blocks are
    #: encoded on use (less memory, more online time — counted in the run).
    cache_budget: int = DEFAULT_CACHE_BUDGET
    #: κ: every product's flooding covers 2^κ returned coefficients per key (both parties
    #: plan with it; the server's keys refuse to return more, see :class:`FloodBudget`).
    union_bits: int = FLOOD_UNION_BITS
    #: Server: skip all-zero weight blocks (faster on sparse weights; its timing then LEAKS
    #: which blocks are zero). Off: zero blocks cost the same work as any other.
    skip_zero_blocks: bool = False
    #: Server: the workers holding the experts of the encrypted selections and the weight
    #: blocks of the plain-weight products, which they compute (:mod:`secmoe.distributed`);
    #: None: this process holds and computes them.
    pool: ServerWorkers | None = None
    #: Server: seconds of the encrypted selections' steps, summed over the session's calls
    #: (``products``: expansion, selection and tensor, here or on the workers; ``finish``).
    select_seconds: dict[str, float] = field(default_factory=dict)
    #: Server: ``cpu``, this process's CPU seconds in the plain-weight HE products (all of
    #: their work without workers; with them, the coordinator's share), summed over the calls.
    linear_seconds: dict[str, float] = field(default_factory=dict)

    def client(self, params: HEParams) -> ClientHE:
        he = self.keys[params.name]
        assert isinstance(he, ClientHE)
        return he

    def server(self, params: HEParams) -> ServerHE:
        he = self.keys[params.name]
        assert isinstance(he, ServerHE)
        return he


#: The parameter sets a session sets up: plaintext weights (N = 8192) and secret × secret
#: products, whose 64-bit "weights" need a larger flood (N = 16384).
SESSION_PARAMS = (HE_8K, HE_16K)


async def setup_he(
    p: Party,
    params: tuple[HEParams, ...] = SESSION_PARAMS,
    select_items: int = 0,
    union_bits: int = FLOOD_UNION_BITS,
) -> Party:
    """The party with HE keys for each parameter set (``setup`` phase, concurrently): the
    client generates them and sends the public part. ``select_items``: the largest T·E of an
    encrypted selection to come (0: none), for which the N = 16384 set also gets
    relinearization and Galois keys. ``union_bits``: κ, the log2 of the returned coefficients
    each key's flooding covers (both parties must pass the same; the server's keys enforce it).
    """

    async def one(pr: HEParams) -> ClientHE | ServerHE:
        ch = p.ch.fork(f"he_{pr.name}")
        extra = {}
        if select_items and pr is HE_16K:
            extra = {"relin": True, "galois": expansion_galois_elements(pr.n, select_items)}
        if p.role == "client":
            return await setup_client(ch, p.prg.derive(f"he/{pr.name}"), pr, **extra)
        return await setup_server(ch, pr, **extra)

    keys = await asyncio.gather(*(one(pr) for pr in params))
    for k in keys:
        if isinstance(k, ServerHE):
            k.pk.budget = FloodBudget(union_bits)
    state = HEState({pr.name: k for pr, k in zip(params, keys, strict=True)}, union_bits=union_bits)
    return Party(p.ch, p.prg, p.ring, p.ot, state)


def _state(p: Party) -> HEState:
    if not isinstance(p.he, HEState):
        raise RuntimeError("HE is not set up for this party: call setup_he in the setup phase")
    return p.he


def _key(w: np.ndarray, rows: int) -> tuple[int, tuple[int, ...], tuple[int, ...], int]:
    """Cache key: where the weight is stored (views of one stored weight share it), its shape
    and strides (a tied LM head is the embedding's transpose: same storage, maybe same shape)."""
    return (w.__array_interface__["data"][0], w.shape, w.strides, rows)


def prepare(
    p: Party, w: np.ndarray | Sequence[np.ndarray], rows: int
) -> EncodedWeights | ShardedWeights:
    """Server: encode the weight ``w`` (float, d×h), or several weights with the same d
    multiplied by the same X in one product (:func:`linear_fused`), for products with
    ``rows`` rows (setup); with ``HEState.pool``, each worker its share of the blocks."""
    st = _state(p)
    ws = [w] if isinstance(w, np.ndarray) else list(w)
    key = _fused_key(ws, rows)
    if key in st.encoded:
        return st.encoded[key]
    hs = [m.shape[1] for m in ws]
    plan = plan_matmul(rows, ws[0].shape[0], hs, HE_8K, w_bits=W_BITS, union_bits=st.union_bits)
    return _encode(st, key, lambda: [_int_weights(p, m) for m in ws], plan)


def _encode(
    st: HEState,
    key: tuple,
    ints: Callable[[], list[np.ndarray]],
    plan,
    public_zero: list | None = None,
) -> EncodedWeights | ShardedWeights:
    """Encode the integer weights ``ints()`` for ``plan`` into the cache under ``key``: NTT
    plaintexts while the budget lasts; with a pool, on its workers (``ints`` is kept, not
    its result, to send a restarted worker its share again)."""
    if st.pool is not None:
        st.encoded[key] = st.pool.prepare_linear(key, plan, ints, st.skip_zero_blocks, public_zero)
        return st.encoded[key]
    cache = "ntt" if plan.cache_bytes() <= st.cache_budget else "blocks"
    if cache == "ntt":
        st.cache_budget -= plan.cache_bytes()
    st.encoded[key] = encode_weights(
        st.server(HE_8K).ctx,
        ints(),
        plan,
        cache=cache,
        skip_zero_blocks=st.skip_zero_blocks,
        public_zero=public_zero,
    )
    return st.encoded[key]


def _fused_key(ws: Sequence[np.ndarray], rows: int) -> tuple:
    """Cache key of one weight (:func:`_key`) or of several multiplied together."""
    return _key(ws[0], rows) if len(ws) == 1 else tuple(_key(w, rows) for w in ws)


async def _product(
    p: Party, x: np.ndarray, ws: Sequence[np.ndarray] | None, hs: Sequence[int]
) -> list[np.ndarray]:
    """Shares of X·W_m,int (untruncated) for X (t, d), every W_m in one HE product."""
    st = _state(p)
    t, d = x.shape
    if p.role == "client":
        plan = plan_matmul(t, d, hs, HE_8K, w_bits=W_BITS, union_bits=st.union_bits)
        return await matmul_client(p.ch, st.client(HE_8K), x, plan, p.prg, ring=p.ring)
    shapes = [(d, h) for h in hs]
    if ws is None or [w.shape for w in ws] != shapes:
        got = None if ws is None else [w.shape for w in ws]
        raise ValueError(f"server weights of shapes {got}, expected {shapes}")
    enc = st.encoded.get(_fused_key(ws, t)) or prepare(p, ws, t)
    return await matmul_server(
        p.ch, st.server(HE_8K), x, enc, p.prg, ring=p.ring, timings=st.linear_seconds
    )


async def linear(p: Party, x: np.ndarray, w: np.ndarray | None, h: int) -> np.ndarray:
    """Shares of trunc(X·encode(W)) for shares X (…, d); the server passes W (d, h)."""
    (y,) = await linear_fused(p, x, None if w is None else [w], [h])
    return y


async def linear_fused(
    p: Party, x: np.ndarray, ws: Sequence[np.ndarray] | None, hs: Sequence[int]
) -> list[np.ndarray]:
    """Shares of trunc(X·encode(W_m)) for every m, for shares X (…, d): one HE product, so
    the client's X is encrypted and sent once (attention's q, k, v). The server passes the
    W_m (d, h_m), the client None."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    ys = await _product(p.fork("he"), flat, ws, hs)
    y = await arith.trunc(p.fork("trunc"), np.concatenate(ys, axis=1))
    return [c.reshape(*lead, -1) for c in np.split(y, np.cumsum(hs)[:-1], axis=1)]


async def linear_batched(
    p: Party, xs: np.ndarray, ws: np.ndarray | None, index: list[int], h: int
) -> np.ndarray:
    """Shares of trunc(X_i·W_{index[i]}) for xs (M, t, d); the server passes its stacked
    weights ws (E, d, h). The M products run concurrently on their own forks."""
    ys = await asyncio.gather(
        *(
            _product(p.fork(f"he{i}"), xs[i], None if ws is None else [ws[e]], [h])
            for i, e in enumerate(index)
        )
    )
    return await arith.trunc(p.fork("trunc"), np.stack([y for (y,) in ys]))


def _plan_bytes(p: Party, t: int, d: int, hs: Sequence[int]) -> int:
    """Ciphertext bytes (both ways) of one plain-weight HE product X (t, d) by W_m (d, h_m)."""
    plan = plan_matmul(t, d, list(hs), HE_8K, w_bits=W_BITS, union_bits=_state(p).union_bits)
    return sum(plan.ct_bytes())


def fused_is_cheaper(p: Party, t: int, d: int, hs: Sequence[int]) -> bool:
    """Whether one :func:`linear_fused` product of X (t, d) by every W_m (d, h_m) declares
    fewer bytes than one product per weight (public shapes: both parties decide alike)."""
    return _plan_bytes(p, t, d, hs) < sum(_plan_bytes(p, t, d, [h]) for h in hs)


def diagonal_is_cheaper(p: Party, m: int, t: int, d: int, h: int) -> bool:
    """Whether :func:`linear_diagonal` of m inputs (t, d) by m weights (d, h) declares fewer
    bytes than :func:`linear_batched`'s m products."""
    return _plan_bytes(p, t, m * d, [m * h]) < m * _plan_bytes(p, t, d, [h])


def _plan_diagonal(st: HEState, m: int, t: int, d: int, h: int):
    return plan_matmul(t, m * d, [m * h], HE_8K, w_bits=W_BITS, union_bits=st.union_bits)


def prepare_diagonal(p: Party, ws: np.ndarray, rows: int) -> EncodedWeights | ShardedWeights:
    """Server: encode diag(W_1, …, W_m) of the stacked weights ws (m, d, h) for
    :func:`linear_diagonal` with ``rows`` rows (setup). The blocks outside the diagonal, zero
    by this public structure, are neither encoded nor multiplied."""
    st = _state(p)
    key = ("diagonal", _key(ws, rows))
    if key in st.encoded:
        return st.encoded[key]
    m, d, h = ws.shape
    plan = _plan_diagonal(st, m, rows, d, h)

    def ints() -> list[np.ndarray]:
        encs = _int_weights(p, ws)
        diag = np.zeros((m * d, m * h), dtype=encs.dtype)
        for i in range(m):
            diag[i * d : (i + 1) * d, i * h : (i + 1) * h] = encs[i]
        return [diag]

    return _encode(st, key, ints, plan, public_zero=[block_diagonal_zero(plan, m)])


async def linear_diagonal(p: Party, xs: np.ndarray, ws: np.ndarray | None, h: int) -> np.ndarray:
    """Shares of trunc(X_i·W_i) for xs (m, t, d), as :func:`linear_batched` with every
    expert, in one HE product [X_1 | … | X_m]·diag(W_1, …, W_m): the client encrypts its m
    inputs together, the server returns m·t·h results in as few ciphertexts as they fill
    (a decoding step's m tiny products would each send a mostly empty ciphertext both ways).
    The server passes its stacked weights ws (m, d, h) (:func:`prepare_diagonal`)."""
    st = _state(p)
    m, t, d = xs.shape
    x = xs.transpose(1, 0, 2).reshape(t, m * d)
    f = p.fork("he")
    if p.role == "client":
        plan = _plan_diagonal(st, m, t, d, h)
        (y,) = await matmul_client(f.ch, st.client(HE_8K), x, plan, f.prg, ring=p.ring)
    else:
        if ws is None or ws.shape != (m, d, h):
            raise ValueError(f"server weights of shape {None if ws is None else ws.shape}")
        enc = st.encoded.get(("diagonal", _key(ws, t))) or prepare_diagonal(p, ws, t)
        (y,) = await matmul_server(
            f.ch, st.server(HE_8K), x, enc, f.prg, ring=p.ring, timings=st.linear_seconds
        )
    y = y.reshape(t, m, h).transpose(1, 0, 2)
    return await arith.trunc(p.fork("trunc"), y)


def _secret_he_bytes(heads: int, m: int, k: int, n: int, union_bits: int) -> int:
    """Declared bytes (both ways) of :func:`matmul`'s HE product of ``heads`` (m×k)·(k×n)."""
    plan = plan_secret_matmul(m, k, n, heads, HE_16K, union_bits=union_bits)
    he = secret_matmul_cost(plan)
    return he["bytes_c2s"] + he["bytes_s2c"]


def _heads(a_shape: tuple[int, ...]) -> tuple[int, int, int]:
    *lead, m, k = a_shape
    return (int(np.prod(lead, dtype=np.int64)) if lead else 1), m, k


def secret_product_by_ot(heads: int, m: int, k: int, n: int, ring: Ring = DEFAULT_RING) -> bool:
    """Whether :func:`matmul` computes ``heads`` products (m×k)·(k×n) by OT: for one row
    (m = 1: a decoding step's query over its cache, whose HE product would send mostly empty
    ciphertexts), when the k·n elementwise products' bytes with the default (silent) OT
    source — ℓ(ℓ+1) bits of correlations and 2ℓ choice bits each, 536 B at ℓ = 64 — are below
    the HE product's declared bytes (at the default κ). Passes of several rows keep HE, so
    their bytes are as before. A function of the public shapes only, so both parties and the
    flooding plan (:func:`secmoe.model.session.flood_demand`) agree. (With the IKNP source an
    OT product costs ~4.8× more than estimated here.)"""
    if m != 1:
        return False
    per_product = (ring.bits * (ring.bits + 1) + 2 * ring.bits) // 8
    return heads * k * n * per_product < _secret_he_bytes(heads, m, k, n, FLOOD_UNION_BITS)


async def matmul(p: Party, a: np.ndarray, b: np.ndarray, *, truncate: bool = True) -> np.ndarray:
    """Shares of A·B (batched over leading axes) for shared A (…, m, k), B (…, k, n).

    Two protocols computing the same exact product mod 2^ℓ, chosen by
    :func:`secret_product_by_ot` from the public shapes: the two HE cross products of
    :mod:`secmoe.protocols.he_secret` (fork ``he``; bytes grow with the ciphertexts), or m·k·n
    Gilboa products (:func:`secmoe.protocols.arith.mul`, fork ``ot``; 536 B each) summed
    over k. With ``truncate`` (fixed-point operands) the product is truncated by f;
    without it (one operand is 0/1, e.g. a one-hot or a dispatch tensor) it is exact.
    """
    st = _state(p)
    lead = a.shape[:-2]
    if b.shape[:-2] != lead or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shapes {a.shape} · {b.shape} do not match")
    heads, m, k = _heads(a.shape)
    n = b.shape[-1]
    a3, b3 = a.reshape(heads, m, k), b.reshape(heads, k, n)
    if secret_product_by_ot(heads, m, k, n, p.ring):
        prod = await arith.mul(p.fork("ot"), a3[..., None], b3[:, None])  # (heads, m, k, n)
        y = p.ring.reduce(prod.sum(axis=-2, dtype=np.uint64))
    else:
        plan = plan_secret_matmul(m, k, n, heads, HE_16K, union_bits=st.union_bits)
        f = p.fork("he")
        if p.role == "client":
            y = await secret_matmul_client(
                f.ch, st.client(HE_16K), a3, b3, plan, f.prg, ring=p.ring
            )
        else:
            y = await secret_matmul_server(
                f.ch, st.server(HE_16K), a3, b3, plan, f.prg, ring=p.ring
            )
    y = y.reshape(*lead, m, n)
    return await arith.trunc(p.fork("trunc"), y) if truncate else y


def matmul_01_uses_mux(p: Party, a_shape: tuple[int, ...], n: int) -> bool:
    """Whether :func:`matmul_01` of A (…, m, k) by B (…, k, n) takes the MUX protocol: its
    declared bytes are at most the HE product's (both parties decide alike: public shapes)."""
    heads, m, k = _heads(a_shape)
    muxes = cost_mux(p.ot, heads * m * k * n, p.ring.bits)
    return muxes.bytes_total <= _secret_he_bytes(heads, m, k, n, _state(p).union_bits)


async def matmul_01(p: Party, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shares of A·B (batched over leading axes) for shared A (…, m, k) whose entries are 0 or
    1 and shared B (…, k, n), exactly (no truncation).

    Two protocols, chosen by :func:`matmul_01_uses_mux` from the public shapes: m·k·n MUXes
    A[i, l]·B[l, j] summed over l (:func:`secmoe.protocols.boolean.mux`, 2 COTs each; the
    Boolean shares of a 0/1 value are its shares' low bits, free) — far fewer bytes for the
    small one-hot products of MoE routing (k = E entries, few tokens) —, or :func:`matmul`'s
    HE product, whose bytes grow with the ciphertexts rather than with m·k·n.
    """
    if b.shape[:-2] != a.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shapes {a.shape} · {b.shape} do not match")
    if not matmul_01_uses_mux(p, a.shape, b.shape[-1]):
        return await matmul(p, a, b, truncate=False)
    shape = (*a.shape, b.shape[-1])  # (…, m, k, n)
    bits = np.broadcast_to(bits_of_01(a)[..., None], shape)
    vals = np.broadcast_to(np.asarray(b, np.uint64)[..., None, :, :], shape)
    prod = await mux(p.fork("mux"), bits, vals)
    return p.ring.reduce(prod.sum(axis=-2, dtype=np.uint64))


#: One-hot entries (tokens × experts) per selection call. The server expands each into its own
#: ciphertext (~1.5 MB at N = 16384), so this bounds its memory to ~1.6 GB per call; it must
#: also fit one packed ciphertext (≤ N).
SELECT_ITEMS = 1024


def select_chunk(tokens: int, experts: int) -> int:
    """Tokens per selection call: at most :data:`SELECT_ITEMS` one-hot entries (T·E)."""
    return max(1, min(tokens, min(SELECT_ITEMS, HE_16K.n) // experts))


def _select_key(ws: list[np.ndarray], rows: int) -> tuple:
    return (*(_key(w, rows) for w in ws),)


def _int_weights(p: Party, w: np.ndarray) -> np.ndarray:
    enc = p.ring.to_signed(p.ring.encode(w))
    if enc.size and np.abs(enc).max() >= 1 << (W_BITS - 1):
        raise ValueError(
            f"a weight exceeds the public bound |W| < 2^{W_BITS - 1 - p.ring.frac_bits}"
        )
    return enc


def prepare_select(p: Party, ws: list[np.ndarray], tokens: int) -> None:
    """Server: lay out every expert's matrices (each ws[m] is (E, d, h_m)) for selections over
    ``tokens`` tokens (setup; chunked as :func:`select_chunk`), here or, with ``HEState.pool``,
    each worker its shard of the experts (this process then keeps none of them)."""
    st = _state(p)
    n_e, d = ws[0].shape[:2]
    chunk = select_chunk(tokens, n_e)

    def ints_of(experts: Sequence[int]) -> list[list[np.ndarray]]:
        return [[_int_weights(p, w[e]) for w in ws] for e in experts]

    for rows in {chunk, tokens % chunk} - {0}:
        key = _select_key(ws, rows)
        if key in st.selects:
            continue
        hs = [w.shape[2] for w in ws]
        plan = plan_select(rows, n_e, d, hs, HE_16K, w_bits=W_BITS, union_bits=st.union_bits)
        if st.pool is not None:
            st.selects[key] = st.pool.prepare(key, plan, ints_of, st.skip_zero_blocks)
        else:
            st.selects[key] = encode_select_weights(
                ints_of(range(n_e)), plan, skip_zero_blocks=st.skip_zero_blocks
            )


async def select_linear(
    p: Party,
    x: np.ndarray,
    onehot: np.ndarray,
    ws: list[np.ndarray] | None,
    hs: list[int],
) -> list[np.ndarray]:
    """Shares of trunc(x_t·W_m[r_t]) for each matrix m, with r_t given by the secret one-hot.

    x (T, d) and onehot (T, E) are shared; the server passes ws (matrices (E, d, h_m)), the
    client None. Tokens are processed in chunks of :func:`select_chunk` (concurrently).
    """
    st = _state(p)
    t, d = x.shape
    n_e = onehot.shape[1]
    chunk = select_chunk(t, n_e)
    outs = []
    for i, start in enumerate(range(0, t, chunk)):
        rows = min(chunk, t - start)
        f = p.fork(f"sel{i}")
        xs, ts = x[start : start + rows], onehot[start : start + rows]
        if p.role == "client":
            plan = plan_select(rows, n_e, d, hs, HE_16K, w_bits=W_BITS, union_bits=st.union_bits)
            ys = await select_client(f.ch, st.client(HE_16K), ts, xs, plan, f.prg, ring=p.ring)
        else:
            enc = st.selects.get(_select_key(ws, rows))
            if enc is None:
                raise RuntimeError("expert weights were not prepared for selection in setup")
            times: dict[str, float] = {}
            ys = await select_server(
                f.ch, st.server(HE_16K), ts, xs, enc, f.prg, ring=p.ring, timings=times
            )
            for k, v in times.items():
                st.select_seconds[k] = st.select_seconds.get(k, 0.0) + v
        outs.append(ys)
    joined = [np.concatenate([o[m] for o in outs]) for m in range(len(hs))]
    return [await arith.trunc(p.fork(f"trunc{m}"), y) for m, y in enumerate(joined)]

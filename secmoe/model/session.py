"""One private-inference session, the same over the in-memory channel and over TCP.

Message flow (after the transport's handshake)::

    server                                          client
      ── setup/model: public config, [model id] ──────▶   checks its input against the config
      ◀─ setup/request: kind, strategy, batch shape (B, T), batches announced ──
      ── setup/answer: ok + κ + deadline + batches covered, or why not ─▶
      … OT pool and HE keys, the server's weight encoding for (B, T) (setup phase) …
      per batch:
      ◀─ batch/next: {next} ─────────────────────────
      ── batch/answer: ok + deadline, or why the session ends (flooding budget, TTL) ─▶
      … secure_forward (online phase) …                  the client gets the batch's output
      ◀─ batch/next: {close} (setup phase) ───────────   no more batches

The request's ``kind`` selects the server's handler (:data:`SESSION_KINDS`, or the table
given to :func:`serve_session`); this flow is the ``"infer"`` kind's (:func:`serve_infer`,
:class:`ClientSession`).

The server checks every request value against bounds of its own (batch ≤ ``max_batch``,
T ≤ the model's ``seq_len``, B·T ≤ ``max_tokens``, a known strategy it allows, capacities, the
flooding budget) before any cryptography, and refuses with the reason. Until the online phase
the server waits at most ``setup_idle`` seconds for each message (a silent client is dropped
quickly); the whole session must end within a deadline derived from the plan
(:func:`session_deadline`) or given by the operator. A failure ends only that session.

The server never learns the client's input or routing; it learns the batch shape (B, T), the
number of batches and the chosen strategy. The client learns the public config, the model id
if the operator gives one (nothing else about the weights: no digest of them is sent), and
the output.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, NoReturn, TypeVar

import numpy as np

from ..crypto.he_params import FLOOD_UNION_BITS, HE_8K, HE_16K
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING
from ..net import Channel
from ..net.errors import ProtocolError, one_line, quoted
from ..net.stats import Delta
from ..ops.linear import (
    DEFAULT_CACHE_BUDGET,
    W_BITS,
    prepare,
    prepare_select,
    secret_product_by_ot,
    select_chunk,
    setup_he,
)
from ..ops.moe import INSECURE_STRATEGIES, prepare_all_step
from ..ops.norm import he_coefficients
from ..protocols.he_linear import plan_matmul
from ..protocols.party import Party
from .config import ModelConfig
from .plan_work import announce_work
from .reference import batched
from .secure import (
    Progress,
    RunOptions,
    UnsupportedFeature,
    check_supported,
    moe_spec,
    secure_forward,
)
from .weights import ModelWeights

DEFAULT_MAX_BATCH = 64
#: Seconds the server waits for each client message until the online phase.
DEFAULT_SETUP_IDLE = 30.0
_T = TypeVar("_T")
#: The largest κ a session may need (2^κ flooded coefficients per key); larger plans are refused.
MAX_UNION_BITS = 30


class SessionRefused(ValueError):
    """The server refused the client's request (the message says why)."""


@dataclass
class SessionResult:
    """What a session produced: the output (client), timings, the channel's figures and (on
    the client) the server's public config."""

    output: np.ndarray | None
    seconds: float
    setup_seconds: float
    stats: Any = field(repr=False, default=None)
    config: ModelConfig | None = field(repr=False, default=None)
    model_id: str | None = None  # the operator's name for the model, if it gives one
    batches: int = 1  # batches the session served (server)
    ended: str | None = None  # why the server ended it (None: the client closed it)


class InputError(ValueError):
    """The client's input does not fit the model (the message says what is wrong)."""


def input_bound(patch_dim: int) -> float:
    """The largest |x| of a patch feature that the first layer takes without wrapping around
    the ring: x·2^f times an encoded weight (|W| < 2^(W_BITS−1), public), summed over the
    patch_dim inputs, must stay within the truncation's 2^(ℓ−2)."""
    ring = DEFAULT_RING
    return 2.0 ** (ring.bits - 2 - ring.frac_bits - (W_BITS - 1)) / max(1, patch_dim)


def check_patch_values(x: np.ndarray) -> np.ndarray:
    """Patch features (…, patch_dim) as float64, or :class:`InputError` for a non-numeric
    dtype, NaN/inf, or values beyond :func:`input_bound`."""
    if x.dtype == bool or not (
        np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    ):
        raise InputError(f"patch features must be numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"the input has {int((~np.isfinite(x)).sum())} NaN or infinite values")
    bound, big = input_bound(x.shape[-1]), float(np.abs(x).max())
    if big >= bound:
        raise InputError(
            f"input value {big:.3g} beyond ±{bound:g}, what the first layer takes in fixed "
            f"point (ℓ = {DEFAULT_RING.bits}, f = {DEFAULT_RING.frac_bits}, "
            f"{x.shape[-1]} features per token)"
        )
    return x


def check_inputs(cfg: ModelConfig, inputs: np.ndarray) -> np.ndarray:
    """The inputs with the batch axis, checked against the config; :class:`InputError` names
    the first problem: shape, dtype, NaN/inf, values beyond :func:`input_bound`, token ids
    outside the vocabulary, more tokens than ``seq_len``."""
    x = np.asarray(inputs)
    if x.size == 0:
        raise InputError(f"the input is empty (shape {x.shape})")
    try:
        x, _ = batched(cfg, x)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if x.shape[1] > cfg.seq_len:
        raise InputError(f"{x.shape[1]} tokens per sequence, the model takes at most {cfg.seq_len}")
    if cfg.input == "tokens":
        if x.dtype == bool or not np.issubdtype(x.dtype, np.integer):
            raise InputError(f"token ids must be integers, got dtype {x.dtype}")
        bad = (x < 0) | (x >= (cfg.vocab_size or 0))
        if bad.any():
            raise InputError(
                f"token id {int(x[bad][0])} outside the vocabulary [0, {cfg.vocab_size})"
            )
        return x
    return check_patch_values(x)


def flood_demand(cfg: ModelConfig, shape: tuple[int, int], options: RunOptions) -> dict[str, int]:
    """Coefficients a session returns (flooded) under each HE key, per parameter set: every HE
    product returns one per output element (secret × secret products: two, one per cross
    product). An upper bound for ``reveal`` (each token's k experts, none dropped) and for the
    0/1 products that :func:`secmoe.ops.linear.matmul_01` may run as MUXes instead (the
    ``all`` combine, ``dispatch``'s gather and scatter); a test checks it against the keys'
    counters. A session's server measures the exact count on its first batch."""
    b, t = shape
    rows = b * t
    h, dk, d = cfg.n_heads, cfg.d_head, cfg.d_model
    spec = moe_spec(cfg, options)
    ffn_out = spec.d_ff * (2 if spec.gated else 1) + d  # w1 (and v), w2 per row
    small = rows * d  # the first layer
    big = 0
    for i in range(cfg.n_layers):
        small += rows * (h * dk + 2 * cfg.kv_heads * dk + d)  # q, k, v, o
        for m, k, n in ((t, dk, t), (t, t, dk)):  # qkᵀ and pv, unless by OT
            big += 0 if secret_product_by_ot(b * h, m, k, n) else 2 * b * h * m * n
        if not cfg.is_moe(i):
            small += rows * (cfg.d_ff_dense * (2 if cfg.gated else 1) + d)
            continue
        e, k = cfg.n_experts, cfg.top_k
        small += rows * e  # router
        if options.strategy == "all":
            small += e * rows * ffn_out
            big += 2 * rows * k * d  # combine
        elif options.strategy == "dispatch":
            cap = spec.capacity_for(t)
            small += e * b * cap * ffn_out
            big += 2 * b * e * cap * d + 2 * rows * k * d  # gather, scatter
        elif options.strategy == "select":
            big += k * rows * ffn_out
        else:  # reveal: at most k rows per token
            small += rows * k * ffn_out
    if cfg.head == "classifier":
        small += b * cfg.out_dim
    elif cfg.head == "lm":
        small += rows * cfg.out_dim
    if options.he_norms:  # two norms a block and the final one (an upper bound: he_products)
        small += (2 * cfg.n_layers + 1) * he_coefficients(rows, d)
    return {HE_8K.name: small, HE_16K.name: big}


def union_bits_for(demand: dict[str, int]) -> int:
    """κ for a session: the default 24, or enough bits for its largest per-key demand."""
    most = max(demand.values(), default=0)
    return max(FLOOD_UNION_BITS, math.ceil(math.log2(most)) if most > 1 else 0)


def session_deadline(cfg: ModelConfig, shape: tuple[int, int], options: RunOptions) -> float:
    """A whole-session deadline (s) derived from the plan: 10 minutes plus one second per
    token, layer, 64 model dimensions and expert (the experts' work grows with E for every
    strategy but ``reveal``), about ten times the slowest rate measured on a loaded 2-core
    machine."""
    b, t = shape
    per = max(1, cfg.n_experts if options.strategy != "reveal" else cfg.top_k)
    return 600.0 + b * t * cfg.n_layers * math.ceil(cfg.d_model / 64) * per


def weights_to_prepare(
    weights: ModelWeights, shape: tuple[int, int], options: RunOptions
) -> list[tuple[np.ndarray | list[np.ndarray], int]]:
    """(weight, rows) of every plaintext-weight product whose row count is known in setup (a
    list of weights: one product of them all, see :func:`secmoe.ops.linear.linear_fused`)."""
    cfg = weights.config
    b, t = shape
    rows = b * t
    out: list[tuple[np.ndarray | list[np.ndarray], int]] = []
    first = weights.patch_proj if cfg.input == "patches" else weights.embed
    out.append((first, rows))
    for i, layer in enumerate(weights.layers):
        a = layer.attn
        out += [([a.wq, a.wk, a.wv], rows), (a.wo, rows)]  # q, k, v: one product
        f = layer.ffn
        if not cfg.is_moe(i):
            out += [(m, rows) for m in (f.w1, f.v, f.w2) if m is not None]
            continue
        out.append((f.router, rows))
        expert_rows = {"all": rows, "dispatch": b * moe_spec(cfg, options).capacity_for(t)}
        if options.strategy in expert_rows:
            r = expert_rows[options.strategy]
            for e in range(cfg.n_experts):
                out += [(m[e], r) for m in (f.w1, f.v, f.w2) if m is not None]
    if cfg.head == "classifier":
        out.append((weights.head, b))
    elif cfg.head == "lm":
        out.append((weights.head, rows))
    return out


async def setup_inference(
    ch: Channel,
    prg: PRG,
    cfg: ModelConfig,
    weights: ModelWeights | None,
    shape: tuple[int, int],
    options: RunOptions,
    *,
    union_bits: int = FLOOD_UNION_BITS,
    skip_zero_blocks: bool = False,
    cache_budget: int = DEFAULT_CACHE_BUDGET,
    pool: Any = None,
) -> Party:
    """OT pool and HE keys (both parties, flooding for 2^κ coefficients per key, κ =
    ``union_bits``); the server then encodes its weights for this batch shape (locally, in the
    setup phase, so no encoding time hides in the measured run), as NTT plaintexts up to
    ``cache_budget`` bytes (beyond, blocks are encoded when used), skipping all-zero weight
    blocks only with ``skip_zero_blocks`` (an operator option that LEAKS the blocks' sparsity
    through the server's timing); with a ``pool`` (:class:`secmoe.distributed.ExpertPool`) the
    experts of ``select`` and the plain-weight products' blocks go to its workers instead."""
    rows = shape[0] * shape[1]
    select = options.strategy == "select" and bool(cfg.moe_layers)
    items = select_chunk(rows, cfg.n_experts) * cfg.n_experts if select else 0
    p = await setup_he(await Party.setup(ch, prg), select_items=items, union_bits=union_bits)
    p.he.skip_zero_blocks, p.he.cache_budget = skip_zero_blocks, cache_budget
    if pool is not None and p.role == "server":  # the encoded weights go to the workers
        p.he.pool = pool.session(list(p.he.keys.values()), p.he)
    if weights is not None:
        prepare_weights(p, weights, shape, options)
    return p


def prepare_weights(
    p: Party, weights: ModelWeights, shape: tuple[int, int], options: RunOptions
) -> None:
    """Server, setup: encode every weight product of a forward pass of batch shape (B, T)
    into the party's HE cache (:func:`secmoe.ops.linear.prepare`, and the experts' layouts for
    ``select``): the products then run without encoding, for every batch of that shape.
    Experts in an :class:`~secmoe.model.expert_store.ExpertStore` are dropped from memory
    after (the workers hold them encoded; the file, for a worker that restarts)."""
    cfg, rows = weights.config, shape[0] * shape[1]
    for w, r in weights_to_prepare(weights, shape, options):
        prepare(p, w, r)
    if options.strategy == "select":
        for i in cfg.moe_layers:
            f = weights.layers[i].ffn
            prepare_select(p, [m for m in (f.w1, f.v) if m is not None], rows)
            prepare_select(p, [f.w2], rows)
    if options.strategy == "all" and shape[1] == 1:  # a decoding step's fused products
        for i in cfg.moe_layers:
            prepare_all_step(p, weights.layers[i].ffn, moe_spec(cfg, options), rows)
    if weights.store is not None:  # what was read to lay out the workers' shards
        weights.store.release()


#: The session kind of a request that names none: inference of batches of inputs.
INFER = "infer"
REQUEST_FIELDS = (
    "kind",
    "strategy",
    "shape",
    "capacity",
    "capacity_factor",
    "norm_products",
    "batches",
)
#: The most bytes a client may have the server hold before its request is accepted.
REQUEST_BUDGET = 64 << 10
#: A server's default time (s) during which one session's setup serves new batches.
DEFAULT_SESSION_TTL = 3600.0
#: Working memory of the online phase per row and widest activation element (bytes): shares,
#: their copies in flight, comparison tables and OT rows (an upper estimate, see
#: :func:`planned_memory`).
ACTIVATION_BYTES = 256


class SessionOver(SessionRefused):
    """The server serves no further batch in this session (its flooding budget or its TTL is
    spent); the message says which. A client with more to send opens a new session."""


class MemoryBudget:
    """Memory the sessions of one server may plan to use together (``serve --max-memory``):
    each session reserves its :func:`planned_memory` before its setup and releases it at its
    end; one that does not fit what is free is refused with the figures."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.reserved = 0

    def reserve(self, n: int) -> None:
        """Reserve ``n`` bytes, or :class:`SessionRefused` if fewer are free."""
        free = self.total - self.reserved
        if n > free:
            raise SessionRefused(
                f"the session plans {n / 1e6:.0f} MB of memory, more than the "
                f"{free / 1e6:.0f} MB free of this server's {self.total / 1e6:.0f} MB "
                "(send fewer sequences per batch, or try again later)"
            )
        self.reserved += n

    def release(self, n: int) -> None:
        self.reserved -= n


@dataclass
class ServerLimits:
    """The operator's bounds on every session (``secmoe serve``'s options).

    ``session_timeout``: deadline (s) of the setup and first batch, then of each further batch
    (default :func:`session_deadline` of the plan); ``session_ttl``: no batch starts after this
    long; ``union_bits``: a fixed κ (default: sized from the plan and the batches asked for,
    see :func:`plan_flooding`); ``memory``: shared by the server's sessions (None: no check).
    ``skip_zero_blocks``, ``cache_budget``: see :func:`setup_inference`.
    """

    allow_insecure: bool = False
    max_batch: int = DEFAULT_MAX_BATCH
    max_tokens: int | None = None
    setup_idle: float | None = DEFAULT_SETUP_IDLE
    session_timeout: float | None = None
    session_ttl: float | None = DEFAULT_SESSION_TTL
    skip_zero_blocks: bool = False
    cache_budget: int = DEFAULT_CACHE_BUDGET
    model_id: str | None = None
    union_bits: int | None = None
    memory: MemoryBudget | None = None
    #: The workers holding the experts of ``select`` (a :class:`secmoe.distributed.ExpertPool`,
    #: ``serve --workers``); None: this process.
    pool: Any = None


@dataclass
class ServeContext:
    """What a session kind's handler gets: the channel (request budget still in force), the
    model, the operator's limits, this session's PRG and progress callback, its start time."""

    ch: Channel
    weights: ModelWeights
    limits: ServerLimits
    prg: PRG
    progress: Progress | None
    started: float = field(default_factory=time.perf_counter)
    _saved: tuple[int, int] = (0, 0)

    async def refuse(self, reason: str) -> NoReturn:
        """Tell the client why its request is not served; raise :class:`SessionRefused`."""
        await self.ch.send({"ok": False, "error": reason}, tag="setup/answer")
        raise SessionRefused(reason)

    async def check(self, check: Callable[[], _T]) -> _T:
        """``check()``'s result (a request's plan), or, if it raises :class:`SessionRefused`,
        the client told the reason (:meth:`refuse`)."""
        try:
            return check()
        except SessionRefused as exc:
            await self.refuse(str(exc))

    @contextlib.asynccontextmanager
    async def reserve(self, planned: Callable[[], int]) -> AsyncIterator[None]:
        """Hold the session's planned memory (``planned()``, computed only when the server
        has a memory limit) for the block; refuse (with the figures) if it is not free."""
        memory = self.limits.memory
        if memory is None:
            yield
            return
        need = planned()
        try:
            memory.reserve(need)
        except SessionRefused as exc:
            with self.ch.phase("setup"):
                await self.refuse(str(exc))
        try:
            yield
        finally:
            memory.release(need)

    async def accept(self, answer: dict[str, Any]) -> None:
        """Lift the request's byte budget (the plan's limits apply) and send ``ok`` with
        ``answer``."""
        net = self.ch.session
        net.max_message, net.max_buffered = self._saved
        await self.ch.send({"ok": True, **answer}, tag="setup/answer")


#: A session kind's server side: runs the session after the request arrived (the kind
#: answers it with :meth:`ServeContext.accept` or :meth:`ServeContext.refuse`).
KindHandler = Callable[[ServeContext, dict[str, Any]], Awaitable["SessionResult"]]


class InferPlan(NamedTuple):
    """An accepted inference request: options, batch shape, κ, the flooding demand of one
    batch per key, and how many batches one session's keys cover."""

    options: RunOptions
    shape: tuple[int, int]
    union_bits: int
    demand: dict[str, int]
    batches: int


def batches_covered(demand: dict[str, int], left: dict[str, int]) -> int:
    """How many more batches of ``demand`` coefficients per key fit in what each key's
    flooding still covers (``left``); keys a batch does not use do not bound it."""
    counts = [left[k] // d for k, d in demand.items() if d > 0]
    return min(counts) if counts else 2**62


def plan_flooding(
    demand: dict[str, int], batches: int, fixed: int | None = None
) -> tuple[int, int]:
    """κ and the batches it covers, for ``batches`` batches asked for: the smallest κ ≥ the
    default that covers them all, at most :data:`MAX_UNION_BITS` (then fewer batches; a new
    session continues); ``fixed``: the operator's κ. :class:`SessionRefused` if not even one
    batch fits."""
    most = max(demand.values(), default=0)
    kappa = fixed or min(union_bits_for({"all": most * batches}), MAX_UNION_BITS)
    covered = batches_covered(demand, {k: 1 << kappa for k in demand})
    if covered < 1:
        raise SessionRefused(
            f"the session would return {most} HE coefficients under one key (2^"
            f"{math.log2(most):.1f}), more than the 2^{kappa} its noise flooding can cover "
            "(send fewer sequences)"
        )
    return kappa, covered


def check_request(req: dict[str, Any], cfg: ModelConfig, lim: ServerLimits) -> InferPlan:
    """The request's plan, each value checked against this server's bounds;
    :class:`SessionRefused` names the first that is not acceptable."""
    unknown = sorted(quoted(k) for k in set(req) - set(REQUEST_FIELDS))
    if unknown:
        raise SessionRefused(f"unknown request fields {', '.join(unknown)}")
    strategy, shape = req.get("strategy"), req.get("shape")
    capacity, factor = req.get("capacity"), req.get("capacity_factor")
    norms = req.get("norm_products", "ot")
    asked = req.get("batches", 1)
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
    ):
        raise SessionRefused(f"malformed batch shape {quoted(shape)}")
    b, t = shape
    if not 1 <= b <= lim.max_batch:
        raise SessionRefused(
            f"batch size {quoted(b)} outside [1, {lim.max_batch}] (this server's limit: send at "
            f"most {lim.max_batch} sequences per batch)"
        )
    if not 1 <= t <= cfg.seq_len:
        raise SessionRefused(f"sequence length {quoted(t)} outside [1, {cfg.seq_len}]")
    if lim.max_tokens is not None and b * t > lim.max_tokens:
        raise SessionRefused(
            f"{b}×{t} = {b * t} tokens, more than this server's limit of {lim.max_tokens} per "
            "batch (send fewer sequences per batch)"
        )
    if isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= 2**31:
        raise SessionRefused(f"malformed batch count {quoted(asked)}: an integer in [1, 2^31]")
    # A capacity beyond T means T (nothing to drop): MoESpec.capacity_for clamps it, so a huge
    # value costs nothing. Types first (msgpack may send any), values in RunOptions.
    if isinstance(capacity, bool) or not (capacity is None or isinstance(capacity, int)):
        raise SessionRefused(f"malformed capacity {quoted(capacity)}: an integer ≥ 1 or none")
    if isinstance(factor, bool) or not (factor is None or isinstance(factor, float | int)):
        raise SessionRefused(f"malformed capacity factor {quoted(factor)}: a number > 0 or none")
    if not isinstance(norms, str):
        raise SessionRefused(f"malformed norm products {quoted(norms)}: 'ot' or 'he'")
    try:
        options = RunOptions(strategy, factor, capacity, norms)
    except (TypeError, ValueError) as exc:
        raise SessionRefused(str(exc)) from None
    if strategy in INSECURE_STRATEGIES and not lim.allow_insecure:
        raise SessionRefused(
            f"strategy {strategy!r} is INSECURE (it reveals the routing) and this server does "
            "not allow it"
        )
    try:
        check_supported(cfg, options)
    except UnsupportedFeature as exc:
        raise SessionRefused(str(exc)) from None
    demand = flood_demand(cfg, (b, t), options)
    union_bits, covered = plan_flooding(demand, asked, lim.union_bits)
    return InferPlan(options, (b, t), union_bits, demand, covered)


def planned_memory(
    weights: ModelWeights,
    shape: tuple[int, int],
    options: RunOptions,
    cache_budget: int = DEFAULT_CACHE_BUDGET,
    union_bits: int = FLOOD_UNION_BITS,
) -> int:
    """An estimate of the server's memory for one session, from its plan: the encoded weights
    exactly as :func:`setup_inference` caches them (NTT plaintexts within ``cache_budget``,
    each expert's integer weights for ``select``), plus :data:`ACTIVATION_BYTES` per row and
    element of the widest activation (an upper estimate of the online phase's working set)."""
    cfg = weights.config
    b, t = shape
    rows = b * t
    left, total = cache_budget, 0
    for w, r in weights_to_prepare(weights, shape, options):
        ws = [w] if isinstance(w, np.ndarray) else w
        plan = plan_matmul(
            r, ws[0].shape[0], [m.shape[1] for m in ws], HE_8K, w_bits=W_BITS, union_bits=union_bits
        )
        if plan.cache_bytes() <= left:
            left -= plan.cache_bytes()
            total += plan.cache_bytes()
    spec = moe_spec(cfg, options)
    ffn = spec.d_ff * (2 if spec.gated else 1)
    if options.strategy == "select":
        total += (
            len(cfg.moe_layers) * cfg.n_experts * 8 * (cfg.d_model * ffn + spec.d_ff * cfg.d_model)
        )
    experts = cfg.n_experts if options.strategy == "all" else cfg.top_k
    widest = max(cfg.d_model, ffn * experts, cfg.n_heads * t, cfg.out_dim or 0)
    return total + ACTIVATION_BYTES * rows * widest


async def serve_session(
    ch: Channel,
    weights: ModelWeights,
    *,
    kinds: dict[str, KindHandler] | None = None,
    prg: PRG | None = None,
    progress: Progress | None = None,
    **limits: Any,
) -> SessionResult:
    """The server's side of one session: sends the public config, reads the client's request
    and runs it with the handler of its ``kind`` (default :data:`SESSION_KINDS`; a request
    without one is ``"infer"``). ``limits``: the fields of :class:`ServerLimits`.

    Raises :class:`SessionRefused` after telling the client why, if its request is not
    acceptable (an unknown kind, or what the kind refuses, see :func:`serve_infer`). Each
    client message until the request is answered must come within ``setup_idle`` seconds, and
    the client cannot make the server hold more than :data:`REQUEST_BUDGET` bytes until then.
    """
    lim = ServerLimits(**limits)
    kinds = SESSION_KINDS if kinds is None else kinds
    net = ch.session
    ctx = ServeContext(ch, weights, lim, prg or PRG(), progress)
    ctx._saved = (net.max_message, net.max_buffered)
    ch.session.set_idle_timeout(lim.setup_idle)
    net.max_message = net.max_buffered = REQUEST_BUDGET
    with ch.phase("setup"):
        model = {"config": weights.config.to_json(), "model_id": lim.model_id}
        await ch.send(model, tag="setup/model")
        req = await ch.recv(tag="setup/request")
        if not isinstance(req, dict):
            await ctx.refuse(f"malformed request {quoted(req)}")
        kind = req.get("kind", INFER)
        handler = kinds.get(kind) if isinstance(kind, str) else None
        if handler is None:
            await ctx.refuse(
                f"unknown session kind {quoted(kind)} (this server serves {', '.join(kinds)})"
            )
    return await handler(ctx, req)


async def serve_infer(ctx: ServeContext, req: dict[str, Any]) -> SessionResult:
    """The ``"infer"`` kind, server side: checks the request (:func:`check_request`: batch ≤
    ``max_batch``, T ≤ ``seq_len``, B·T ≤ ``max_tokens``, a strategy it allows, capacities, the
    flooding budget, the planned memory), sets up once, then serves batches of shape (B, T)
    until the client closes the session, the keys' flooding budget cannot cover another batch
    or ``session_ttl`` has passed (then it tells the client, which may open a new session).

    Per batch: ``batch/next`` from the client, ``batch/answer`` (ok + the batch's deadline, or
    why the session ends), the secure forward pass. Between batches the client has
    ``setup_idle`` seconds to ask for the next; each batch has the session's deadline."""
    ch, lim, weights = ctx.ch, ctx.limits, ctx.weights
    with ch.phase("setup"):
        plan = await ctx.check(lambda: check_request(req, weights.config, lim))
    planned = partial(planned_memory, weights, plan.shape, plan.options, lim.cache_budget)
    async with ctx.reserve(planned):
        return await _serve_batches(ctx, plan)


async def _serve_batches(ctx: ServeContext, plan: InferPlan) -> SessionResult:
    ch, lim, weights = ctx.ch, ctx.limits, ctx.weights
    cfg = weights.config
    deadline = lim.session_timeout or session_deadline(cfg, plan.shape, plan.options)
    with ch.phase("setup"):
        ch.session.set_deadline(deadline)
        answer = {"union_bits": plan.union_bits, "deadline": deadline, "batches": plan.batches}
        await ctx.accept(answer)
        p = await setup_inference(
            ch,
            ctx.prg,
            cfg,
            weights,
            plan.shape,
            plan.options,
            union_bits=plan.union_bits,
            skip_zero_blocks=lim.skip_zero_blocks,
            cache_budget=lim.cache_budget,
            pool=lim.pool,
        )
    setup_s = time.perf_counter() - ctx.started
    ttl_end = ctx.started + (lim.session_ttl or math.inf)
    served, seconds, ended = 0, 0.0, None
    need = plan.demand  # coefficients a batch returns per key (the plan's, then measured)

    def used() -> dict[str, int]:
        return {k: key.pk.budget.used for k, key in p.he.keys.items()}

    while True:
        ch.session.set_idle_timeout(lim.setup_idle)
        msg = await ch.recv(tag="batch/next")
        if msg == {"close": True}:
            break
        if msg != {"next": True}:
            raise ProtocolError(f"malformed batch request {quoted(msg)}")
        left = {k: key.pk.budget.limit - key.pk.budget.used for k, key in p.he.keys.items()}
        if batches_covered(need, left) < 1:
            ended = (
                f"the keys' noise-flooding budget (2^{plan.union_bits} coefficients per key) is "
                f"spent after {served} batches"
            )
        elif time.perf_counter() >= ttl_end:
            ended = f"the session's TTL of {lim.session_ttl:g} s has passed after {served} batches"
        if ended is not None:
            await ch.send({"ok": False, "reason": ended}, tag="batch/answer")
            break
        ch.session.set_deadline(deadline)
        await ch.send({"ok": True, "deadline": deadline}, tag="batch/answer")
        ch.session.set_idle_timeout(None)  # online: the per-wait timeout and the deadline
        t1, before = time.perf_counter(), used()
        announce_work(ctx.progress, cfg, plan.options, plan.shape)
        await secure_forward(p, cfg, weights, None, plan.shape, plan.options, ctx.progress)
        seconds += time.perf_counter() - t1
        if served == 0 and plan.options.strategy not in INSECURE_STRATEGIES:
            # every batch of the shape returns the same count (public shapes decide it):
            # the first batch's is exact, where the plan's may be an upper bound
            need = {k: n - before[k] for k, n in used().items()}
        served += 1
    return SessionResult(None, seconds, setup_s, ch.stats, batches=served, ended=ended)


#: The session kinds a server serves by default (``secmoe serve`` adds its own).
SESSION_KINDS: dict[str, KindHandler] = {INFER: serve_infer}


@dataclass
class BatchResult:
    """One batch of a client's session: its output rows and online figures."""

    output: np.ndarray
    seconds: float
    cost: Delta


class ClientSession:
    """The client's end of an inference session: :meth:`open` (request and setup, once), then
    :meth:`run` for each batch, then :meth:`close`.

    Attributes: ``inputs`` (all the client's inputs, checked against the server's config),
    ``cfg``, ``model_id``, ``shape`` (B, T: every batch is padded to B sequences, the shape
    the server encoded its weights for), ``batches`` (how many batches the server's flooding
    budget covers), ``setup_seconds`` and ``setup`` (the setup's bytes and rounds)."""

    def __init__(self, ch: Channel, p: Party, cfg: ModelConfig, model: dict[str, Any]) -> None:
        self.ch, self.p, self.cfg = ch, p, cfg
        self.model_id: str | None = model.get("model_id")
        self.inputs = np.zeros(0)
        self.shape = (0, 0)
        self.options = RunOptions()
        self.batches = 0
        self.setup_seconds = 0.0
        self.setup: Delta | None = None
        self.over: str | None = None

    @classmethod
    async def open(
        cls,
        ch: Channel,
        inputs: np.ndarray | Callable[[ModelConfig], np.ndarray],
        *,
        options: RunOptions | None = None,
        prg: PRG | None = None,
        batch: int | None = None,
    ) -> ClientSession:
        """Receive the server's config, check ``inputs`` against it (:func:`check_inputs`:
        :class:`InputError` before any cryptography), ask for batches of ``batch`` sequences
        (default: all of them in one), run the setup. :class:`SessionRefused` with the server's
        reason if it refuses."""
        options = options or RunOptions()
        t0, snap = time.perf_counter(), ch.stats.snapshot()
        with ch.phase("setup"):
            model = await ch.recv(tag="setup/model")
            if not (isinstance(model, dict) and isinstance(model.get("config"), str)):
                raise SessionRefused(
                    f"the server sent a malformed model description {quoted(model)}"
                )
            cfg = ModelConfig.from_json(model["config"])
            x = check_inputs(cfg, inputs(cfg) if callable(inputs) else inputs)
            size = min(batch or len(x), len(x))
            shape = (size, int(x.shape[1]))
            request = {
                "kind": INFER,
                "strategy": options.strategy,
                "shape": list(shape),
                "capacity": options.capacity,
                "capacity_factor": options.capacity_factor,
                "norm_products": options.norm_products,
                "batches": -(-len(x) // size),
            }
            await ch.send(request, tag="setup/request")
            answer = await ch.recv(tag="setup/answer")
            if not isinstance(answer, dict):
                raise SessionRefused(f"the server sent a malformed answer {quoted(answer)}")
            if not answer.get("ok"):
                raise SessionRefused(f"the server refused: {answer.get('error')}")
            union_bits, covered = answer.get("union_bits"), answer.get("batches", 1)
            if not (isinstance(union_bits, int) and 1 <= union_bits <= MAX_UNION_BITS):
                raise SessionRefused(f"the server sent a bad flooding budget {quoted(union_bits)}")
            keep_deadline(ch, answer.get("deadline"))
            p = await setup_inference(
                ch, prg or PRG(), cfg, None, shape, options, union_bits=union_bits
            )
        s = cls(ch, p, cfg, model)
        s.inputs, s.shape, s.options = x, shape, options
        s.batches = covered if isinstance(covered, int) and covered >= 1 else 1
        s.setup_seconds, s.setup = time.perf_counter() - t0, ch.stats.since(snap)
        return s

    async def run(self, x: np.ndarray, progress: Progress | None = None) -> BatchResult:
        """One batch: ``x`` (at most B sequences of T, padded to B; the padding's outputs are
        dropped). :class:`SessionOver` if the server serves no further batch in this session."""
        b, t = self.shape
        if not 1 <= len(x) <= b or x.shape[1] != t:
            raise ValueError(f"a batch of shape {x.shape[:2]} in a session of batches {self.shape}")
        n = len(x)
        if n < b:
            x = np.concatenate([x, np.zeros((b - len(x), *x.shape[1:]), x.dtype)])
        t0, snap = time.perf_counter(), self.ch.stats.snapshot()
        await self.ch.send({"next": True}, tag="batch/next")
        answer = await self.ch.recv(tag="batch/answer")
        if not (isinstance(answer, dict) and answer.get("ok")):
            reason = answer.get("reason") if isinstance(answer, dict) else None
            self.over = f"the server ended the session: {one_line(str(reason))}"
            raise SessionOver(self.over)
        keep_deadline(self.ch, answer.get("deadline"))
        announce_work(progress, self.cfg, self.options, self.shape)
        out = await secure_forward(self.p, self.cfg, None, x, self.shape, self.options, progress)
        return BatchResult(out[:n], time.perf_counter() - t0, self.ch.stats.since(snap))

    async def close(self) -> None:
        """Tell the server this session has no more batches (nothing if it ended it). The
        message counts in the ``setup`` phase (session bookkeeping, once per session) and in
        :attr:`setup`."""
        if self.over is not None:
            return
        snap = self.ch.stats.snapshot()
        with self.ch.phase("setup"):
            await self.ch.send({"close": True}, tag="batch/next")
        d, s = self.ch.stats.since(snap), self.setup
        assert s is not None
        self.setup = Delta(
            s.bytes_c2s + d.bytes_c2s,
            s.bytes_s2c + d.bytes_s2c,
            s.framing_c2s + d.framing_c2s,
            s.framing_s2c + d.framing_s2c,
            s.messages + d.messages,
            s.rounds,
        )


def keep_deadline(ch: Channel, deadline: Any) -> None:
    """Keep to the deadline the server announced (the server ends first)."""
    if isinstance(deadline, int | float) and 0 < deadline < math.inf:
        ch.session.set_deadline(float(deadline) + DEFAULT_SETUP_IDLE)


async def client_session(
    ch: Channel,
    inputs: np.ndarray | Callable[[ModelConfig], np.ndarray],
    *,
    options: RunOptions | None = None,
    prg: PRG | None = None,
    progress: Progress | None = None,
) -> SessionResult:
    """The client's side of a session of one batch: sends its request, runs the secure
    forward pass, closes the session, returns the output.

    ``inputs``: patch features (B, T, patch_dim) or token ids (B, T) (a single sequence without
    the batch axis is accepted), or a function making them from the server's config (e.g. to
    truncate a tokenized text to its ``seq_len``). Inputs that do not fit the server's model
    (:func:`check_inputs`) end the session before any cryptography, with
    :class:`InputError`. The client keeps to the deadline the server announces.
    """
    s = await ClientSession.open(ch, inputs, options=options, prg=prg)
    res = await s.run(s.inputs, progress)
    await s.close()
    return SessionResult(res.output, res.seconds, s.setup_seconds, ch.stats, s.cfg, s.model_id)


def describe_model(cfg: ModelConfig) -> str:
    """A one-line summary of a config."""
    return json.dumps(
        {
            "name": cfg.name,
            "d_model": cfg.d_model,
            "layers": cfg.n_layers,
            "experts": cfg.n_experts,
            "top_k": cfg.top_k,
            "ffn": cfg.ffn,
        }
    )

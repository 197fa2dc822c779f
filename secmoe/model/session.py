"""One private-inference session, the same over the in-memory channel and over TCP.

Message flow (after the transport's handshake)::

    server                                          client
      ── setup/model: public config, [model id] ──────▶   checks its input against the config
      ◀─ setup/request: strategy, batch shape ────────
      ── setup/answer: ok + κ + deadline, or why not ─▶  (e.g. an INSECURE strategy not allowed)
      … OT pool and HE keys (setup phase) …
      … secure_forward (online phase) …                  the client gets the output

The server checks every request value against bounds of its own (batch ≤ ``max_batch``,
T ≤ the model's ``seq_len``, B·T ≤ ``max_tokens``, a known strategy it allows, capacities, the
flooding budget) before any cryptography, and refuses with the reason. Until the online phase
the server waits at most ``setup_idle`` seconds for each message (a silent client is dropped
quickly); the whole session must end within a deadline derived from the plan
(:func:`session_deadline`) or given by the operator. A failure ends only that session.

The server never learns the client's input or routing; it learns the batch shape (B, T) and
the chosen strategy. The client learns the public config, the model id if the operator gives
one (nothing else about the weights: no digest of them is sent), and the output.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..crypto.he_params import FLOOD_UNION_BITS, HE_8K, HE_16K
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING
from ..net import Channel
from ..net.errors import quoted
from ..ops.linear import (
    DEFAULT_CACHE_BUDGET,
    W_BITS,
    prepare,
    prepare_select,
    select_chunk,
    setup_he,
)
from ..ops.moe import INSECURE_STRATEGIES
from ..protocols.party import Party
from .config import ModelConfig
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
    product). An upper bound for ``reveal`` (each token's k experts, none dropped), exact
    otherwise; a test checks it against the keys' counters."""
    b, t = shape
    rows = b * t
    h, dk, d = cfg.n_heads, cfg.d_head, cfg.d_model
    spec = moe_spec(cfg, options)
    ffn_out = spec.d_ff * (2 if spec.gated else 1) + d  # w1 (and v), w2 per row
    small = rows * d  # the first layer
    big = 0
    for i in range(cfg.n_layers):
        small += rows * (h * dk + 2 * cfg.kv_heads * dk + d)  # q, k, v, o
        big += 2 * (b * h * t * t + b * h * t * dk)  # qkᵀ and pv
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


def _weights_to_prepare(
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
) -> Party:
    """OT pool and HE keys (both parties, flooding for 2^κ coefficients per key, κ =
    ``union_bits``); the server then encodes its weights for this batch shape (locally, in the
    setup phase, so no encoding time hides in the measured run), as NTT plaintexts up to
    ``cache_budget`` bytes (beyond, blocks are encoded when used), skipping all-zero weight
    blocks only with ``skip_zero_blocks`` (an operator option that LEAKS the blocks' sparsity
    through the server's timing)."""
    rows = shape[0] * shape[1]
    select = options.strategy == "select" and bool(cfg.moe_layers)
    items = select_chunk(rows, cfg.n_experts) * cfg.n_experts if select else 0
    p = await setup_he(await Party.setup(ch, prg), select_items=items, union_bits=union_bits)
    p.he.skip_zero_blocks, p.he.cache_budget = skip_zero_blocks, cache_budget
    if weights is not None:
        for w, r in _weights_to_prepare(weights, shape, options):
            prepare(p, w, r)
        if select:
            for i in cfg.moe_layers:
                f = weights.layers[i].ffn
                prepare_select(p, [m for m in (f.w1, f.v) if m is not None], rows)
                prepare_select(p, [f.w2], rows)
    return p


REQUEST_FIELDS = ("strategy", "shape", "capacity", "capacity_factor")
#: The most bytes a client may have the server hold before its request is accepted.
REQUEST_BUDGET = 64 << 10


def _check_request(
    req: Any, cfg: ModelConfig, allow_insecure: bool, max_batch: int, max_tokens: int | None
) -> tuple[RunOptions, tuple[int, int], int]:
    """The request's options, batch shape and κ, each value checked against this server's
    bounds; :class:`SessionRefused` names the first that is not acceptable."""
    if not isinstance(req, dict):
        raise SessionRefused(f"malformed request {quoted(req)}")
    unknown = sorted(quoted(k) for k in set(req) - set(REQUEST_FIELDS))
    if unknown:
        raise SessionRefused(f"unknown request fields {', '.join(unknown)}")
    strategy, shape = req.get("strategy"), req.get("shape")
    capacity, factor = req.get("capacity"), req.get("capacity_factor")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
    ):
        raise SessionRefused(f"malformed batch shape {quoted(shape)}")
    b, t = shape
    if not 1 <= b <= max_batch:
        raise SessionRefused(
            f"batch size {quoted(b)} outside [1, {max_batch}] (this server's limit: send at most "
            f"{max_batch} sequences per session)"
        )
    if not 1 <= t <= cfg.seq_len:
        raise SessionRefused(f"sequence length {quoted(t)} outside [1, {cfg.seq_len}]")
    if max_tokens is not None and b * t > max_tokens:
        raise SessionRefused(
            f"{b}×{t} = {b * t} tokens, more than this server's limit of {max_tokens} per "
            "session (send fewer sequences per session)"
        )
    # A capacity beyond T means T (nothing to drop): MoESpec.capacity_for clamps it, so a huge
    # value costs nothing. Types first (msgpack may send any), values in RunOptions.
    if isinstance(capacity, bool) or not (capacity is None or isinstance(capacity, int)):
        raise SessionRefused(f"malformed capacity {quoted(capacity)}: an integer ≥ 1 or none")
    if isinstance(factor, bool) or not (factor is None or isinstance(factor, float | int)):
        raise SessionRefused(f"malformed capacity factor {quoted(factor)}: a number > 0 or none")
    try:
        options = RunOptions(strategy, factor, capacity)
    except (TypeError, ValueError) as exc:
        raise SessionRefused(str(exc)) from None
    if strategy in INSECURE_STRATEGIES and not allow_insecure:
        raise SessionRefused(
            f"strategy {strategy!r} is INSECURE (it reveals the routing) and this server does "
            "not allow it"
        )
    try:
        check_supported(cfg, options)
    except UnsupportedFeature as exc:
        raise SessionRefused(str(exc)) from None
    union_bits = union_bits_for(flood_demand(cfg, (b, t), options))
    if union_bits > MAX_UNION_BITS:
        raise SessionRefused(
            f"the session would return 2^{union_bits} HE coefficients under one key, more than "
            f"the 2^{MAX_UNION_BITS} its noise flooding can cover (send fewer sequences)"
        )
    return options, (b, t), union_bits


async def serve_session(
    ch: Channel,
    weights: ModelWeights,
    *,
    allow_insecure: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_tokens: int | None = None,
    setup_idle: float | None = DEFAULT_SETUP_IDLE,
    session_timeout: float | None = None,
    skip_zero_blocks: bool = False,
    cache_budget: int = DEFAULT_CACHE_BUDGET,
    model_id: str | None = None,
    prg: PRG | None = None,
    progress: Progress | None = None,
) -> SessionResult:
    """The server's side of one session. Raises :class:`SessionRefused` after telling the
    client why, if its request is not acceptable (see :func:`_check_request`: an INSECURE
    strategy not allowed, more than ``max_batch`` sequences or ``max_tokens`` tokens — the
    server's memory grows with them —, …).

    Deadlines: each client message until the online phase within ``setup_idle`` seconds; the
    whole session within ``session_timeout`` (default :func:`session_deadline` of the plan),
    told to the client in the answer. ``model_id``: an operator-chosen name sent to the client
    (by default the client learns nothing about the weights). ``skip_zero_blocks``,
    ``cache_budget``: see :func:`setup_inference` (the first is a LEAK; the second bounds the
    encoded weights, most of a session's memory, which SEAL's pool keeps after the session).
    """
    cfg = weights.config
    t0 = time.perf_counter()
    ch.session.set_idle_timeout(setup_idle)
    net = ch.session
    limits = net.max_message, net.max_buffered
    # A request is a few hundred bytes: until it is accepted, a client cannot make the server
    # buffer more than REQUEST_BUDGET (the plan's limits apply after).
    net.max_message = net.max_buffered = REQUEST_BUDGET
    with ch.phase("setup"):
        await ch.send({"config": cfg.to_json(), "model_id": model_id}, tag="setup/model")
        req = await ch.recv(tag="setup/request")
        try:
            options, shape, union_bits = _check_request(
                req, cfg, allow_insecure, max_batch, max_tokens
            )
        except SessionRefused as exc:
            await ch.send({"ok": False, "error": str(exc)}, tag="setup/answer")
            raise
        net.max_message, net.max_buffered = limits
        deadline = session_timeout or session_deadline(cfg, shape, options)
        ch.session.set_deadline(deadline)
        answer = {"ok": True, "union_bits": union_bits, "deadline": deadline}
        await ch.send(answer, tag="setup/answer")
        p = await setup_inference(
            ch,
            prg or PRG(),
            cfg,
            weights,
            shape,
            options,
            union_bits=union_bits,
            skip_zero_blocks=skip_zero_blocks,
            cache_budget=cache_budget,
        )
    ch.session.set_idle_timeout(None)  # online: the per-wait timeout and the deadline
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    await secure_forward(p, cfg, weights, None, shape, options, progress)
    return SessionResult(None, time.perf_counter() - t1, setup_s, ch.stats)


async def client_session(
    ch: Channel,
    inputs: np.ndarray | Callable[[ModelConfig], np.ndarray],
    *,
    options: RunOptions | None = None,
    prg: PRG | None = None,
    progress: Progress | None = None,
) -> SessionResult:
    """The client's side: sends its request, runs the secure forward pass, returns the output.

    ``inputs``: patch features (B, T, patch_dim) or token ids (B, T) (a single sequence without
    the batch axis is accepted), or a function making them from the server's config (e.g. to
    truncate a tokenized text to its ``seq_len``). Inputs that do not fit the server's model
    (:func:`check_inputs`) end the session before any cryptography, with
    :class:`InputError`. The client keeps to the deadline the server announces.
    """
    options = options or RunOptions()
    t0 = time.perf_counter()
    with ch.phase("setup"):
        model = await ch.recv(tag="setup/model")
        if not (isinstance(model, dict) and isinstance(model.get("config"), str)):
            raise SessionRefused(f"the server sent a malformed model description {quoted(model)}")
        cfg = ModelConfig.from_json(model["config"])
        x = check_inputs(cfg, inputs(cfg) if callable(inputs) else inputs)
        shape = (int(x.shape[0]), int(x.shape[1]))
        request = {
            "strategy": options.strategy,
            "shape": list(shape),
            "capacity": options.capacity,
            "capacity_factor": options.capacity_factor,
        }
        await ch.send(request, tag="setup/request")
        answer = await ch.recv(tag="setup/answer")
        if not isinstance(answer, dict):
            raise SessionRefused(f"the server sent a malformed answer {quoted(answer)}")
        if not answer.get("ok"):
            raise SessionRefused(f"the server refused: {answer.get('error')}")
        union_bits, deadline = answer.get("union_bits"), answer.get("deadline")
        if not (isinstance(union_bits, int) and FLOOD_UNION_BITS <= union_bits <= MAX_UNION_BITS):
            raise SessionRefused(f"the server sent a bad flooding budget {quoted(union_bits)}")
        if isinstance(deadline, int | float) and 0 < deadline < math.inf:
            ch.session.set_deadline(float(deadline) + DEFAULT_SETUP_IDLE)  # the server ends first
        p = await setup_inference(
            ch, prg or PRG(), cfg, None, shape, options, union_bits=union_bits
        )
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = await secure_forward(p, cfg, None, x, shape, options, progress)
    return SessionResult(
        out, time.perf_counter() - t1, setup_s, ch.stats, cfg, model.get("model_id")
    )


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

"""Private text generation on shares with a secret-shared KV cache: greedy decoding, or
sampling (temperature, top-k) with the client's Gumbel noise.

Both parties run :func:`secure_generate` (SPMD), the server with the weights, the client with
its prompt's token ids. Per generated token (one *step*, forks ``step{i}``)::

    step 0   forward pass on the prompt (B, T): every layer's K, V stay shared in the
             KVCache; final norm + LM head on each sequence's last row only
    step i   forward pass on the previous token (B, 1) at position T + i − 1: its q, k, v,
             RoPE at that position, attention over the cached window and itself (causal by
             construction), its k, v appended; MoE on one token (``select``: bytes do not grow
             with E)
    then     the next token on shares (:func:`secmoe.ops.sampling.next_token`): argmax over
             the vocabulary (a tournament carrying the index: V − 1 comparisons, ⌈log2 V⌉
             levels), or with top-k the k largest logits first; the index revealed to the
             client only; the client tells the server whether to go on (``gen/more``) and
             feeds the token back as its secret input (one-hot shared by the client,
             embedded by HE, as any input)

Without the cache (``use_cache=False``, the baseline) step i recomputes the whole prefix
(B, T + i). Sampling (``noise``): before the argmax the client adds τ·Gumbel noise from its
own PRG to its share of the logits (local), so the argmax is a sample of softmax(logits/τ)
and the messages are those of greedy decoding; with ``top_k`` (public: it shapes the
messages) the noise goes on the k largest logits, a sample of softmax(logits/τ) restricted to
them (:mod:`secmoe.ops.sampling`).

Who learns what: the client learns the generated ids (and nothing else about the weights); the
server learns neither the prompt nor the generated text, nor which experts they used; it
learns the batch shape, the strategy, max_new_tokens, top-k if the client asks for it (not the
temperature, nor whether the client samples) and how many tokens were generated (when the
client stops at an end-of-sequence id; pass no EOS id to hide that too). The server's
transcript of two prompts of the same length and the same number of steps is identical
(direction, path, tag, bytes), see tests/model/test_generate.py.

Memory: per party, each sequence's cache grows by
:meth:`~secmoe.model.secure.KVCache.elements_per_token` ring elements (2·layers·kv_heads·
d_head, 8 bytes each) per position, up to the sliding window where the model has one. The
server encodes its weights once, in setup, for the prompt's rows and for the 1-row steps
(:func:`generation_shapes`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..crypto.he_params import FLOOD_UNION_BITS, HE_16K
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING
from ..net import Channel
from ..net.stats import Delta
from ..ops.linear import DEFAULT_CACHE_BUDGET
from ..ops.sampling import Noise, check_sampling, next_token
from ..protocols.party import Party
from ..protocols.shares import reveal
from .config import ModelConfig
from .secure import (
    KVCache,
    RunOptions,
    UnsupportedFeature,
    check_roles,
    check_supported,
    forward_pass,
)
from .session import (
    MAX_UNION_BITS,
    ServeContext,
    ServerLimits,
    SessionRefused,
    SessionResult,
    check_inputs,
    check_request,
    flood_demand,
    keep_deadline,
    plan_flooding,
    planned_memory,
    prepare_weights,
    session_deadline,
    setup_inference,
)
from .weights import ModelWeights

DEFAULT_OPTIONS = RunOptions()


@dataclass(frozen=True)
class TokenStep:
    """One generated token: its ids (client; ``None`` on the server) and what the step cost
    (payload bytes each way, messages, rounds on the critical path, wall seconds)."""

    index: int
    ids: tuple[int, ...] | None
    bytes_c2s: int
    bytes_s2c: int
    messages: int
    rounds: int
    seconds: float

    @property
    def bytes_total(self) -> int:
        return self.bytes_c2s + self.bytes_s2c

    def as_dict(self) -> dict:
        """JSON-ready, with ``bytes`` (both directions)."""
        ids = None if self.ids is None else list(self.ids)
        return {**dataclasses.asdict(self), "ids": ids, "bytes": self.bytes_total}


@dataclass
class Generation:
    """A generation's result: the new ids (client: (B, n) int64; ``None`` on the server), why
    it stopped (``"eos"`` or ``"max_new_tokens"``), per-token costs and this party's KV cache
    size at the end (bytes; 0 without the cache)."""

    ids: np.ndarray | None
    stopped: str
    steps: list[TokenStep] = field(default_factory=list)
    cache_bytes: int = 0


def check_generation(cfg: ModelConfig, options: RunOptions = DEFAULT_OPTIONS) -> None:
    """Raise :class:`~secmoe.model.secure.UnsupportedFeature` unless ``cfg`` is a decoder the
    step-by-step runner computes exactly: token input, causal attention, an LM head, no
    relative-position bias (not cached) and no expert capacity (a per-sequence capacity drops
    different tokens when they come one at a time)."""
    check_supported(cfg, options)
    need = {
        "token input": cfg.input == "tokens",
        "causal attention": cfg.causal,
        "an LM head": cfg.head == "lm",
        "no relative-position bias": cfg.position != "relative",
        "no expert capacity": cfg.expert_capacity is None and not options.explicit_capacity,
    }
    missing = [what for what, ok in need.items() if not ok]
    if missing:
        raise UnsupportedFeature(f"{cfg.name}: generation needs {', '.join(missing)}")


def generation_shapes(
    shape: tuple[int, int], max_new_tokens: int, use_cache: bool = True
) -> list[tuple[int, int]]:
    """The (B, rows) of every forward pass of a generation, largest first, each once: the
    prompt and 1-row steps (the LM head always runs on B rows), or, without the cache, every
    prefix length."""
    b, t = shape
    lengths = {t, 1} if use_cache else {*(t + i for i in range(max_new_tokens)), 1}
    return [(b, n) for n in sorted(lengths, reverse=True)]


def check_length(cfg: ModelConfig, t: int, max_new_tokens: int) -> None:
    """``ValueError`` unless ``max_new_tokens`` ≥ 1 and the prompt and the fed-back tokens fit
    the model's positions (T + max_new_tokens − 1 ≤ seq_len)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if t < 1 or t + max_new_tokens - 1 > cfg.seq_len:
        raise ValueError(
            f"{cfg.name}: a prompt of {t} tokens and {max_new_tokens} new ones need "
            f"{t + max_new_tokens - 1} positions, the model has {cfg.seq_len}"
        )


def generation_demand(
    cfg: ModelConfig,
    shape: tuple[int, int],
    max_new_tokens: int,
    options: RunOptions,
    use_cache: bool = True,
) -> dict[str, int]:
    """An upper bound on the coefficients each HE key returns over a whole generation (for
    κ, see :func:`secmoe.model.session.flood_demand`): every pass as a forward pass of its rows
    (the LM head counted on every row), plus, with the cache, each step's scores and
    products over its keys."""
    b, t = shape
    total: dict[str, int] = {}

    def add(d: dict[str, int]) -> None:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v

    if not use_cache:
        for i in range(max_new_tokens):
            add(flood_demand(cfg, (b, t + i), options))
        return total
    add(flood_demand(cfg, (b, t), options))
    keys = t + max_new_tokens if cfg.sliding_window is None else cfg.sliding_window
    step = flood_demand(cfg, (b, 1), options)
    step[HE_16K.name] += 2 * cfg.n_layers * b * cfg.n_heads * keys  # qkᵀ and pv over the keys
    for _ in range(max_new_tokens - 1):
        add(step)
    return total


async def secure_generate(
    p: Party,
    cfg: ModelConfig,
    weights: ModelWeights | None,
    prompt: np.ndarray | None,
    shape: tuple[int, int],
    max_new_tokens: int,
    *,
    eos_id: int | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    use_cache: bool = True,
    on_token: Callable[[TokenStep], None] | None = None,
    noise: Noise | None = None,
    top_k: int | None = None,
) -> Generation:
    """Private generation of up to ``max_new_tokens`` tokens after the prompt: greedy, or
    sampled with the client's ``noise`` (:func:`secmoe.ops.sampling.gumbel_noise`).

    Args:
        p: this party (OT pool and HE set up, weights prepared: :func:`setup_generation`).
        cfg: the public config (a decoder: :func:`check_generation`).
        weights: the model (server) or ``None`` (client).
        prompt: the client's token ids (B, T), ``None`` on the server.
        shape: (B, T), public.
        max_new_tokens: the most tokens to generate (public).
        eos_id: the client stops after every sequence has produced it (client only; the
            server follows the client's ``gen/more`` answer).
        options: the public run options (MoE strategy).
        use_cache: the secret-shared KV cache; without it each step recomputes the prefix.
        on_token: called after each token (the client sees its ids).
        noise: client only: a function of a shape — the logits' (B, V), or (B, k) with
            top-k — giving float noise the client adds to its share of those values before
            the argmax (local: the transcript is the one without noise). Gumbel noise
            scaled by a temperature τ samples from softmax(logits/τ)
            (:func:`secmoe.ops.sampling.gumbel_noise`).
        top_k: restrict to the k largest logits (public, both parties; ``None``: all).

    Returns:
        the :class:`Generation` (ids on the client only).

    Raises:
        UnsupportedFeature: before any message, for a model :func:`check_generation` refuses.
        ValueError: arguments that do not fit (:func:`check_length`); a malformed answer from
            the peer.
    """
    check_generation(cfg, options)
    check_roles(p, weights, prompt)
    if noise is not None and p.role != "client":
        raise ValueError("the sampling noise is the client's")
    check_sampling(None, top_k, cfg.vocab_size)
    b, t = shape
    check_length(cfg, t, max_new_tokens)
    client = p.role == "client"
    seq = None if prompt is None else np.asarray(prompt, dtype=np.int64).reshape(b, t)
    cache = KVCache.empty(cfg, b) if use_cache else None
    done = np.zeros(b, bool)
    steps: list[TokenStep] = []
    stopped = "max_new_tokens"
    for i in range(max_new_tokens):
        snap, t0 = p.ch.stats.snapshot(), time.perf_counter()
        f = p.fork(f"step{i}")
        rows = (b, 1) if use_cache and i else (b, t + i)
        inputs = None if seq is None else seq[:, -rows[1] :]
        logits = await forward_pass(
            f, cfg, weights, inputs, rows, options, cache=cache, last_only=True
        )
        index = await next_token(f, logits[:, 0], top_k, noise)
        token = await reveal(f.fork("token"), index, to="client")
        more = i + 1 < max_new_tokens
        ids = None
        if client:
            if (token >= np.uint64(cfg.vocab_size)).any():
                raise ValueError("the revealed token id is outside the vocabulary")
            new = token.astype(np.int64)
            ids = tuple(int(x) for x in new)
            seq = np.concatenate([seq, new[:, None]], axis=1)
            if eos_id is not None:
                done |= new == eos_id
            if done.all():
                stopped, more = "eos", False
            if i + 1 < max_new_tokens:
                await f.ch.send(more, tag="gen/more")
        elif more:
            more = await f.ch.recv(tag="gen/more")
            if not isinstance(more, bool):
                raise ValueError("the client sent a malformed continuation flag")
            stopped = "max_new_tokens" if more else "eos"
        d = p.ch.stats.since(snap)
        step = TokenStep(
            i, ids, d.bytes_c2s, d.bytes_s2c, d.messages, d.rounds, time.perf_counter() - t0
        )
        steps.append(step)
        if on_token is not None:
            on_token(step)
        if not more:
            break
    out = None if seq is None else seq[:, t:]
    return Generation(out, stopped, steps, 0 if cache is None else cache.nbytes)


async def setup_generation(
    ch: Channel,
    prg: PRG,
    cfg: ModelConfig,
    weights: ModelWeights | None,
    shape: tuple[int, int],
    max_new_tokens: int,
    options: RunOptions,
    *,
    use_cache: bool = True,
    union_bits: int = FLOOD_UNION_BITS,
    skip_zero_blocks: bool = False,
    cache_budget: int = DEFAULT_CACHE_BUDGET,
    pool: Any = None,
) -> Party:
    """OT pool and HE keys once for the whole generation (see
    :func:`secmoe.model.session.setup_inference`), the server's weights encoded for every pass
    shape (:func:`generation_shapes`) in the setup phase (with a ``pool``, on its workers)."""
    shapes = generation_shapes(shape, max_new_tokens, use_cache)
    p = await setup_inference(
        ch,
        prg,
        cfg,
        weights,
        shapes[0],
        options,
        union_bits=union_bits,
        skip_zero_blocks=skip_zero_blocks,
        cache_budget=cache_budget,
        pool=pool,
    )
    if weights is not None:
        for s in shapes[1:]:
            prepare_weights(p, weights, s, options)
    return p


#: The session kind of a generation request (``secmoe serve`` registers :func:`serve_generate`).
GENERATE = "generate"
GENERATE_FIELDS = ("kind", "strategy", "shape", "max_new_tokens", "cache", "top_k")
#: Seconds a session's deadline grows by per generated token (beyond the plan's rate).
STEP_SECONDS = 30.0
#: Seconds per token, top-k round and 1000 vocabulary entries (top-k's tournaments).
TOPK_SECONDS = 1.0


@dataclass(frozen=True)
class GeneratePlan:
    """An accepted generation request."""

    options: RunOptions
    shape: tuple[int, int]
    max_new_tokens: int
    use_cache: bool
    union_bits: int
    top_k: int | None = None


def check_generate_request(req: dict, cfg: ModelConfig, limits: ServerLimits) -> GeneratePlan:
    """The plan of a ``generate`` request, every value checked against the server's
    :class:`~secmoe.model.session.ServerLimits` (as an inference request on the longest
    sequence, T + max_new_tokens − 1, for batch size, tokens and strategy);
    :class:`SessionRefused` names the first that is not acceptable."""
    unknown = sorted(str(k)[:40] for k in set(req) - set(GENERATE_FIELDS))
    if unknown:
        raise SessionRefused(f"unknown generate request fields {', '.join(unknown)}")
    n, cache, shape = req.get("max_new_tokens"), req.get("cache", True), req.get("shape")
    top_k = req.get("top_k")
    try:
        check_sampling(None, top_k, cfg.vocab_size)
    except ValueError as exc:
        raise SessionRefused(str(exc)) from None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cfg.seq_len:
        raise SessionRefused(f"max_new_tokens must be an integer in [1, {cfg.seq_len}]")
    if not isinstance(cache, bool):
        raise SessionRefused("cache must be true or false")
    ok_shape = isinstance(shape, list) and len(shape) == 2 and all(type(v) is int for v in shape)
    if not ok_shape or shape[1] < 1:
        raise SessionRefused("malformed batch shape: [B, T] with T ≥ 1")
    b, t = shape
    try:
        check_length(cfg, t, n)
    except ValueError as exc:
        raise SessionRefused(str(exc)) from None
    longest = {"strategy": req.get("strategy"), "shape": [b, t + n - 1]}
    options = check_request(longest, cfg, limits).options
    try:
        check_generation(cfg, options)
    except UnsupportedFeature as exc:
        raise SessionRefused(str(exc)) from None
    demand = generation_demand(cfg, (b, t), n, options, cache)
    union_bits, _ = plan_flooding(demand, 1, limits.union_bits)
    return GeneratePlan(options, (b, t), n, cache, union_bits, top_k)


def generation_deadline(cfg: ModelConfig, plan: GeneratePlan) -> float:
    """The session's deadline (s): the plan's for every row computed, plus
    :data:`STEP_SECONDS` per token (and :data:`TOPK_SECONDS` per top-k round and 1000
    vocabulary entries)."""
    b, t = plan.shape
    n = plan.max_new_tokens
    rows = t + n if plan.use_cache else sum(t + i for i in range(n))
    topk = TOPK_SECONDS * (plan.top_k or 0) * b * cfg.vocab_size / 1000
    return session_deadline(cfg, (b, rows), plan.options) + (STEP_SECONDS + topk) * n


async def serve_generate(ctx: ServeContext, req: dict) -> SessionResult:
    """The ``generate`` session kind, server side: checks the request
    (:func:`check_generate_request`), reserves the planned memory, accepts with κ and the
    deadline, sets up once (:func:`setup_generation`), then follows the client through
    :func:`secure_generate`. The server learns B, T, max_new_tokens, the strategy and how many
    tokens were generated; not the prompt nor the tokens."""
    ch, lim, weights = ctx.ch, ctx.limits, ctx.weights
    cfg = weights.config
    with ch.phase("setup"):
        plan = await ctx.check(lambda: check_generate_request(req, cfg, lim))
    shapes = generation_shapes(plan.shape, plan.max_new_tokens, plan.use_cache)
    async with ctx.reserve(
        lambda: sum(planned_memory(weights, s, plan.options, lim.cache_budget) for s in shapes)
    ):
        deadline = lim.session_timeout or generation_deadline(cfg, plan)
        with ch.phase("setup"):
            ch.session.set_deadline(deadline)
            await ctx.accept({"union_bits": plan.union_bits, "deadline": deadline})
            p = await setup_generation(
                ch,
                ctx.prg,
                cfg,
                weights,
                plan.shape,
                plan.max_new_tokens,
                plan.options,
                use_cache=plan.use_cache,
                union_bits=plan.union_bits,
                skip_zero_blocks=lim.skip_zero_blocks,
                cache_budget=lim.cache_budget,
                pool=lim.pool,
            )
        setup_s = time.perf_counter() - ctx.started
        ch.session.set_idle_timeout(None)
        t1 = time.perf_counter()
        gen = await secure_generate(
            p,
            cfg,
            weights,
            None,
            plan.shape,
            plan.max_new_tokens,
            options=plan.options,
            use_cache=plan.use_cache,
            top_k=plan.top_k,
        )
    return SessionResult(None, time.perf_counter() - t1, setup_s, ch.stats, batches=len(gen.steps))


@dataclass
class ClientGeneration:
    """The client's generation session: the new ids, per-token costs, the server's config
    and model id, setup seconds and bytes."""

    generation: Generation
    config: ModelConfig
    model_id: str | None
    setup_seconds: float
    setup: Delta
    seconds: float


async def generate_session(
    ch: Channel,
    prompt: np.ndarray | Callable[[ModelConfig], np.ndarray],
    max_new_tokens: int,
    *,
    eos_id: int | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    use_cache: bool = True,
    prg: PRG | None = None,
    on_token: Callable[[TokenStep], None] | None = None,
    noise: Noise | None = None,
    top_k: int | None = None,
) -> ClientGeneration:
    """The client's side of a ``generate`` session: receives the server's config, checks the
    prompt (token ids (B, T) or (T,), or a function of the config making them;
    :class:`~secmoe.model.session.InputError` before any cryptography) and the length, asks,
    sets up once and generates (:func:`secure_generate`; ``noise``: the client's sampling
    noise, see :func:`secmoe.ops.sampling.gumbel_noise`; ``top_k``: asked of the server);
    :class:`SessionRefused` with the server's reason if it refuses."""
    t0, snap = time.perf_counter(), ch.stats.snapshot()
    with ch.phase("setup"):
        model = await ch.recv(tag="setup/model")
        if not (isinstance(model, dict) and isinstance(model.get("config"), str)):
            raise SessionRefused("the server sent a malformed model description")
        cfg = ModelConfig.from_json(model["config"])
        x = check_inputs(cfg, prompt(cfg) if callable(prompt) else prompt)
        shape = (int(x.shape[0]), int(x.shape[1]))
        check_generation(cfg, options)
        check_length(cfg, shape[1], max_new_tokens)
        check_sampling(None, top_k, cfg.vocab_size)
        request = {
            "kind": GENERATE,
            "strategy": options.strategy,
            "shape": list(shape),
            "max_new_tokens": max_new_tokens,
            "cache": use_cache,
            "top_k": top_k,
        }
        await ch.send(request, tag="setup/request")
        answer = await ch.recv(tag="setup/answer")
        if not isinstance(answer, dict):
            raise SessionRefused("the server sent a malformed answer")
        if not answer.get("ok"):
            raise SessionRefused(f"the server refused: {answer.get('error')}")
        union_bits = answer.get("union_bits")
        if not (isinstance(union_bits, int) and 1 <= union_bits <= MAX_UNION_BITS):
            raise SessionRefused("the server sent a bad flooding budget")
        keep_deadline(ch, answer.get("deadline"))
        p = await setup_generation(
            ch,
            prg or PRG(),
            cfg,
            None,
            shape,
            max_new_tokens,
            options,
            use_cache=use_cache,
            union_bits=union_bits,
        )
    setup_s, setup = time.perf_counter() - t0, ch.stats.since(snap)
    t1 = time.perf_counter()
    gen = await secure_generate(
        p,
        cfg,
        None,
        x,
        shape,
        max_new_tokens,
        eos_id=eos_id,
        options=options,
        use_cache=use_cache,
        on_token=on_token,
        noise=noise,
        top_k=top_k,
    )
    return ClientGeneration(
        gen, cfg, model.get("model_id"), setup_s, setup, time.perf_counter() - t1
    )


def cache_bytes_per_token(cfg: ModelConfig, batch: int = 1) -> int:
    """Bytes one position adds to each party's KV cache (8 per ring element)."""
    return KVCache.elements_per_token(cfg) * batch * DEFAULT_RING.bits // 8


__all__ = [
    "GENERATE",
    "ClientGeneration",
    "GeneratePlan",
    "Generation",
    "TokenStep",
    "cache_bytes_per_token",
    "check_generate_request",
    "check_generation",
    "check_length",
    "generate_session",
    "generation_deadline",
    "generation_demand",
    "generation_shapes",
    "secure_generate",
    "serve_generate",
    "setup_generation",
]

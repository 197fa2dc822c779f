"""One private-inference session, the same over the in-memory channel and over TCP.

Message flow (after the transport's handshake)::

    server                                          client
      ── setup/model: public config, weights digest ─▶   checks its input against the config
      ◀─ setup/request: strategy, batch shape ────────
      ── setup/answer: ok, or the reason it refuses ─▶   (e.g. an INSECURE strategy not allowed)
      … OT pool and HE keys (setup phase) …
      … secure_forward (online phase) …                  the client gets the output

The server never learns the client's input or routing; it learns the batch shape (B, T) and
the chosen strategy. The client learns the public config and a digest of the weights (so a
transcript says which model answered), and the output.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..crypto.prg import PRG
from ..net import Channel
from ..ops.linear import prepare, prepare_select, select_chunk, setup_he
from ..ops.moe import INSECURE_STRATEGIES
from ..protocols.party import Party
from .config import ModelConfig
from .reference import batched
from .secure import Progress, RunOptions, moe_spec, secure_forward
from .weights import ModelWeights, to_tensors

DEFAULT_MAX_BATCH = 64


class SessionRefused(ValueError):
    """The server refused the client's request (the message says why)."""


@dataclass
class SessionResult:
    """What a session produced: the output (client), timings and the channel's figures."""

    output: np.ndarray | None
    seconds: float
    setup_seconds: float
    stats: Any = field(repr=False, default=None)


def weights_digest(weights: ModelWeights) -> str:
    """SHA-256 over the tensors (name, shape, dtype, bytes), in name order."""
    h = hashlib.sha256()
    for name, arr in sorted(to_tensors(weights).items()):
        h.update(f"{name}:{arr.shape}:{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _weights_to_prepare(
    weights: ModelWeights, shape: tuple[int, int], options: RunOptions
) -> list[tuple[np.ndarray, int]]:
    """(weight, rows) of every plaintext-weight product whose row count is known in setup."""
    cfg = weights.config
    b, t = shape
    rows = b * t
    out: list[tuple[np.ndarray, int]] = []
    first = weights.patch_proj if cfg.input == "patches" else weights.embed
    out.append((first, rows))
    for i, layer in enumerate(weights.layers):
        a = layer.attn
        out += [(a.wq, rows), (a.wk, rows), (a.wv, rows), (a.wo, rows)]
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
) -> Party:
    """OT pool and HE keys (both parties); the server then encodes its weights for this batch
    shape (locally, in the setup phase, so no encoding time hides in the measured run)."""
    rows = shape[0] * shape[1]
    select = options.strategy == "select" and bool(cfg.moe_layers)
    items = select_chunk(rows, cfg.n_experts) * cfg.n_experts if select else 0
    p = await setup_he(await Party.setup(ch, prg), select_items=items)
    if weights is not None:
        for w, r in _weights_to_prepare(weights, shape, options):
            prepare(p, w, r)
        if select:
            for i in cfg.moe_layers:
                f = weights.layers[i].ffn
                prepare_select(p, [m for m in (f.w1, f.v) if m is not None], rows)
                prepare_select(p, [f.w2], rows)
    return p


def _check_request(
    req: Any, cfg: ModelConfig, allow_insecure: bool, max_batch: int
) -> tuple[RunOptions, tuple]:
    if not isinstance(req, dict):
        raise SessionRefused("malformed request")
    strategy, shape = req.get("strategy"), req.get("shape")
    capacity, factor = req.get("capacity"), req.get("capacity_factor")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) for v in shape)):
        raise SessionRefused(f"malformed batch shape {shape!r}")
    b, t = shape
    if not 1 <= b <= max_batch:
        raise SessionRefused(
            f"batch size {b} outside [1, {max_batch}] (this server's limit: send at most "
            f"{max_batch} sequences per session)"
        )
    if not 1 <= t <= cfg.seq_len:
        raise SessionRefused(f"sequence length {t} outside [1, {cfg.seq_len}]")
    if not (capacity is None or isinstance(capacity, int)) or not (
        factor is None or isinstance(factor, float | int)
    ):
        raise SessionRefused("malformed capacity")
    try:
        options = RunOptions(strategy, factor, capacity)
    except (TypeError, ValueError) as exc:
        raise SessionRefused(str(exc)) from None
    if strategy in INSECURE_STRATEGIES and not allow_insecure:
        raise SessionRefused(
            f"strategy {strategy!r} is INSECURE (it reveals the routing) and this server does "
            "not allow it"
        )
    return options, (b, t)


async def serve_session(
    ch: Channel,
    weights: ModelWeights,
    *,
    allow_insecure: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
    prg: PRG | None = None,
    progress: Progress | None = None,
) -> SessionResult:
    """The server's side of one session. Raises :class:`SessionRefused` after telling the
    client why, if its request is not acceptable (an INSECURE strategy not allowed, or more
    than ``max_batch`` sequences: the server's memory grows with the batch)."""
    cfg = weights.config
    t0 = time.perf_counter()
    with ch.phase("setup"):
        await ch.send(
            {"config": cfg.to_json(), "digest": weights_digest(weights)}, tag="setup/model"
        )
        req = await ch.recv(tag="setup/request")
        try:
            options, shape = _check_request(req, cfg, allow_insecure, max_batch)
        except SessionRefused as exc:
            await ch.send({"ok": False, "error": str(exc)}, tag="setup/answer")
            raise
        await ch.send({"ok": True}, tag="setup/answer")
        p = await setup_inference(ch, prg or PRG(), cfg, weights, shape, options)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    await secure_forward(p, cfg, weights, None, shape, options, progress)
    return SessionResult(None, time.perf_counter() - t1, setup_s, ch.stats)


async def client_session(
    ch: Channel,
    inputs: np.ndarray,
    *,
    options: RunOptions | None = None,
    prg: PRG | None = None,
    progress: Progress | None = None,
) -> SessionResult:
    """The client's side: sends its request, runs the secure forward pass, returns the output.

    ``inputs``: patch features (B, T, patch_dim) or token ids (B, T) (a single sequence without
    the batch axis is accepted).
    """
    options = options or RunOptions()
    t0 = time.perf_counter()
    with ch.phase("setup"):
        model = await ch.recv(tag="setup/model")
        cfg = ModelConfig.from_json(model["config"])
        x, _ = batched(cfg, inputs)
        shape = (int(x.shape[0]), int(x.shape[1]))
        request = {
            "strategy": options.strategy,
            "shape": list(shape),
            "capacity": options.capacity,
            "capacity_factor": options.capacity_factor,
        }
        await ch.send(request, tag="setup/request")
        answer = await ch.recv(tag="setup/answer")
        if not answer.get("ok"):
            raise SessionRefused(f"the server refused: {answer.get('error')}")
        p = await setup_inference(ch, prg or PRG(), cfg, None, shape, options)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = await secure_forward(p, cfg, None, x, shape, options, progress)
    return SessionResult(out, time.perf_counter() - t1, setup_s, ch.stats)


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

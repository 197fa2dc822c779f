"""What the private-inference commands share (:mod:`secmoe.commands`): the application's
public parameters, the event loop, run options from arguments, capacity figures, the server's
log and memory helpers. Nothing here prints a command's result (that is
:mod:`secmoe.commands.output`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import gc
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from .model.config import ModelConfig
from .model.expert_store import ExpertStore
from .model.secure import RunOptions, moe_spec
from .model.weights import ModelWeights, load_bundled, load_weights
from .net import Channel
from .net.stats import Stats
from .ops.moe import INSECURE_STRATEGIES

#: The public parameters a client and a server of ``secmoe serve``/``infer`` must share.
APP_PARAMS = {"app": "secmoe-infer", "ring": [64, 18]}


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional (Linux only)
        return asyncio.run(coro)
    return uvloop.run(coro)


def load_model(path: str, experts: ExpertStore | None = None) -> ModelWeights:
    """``bundled`` or a safetensors file / directory; the experts in ``experts`` if given
    (:func:`~secmoe.model.weights.load_weights`)."""
    return load_bundled(experts) if path == "bundled" else load_weights(path, experts=experts)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The run options of ``--strategy``, ``--capacity``, ``--capacity-factor``,
    ``--norm-products``."""
    norms = getattr(args, "norm_products", "ot")  # generation: one-row steps, by COTs
    return RunOptions(args.strategy, args.capacity_factor, args.capacity, norms)


def reference_capacity(weights: ModelWeights, options: RunOptions, tokens: int) -> int:
    """The capacity C a secure run uses (every strategy), as the plaintext reference's
    ``capacity`` argument."""
    return moe_spec(weights.config, options).capacity_for(tokens)


def capacity_summary(cfg: ModelConfig, options: RunOptions, tokens: int) -> dict[str, Any]:
    """Which capacity ran (C per sequence and expert; C = T drops nothing), the model's own,
    and whether they differ (an explicit --capacity/--capacity-factor)."""
    ran = moe_spec(cfg, options).capacity_for(tokens)
    model = moe_spec(cfg).capacity_for(tokens)
    return {
        "tokens": tokens,
        "capacity": ran,
        "model_capacity": model,
        "capacity_differs": ran != model,
    }


def capacity_line(s: dict[str, Any]) -> str:
    """The printed summary's capacity sentence for :func:`capacity_summary`'s figures."""
    line = f"capacity C = {s['capacity']} per sequence and expert (T = {s['tokens']}"
    line += ": nothing dropped)" if s["capacity"] >= s["tokens"] else ")"
    if s["capacity_differs"]:
        return f"{line}; DIFFERS from the model's C = {s['model_capacity']} (asked for)"
    return f"{line}, the model's own"


def warn_insecure(strategy: str) -> None:
    """A warning on stderr for an INSECURE strategy."""
    if strategy in INSECURE_STRATEGIES:
        print(
            f"WARNING: strategy {strategy!r} is INSECURE: it reveals every token's expert to "
            "the server. Use it only to measure cost.",
            file=sys.stderr,
        )


def layer_table(stats: Stats) -> dict[str, dict[str, int]]:
    """Bytes and messages per top-level path of the online phase (each fork's OT traffic is
    inside it; ``ot`` is the session's shared silent-OT streams). A session's batches after
    the first run under ``batch{i}/``: their rows are summed into the first's."""
    rows: dict[str, dict[str, int]] = {}
    for path, c in stats.by_path(phase="online").items():
        parts = path.split("/")
        if parts[0].startswith("batch") and len(parts) > 1:
            parts = parts[1:]
        row = rows.setdefault(parts[0] or "(root)", {"bytes_c2s": 0, "bytes_s2c": 0, "messages": 0})
        row["bytes_c2s"] += c.bytes_c2s
        row["bytes_s2c"] += c.bytes_s2c
        row["messages"] += c.messages
    return rows


def log(msg: str) -> None:
    """One server log line on stderr: UTC time, then the message."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} {msg}", file=sys.stderr, flush=True)


def rss_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def release_memory() -> None:
    """Return a finished session's memory to the OS: collect garbage, then ask glibc to give
    back its free heap (``malloc_trim``; skipped on other C libraries)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def mb(n: int | None) -> str:
    """A byte count for a log line, in MB (``n/a`` if unknown)."""
    return "n/a" if n is None else f"{n / 1e6:.0f} MB"


def peer(ch: Channel) -> str:
    """The peer's address of a TCP channel, as ``host:port`` (``?`` otherwise)."""
    writer = getattr(ch.session.link, "writer", None)
    addr = writer.get_extra_info("peername") if writer is not None else None
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else "?"


__all__ = [
    "APP_PARAMS",
    "capacity_line",
    "capacity_summary",
    "layer_table",
    "load_model",
    "log",
    "options_from_args",
    "reference_capacity",
    "run_async",
    "warn_insecure",
]

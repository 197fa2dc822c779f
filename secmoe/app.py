"""The private-inference commands: ``secmoe demo``, ``secmoe serve``, ``secmoe infer``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .bench.runner import instrument
from .model.fixed import run_fixed
from .model.reference import capacity_of
from .model.reference import run as run_float
from .model.secure import RunOptions, moe_spec
from .model.session import SessionRefused, SessionResult, client_session, serve_session
from .model.weights import ModelWeights, load_bundled, load_heldout, load_weights
from .net import NetError, run_pair
from .net.memory import memory_pair
from .net.stats import Stats
from .net.tcp import TLSConfig, connect, listen, parse_hostport
from .net.transcript import TranscriptWriter
from .ops.moe import INSECURE_STRATEGIES

APP_PARAMS = {"app": "secmoe-infer", "ring": [64, 18]}


def load_model(path: str) -> ModelWeights:
    """``bundled`` or a safetensors file / directory."""
    return load_bundled() if path == "bundled" else load_weights(path)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The run options of ``--strategy``, ``--capacity``, ``--capacity-factor``."""
    return RunOptions(args.strategy, args.capacity_factor, args.capacity)


def reference_capacity(weights: ModelWeights, options: RunOptions, tokens: int) -> bool | int:
    """The plaintext reference's capacity argument matching a secure run's semantics."""
    if options.strategy != "dispatch":
        return False
    return capacity_of(
        weights.config, tokens, moe_spec(weights.config, options).capacity_for(tokens)
    )


def _warn_insecure(strategy: str) -> None:
    if strategy in INSECURE_STRATEGIES:
        print(
            f"WARNING: strategy {strategy!r} is INSECURE: it reveals every token's expert to "
            "the server. Use it only to measure cost.",
            file=sys.stderr,
        )


def layer_table(stats: Stats) -> dict[str, dict[str, int]]:
    """Bytes and messages per top-level path (each fork's OT traffic is inside it; ``ot`` is
    the session's shared silent-OT streams)."""
    rows: dict[str, dict[str, int]] = {}
    for path, c in stats.by_path(phase="online").items():
        key = path.split("/")[0] or "(root)"
        row = rows.setdefault(key, {"bytes_c2s": 0, "bytes_s2c": 0, "messages": 0})
        row["bytes_c2s"] += c.bytes_c2s
        row["bytes_s2c"] += c.bytes_s2c
        row["messages"] += c.messages
    return rows


def summarize(
    res: SessionResult,
    logits: np.ndarray,
    ref: np.ndarray,
    fixed: np.ndarray,
    labels: np.ndarray | None,
    strategy: str,
) -> dict[str, Any]:
    """The demo's figures: agreement, errors, time, bytes, rounds, per layer."""
    online = res.stats.total("online")
    secure_pred, ref_pred = logits.argmax(-1), ref.argmax(-1)
    out = {
        "strategy": strategy,
        "samples": len(logits),
        "agreement_with_plaintext": float((secure_pred == ref_pred).mean()),
        "max_abs_err_vs_float": float(np.abs(logits - ref).max()),
        "mean_abs_err_vs_float": float(np.abs(logits - ref).mean()),
        "max_abs_err_vs_fixed": float(np.abs(logits - fixed).max()),
        "seconds": res.seconds,
        "setup_seconds": res.setup_seconds,
        "bytes_c2s": online.bytes_c2s,
        "bytes_s2c": online.bytes_s2c,
        "setup_bytes": res.stats.total("setup").bytes_total,
        "rounds": res.stats.depth,
        "per_layer": layer_table(res.stats),
        "secure_pred": secure_pred.tolist(),
        "plaintext_pred": ref_pred.tolist(),
    }
    if labels is not None:
        out["secure_accuracy"] = float((secure_pred == labels).mean())
        out["plaintext_accuracy"] = float((ref_pred == labels).mean())
    return out


def print_summary(s: dict[str, Any]) -> None:
    """Human-readable demo output."""
    mb = 1e6
    print(f"strategy {s['strategy']}, {s['samples']} samples")
    print(f"{'sample':>6} {'secure':>6} {'plain':>6}")
    for i, (a, b) in enumerate(zip(s["secure_pred"], s["plaintext_pred"], strict=True)):
        print(f"{i:>6} {a:>6} {b:>6}{'' if a == b else '  <- differs'}")
    print(
        f"agreement with plaintext: {s['agreement_with_plaintext']:.2%}"
        + (
            f"; accuracy secure {s['secure_accuracy']:.2%}, plaintext {s['plaintext_accuracy']:.2%}"
            if "secure_accuracy" in s
            else ""
        )
    )
    print(
        f"logit error vs float: max {s['max_abs_err_vs_float']:.3g}, mean "
        f"{s['mean_abs_err_vs_float']:.3g}; vs fixed-point emulation: max "
        f"{s['max_abs_err_vs_fixed']:.3g}"
    )
    print(
        f"time {s['seconds']:.2f} s (+ setup {s['setup_seconds']:.2f} s); "
        f"{s['bytes_c2s'] / mb:.2f} MB c2s, {s['bytes_s2c'] / mb:.2f} MB s2c "
        f"(+ setup {s['setup_bytes'] / mb:.2f} MB); {s['rounds']} rounds"
    )
    print(f"{'part':16} {'c2s MB':>10} {'s2c MB':>10} {'messages':>9}")
    for name, row in s["per_layer"].items():
        print(
            f"{name:16} {row['bytes_c2s'] / mb:>10.3f} {row['bytes_s2c'] / mb:>10.3f} "
            f"{row['messages']:>9}"
        )


def _progress(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr (none with ``--json``)."""

    def progress(msg: str) -> None:
        if not quiet:
            print(f"  … {msg}", file=sys.stderr)

    return progress


def batches(n: int, size: int, progress: Callable[[str], None]) -> Iterator[slice]:
    """Slices of at most ``size`` of ``n`` sequences, one session each (telling progress)."""
    for start in range(0, n, size):
        stop = min(start + size, n)
        if n > size:
            progress(f"sequences {start}-{stop - 1} of {n} (one session per batch)")
        yield slice(start, stop)


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    weights = load_bundled()
    x, labels = load_heldout()
    if args.samples > len(x):
        raise ValueError(f"--samples {args.samples}: the held-out split has {len(x)} images")
    x, labels = x[: args.samples], labels[: args.samples]
    writer = TranscriptWriter(args.transcript) if args.transcript else None
    cch, sch = memory_pair()
    instrument(cch, args.net, writer)
    instrument(sch, args.net, None)

    progress = _progress(args.json)
    options = options_from_args(args)
    deadline = time.monotonic() + args.timeout
    results = []
    try:
        for part in batches(len(x), args.batch, progress):
            res, _ = await run_pair(
                client_session(cch, x[part], options=options, progress=progress),
                serve_session(sch, weights, allow_insecure=True, max_batch=args.batch),
                timeout=max(deadline - time.monotonic(), 0.0),
            )
            results.append(res)
    finally:
        await cch.close()
        await sch.close()
        if writer is not None:
            writer.close()
    res = SessionResult(
        np.concatenate([r.output for r in results]),
        sum(r.seconds for r in results),
        sum(r.setup_seconds for r in results),
        cch.stats,
    )
    cap = reference_capacity(weights, options, x.shape[1])
    ref = run_float(weights, x, capacity=cap).output
    fixed = run_fixed(weights, x, capacity=cap).output
    return summarize(res, res.output, ref, fixed, labels, args.strategy)


def run_demo(args: argparse.Namespace) -> int:
    """``secmoe demo``: private inference on the bundled model, both parties in one process."""
    from .cli import run_async

    _warn_insecure(args.strategy)
    t0 = time.perf_counter()
    s = run_async(_demo(args))
    s["wall_seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(s, sort_keys=True))
    else:
        print(
            "secmoe demo: private inference of the bundled digits MoE model "
            "(client and server in one process)"
        )
        print_summary(s)
        if args.transcript:
            print(f"transcript: {args.transcript} (secmoe transcript {args.transcript})")
    return 0


async def _serve(args: argparse.Namespace, tls: TLSConfig | None) -> int:
    weights = load_model(args.model)
    host, port = parse_hostport(args.listen)
    lst = await listen(host, port, params=APP_PARAMS, tls=tls, timeout=args.timeout)
    print(f"serving {weights.config.name} on {host}:{lst.port}", file=sys.stderr, flush=True)
    served = 0
    try:
        while args.sessions is None or served < args.sessions:
            served += 1
            try:
                ch = await lst.accept(args.accept_timeout)
            except NetError as exc:
                print(f"session {served}: rejected a connection: {exc}", file=sys.stderr)
                continue
            instrument(ch, args.net, None)
            try:
                res = await serve_session(
                    ch,
                    weights,
                    allow_insecure=args.allow_insecure_reveal,
                    max_batch=args.max_batch,
                )
                print(f"session {served}: done in {res.seconds:.2f} s", file=sys.stderr)
            except (NetError, SessionRefused, ValueError) as exc:
                print(f"session {served}: ended: {exc}", file=sys.stderr)
            finally:
                await ch.close()
    finally:
        await lst.close()
    return 0


def _is_batched(x: np.ndarray) -> bool:
    """Whether an input has the batch axis: (B, T, patch_dim) features or (B, T) token ids
    (a single sequence, (T, patch_dim) or (T,), is one session as it is)."""
    return x.ndim == 3 or (x.ndim == 2 and np.issubdtype(x.dtype, np.integer))


async def _infer(args: argparse.Namespace, tls: TLSConfig | None) -> dict[str, Any]:
    x = np.load(args.input) if args.input else load_heldout()[0][: args.samples]
    host, port = parse_hostport(args.connect)
    writer = TranscriptWriter(args.transcript) if args.transcript else None

    progress = _progress(args.json)
    parts = batches(len(x), args.batch, progress) if _is_batched(x) else [slice(None)]
    results = []
    try:
        for part in parts:
            ch = await connect(
                host,
                port,
                params=APP_PARAMS,
                tls=tls,
                connect_timeout=args.connect_timeout,
                timeout=args.timeout,
            )
            instrument(ch, args.net, writer)
            try:
                results.append(await client_session(ch, x[part], options=options_from_args(args)))
            finally:
                await ch.close()
    finally:
        if writer is not None:
            writer.close()
    logits = np.concatenate([r.output for r in results])
    online = [r.stats.total("online") for r in results]
    return {
        "prediction": logits.argmax(-1).tolist(),
        "logits": logits.tolist(),
        "sessions": len(results),
        "seconds": sum(r.seconds for r in results),
        "setup_seconds": sum(r.setup_seconds for r in results),
        "bytes_c2s": sum(o.bytes_c2s for o in online),
        "bytes_s2c": sum(o.bytes_s2c for o in online),
        "rounds": sum(r.stats.depth for r in results),
        "strategy": args.strategy,
    }


def run_serve(args: argparse.Namespace, tls: TLSConfig | None) -> int:
    """``secmoe serve``: answer private-inference sessions one after another."""
    from .cli import run_async

    return run_async(_serve(args, tls))


def run_infer(args: argparse.Namespace, tls: TLSConfig | None) -> int:
    """``secmoe infer``: the client's side against a ``secmoe serve``."""
    from .cli import run_async

    _warn_insecure(args.strategy)
    if args.input and not Path(args.input).is_file():
        raise ValueError(f"input file {args.input!r} not found")
    out = run_async(_infer(args, tls))
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print(
            f"prediction {out['prediction']} ({out['strategy']}, {out['seconds']:.2f} s, "
            f"{(out['bytes_c2s'] + out['bytes_s2c']) / 1e6:.2f} MB, {out['rounds']} rounds)"
        )
    return 0


__all__ = ["APP_PARAMS", "layer_table", "run_demo", "run_infer", "run_serve"]

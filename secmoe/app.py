"""The private-inference commands: ``secmoe demo``, ``secmoe serve``, ``secmoe infer``."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .bench.runner import instrument
from .model.config import ModelConfig
from .model.fixed import run_fixed
from .model.reference import batched
from .model.reference import run as run_float
from .model.secure import Progress, RunOptions, moe_spec
from .model.session import (
    InputError,
    SessionRefused,
    SessionResult,
    check_patch_values,
    client_session,
    serve_session,
)
from .model.weights import ModelWeights, load_bundled, load_heldout, load_weights
from .net import Channel, NetError, run_pair
from .net.memory import memory_pair
from .net.stats import Stats
from .net.tcp import TLSConfig, connect, listen, parse_hostport
from .net.transcript import TranscriptWriter
from .ops.moe import INSECURE_STRATEGIES
from .progress import Reporter
from .text import (
    Tokenized,
    Tokenizer,
    decode_output,
    decoded_lines,
    load_tokenizer,
    read_text,
    tokenize,
)

APP_PARAMS = {"app": "secmoe-infer", "ring": [64, 18]}


def load_model(path: str) -> ModelWeights:
    """``bundled`` or a safetensors file / directory."""
    return load_bundled() if path == "bundled" else load_weights(path)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The run options of ``--strategy``, ``--capacity``, ``--capacity-factor``."""
    return RunOptions(args.strategy, args.capacity_factor, args.capacity)


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
    print(f"strategy {s['strategy']}, {s['samples']} samples; {capacity_line(s)}")
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


def batches(n: int, size: int, log: Callable[[str], None]) -> Iterator[slice]:
    """Slices of at most ``size`` of ``n`` sequences, one session each (telling ``log``)."""
    for start in range(0, n, size):
        stop = min(start + size, n)
        if n > size:
            log(f"sequences {start}-{stop - 1} of {n} (one session per batch)")
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

    reporter = Reporter(quiet=args.json)
    options = options_from_args(args)
    deadline = time.monotonic() + args.timeout
    results = []
    try:
        for i, part in enumerate(batches(len(x), args.batch, reporter.log), 1):
            label, layers = f"session {i}", weights.config.n_layers
            with reporter.session(label, cch.stats, "client", layers) as progress:
                res, _ = await run_pair(
                    client_session(cch, x[part], options=options, progress=progress),
                    serve_session(
                        sch, weights, allow_insecure=True, max_batch=args.batch, setup_idle=None
                    ),
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
    out = summarize(res, res.output, ref, fixed, labels, args.strategy)
    return out | capacity_summary(weights.config, options, x.shape[1])


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


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.0f} MB"


def _peer(ch: Channel) -> str:
    """The client's address, as ``host:port``."""
    writer = getattr(ch.session.link, "writer", None)
    addr = writer.get_extra_info("peername") if writer is not None else None
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else "?"


async def _serve(args: argparse.Namespace, tls: TLSConfig | None) -> int:
    weights = load_model(args.model)
    host, port = parse_hostport(args.listen)
    lst = await listen(host, port, params=APP_PARAMS, tls=tls, timeout=args.timeout)
    log(f"serving {weights.config.name} on {host}:{lst.port} (RSS {_mb(rss_bytes())})")
    reporter = Reporter(line=log)
    started = 0
    try:
        while args.sessions is None or started < args.sessions:
            try:
                ch = await lst.accept(args.accept_timeout)
            except NetError as exc:  # not a session: the budget counts sessions that started
                log(f"rejected a connection: {exc}")
                continue
            started += 1
            name = f"session {started} from {_peer(ch)}"
            before = rss_bytes()
            log(f"{name}: started (RSS {_mb(before)})")
            with reporter.session(name, ch.stats, "server", weights.config.n_layers) as progress:
                outcome = await _serve_one(args, weights, ch, progress)
            del ch  # nothing of the session stays referenced (its error's traceback holds it)
            release_memory()
            log(f"{name}: {outcome} (RSS {_mb(before)} before, {_mb(rss_bytes())} after)")
    finally:
        await lst.close()
    return 0


async def _serve_one(
    args: argparse.Namespace, weights: ModelWeights, ch: Channel, progress: Progress
) -> str:
    """One session; returns its outcome for the log. Whatever goes wrong ends only this
    session, and the reason is sent to the client."""
    instrument(ch, args.net, None)
    try:
        res = await serve_session(
            ch,
            weights,
            allow_insecure=args.allow_insecure_reveal,
            max_batch=args.max_batch,
            max_tokens=args.max_tokens,
            setup_idle=args.setup_timeout,
            session_timeout=args.session_timeout,
            skip_zero_blocks=args.skip_zero_blocks,
            cache_budget=args.weight_cache << 20,
            model_id=args.model_id,
            progress=progress,
        )
        outcome = f"done in {res.setup_seconds:.2f} s setup + {res.seconds:.2f} s"
    except SessionRefused as exc:  # the client already has the reason in the answer
        outcome = f"refused: {exc}"
    except NetError as exc:
        outcome = f"ended: {exc}"
        await ch.abort(str(exc))
    except Exception as exc:  # a session must never end the server
        outcome = f"failed: {type(exc).__name__}: {exc}"
        await ch.abort(f"server error: {type(exc).__name__}: {exc}")
    finally:
        await ch.close()
    return f"{outcome}; peak buffered {_mb(ch.session.peak_buffered)}"


def _is_batched(x: np.ndarray) -> bool:
    """Whether an input has the batch axis: (B, T, patch_dim) features or (B, T) token ids
    (a single sequence, (T, patch_dim) or (T,), is one session as it is)."""
    return x.ndim == 3 or (x.ndim == 2 and np.issubdtype(x.dtype, np.integer))


def load_input(path: str) -> np.ndarray:
    """The client's input from a ``.npy`` file, checked before any connection: one array (not
    a ``.npz`` archive, not pickled), non-empty, patch features (numbers, rank 2 or 3, finite,
    within what the first layer takes, see :func:`check_patch_values`) or token ids (integers
    ≥ 0, rank 1 or 2). :class:`InputError` names the problem; what needs the server's config
    (patch_dim, vocabulary, seq_len) is checked when it arrives, before any cryptography."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK"):
        raise InputError(f"{path}: a .npz archive; save one array with numpy.save (.npy)")
    if head != b"\x93NUMPY":
        raise InputError(f"{path}: not a .npy file (no NumPy header); save it with numpy.save")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle, which is never loaded
        raise InputError(f"{path}: cannot be read as a plain array ({exc})") from None
    if x.size == 0:
        raise InputError(f"{path}: the array is empty (shape {x.shape})")
    if np.issubdtype(x.dtype, np.integer) and x.ndim in (1, 2):
        if (x < 0).any():
            raise InputError(f"{path}: token id {int(x[x < 0][0])} is negative")
        return x
    if x.ndim not in (2, 3):
        raise InputError(
            f"{path}: shape {x.shape}, dtype {x.dtype}: expected patch features (T, P) or "
            "(B, T, P), or integer token ids (T,) or (B, T)"
        )
    return check_patch_values(x)


def _client_input(args: argparse.Namespace) -> tuple[np.ndarray | Tokenized, Tokenizer | None]:
    """What ``infer`` sends: a text's tokens (fitted to the server's config when it arrives),
    a ``.npy`` or held-out bundled samples. Everything checkable without the server is
    checked here, before any connection."""
    if args.text is not None or args.text_file is not None:
        if not args.tokenizer:
            raise InputError("--text/--text-file need --tokenizer tokenizer.json")
        tokenizer = load_tokenizer(args.tokenizer)
        return tokenize(tokenizer, read_text(args.text, args.text_file)), tokenizer
    if args.tokenizer:
        raise InputError("--tokenizer is for --text/--text-file")
    if args.input:
        if not Path(args.input).is_file():
            raise InputError(f"input file {args.input!r} not found")
        return load_input(args.input), None
    return load_heldout()[0][: args.samples], None


async def _infer(args: argparse.Namespace, tls: TLSConfig | None) -> dict[str, Any]:
    x, tokenizer = _client_input(args)
    host, port = parse_hostport(args.connect)
    writer = TranscriptWriter(args.transcript) if args.transcript else None

    reporter = Reporter(quiet=args.json)
    options = options_from_args(args)
    batch = tokenizer is None and _is_batched(x)
    parts = batches(len(x), args.batch, reporter.log) if batch else [slice(None)]
    results = []
    try:
        for i, part in enumerate(parts, 1):
            ch = await connect(
                host,
                port,
                params=APP_PARAMS,
                tls=tls,
                connect_timeout=args.connect_timeout,
                timeout=args.timeout,
            )
            instrument(ch, args.net, writer)
            inputs = x if tokenizer is not None else x[part]
            try:
                with reporter.session(f"session {i}", ch.stats, "client") as progress:
                    res = await client_session(ch, inputs, options=options, progress=progress)
                results.append(res)
            except Exception as exc:  # tell the server why this side stops
                await ch.abort(str(exc))
                raise
            finally:
                await ch.close()
    finally:
        if writer is not None:
            writer.close()
    output = np.concatenate([r.output for r in results])
    online = [r.stats.total("online") for r in results]
    cfg = results[0].config
    tokens = batched(cfg, x(cfg) if tokenizer is not None else x)[0].shape[1]
    out = capacity_summary(cfg, options, tokens) | {
        "sessions": len(results),
        "seconds": sum(r.seconds for r in results),
        "setup_seconds": sum(r.setup_seconds for r in results),
        "bytes_c2s": sum(o.bytes_c2s for o in online),
        "bytes_s2c": sum(o.bytes_s2c for o in online),
        "rounds": sum(r.stats.depth for r in results),
        "strategy": args.strategy,
        "model_id": results[0].model_id,
    }
    if args.save_output:  # a text is one sequence: saved without the batch axis
        np.save(args.save_output, output[0] if tokenizer else output, allow_pickle=False)
        out["saved_output"] = args.save_output
    if tokenizer is not None:
        return out | {"text": {"input": x.note, **decode_output(cfg, output, tokenizer)}}
    return out | {"prediction": output.argmax(-1).tolist(), "logits": output.tolist()}


def run_serve(args: argparse.Namespace, tls: TLSConfig | None) -> int:
    """``secmoe serve``: answer private-inference sessions one after another."""
    from .cli import run_async

    return run_async(_serve(args, tls))


def run_infer(args: argparse.Namespace, tls: TLSConfig | None) -> int:
    """``secmoe infer``: the client's side against a ``secmoe serve``."""
    from .cli import run_async

    _warn_insecure(args.strategy)
    out = run_async(_infer(args, tls))
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    cost = (
        f"{out['strategy']}, {out['seconds']:.2f} s, "
        f"{(out['bytes_c2s'] + out['bytes_s2c']) / 1e6:.2f} MB, {out['rounds']} rounds"
    )
    if "text" in out:
        print(f"text: {out['text']['input']} ({cost})")
        print("\n".join(decoded_lines(out["text"], out.get("saved_output"))))
    else:
        print(f"prediction {out['prediction']} ({cost})")
    print(capacity_line(out))
    return 0


__all__ = ["APP_PARAMS", "layer_table", "run_demo", "run_infer", "run_serve"]

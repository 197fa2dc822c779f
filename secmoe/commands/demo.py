"""``secmoe demo``: private inference on the bundled model, both parties in one process,
compared with the float and fixed-point references."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..app import (
    capacity_line,
    capacity_summary,
    layer_table,
    options_from_args,
    reference_capacity,
    run_async,
    warn_insecure,
)
from ..bench.runner import instrument
from ..model.fixed import run_fixed
from ..model.reference import run as run_float
from ..model.session import serve_session
from ..model.weights import load_bundled, load_heldout
from ..net import Channel, run_pair
from ..net.memory import memory_pair
from ..net.transcript import TranscriptWriter
from ..progress import Reporter
from .args import add_count_args, add_norm_products_arg, add_shaping_arg, add_strategy_args
from .client import cost_lines, figures, run_client
from .output import table

NAME = "demo"
HELP = "private inference on the bundled model, in one process"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_count_args(p, 8, "held-out images (default 8)")
    add_strategy_args(p)
    add_norm_products_arg(p)
    add_shaping_arg(p, "shape the in-memory link")
    p.add_argument(
        "--transcript",
        metavar="FILE",
        default="secmoe-demo.transcript.jsonl",
        help="transcript file (default secmoe-demo.transcript.jsonl)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="deadline for the run (s)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    warn_insecure(args.strategy)
    t0 = time.perf_counter()
    out = run_async(_demo(args))
    return out | {"wall_seconds": time.perf_counter() - t0}


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

    async def server() -> None:  # sessions on the one link until the client closes one
        kw = {"allow_insecure": True, "max_batch": args.batch, "setup_idle": None}
        while (await serve_session(sch, weights, **kw)).ended:
            pass

    async def link() -> Channel:
        return cch

    async def keep(_: Channel) -> None:
        return None

    try:
        client = run_client(link, keep, x, batch=args.batch, options=options, reporter=reporter)
        run, _ = await run_pair(client, server(), timeout=args.timeout)
    finally:
        await cch.close()
        await sch.close()
        if writer is not None:
            writer.close()
    cap = reference_capacity(weights, options, x.shape[1])
    ref = run_float(weights, x, capacity=cap).output
    fixed = run_fixed(weights, x, capacity=cap).output
    secure_pred, ref_pred = run.output.argmax(-1), ref.argmax(-1)
    out = {
        "strategy": args.strategy,
        "samples": len(x),
        "agreement_with_plaintext": float((secure_pred == ref_pred).mean()),
        "max_abs_err_vs_float": float(np.abs(run.output - ref).max()),
        "mean_abs_err_vs_float": float(np.abs(run.output - ref).mean()),
        "max_abs_err_vs_fixed": float(np.abs(run.output - fixed).max()),
        "per_layer": layer_table(cch.stats),
        "secure_pred": secure_pred.tolist(),
        "plaintext_pred": ref_pred.tolist(),
        "secure_accuracy": float((secure_pred == labels).mean()),
        "plaintext_accuracy": float((ref_pred == labels).mean()),
        "transcript": args.transcript,
    }
    return out | figures(run) | capacity_summary(weights.config, options, x.shape[1])


def render(s: dict[str, Any]) -> Iterator[str]:
    yield (
        "secmoe demo: private inference of the bundled digits MoE model "
        "(client and server in one process)"
    )
    yield f"strategy {s['strategy']}, {s['samples']} samples; {capacity_line(s)}"
    yield f"{'sample':>6} {'secure':>6} {'plain':>6}"
    for i, (a, b) in enumerate(zip(s["secure_pred"], s["plaintext_pred"], strict=True)):
        yield f"{i:>6} {a:>6} {b:>6}{'' if a == b else '  <- differs'}"
    yield (
        f"agreement with plaintext: {s['agreement_with_plaintext']:.2%}; accuracy secure "
        f"{s['secure_accuracy']:.2%}, plaintext {s['plaintext_accuracy']:.2%}"
    )
    yield (
        f"logit error vs float: max {s['max_abs_err_vs_float']:.3g}, mean "
        f"{s['mean_abs_err_vs_float']:.3g}; vs fixed-point emulation: max "
        f"{s['max_abs_err_vs_fixed']:.3g}"
    )
    yield from cost_lines(s)
    yield from table(
        ["part", "c2s MB", "s2c MB", "messages"],
        (
            [
                name,
                f"{row['bytes_c2s'] / 1e6:.3f}",
                f"{row['bytes_s2c'] / 1e6:.3f}",
                row["messages"],
            ]
            for name, row in s["per_layer"].items()
        ),
    )
    if s["transcript"]:
        yield f"transcript: {s['transcript']} (secmoe transcript {s['transcript']})"

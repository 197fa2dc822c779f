"""The client's loop shared by ``demo`` and ``infer``: inputs in batches of B sequences, as
many batches per session as the server serves (one setup each), a new session when the server
ends one (its flooding budget or TTL), and the figures: setup once per session, online per
batch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..app import APP_PARAMS
from ..bench.runner import instrument, tls_from_args
from ..model.config import ModelConfig
from ..model.secure import RunOptions
from ..model.session import ClientSession, SessionOver
from ..net import Channel
from ..net.tcp import connect, parse_hostport
from ..net.transcript import TranscriptWriter
from ..progress import Reporter


def waiting(note: str) -> None:
    """A busy server's queue note, on stderr (also with ``--json``: it is a log line)."""
    print(f"secmoe: {note}", file=sys.stderr, flush=True)


async def connect_server(args: argparse.Namespace, writer: TranscriptWriter | None) -> Channel:
    """A session's channel to ``args.connect`` (``--tls-*``, ``--connect-timeout``,
    ``--timeout``, ``--net``), recorded by ``writer``; a busy server's notes go to
    :func:`waiting`."""
    host, port = parse_hostport(args.connect)
    ch = await connect(
        host,
        port,
        params=APP_PARAMS,
        tls=tls_from_args(args),
        connect_timeout=args.connect_timeout,
        timeout=args.timeout,
        on_wait=waiting,
    )
    return instrument(ch, args.net, writer)


@dataclass
class ClientRun:
    """What the client got: the output rows of every input, the server's config and model id,
    one figure dict per session and per batch (see :func:`figures`)."""

    output: np.ndarray
    cfg: ModelConfig
    model_id: str | None
    sessions: list[dict[str, Any]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)


async def run_client(
    open_channel: Callable[[], Awaitable[Channel]],
    release: Callable[[Channel], Awaitable[None]],
    inputs: Any,
    *,
    batch: int,
    options: RunOptions,
    reporter: Reporter,
) -> ClientRun:
    """Run every input through sessions opened with ``open_channel`` (``release`` after each):
    batches of at most ``batch`` sequences, each session serving as many as the server allows.
    ``inputs``: an array or a function of the server's config (see
    :meth:`ClientSession.open`). On an error the server is told why this side stops."""
    outputs: list[np.ndarray] = []
    run: ClientRun | None = None
    x, done = inputs, 0
    while run is None or done < len(x):
        ch = await open_channel()
        try:
            s = await ClientSession.open(
                ch, x if run is None else x[done:], options=options, batch=batch
            )
            if run is None:
                x = s.inputs
                run = ClientRun(np.zeros(0), s.cfg, s.model_id)
            number = len(run.sessions) + 1
            session = {
                "setup_seconds": s.setup_seconds,
                "setup_bytes": s.setup.bytes_total,
                "setup_rounds": s.setup.rounds,
                "batches": 0,
                "ended": None,
            }
            run.sessions.append(session)
            while done < len(x):
                part = x[done : done + s.shape[0]]
                label = f"session {number}"
                if len(x) > s.shape[0]:  # several batches: name each
                    label += f" batch {session['batches'] + 1}"
                try:
                    with reporter.session(label, ch.stats, "client", s.cfg.n_layers) as progress:
                        res = await s.run(part, progress)
                except SessionOver as exc:
                    session["ended"] = str(exc)
                    reporter.log(f"{exc}; a new session continues")
                    break
                outputs.append(res.output)
                done += len(part)
                session["batches"] += 1
                run.batches.append(
                    {
                        "session": number,
                        "sequences": len(part),
                        "seconds": res.seconds,
                        "bytes_c2s": res.cost.bytes_c2s,
                        "bytes_s2c": res.cost.bytes_s2c,
                        "rounds": res.cost.rounds,
                        "messages": res.cost.messages,
                    }
                )
            await s.close()
            session["setup_bytes"] = s.setup.bytes_total
            if session["batches"] == 0:
                raise SessionOver(
                    f"the server served no batch in a new session: {session['ended']}"
                )
        except Exception as exc:  # tell the server why this side stops
            await ch.abort(str(exc))
            raise
        finally:
            await release(ch)
    assert run is not None
    run.output = np.concatenate(outputs)
    return run


def figures(run: ClientRun) -> dict[str, Any]:
    """The cost fields of ``infer``/``demo`` results (README, "Machine-readable outputs"):
    totals (setup over sessions, online over batches) and the per-session and per-batch
    lists."""
    return {
        "sessions": len(run.sessions),
        "batches": len(run.batches),
        "setup_seconds": sum(s["setup_seconds"] for s in run.sessions),
        "setup_bytes": sum(s["setup_bytes"] for s in run.sessions),
        "seconds": sum(b["seconds"] for b in run.batches),
        "bytes_c2s": sum(b["bytes_c2s"] for b in run.batches),
        "bytes_s2c": sum(b["bytes_s2c"] for b in run.batches),
        "rounds": sum(b["rounds"] for b in run.batches),
        "per_session": run.sessions,
        "per_batch": run.batches,
    }


def cost_lines(r: dict[str, Any]) -> list[str]:
    """The text rendering of :func:`figures`: setup once per session, then online per batch."""
    mb = 1e6
    lines = [
        f"setup: {r['setup_bytes'] / mb:.2f} MB, {r['setup_seconds']:.2f} s "
        f"({r['sessions']} session{'s' if r['sessions'] > 1 else ''}); online: "
        f"{(r['bytes_c2s'] + r['bytes_s2c']) / mb:.2f} MB, {r['seconds']:.2f} s, "
        f"{r['rounds']} rounds ({r['batches']} batch{'es' if r['batches'] > 1 else ''})"
    ]
    if r["batches"] > 1:
        for i, b in enumerate(r["per_batch"], 1):
            lines.append(
                f"  batch {i} (session {b['session']}, {b['sequences']} sequences): "
                f"{(b['bytes_c2s'] + b['bytes_s2c']) / mb:.2f} MB, {b['seconds']:.2f} s, "
                f"{b['rounds']} rounds"
            )
    return lines

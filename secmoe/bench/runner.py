"""Running a bench op: both parties locally, or one party over TCP; one JSON result."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..net import Channel, run_local
from ..net.shaping import PROFILES, ShapedLink, profile
from ..net.tcp import TLSConfig, accept_one, connect, parse_hostport
from ..net.transcript import TranscriptWriter
from .registry import BenchOp


async def swap(ch: Channel, mine: Any, tag: str) -> Any:
    """Send ``mine`` to the peer and return the peer's (the client sends first)."""
    if ch.role == "client":
        await ch.send(mine, tag=tag)
        return await ch.recv(tag=tag)
    theirs = await ch.recv(tag=tag)
    await ch.send(mine, tag=tag)
    return theirs


async def run_party(ch: Channel, op: BenchOp, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``op`` as this party; both parties return the same figures.

    Setup (keys, base OTs) is measured apart from the operation, and the check against
    plaintext after it. At the end the parties swap their timings and extra fields (in a
    ``report`` phase that is not counted), so that both print the slower party's seconds and
    the union of the extras.
    """
    with ch.phase("setup"):
        snap, t0 = ch.stats.snapshot(), time.perf_counter()
        state = await op.setup(ch, args)
        setup_s, setup = time.perf_counter() - t0, ch.stats.since(snap)
    snap, t0, cpu0 = ch.stats.snapshot(), time.perf_counter(), time.process_time()
    output = await op.run(ch, args, state)
    seconds, cost = time.perf_counter() - t0, ch.stats.since(snap)
    cpu = time.process_time() - cpu0
    with ch.phase("check"):
        extra = await op.check(ch, args, state, output)
    with ch.phase("report"):
        mine = {"seconds": seconds, "setup_seconds": setup_s, "cpu": cpu, "extra": extra}
        theirs = await swap(ch, mine, "bench/report")
    client, server = (mine, theirs) if ch.role == "client" else (theirs, mine)
    seconds = max(seconds, theirs["seconds"])
    wire = cost.bytes_total + cost.framing_c2s + cost.framing_s2c
    n = op.params(args).get("n")
    per_item = {"bytes_per_item": cost.bytes_total / n, "items_per_s": n / seconds} if n else {}
    return {
        "op": op.name,
        "params": op.params(args),
        "bytes_c2s": cost.bytes_c2s,
        "bytes_s2c": cost.bytes_s2c,
        "framing_bytes": cost.framing_c2s + cost.framing_s2c,
        "messages": cost.messages,
        "rounds": cost.rounds,
        "seconds": seconds,
        "setup_bytes": setup.bytes_total,
        "setup_rounds": setup.rounds,
        "setup_seconds": max(setup_s, theirs["setup_seconds"]),
        "net": args.net,
        "estimates": {
            name: round(p.estimate(seconds, wire, cost.rounds), 6) for name, p in PROFILES.items()
        }
        if args.net is None
        else {},
        **per_item,
        # each party's own wall seconds from the end of its setup to the end of the run
        # ("seconds" is the larger: the client's clock also runs while the server's setup ends)
        "client_seconds": client["seconds"],
        "server_seconds": server["seconds"],
        # CPU seconds of each party's process during the run: over TCP each party is its own
        # process; locally both run in one process and the two figures are the same total.
        "client_cpu_seconds": client["cpu"],
        "server_cpu_seconds": server["cpu"],
        **server["extra"],
        **client["extra"],
    }


def instrument(ch: Channel, net: str | None, writer: TranscriptWriter | None) -> Channel:
    """Shape ``ch``'s link with the ``net`` profile and record it to ``writer`` (if given)."""
    if net:
        ch.session.link = ShapedLink(ch.session.link, profile(net))
    if writer is not None:
        ch.session.recorder = writer
    return ch


def tls_from_args(args: argparse.Namespace) -> TLSConfig | None:
    """A :class:`TLSConfig` from ``--tls-cert/--tls-key/--tls-ca``, or ``None``."""
    if not (args.tls_cert or args.tls_key or args.tls_ca):
        return None
    return TLSConfig(args.tls_cert, args.tls_key, args.tls_ca, args.tls_server_name)


async def run_bench(op: BenchOp, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``op`` locally (both parties) or as ``args.party`` over TCP."""
    params = {"op": op.name, **op.params(args)}
    writer = (
        TranscriptWriter(args.transcript, getattr(args, "transcript_payloads", False))
        if args.transcript
        else None
    )
    try:
        if args.party is None:
            result, _ = await run_local(
                lambda ch: run_party(instrument(ch, args.net, writer), op, args),
                lambda ch: run_party(instrument(ch, args.net, writer), op, args),
                timeout=args.timeout,
            )
            return result
        tls = tls_from_args(args)
        if args.party == "server":
            host, port = parse_hostport(args.listen)
            ch = await accept_one(
                host,
                port,
                params=params,
                tls=tls,
                accept_timeout=args.accept_timeout,
                timeout=args.timeout,
            )
        else:
            host, port = parse_hostport(args.connect)
            ch = await connect(
                host,
                port,
                params=params,
                tls=tls,
                connect_timeout=args.connect_timeout,
                timeout=args.timeout,
            )
        try:
            return await run_party(instrument(ch, args.net, writer), op, args)
        finally:
            await ch.close()
    finally:
        if writer is not None:
            writer.close()

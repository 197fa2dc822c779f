"""``secmoe bench channel``: throughput and small-message latency of the channel itself."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from ..crypto.prg import PRG
from ..net import Channel
from .registry import BenchOp, register


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=1 << 20, help="bytes per message (default 1 MiB)")
    p.add_argument("--count", type=int, default=64, help="messages for the throughput test")
    p.add_argument("--pings", type=int, default=200, help="round trips for the latency test")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    if args.size < 1 or args.count < 1 or args.pings < 1:
        raise ValueError("--size, --count and --pings must be positive")
    return {"size": args.size, "count": args.count, "pings": args.pings}


async def _run(ch: Channel, args: argparse.Namespace, state: Any) -> dict[str, Any]:
    # Step 1: one-way stream of `count` messages, acknowledged at the end.
    t0 = time.perf_counter()
    if ch.role == "client":
        block = np.frombuffer(PRG().random_bytes(args.size), dtype=np.uint8)
        for _ in range(args.count):
            await ch.send(block, tag="chan/block")
        await ch.recv(tag="chan/ack")
    else:
        for _ in range(args.count):
            await ch.recv(tag="chan/block")
        await ch.send(True, tag="chan/ack")
    stream_s = time.perf_counter() - t0
    # Step 2: ping-pong of small messages.
    rtts = []
    for i in range(args.pings):
        t = time.perf_counter()
        if ch.role == "client":
            await ch.send(i, tag="chan/ping")
            await ch.recv(tag="chan/pong")
        else:
            await ch.send(await ch.recv(tag="chan/ping"), tag="chan/pong")
        rtts.append(time.perf_counter() - t)
    return {
        "throughput_MBps": args.size * args.count / stream_s / 1e6,
        "rtt_us_median": float(np.median(rtts) * 1e6),
    }


CHANNEL = register(
    BenchOp(
        "channel",
        "channel throughput (MB/s) and small-message round-trip time",
        _args,
        _params,
        _run,
    )
)

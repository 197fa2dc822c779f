"""``secmoe transcript FILE``: a transcript's totals, table by path and LAN/WAN estimates."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from ..net.transcript import read_transcript, summarize
from ..progress import fmt_bytes

NAME = "transcript"
HELP = "summarize a transcript file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--depth", type=int, default=2, help="path components in the table")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    return summarize(read_transcript(args.file), depth=args.depth)


def render(summary: dict[str, Any]) -> Iterator[str]:
    t = summary["total"]
    yield (
        f"total: {fmt_bytes(t['bytes_c2s'])} c2s, {fmt_bytes(t['bytes_s2c'])} s2c, "
        f"{fmt_bytes(t['framing'])} framing, {t['messages']} messages, {t['rounds']} rounds, "
        f"{t['seconds']:.3f} s"
    )
    yield f"{'path':40} {'c2s':>12} {'s2c':>12} {'msgs':>7} {'rounds':>7}"
    for path, row in summary["by_path"].items():
        yield (
            f"{path:40} {fmt_bytes(row['bytes_c2s']):>12} {fmt_bytes(row['bytes_s2c']):>12} "
            f"{row['messages']:>7} {row['rounds']:>7}"
        )
    for name, est in summary["estimates"].items():
        yield (
            f"estimate on {name}: {est['seconds']:.3f} s "
            f"({est['bandwidth_bps'] / 1e6:.0f} Mbit/s, {est['rtt_s'] * 1e3:g} ms RTT)"
        )

"""``secmoe bench ot --kind {cot,rot,ot,acot,kkot} --n N [--bits L]``: OT throughput and bytes.

Setup (base OTs, both directions) is the ``setup`` phase; the measured run is one batch of n
OTs of the chosen kind. Extras: OTs per second and payload bytes per OT.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..crypto.prg import PRG
from ..net import Channel
from ..protocols.ot.pool import BENCH_KINDS, DEFAULT_SOURCE, SOURCES, OTPool, bench_operation
from .registry import BenchOp, register


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=BENCH_KINDS, default="cot", help="which OT (default cot)")
    p.add_argument("--n", type=int, default=1_000_000, help="number of OTs (default 10^6)")
    p.add_argument("--bits", type=int, default=1, help="message bits (rot, ot, acot, kkot)")
    p.add_argument("--choices", type=int, default=16, help="N of 1-out-of-N (kkot)")
    p.add_argument("--source", choices=sorted(SOURCES), default=DEFAULT_SOURCE, help="COT source")
    p.add_argument("--sender", choices=("client", "server"), default="client")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    if args.n < 1:
        raise ValueError("--n must be positive")
    if not 1 <= args.bits <= 64:
        raise ValueError("--bits must be in [1, 64]")
    if not 2 <= args.choices <= 256:
        raise ValueError("--choices must be in [2, 256]")
    return {
        "kind": args.kind,
        "n": args.n,
        "bits": args.bits,
        "choices": args.choices,
        "source": args.source,
        "sender": args.sender,
    }


async def _setup(ch: Channel, args: argparse.Namespace) -> Any:
    pool = await OTPool.setup(ch, PRG(), source=args.source, phase=None)
    return bench_operation(
        pool, ch.role, args.kind, args.n, args.bits, n_choices=args.choices, sender=args.sender
    )


async def _run(ch: Channel, args: argparse.Namespace, operation: Any) -> None:
    await operation()


async def _check(ch: Channel, args: argparse.Namespace, state: Any, out: Any) -> dict[str, Any]:
    return {}


OT = register(
    BenchOp(
        "ot",
        "oblivious transfer: OTs per second and bytes per OT",
        _args,
        _params,
        _run,
        _setup,
        _check,
    )
)

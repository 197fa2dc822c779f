"""The benchmark registry: each ``secmoe bench OP`` is a :class:`BenchOp`.

An op declares its CLI arguments, the public parameters both parties must agree on (checked in
the TCP handshake), an optional ``setup`` (run in the ``setup`` phase: base OTs, keys, weight
encoding, input sharing), ``run`` (the measured operation) and an optional ``check`` (run after
the measurement, in the uncounted ``check`` phase: reveals and compares with plaintext). All are
SPMD coroutines ``f(ch, args, …)`` that branch on ``ch.role``; ``check`` returns extra JSON
fields (errors against plaintext); without one, ``run``'s output (a dict) is the extras.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..net import Channel

SetupFn = Callable[[Channel, argparse.Namespace], Awaitable[Any]]
RunFn = Callable[[Channel, argparse.Namespace, Any], Awaitable[Any]]
CheckFn = Callable[[Channel, argparse.Namespace, Any, Any], Awaitable[dict[str, Any]]]


async def _no_setup(ch: Channel, args: argparse.Namespace) -> None:
    return None


async def _output_as_extras(
    ch: Channel, args: argparse.Namespace, state: Any, output: Any
) -> dict[str, Any]:
    return output if isinstance(output, dict) else {}


@dataclass(frozen=True)
class BenchOp:
    """One benchmark: its arguments, its public parameters, its setup and its run."""

    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    params: Callable[[argparse.Namespace], dict[str, Any]]
    run: RunFn
    setup: SetupFn = field(default=_no_setup)
    check: CheckFn = field(default=_output_as_extras)


REGISTRY: dict[str, BenchOp] = {}


def register(op: BenchOp) -> BenchOp:
    """Add an op to ``secmoe bench``."""
    if op.name in REGISTRY:
        raise ValueError(f"bench op {op.name!r} registered twice")
    REGISTRY[op.name] = op
    return op

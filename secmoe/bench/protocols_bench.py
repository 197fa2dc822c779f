"""``secmoe bench {mul,trunc,compare,relu,b2a,mux,argmax,topk}``: the building blocks.

Inputs are made by the client from its PRG and shared in the ``setup`` phase (with the OT
pool's base OTs); the measured run is the protocol alone; the check reveals the output to the
client and compares it with the plaintext ``ideal``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..crypto.prg import PRG
from ..crypto.ring import Ring
from ..net import Channel
from ..protocols import arith, boolean, compare, select
from ..protocols.ot.pool import DEFAULT_SOURCE, SOURCES
from ..protocols.party import Party
from ..protocols.shares import reveal, share
from .registry import BenchOp, register

Outputs = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class Spec:
    """How to benchmark one protocol: its inputs, the call, the plaintext ideal."""

    name: str
    help: str
    n_inputs: int
    run: Callable[[Party, argparse.Namespace, list[np.ndarray]], Awaitable[Outputs]]
    ideal: Callable[[argparse.Namespace, Ring, list[np.ndarray]], Outputs]
    boolean_output: bool = False
    input_bits: Callable[[argparse.Namespace], int] = lambda a: a.bits - 2
    shape: Callable[[argparse.Namespace], tuple[int, ...]] = lambda a: (a.n,)
    fixed_ring: bool = False  # ℓ = 64, f = 18 whatever --bits is (--bits: comparison width)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1 << 16, help="elements (rows for argmax/topk)")
    p.add_argument(
        "--bits",
        type=int,
        default=64,
        help="ring bits (mul, trunc, b2a, mux) or comparison bits (the others)",
    )
    p.add_argument("--experts", type=int, default=8, help="argmax/topk: values per row")
    p.add_argument("--k", type=int, default=2, help="topk: k")
    p.add_argument("--source", choices=sorted(SOURCES), default=DEFAULT_SOURCE, help="COT source")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    if args.n < 1:
        raise ValueError("--n must be positive")
    if not 8 <= args.bits <= 64:
        raise ValueError("--bits must be in [8, 64]")
    if args.experts < 2 or not 1 <= args.k <= args.experts:
        raise ValueError("--experts must be ≥ 2 and 1 ≤ --k ≤ --experts")
    return {
        "n": args.n,
        "bits": args.bits,
        "experts": args.experts,
        "k": args.k,
        "source": args.source,
    }


def _as_tuple(x: np.ndarray | Outputs) -> Outputs:
    return x if isinstance(x, tuple) else (x,)


def _make_op(spec: Spec) -> BenchOp:
    def ring_of(args: argparse.Namespace) -> Ring:
        return Ring(64, 18) if spec.fixed_ring else Ring(args.bits, min(18, args.bits // 3))

    async def setup(ch: Channel, args: argparse.Namespace) -> dict[str, Any]:
        ring = ring_of(args)
        p = await Party.setup(ch, PRG(), ring, ot_source=args.source)
        shape = spec.shape(args)
        plain = []
        if p.role == "client":  # inputs uniform in [−2^(w−1), 2^(w−1)), w = input bits
            w = spec.input_bits(args)
            for _ in range(spec.n_inputs):
                v = p.prg.ring(shape, w)
                plain.append(ring.reduce(v - np.uint64(1 << (w - 1))))
        shares = [
            await share(p.fork(f"in{i}"), plain[i] if plain else None, "client", shape)
            for i in range(spec.n_inputs)
        ]
        return {"p": p, "plain": plain, "shares": shares}

    async def run(ch: Channel, args: argparse.Namespace, st: dict[str, Any]) -> Outputs:
        return _as_tuple(await spec.run(st["p"].fork("op"), args, st["shares"]))

    async def check(
        ch: Channel, args: argparse.Namespace, st: dict[str, Any], out: Outputs
    ) -> dict[str, Any]:
        p: Party = st["p"].fork("check")
        opener = boolean.reveal_bits if spec.boolean_output else reveal
        got = [await opener(p.fork(f"o{i}"), o, to="client") for i, o in enumerate(out)]
        if p.role != "client":
            return {}
        want = _as_tuple(spec.ideal(args, p.ring, st["plain"]))
        if spec.boolean_output:
            return {
                "mismatches": sum(
                    int(np.count_nonzero(g != w)) for g, w in zip(got, want, strict=True)
                )
            }
        diff = np.concatenate(
            [
                p.ring.to_signed(p.ring.reduce(g - w)).reshape(-1)
                for g, w in zip(got, want, strict=True)
            ]
        )
        return {
            "max_abs_err_ulp": int(np.abs(diff).max()),
            "mean_abs_err_ulp": float(np.abs(diff).mean()),
        }

    return BenchOp(spec.name, spec.help, _args, _params, run, setup, check)


def _low(args: argparse.Namespace, x: np.ndarray) -> np.ndarray:
    """Shares reduced mod 2^bits (valid shares of the value, which lies in that range)."""
    return x & np.uint64((1 << args.bits) - 1) if args.bits < 64 else x


def _lsb(x: np.ndarray) -> np.ndarray:
    """Boolean shares of a shared value's lowest bit (no carry reaches bit 0)."""
    return (x & np.uint64(1)).astype(bool)


def _first(top: Outputs) -> Outputs:
    """The top-1 entry of ideal_topk's (values, one-hots)."""
    values, hots = top
    return values[..., 0], hots[..., 0, :]


def _rows(a: argparse.Namespace) -> tuple[int, ...]:
    return (a.n, a.experts)


SPECS = [
    Spec(
        "mul",
        "secret × secret elementwise product mod 2^ℓ (Gilboa, COT)",
        2,
        lambda p, a, x: arith.mul(p, *x),
        lambda a, r, x: arith.ideal_mul(*x, r),
        input_bits=lambda a: a.bits,
    ),
    Spec(
        "trunc",
        "truncation by f bits (wrap from a known MSB; result −1 ulp at worst)",
        1,
        lambda p, a, x: arith.trunc(p, x[0]),
        lambda a, r, x: arith.ideal_trunc(x[0], r),
    ),
    Spec(
        "compare",
        "x < y for two shared values, at --bits bits",
        2,
        lambda p, a, x: compare.less_than(p, _low(a, x[0]), _low(a, x[1]), a.bits),
        lambda a, r, x: r.to_signed(x[0]) < r.to_signed(x[1]),
        boolean_output=True,
        fixed_ring=True,
    ),
    Spec(
        "relu",
        "ReLU with its comparison at --bits bits",
        1,
        lambda p, a, x: compare.relu(p, x[0], a.bits),
        lambda a, r, x: r.from_signed(np.maximum(r.to_signed(x[0]), 0)),
        fixed_ring=True,
    ),
    Spec(
        "b2a",
        "Boolean to arithmetic shares of bits",
        1,
        lambda p, a, x: boolean.b2a(p, _lsb(x[0])),
        lambda a, r, x: x[0] & np.uint64(1),
        input_bits=lambda a: a.bits,
    ),
    Spec(
        "mux",
        "bit × shared value (CrypTFlow2 MUX)",
        2,
        lambda p, a, x: boolean.mux(p, _lsb(x[0]), x[1]),
        lambda a, r, x: r.reduce((x[0] & np.uint64(1)) * x[1]),
        input_bits=lambda a: a.bits,
    ),
    Spec(
        "argmax",
        "max and one-hot argmax of --experts values per row (--bits comparisons)",
        1,
        lambda p, a, x: select.argmax(p, x[0], a.bits),
        lambda a, r, x: _first(select.ideal_topk(x[0], 1, r)),
        shape=_rows,
        fixed_ring=True,
        input_bits=lambda a: a.bits - 3,
    ),
    Spec(
        "topk",
        "top-k values and one-hots of --experts values per row",
        1,
        lambda p, a, x: select.topk(p, x[0], a.k, a.bits),
        lambda a, r, x: select.ideal_topk(x[0], a.k, r),
        shape=_rows,
        fixed_ring=True,
        input_bits=lambda a: a.bits - 3,
    ),
]

OPS = [register(_make_op(spec)) for spec in SPECS]

"""Benchmarks of correlated OT from the silent (Ferret) and IKNP sources, for ``secmoe bench ot``.

Each function is SPMD (both parties call it on their end of a channel; the client is the COT
sender unless ``sender="server"``), runs the source's setup from scratch (base OTs and, for
Ferret, the IKNP bootstrap and the first ``pre`` batch) and then produces n random-choice
COTs, streamed chunk by chunk and dropped (a consumer that uses each chunk as it comes; no
n-sized array). It returns this party's figures as a JSON-ready dict: bytes and rounds of the
setup and of the run (the same on both sides), this party's seconds (report the slower
party's), bytes per OT with the setup amortized, and OTs per second over setup + run.
Benchmarks never verify: the tests do (``tests/ot_silent``, ``tests/ot``).
"""

from __future__ import annotations

import resource
import time
from typing import Any

from secmoe.crypto.prg import PRG
from secmoe.net import Channel
from secmoe.protocols.ot import ferret
from secmoe.protocols.ot.iknp import IknpReceiver, IknpSender


async def _measure(ch: Channel, setup: Any, run: Any, n: int) -> dict[str, Any]:
    snap, t0 = ch.stats.snapshot(), time.perf_counter()
    with ch.phase("setup"):
        inst = await setup()
    s_cost, t1 = ch.stats.since(snap), time.perf_counter()
    snap = ch.stats.snapshot()
    await run(inst)
    r_cost, t2 = ch.stats.since(snap), time.perf_counter()
    total = s_cost.bytes_total + r_cost.bytes_total
    return {
        "n": n,
        "setup_bytes": s_cost.bytes_total,
        "setup_rounds": s_cost.rounds,
        "setup_seconds": t1 - t0,
        "bytes_c2s": r_cost.bytes_c2s,
        "bytes_s2c": r_cost.bytes_s2c,
        "rounds": r_cost.rounds,
        "seconds": t2 - t1,
        "framing_bytes": s_cost.framing_c2s
        + s_cost.framing_s2c
        + r_cost.framing_c2s
        + r_cost.framing_s2c,
        "bytes_per_ot": total / n if n else 0.0,
        "ots_per_second": n / (t2 - t0) if t2 > t0 else 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def bench_silent_cot(
    ch: Channel,
    n: int,
    params: ferret.FerretParams = ferret.B13,
    *,
    sender: str = "client",
    prg: PRG | None = None,
) -> dict[str, Any]:
    """Ferret COTs: setup (:meth:`ferret.FerretSender.setup`) then n COTs; see the module."""
    prg = prg if prg is not None else PRG()
    label = "bench/silent"

    async def setup() -> ferret.FerretCOT:
        if ch.role == sender:
            return await ferret.FerretSender.setup(ch, prg, label, params)
        return await ferret.FerretReceiver.setup(ch, prg, label, params)

    async def run(inst: Any) -> None:
        if ch.role == sender:
            async for _ in inst.send_iter(ch, n, random_choices=True):
                pass
        else:
            async for _ in inst.recv_random_iter(ch, n):
                pass

    out = await _measure(ch, setup, run, n)
    return {"op": "cot", "source": "silent", "params": params.name, **out}


async def bench_iknp_cot(
    ch: Channel, n: int, *, sender: str = "client", prg: PRG | None = None
) -> dict[str, Any]:
    """The same measurement for IKNP (128 base OTs, then n COTs with random choices)."""
    prg = prg if prg is not None else PRG()
    label = "bench/iknp"

    async def setup() -> Any:
        if ch.role == sender:
            return await IknpSender.setup(ch, prg, label)
        return await IknpReceiver.setup(ch, prg, label)

    async def run(inst: Any) -> None:
        if ch.role == sender:
            async for _ in inst.send_iter(ch, n, random_choices=True):
                pass
        else:
            async for _ in inst.recv_random_iter(ch, n):
                pass

    return {"op": "cot", "source": "iknp", **(await _measure(ch, setup, run, n))}


async def compare(sources: list[str], sizes: list[int], params: str = "b13") -> list[dict]:
    """Both parties locally, each (source, n) from scratch; the slower party's seconds."""
    from secmoe.net import run_local

    rows = []
    for n in sizes:
        for src in sources:

            async def party(ch: Channel, src: str = src, n: int = n) -> dict[str, Any]:
                if src == "silent":
                    return await bench_silent_cot(ch, n, ferret.PARAMS[params])
                return await bench_iknp_cot(ch, n)

            c, s = await run_local(party, party, timeout=3600)
            row = dict(c)
            row["seconds"] = max(c["seconds"], s["seconds"])
            row["setup_seconds"] = max(c["setup_seconds"], s["setup_seconds"])
            row["ots_per_second"] = n / (row["seconds"] + row["setup_seconds"])
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m secmoe.protocols.ot.silent_bench --source silent iknp --n 1e5 1e7``."""
    import argparse
    import asyncio
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", nargs="+", choices=("silent", "iknp"), default=["silent"])
    p.add_argument("--n", nargs="+", type=float, default=[1e7], help="COTs (e.g. 1e7)")
    p.add_argument("--params", choices=sorted(ferret.PARAMS), default="b13")
    a = p.parse_args(argv)
    for row in asyncio.run(compare(a.source, [int(x) for x in a.n], a.params)):
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()

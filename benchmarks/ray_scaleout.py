"""Expert-parallel server (issue 17): ``secmoe bench moe`` with the embedded server and with
``--workers W``, side by side in one run, each as two processes over TCP loopback (the client
in its own process). Prints one JSON line per run (bytes, rounds, seconds, where the encoded
expert weights are) and a summary: the time ratio and whether bytes and rounds are identical.

    python benchmarks/ray_scaleout.py --workers 0 2 --repeat 1 \
        --out benchmarks/results/ray_scaleout.jsonl

Default layer: ``select``, E = 64, d = 256, d_ff = 1024, T = 8 (the issue's target). The load
average (``os.getloadavg``) is recorded with each run: on a shared machine the times are upper
bounds.

``--whole FILE --project W…`` runs nothing: it PROJECTS a whole model's CPU-based LAN time
with W workers (:mod:`secmoe.distributed.predict`) from the last ``secmoe bench model --layers
2 --strategy select`` row of FILE with the embedded server, as ``benchmarks/paper_table.py``
writes it (two processes; the row carries the server's own per-step selection CPU seconds and
each row's ``server_linear_cpu_seconds``), composed as ``paper_table.py``'s ``compose``
composes it (the top rows once, block 0 for every dense block, block 1 for every MoE block;
its ``lan_cpu``: both parties' CPU seconds plus the link):

    python benchmarks/paper_table.py --run layers --only switch-base-64/select \
        --out benchmarks/results/ray_scaleout_sb64_model.jsonl
    python benchmarks/ray_scaleout.py --whole benchmarks/results/ray_scaleout_sb64_model.jsonl \
        --model switch-base-64 --project 8 16 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from moe_sweep import run_two
from paper_table import PRESET_LAYERS, PROFILES_BW, compose

from secmoe.distributed.predict import SelectCosts, project
from secmoe.ops.linear import select_chunk

SECMOE = [sys.executable, "-m", "secmoe.cli", "bench", "moe"]
LAYER = ["--strategy", "select", "--experts", "64", "--d-model", "256", "--d-ff", "1024",
         "--tokens", "8"]  # fmt: skip


def run_pair(layer: list[str], workers: int, timeout: float) -> dict:
    """One run: server (with ``--workers``) and client processes over TCP; the client's JSON
    with the server's selection figures."""
    extra = ["--workers", str(workers)] if workers else []
    srv: dict = {}
    load = os.getloadavg()
    cmd = [*SECMOE, *layer, "--json", f"--timeout={timeout}"]
    res, err, _wall = run_two(cmd, timeout + 300, server_extra=extra, server_result=srv)
    if res is None:
        raise SystemExit(f"run failed:\n{err}")
    res.update(workers=workers, load_before=load, load_after=os.getloadavg())
    res.update({k: v for k, v in srv.items() if k.startswith("select_")})
    return res


def costs(base: dict) -> SelectCosts:
    """The embedded run's per-step CPU seconds, for the cost model."""
    p = base["params"]
    return SelectCosts.from_result(base, select_chunk(p["tokens"], p["experts"]) * p["experts"])


def whole_model(row: dict, workers: list[int]) -> dict:
    """PROJECTED whole-model LAN minutes (CPU-based) with each W of ``workers``, and the
    measured composition's, from a ``--layers 2 --strategy select`` row (see the module's
    docstring): the server's CPU seconds and those in its plain-weight HE products composed by
    ``compose``, the row's one MoE block's selection steps counted once per MoE block."""
    if row.get("server_linear_cpu_seconds") is None or "select_leaves" not in row:
        raise SystemExit(
            f"the {row['run']} row of {row.get('date')} lacks the server's plain-weight HE "
            "products' CPU or its selections' steps: rerun it with this code (paper_table.py "
            "--run layers)"
        )
    n_layers, moe = PRESET_LAYERS[row["run"]["model"]]
    f = compose(row, n_layers, moe)
    one, n = SelectCosts.from_result(row, row["select_leaves"]), len(moe)
    c = dataclasses.replace(
        one,
        expand=n * one.expand,
        products=n * one.products,
        finish=n * one.finish,
        server=f["server_cpu"],
        linear=f["server_linear_cpu"],
    )
    bw, rtt = PROFILES_BW["lan"]
    net = f["wire"] * 8 / bw + f["rounds"] * rtt / 2
    out = {
        "measured_lan_cpu_min": f["lan_cpu"] / 60,
        "server_cpu": c.server,
        "client_cpu": f["client_cpu"],
        "selections_server_cpu": c.products + c.finish,
        "plain_weight_products_server_cpu": c.linear,
        "link_seconds": net,
    }
    for w in workers:
        m = project(c, w)
        out[f"projected_{w}_workers"] = {
            "lan_min": (f["client_cpu"] + m["server_seconds"] + net) / 60,
            "worker_cpu": m["worker_cpu"],
            "coordinator_cpu": m["coordinator_cpu"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all configurations")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", type=Path, help="append the JSON lines here")
    ap.add_argument(
        "--project",
        type=int,
        nargs="*",
        default=[],
        help="also print the cost model's PROJECTION for these worker counts (one core each)",
    )
    ap.add_argument("--whole", type=Path, help="PROJECT a whole model from this JSON-lines file")
    ap.add_argument("--model", default="switch-base-64", help="with --whole: the preset")
    ap.add_argument("layer", nargs="*", help="bench moe arguments (default: the target)")
    args = ap.parse_args()
    if args.whole:
        rows = [json.loads(x) for x in args.whole.read_text().splitlines() if x.strip()]
        want = {"model": args.model, "strategy": "select", "layers": 2}
        mine = [r for r in rows if r.get("run") == want and not r.get("workers")]
        if not mine:
            raise SystemExit(f"{args.whole}: no {want} row with the embedded server")
        print(json.dumps({"PROJECTION": True, **whole_model(mine[-1], args.project)}, indent=1))
        return
    layer = args.layer or LAYER
    runs: list[dict] = []
    for _ in range(args.repeat):
        for w in args.workers:
            t0 = time.perf_counter()
            r = run_pair(layer, w, args.timeout)
            r["wall"] = time.perf_counter() - t0
            runs.append(r)
            keep = ("workers", "seconds", "server_seconds", "bytes_c2s", "bytes_s2c", "rounds",
                    "messages",
                    "select_weights_bytes", "linear_weights_bytes",
                    "select_products_seconds", "select_finish_seconds",
                    "select_server_total_seconds", "linear_cpu_seconds", "server_cpu_seconds",
                    "worker_cpu_seconds",
                    "load_before", "load_after", "wall")  # fmt: skip
            print(json.dumps({k: r.get(k) for k in keep}), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    base = [r for r in runs if r["workers"] == args.workers[0]]
    for w in args.workers[1:]:
        mine = [r for r in runs if r["workers"] == w]
        same = all(
            (a["bytes_c2s"], a["bytes_s2c"], a["rounds"], a["messages"])
            == (b["bytes_c2s"], b["bytes_s2c"], b["rounds"], b["messages"])
            for a, b in zip(base, mine, strict=True)
        )
        ratio = sum(r["seconds"] for r in mine) / sum(r["seconds"] for r in base)
        srv = sum(r["server_seconds"] for r in mine) / sum(r["server_seconds"] for r in base)
        held = sum(base[0]["select_weights_bytes"])  # none for the strategies without select
        mem = max(mine[0]["select_weights_bytes"]) / held if held else float("nan")
        print(
            f"workers {w} vs {args.workers[0]}: server wall time ratio {srv:.3f} (the "
            f"server's own run seconds; with the client's, which also count the end of the "
            f"server's setup, {ratio:.3f}), bytes and rounds identical: {same}, encoded "
            f"weights per worker {mem:.3f}x the single process"
        )
        cpu0 = sum(r["server_cpu_seconds"] for r in base) / len(base)
        coord = sum(r["server_cpu_seconds"] for r in mine) / len(mine)
        work = sum(max(r.get("worker_cpu_seconds") or [0]) for r in mine) / len(mine)
        print(
            f"CPU seconds (load-independent): server {cpu0:.1f} alone; with {w} workers the "
            f"coordinator {coord:.1f} and the busiest worker {work:.1f}: on {w + 1} idle "
            f"cores {max(coord, work) / cpu0:.2f}-{(coord + work) / cpu0:.2f}x the time"
        )
        if args.workers[0] == 0 and "select_expand_cpu_seconds" in base[0]:
            for b, r in zip(base, mine, strict=True):
                m = project(costs(b), w)
                err_w = m["worker_cpu"] / max(r["worker_cpu_seconds"]) - 1
                err_c = m["coordinator_cpu"] / r["server_cpu_seconds"] - 1
                print(
                    f"cost model at {w} workers: busiest worker {m['worker_cpu']:.1f} CPU s "
                    f"({err_w:+.0%} vs measured), coordinator {m['coordinator_cpu']:.1f} CPU s "
                    f"({err_c:+.0%})"
                )
    for w in args.project if "select_expand_cpu_seconds" in base[0] else ():
        ms = [project(costs(b), w) for b in base]
        walls = ", ".join(
            f"{m['server_seconds']:.1f} s ({m['server_seconds'] / m['embedded_seconds']:.2f}x)"
            for m in ms
        )
        print(f"PROJECTION, {w} workers on {w + 1} idle cores, server seconds: {walls}")


if __name__ == "__main__":
    main()

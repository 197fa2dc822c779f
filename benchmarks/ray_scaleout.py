"""Expert-parallel server (issue 17): ``secmoe bench moe`` with the embedded server and with
``--workers W``, side by side in one run, each as two processes over TCP loopback (the client
in its own process). Prints one JSON line per run (bytes, rounds, seconds, where the encoded
expert weights are) and a summary: the time ratio and whether bytes and rounds are identical.

    python benchmarks/ray_scaleout.py --workers 0 2 --repeat 1 \
        --out benchmarks/results/ray_scaleout.jsonl

Default layer: ``select``, E = 64, d = 256, d_ff = 1024, T = 8 (the issue's target). The load
average (``os.getloadavg``) is recorded with each run: on a shared machine the times are upper
bounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SECMOE = [sys.executable, "-m", "secmoe.cli", "bench", "moe"]
LAYER = ["--strategy", "select", "--experts", "64", "--d-model", "256", "--d-ff", "1024",
         "--tokens", "8"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(layer: list[str], workers: int, timeout: float) -> dict:
    """One run: server (with ``--workers``) and client processes over TCP; the client's JSON."""
    port = free_port()
    common = [*SECMOE, *layer, "--json", f"--timeout={timeout}"]
    extra = ["--workers", str(workers)] if workers else []
    server = subprocess.Popen(
        [*common, *extra, "--party", "server", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    load = os.getloadavg()
    client = subprocess.run(
        [*common, "--party", "client", "--connect", f"127.0.0.1:{port}", "--connect-timeout=120"],
        capture_output=True,
        text=True,
        timeout=timeout + 300,
    )
    out, err = server.communicate(timeout=120)
    if client.returncode or server.returncode:
        raise SystemExit(f"run failed:\n{client.stderr[-2000:]}\n{err[-2000:]}")
    res = json.loads(client.stdout.strip().splitlines()[-1])
    srv = json.loads(out.strip().splitlines()[-1])
    res.update(workers=workers, load_before=load, load_after=os.getloadavg())
    res.update({k: v for k, v in srv.items() if k.startswith("select_")})
    return res


def model(base: dict, workers: int) -> dict[str, float]:
    """The cost model, from the embedded run's CPU seconds per step (load-independent): with W
    workers each expands its subtree (T·E/W − 1 + log2 W of the T·E − 1 automorphisms) and
    does 1/W of the selection and tensor products; the coordinator does the rest (the finish:
    relinearize, pack, flood; the layer's other operators). ``idle_wall``: the layer's time on
    W + 1 idle cores, the coordinator finishing block after block while the workers go on
    (a PROJECTION; the rest of the layer at its measured wall time). Not modelled: moving the
    accumulators through Ray and summing them."""
    leaves = base["params"]["tokens"] * base["params"]["experts"]
    x = base["select_expand_cpu_seconds"]
    p = base["select_products_cpu_seconds"] - x
    f = base["select_finish_cpu_seconds"]
    rest = base["seconds"] - base["select_server_total_seconds"]
    other = base["server_cpu_seconds"] - base["select_products_cpu_seconds"] - f
    xw = x * (leaves / workers - 1 + math.log2(workers)) / (leaves - 1)
    return {
        "worker_cpu": xw + p / workers,
        "coordinator_cpu": other + f,
        "idle_wall": rest + xw + max(p / workers, f),
        "idle_wall_embedded": rest + x + p + f,
    }


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
    ap.add_argument("layer", nargs="*", help="bench moe arguments (default: the target)")
    args = ap.parse_args()
    layer = args.layer or LAYER
    runs: list[dict] = []
    for _ in range(args.repeat):
        for w in args.workers:
            t0 = time.perf_counter()
            r = run_pair(layer, w, args.timeout)
            r["wall"] = time.perf_counter() - t0
            runs.append(r)
            keep = ("workers", "seconds", "bytes_c2s", "bytes_s2c", "rounds", "messages",
                    "select_weights_bytes", "select_products_seconds", "select_finish_seconds",
                    "select_server_total_seconds", "server_cpu_seconds", "worker_cpu_seconds",
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
        mem = max(mine[0]["select_weights_bytes"]) / sum(base[0]["select_weights_bytes"])
        print(
            f"workers {w} vs {args.workers[0]}: time ratio {ratio:.3f}, bytes and rounds "
            f"identical: {same}, encoded weights per worker {mem:.3f}x the single process"
        )
        cpu0 = sum(r["server_cpu_seconds"] for r in base) / len(base)
        coord = sum(r["server_cpu_seconds"] for r in mine) / len(mine)
        work = sum(max(r.get("worker_cpu_seconds") or [0]) for r in mine) / len(mine)
        print(
            f"CPU seconds (load-independent): server {cpu0:.1f} alone; with {w} workers the "
            f"coordinator {coord:.1f} and the busiest worker {work:.1f}: on {w + 1} idle "
            f"cores {max(coord, work) / cpu0:.2f}-{(coord + work) / cpu0:.2f}x the time"
        )
        if args.workers[0] == 0:
            for b, r in zip(base, mine, strict=True):
                m = model(b, w)
                err_w = m["worker_cpu"] / max(r["worker_cpu_seconds"]) - 1
                err_c = m["coordinator_cpu"] / r["server_cpu_seconds"] - 1
                print(
                    f"cost model at {w} workers: busiest worker {m['worker_cpu']:.1f} CPU s "
                    f"({err_w:+.0%} vs measured), coordinator {m['coordinator_cpu']:.1f} CPU s "
                    f"({err_c:+.0%})"
                )
    for w in args.project if args.workers[0] == 0 else ():
        ms = [model(b, w) for b in base]
        walls = ", ".join(
            f"{m['idle_wall']:.1f} s ({m['idle_wall'] / m['idle_wall_embedded']:.2f}x)" for m in ms
        )
        print(f"PROJECTION, {w} workers on {w + 1} idle cores: {walls}")


if __name__ == "__main__":
    main()

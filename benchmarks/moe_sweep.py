"""The MoE scaling study: bytes and time of each strategy against the number of experts.

Each configuration is one ``secmoe bench moe`` run as two processes over TCP loopback (so the
server's CPU time is its own process's), appended as one JSON line to the results file as soon
as it finishes. ``--plot`` draws bytes and time against E from a results file.

    python benchmarks/moe_sweep.py --profile t8 --out benchmarks/results/moe_t8.jsonl
    python benchmarks/moe_sweep.py --profile target --out benchmarks/results/moe_target.jsonl
    python benchmarks/moe_sweep.py --plot benchmarks/results/moe_t8.jsonl --png docs/moe_t8
    python benchmarks/moe_sweep.py --per-token --plot benchmarks/results/moe_t128.jsonl \
        benchmarks/results/moe_t8.jsonl --png docs/moe_t128

Profiles:
- ``t8``: Switch-Base dimensions (d = 768, d_ff = 3072, ReLU), T = 8 (the paper's setting),
  top-1, E = 8, 16, 32, 64, every strategy.
- ``target``: d = 256, d_ff = 1024, T = 128, E = 64, cf = 1.25: issue 10's comparison.
- ``target-per-token``: ``select`` and ``all`` at the target's dimensions on 16 tokens (at
  T = 128 they would run for well over 30 minutes here), reported per token and labelled so.
- ``t128``: Switch-Base dimensions with T = 128 for ``dispatch`` and ``reveal``. ``select`` and
  ``all`` would run for hours at T = 128 here; their figures on fewer tokens are the ``t8``
  profile's, shown per token with ``--per-token`` (labelled with the T they ran at), never
  extrapolated silently.
- ``e128``: E = 128 where memory allows here: ``reveal`` and ``dispatch`` at T = 128, ``select``
  at T = 8.

``--table`` and ``--plot`` take several results files; ``--per-token`` divides bytes and times
by the T each run had, and every row and line says that T.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

SECMOE = [sys.executable, "-m", "secmoe.cli", "bench", "moe"]
STRATEGIES = ("reveal", "dispatch", "select", "all")
BASE = {"d_model": 768, "d_ff": 3072, "ffn": "relu", "top_k": 1, "capacity_factor": 1.25}


def profile(name: str) -> list[dict]:
    """The configurations of a profile."""
    if name == "t8":
        return [
            {**BASE, "tokens": 8, "experts": e, "strategy": s}
            for e in (8, 16, 32, 64)
            for s in STRATEGIES
        ]
    if name == "target":
        return [
            {**BASE, "d_model": 256, "d_ff": 1024, "tokens": 128, "experts": 64, "strategy": s}
            for s in STRATEGIES
        ]
    if name == "target-per-token":
        return [
            {
                **BASE,
                "d_model": 256,
                "d_ff": 1024,
                "tokens": 16,
                "experts": 64,
                "strategy": s,
                "per_token": True,
            }
            for s in ("select", "all")
        ]
    if name == "t128":
        return [
            {**BASE, "tokens": 128, "experts": e, "strategy": s}
            for e in (8, 16, 32, 64)
            for s in ("reveal", "dispatch")
        ]
    if name == "e128":
        return [
            {**BASE, "tokens": t, "experts": 128, "strategy": s}
            for s, t in (("reveal", 128), ("dispatch", 128), ("select", 8))
        ]
    raise SystemExit(f"unknown profile {name!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(
    cmd: list[str],
    timeout: float,
    *,
    server_extra: Sequence[str] = (),
    server_result: dict | None = None,
) -> tuple[dict | None, str, float]:
    """``cmd`` (a ``secmoe bench OP …`` command) as a server and a client process over TCP
    loopback: the client's JSON result (``None`` on failure), both processes' stderr, the wall
    seconds. ``timeout`` bounds the whole client run. ``server_extra``: arguments for the
    server only; ``server_result`` (if given) receives the server's own JSON."""
    port = free_port()
    server = subprocess.Popen(
        [*cmd, *server_extra, "--party", "server", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.perf_counter()
    client = subprocess.run(
        [*cmd, "--party", "client", "--connect", f"127.0.0.1:{port}", "--connect-timeout", "60"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    sout, serr = server.communicate(timeout=120)
    wall = time.perf_counter() - t0
    if client.returncode or server.returncode:
        return None, (client.stderr + serr).strip()[-800:], wall
    if server_result is not None and sout.strip():
        server_result.update(json.loads(sout.strip().splitlines()[-1]))
    return json.loads(client.stdout.strip().splitlines()[-1]), serr, wall


def run_one(cfg: dict, timeout: float) -> dict:
    """One configuration as two processes; the client's JSON result (or the error)."""
    args = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items() if k != "per_token"]
    args += ["--json", "--no-check", f"--timeout={timeout}"]
    res, err, wall = run_two([*SECMOE, *args], timeout + 120)
    if res is None:
        return {"config": cfg, "error": err[-500:], "wall": wall}
    res.update(config=cfg, wall=wall)
    if cfg.get("per_token"):
        res["per_token"] = {
            k: res[k] / cfg["tokens"]
            for k in ("bytes_c2s", "bytes_s2c", "seconds", "server_cpu_seconds")
        }
    return res


def sweep(configs: list[dict], out: Path, timeout: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
    }
    for cfg in configs:
        res = {**run_one(cfg, timeout), **stamp}
        with out.open("a") as fh:
            fh.write(json.dumps(res, sort_keys=True) + "\n")
        brief = {
            k: res.get(k)
            for k in ("bytes_c2s", "bytes_s2c", "seconds", "server_cpu_seconds", "error")
        }
        print(json.dumps({**cfg, **brief}), flush=True)


def load(results: list[Path]) -> list[dict]:
    """The rows of several results files."""
    return [json.loads(line) for path in results for line in path.read_text().splitlines() if line]


def per_run_tokens(r: dict, per_token: bool) -> int:
    """The divisor of a row's figures: its T when shown per token (or when it ran so)."""
    return r["config"]["tokens"] if per_token or r["config"].get("per_token") else 1


def plot(results: list[Path], png_prefix: str, per_token: bool = False) -> None:
    """Bytes and server time against E, one line per (strategy, T) (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in load(results) if "error" not in r]
    lines = sorted({(r["config"]["strategy"], r["config"]["tokens"]) for r in rows})
    max_t = max((t for _, t in lines), default=0)
    unit = " per token" if per_token else ""
    for metric, label in (
        ("bytes", f"bytes on the wire{unit} (MB)"),
        ("server_cpu_seconds", f"server CPU time{unit} (s)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for s, t in lines:
            pts = sorted(
                (r["config"]["experts"], _value(r, metric) / per_run_tokens(r, per_token))
                for r in rows
                if (r["config"]["strategy"], r["config"]["tokens"]) == (s, t)
            )
            name = s + (" (INSECURE)" if s == "reveal" else "") + f", T = {t}"
            style = {"color": f"C{STRATEGIES.index(s)}", "ls": "-" if t == max_t else "--"}
            ax.plot(*zip(*pts, strict=True), marker="o", label=name, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log" if per_token else "linear")
        ax.set_xlabel("experts E")
        ax.set_ylabel(label)
        c = rows[0]["config"] if rows else {}
        ax.set_title(
            f"secure MoE layer: d = {c.get('d_model')}, d_ff = {c.get('d_ff')}, "
            f"{c.get('ffn')}, top-{c.get('top_k')}"
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = f"{png_prefix}_{'bytes' if metric == 'bytes' else 'time'}.png"
        fig.savefig(path, dpi=120)
        print(f"wrote {path}")


def table(results: list[Path], per_token: bool = False) -> str:
    """A markdown table of results files (per-token rows labelled), with the LAN/WAN
    estimates (measured compute + bytes / bandwidth + rounds × RTT / 2)."""
    out = [
        "| E | T | strategy | MB c2s | MB s2c | MB total | rounds | s | server CPU s "
        "| LAN s | WAN s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = load(results)
    for r in sorted(rows, key=lambda r: (r["config"]["experts"], r["config"]["strategy"])):
        c = r["config"]
        name = c["strategy"] + (" (INSECURE)" if c["strategy"] == "reveal" else "")
        if "error" in r:
            out.append(
                f"| {c['experts']} | {c['tokens']} | {name} | failed: {r['error'][:60]} "
                "| | | | | | | |"
            )
            continue
        k = per_run_tokens(r, per_token)
        label = " per token" if k > 1 else ""
        mb = [r["bytes_c2s"] / 1e6 / k, r["bytes_s2c"] / 1e6 / k]
        est = r.get("estimates") or {}
        lan, wan = (f"{est[n] / k:.1f}" if n in est else "" for n in ("lan", "wan"))
        out.append(
            f"| {c['experts']} | {c['tokens']}{label} | {name} | {mb[0]:.1f} | {mb[1]:.1f} | "
            f"{sum(mb):.1f} | {r['rounds']} | {r['seconds'] / k:.1f} | "
            f"{r['server_cpu_seconds'] / k:.1f} | {lan} | {wan} |"
        )
    return "\n".join(out)


def _value(r: dict, metric: str) -> float:
    if metric == "bytes":
        return (r["bytes_c2s"] + r["bytes_s2c"]) / 1e6
    return r[metric]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=("t8", "target", "target-per-token", "t128", "e128"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/moe.jsonl"))
    ap.add_argument("--timeout", type=float, default=3600.0, help="per run (s)")
    ap.add_argument("--plot", type=Path, nargs="+", help="results files to plot")
    ap.add_argument("--png", default="docs/moe", help="output prefix for --plot")
    ap.add_argument("--table", type=Path, nargs="+", help="results files as a markdown table")
    ap.add_argument("--per-token", action="store_true", help="divide figures by each run's T")
    args = ap.parse_args()
    if args.table:
        print(table(args.table, args.per_token))
    elif args.plot:
        plot(args.plot, args.png, args.per_token)
    elif args.profile:
        sweep(profile(args.profile), args.out, args.timeout)
    else:
        ap.error("give --profile, --plot or --table")


if __name__ == "__main__":
    main()

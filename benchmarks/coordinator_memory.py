"""The coordinator's memory with workers (issue 17, item 4): ``secmoe serve --workers W`` on a
checkpoint whose experts dominate, and ``secmoe infer`` against it (two processes over TCP
loopback), for each source tree given (e.g. this checkout and an older snapshot, side by
side in one run). The server process is sampled every 0.1 s (``/proc/PID/status``): its
resident memory when it starts listening (the model loaded), its peak (``VmHWM``) and, after
the session, its resident memory split into anonymous and file-backed pages. The Ray workers
are other processes: not counted.

    python benchmarks/coordinator_memory.py --src . --src /tmp/old-snapshot \\
        --out benchmarks/results/coordinator_memory.jsonl

Default model: a Switch encoder, d = 256, d_ff = 1024, E = 64, 4 blocks all MoE (the experts'
float32 weights 537 MB of its 591 MB), 4 tokens, ``select``; random weights, seed 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from secmoe.model.config import preset  # noqa: E402
from secmoe.model.weights import init_and_save, param_count  # noqa: E402

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def model(out: Path, experts: int, layers: int) -> Path:
    cfg = preset("switch-base-8").replace(
        name="coordinator-memory",
        d_model=256,
        n_heads=4,
        d_ff=1024,
        n_experts=experts,
        n_layers=layers,
        moe_layers=tuple(range(layers)),
    )
    return init_and_save(cfg, out / "model")


def status(pid: int) -> dict[str, int]:
    """The process's memory figures in bytes (``/proc/PID/status``)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            out[key] = int(value.split()[0]) * 1024
    return out


def run(src: Path, ckpt: Path, ids: Path, workers: int, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    serve = [sys.executable, "-m", "secmoe.cli", "serve", "--model", str(ckpt)]
    serve += ["--listen", "127.0.0.1:0", "--sessions", "1", f"--timeout={timeout}"]
    serve += ["--workers", str(workers)] if workers else []
    t0, load = time.monotonic(), os.getloadavg()
    srv = subprocess.Popen(serve, env=env, stderr=subprocess.PIPE, text=True, cwd=src)
    lines: list[str] = []
    port: list[int] = []
    samples: list[dict[str, int]] = []
    listening: dict[str, int] = {}
    after: dict[str, int] = {}

    def read() -> None:
        for line in srv.stderr:  # type: ignore[union-attr]
            lines.append(line)
            m = re.search(r" on 127\.0\.0\.1:(\d+):", line)
            if m and not port:
                listening.update(status(srv.pid))
                port.append(int(m.group(1)))
            if "session 1 from" in line and ": done in " in line:
                after.update(status(srv.pid))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not port and srv.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    if not port:
        srv.kill()
        raise SystemExit("serve did not start:\n" + "".join(lines))
    client = [sys.executable, "-m", "secmoe.cli", "infer", "--connect", f"127.0.0.1:{port[0]}"]
    client += ["--input", str(ids), "--strategy", "select", "--json", f"--timeout={timeout}"]
    cli = subprocess.Popen(client, env=env, stdout=subprocess.PIPE, text=True, cwd=src)
    while cli.poll() is None or srv.poll() is None:
        if srv.poll() is None:
            with contextlib.suppress(OSError, ValueError):  # it may have just exited
                samples.append(status(srv.pid))
        time.sleep(0.1)
    reader.join(5)
    out = json.loads(cli.stdout.read() or "{}")  # type: ignore[union-attr]
    if cli.returncode or srv.returncode:
        raise SystemExit(
            f"run failed (client {cli.returncode}, server {srv.returncode}):\n" + "".join(lines)
        )
    session = next(line for line in lines if "session 1 from" in line and ": done in " in line)
    return {
        "src": str(src),
        "workers": workers,
        "listening": listening,
        "peak_rss": max(s.get("VmHWM", 0) for s in samples),
        "peak_anon": max(s.get("RssAnon", 0) for s in samples),
        "after_session": after,
        "session_log": session.strip(),
        "seconds": round(time.monotonic() - t0, 1),
        "load_before": load,
        "load_after": os.getloadavg(),
        "bytes": out.get("bytes_c2s", 0) + out.get("bytes_s2c", 0),
        "rounds": out.get("rounds"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", action="append", type=Path, help="source trees (default: this one)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = model(Path(tmp), args.experts, args.layers)
        cfg = json.loads(ckpt.with_suffix(".json").read_text())
        ids = Path(tmp) / "ids.npy"
        np.save(ids, np.arange(1, args.tokens + 1, dtype=np.int64)[None])  # public input
        experts = 4 * args.layers * args.experts * 2 * cfg["d_model"] * cfg["d_ff"]
        total = 4 * param_count(
            preset("switch-base-8").replace(
                **{k: cfg[k] for k in ("d_model", "n_heads", "d_ff", "n_experts", "n_layers")},
                moe_layers=tuple(range(args.layers)),
            )
        )
        print(
            f"model: {ckpt.stat().st_size / 1e6:.0f} MB on disk, experts {experts / 1e6:.0f}"
            f" MB of {total / 1e6:.0f} MB (float32)",
            file=sys.stderr,
        )
        for src in args.src or [ROOT]:
            res = run(src.resolve(), ckpt, ids, args.workers, args.timeout)
            res.update(experts_bytes=experts, model_bytes=total)
            line = json.dumps(res)
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()

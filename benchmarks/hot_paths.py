"""Hot paths (issue 18), side by side with SecretFlow SPU in one run: OT rates, the 64-bit
comparison's bytes, and ReLU on 2^20 elements against SPU's CHEETAH.

Every case runs as a child process, alternating secmoe and SPU (``--reps`` rounds), and is
written as one JSON line with the load average before it (``os.getloadavg``: on a shared
machine times are upper bounds) and the child's peak RSS (``wait4``). A summary prints the
median of each case and the ReLU rate ratio secmoe / SPU.

    python benchmarks/hot_paths.py --spu-python /path/to/spu-venv/bin/python \
        --reps 2 --out benchmarks/results/hot_paths.jsonl

SPU needs a virtualenv of its own (``pip install spu==0.9.5``; see
``../shared/peers/README.md``); without ``--spu-python`` only secmoe's cases run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SECMOE = [sys.executable, "-m", "secmoe.cli", "bench"]
CASES = {
    "cot_silent_1e7": ["ot", "--kind", "cot", "--n", "10000000", "--source", "silent"],
    "cot_iknp_1e7": ["ot", "--kind", "cot", "--n", "10000000", "--source", "iknp"],
    "compare_2^16": ["compare", "--n", "65536", "--bits", "64"],
    "relu_2^20": ["relu", "--n", "1048576"],
}
SPU_BENCH = Path(__file__).resolve().parents[2] / "shared" / "peers" / "spu_bench.py"


def run(cmd: list[str], timeout: float) -> tuple[dict, int]:
    """The last JSON line of ``cmd``'s stdout and the child's peak RSS in kB (``wait4``: the
    child is reaped here, not by ``subprocess``, so its own resource usage is read)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read() + err.read()  # SPU's script prints its JSON on stderr
        lines = [ln for ln in text.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{text[-2000:]}")
    return json.loads(lines[-1]), usage.ru_maxrss


def record(name: str, peer: str, cmd: list[str], timeout: float) -> dict:
    load = os.getloadavg()[0]
    res, rss = run(cmd, timeout)
    if peer == "spu":
        n = 1 << int(name.split("^")[1])  # SPU runs the ReLU cases only: relu_2^k
        row = {"seconds": res["median_s"], "bytes": res["median_bytes"]}
        row["rate"] = n / row["seconds"]
    else:
        row = {
            "seconds": res["seconds"],
            "bytes": res["bytes_c2s"] + res["bytes_s2c"],
            "bytes_per_item": res["bytes_per_item"],
            "rate": res["items_per_s"],
        }
        checks = [res[k] for k in ("max_abs_err_ulp", "mismatches") if k in res]
        if checks:  # OT benchmarks do not check their outputs
            row["exact"] = not any(checks)
    return {"case": name, "peer": peer, "load": load, "peak_rss_kb": rss, **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spu-python", help="the Python of a virtualenv with spu==0.9.5")
    ap.add_argument("--spu-bench", type=Path, default=SPU_BENCH, help=f"default {SPU_BENCH}")
    ap.add_argument("--reps", type=int, default=2, help="rounds of every case (default 2)")
    ap.add_argument("--only", default="", help="comma-separated case names (default all)")
    ap.add_argument("--out", type=Path, help="append the JSON lines to this file")
    ap.add_argument("--timeout", type=float, default=900, help="per child process, seconds")
    a = ap.parse_args()
    only = {s for s in a.only.split(",") if s}
    bad = only - set(CASES)
    if bad:
        ap.error(f"unknown cases {sorted(bad)}; choose from {sorted(CASES)}")
    rows = []
    for _ in range(a.reps):
        for name, args in CASES.items():
            if only and name not in only:
                continue
            rows.append(record(name, "secmoe", [*SECMOE, *args, "--json"], a.timeout))
            print(json.dumps(rows[-1]), flush=True)
            if name == "relu_2^20" and a.spu_python:
                spu = [a.spu_python, str(a.spu_bench), "--prot", "CHEETAH", "--reps", "1"]
                rows.append(record(name, "spu", [*spu, "--only", name], a.timeout))
                print(json.dumps(rows[-1]), flush=True)
    if a.out:
        with a.out.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    med = {}
    for key in sorted({(r["case"], r["peer"]) for r in rows}):
        sel = [r for r in rows if (r["case"], r["peer"]) == key]
        med[key] = statistics.median(r["rate"] for r in sel)
        loads = ", ".join(f"{r['load']:.1f}" for r in sel)
        rss = max(r["peak_rss_kb"] for r in sel) / 1e6
        print(f"{key[0]:16s} {key[1]:7s} median {med[key]:14,.0f} /s  peak RSS {rss:.2f} GB  "
              f"bytes {sel[0]['bytes']:,}  load {loads}")  # fmt: skip
    if ("relu_2^20", "spu") in med:
        ratio = med[("relu_2^20", "secmoe")] / med[("relu_2^20", "spu")]
        print(f"ReLU 2^20 rate, secmoe / SPU CHEETAH: {ratio:.2f}x")


if __name__ == "__main__":
    main()

"""Ferret's LPN encoding (issue 18): ns per gather alone and under cache pressure.

Measures :meth:`secmoe.protocols.ot.lpn.LocalCode.encode` at the main set's shape (B13:
k = 2^19, a table of 8 MiB, or ``--k``; one GGM batch of 2^19 rows per call), keystream
included:

- ``alone``: one thread, one table, the output reused (the table stays in L3);
- ``pressure``: 2 threads at once, each alternating between 2 tables of its own (4 live
  tables, as in a ReLU: 2 parties × 2 directions), each call preceded by streaming writes of
  its output and of an 8 MiB scratch (as the GGM step writes y before the code runs).

Figures are thread CPU ns per gather (d = 10 gathers per row), medians over rounds. With
``--tree DIR`` (e.g. ``git archive HEAD | tar -x -C DIR``) each round runs this tree and DIR
alternately, each in a fresh subprocess, so old and new code are compared under the same load
(on a shared machine: upper bounds; write ``uptime`` beside them).

    python benchmarks/lpn_encode.py                       # this tree
    python benchmarks/lpn_encode.py --tree /tmp/old       # this tree vs another, alternating
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROWS, N = 1 << 19, 15_564_800  # one GGM batch of rows; B13's n


def measure(k: int, reps: int) -> dict:
    """One round in this process, with whichever ``secmoe`` is first on ``sys.path``."""
    from secmoe.protocols.ot.lpn import LocalCode

    code = LocalCode(N, k)
    g = np.random.default_rng(1)  # public test data
    tables = [g.integers(0, 1 << 63, (k, 2), dtype=np.uint64) for _ in range(4)]
    outs = [g.integers(0, 1 << 63, (ROWS, 2), dtype=np.uint64) for _ in range(4)]
    scratch = [np.zeros((ROWS, 2), np.uint64) for _ in range(2)]
    gathers = ROWS * code.d
    code.encode(outs[0], tables[0])  # load the compiled kernel, touch the table
    alone = []
    for _ in range(reps):
        t0 = time.thread_time()
        code.encode(outs[0], tables[0])
        alone.append((time.thread_time() - t0) / gathers * 1e9)

    def worker(tid: int, cpu: list[float]) -> None:
        for _ in range(reps):
            for q in (2 * tid, 2 * tid + 1):
                np.bitwise_xor(outs[q], np.uint64(1), out=outs[q])
                np.bitwise_xor(scratch[tid], np.uint64(1), out=scratch[tid])
                t0 = time.thread_time()
                code.encode(outs[q], tables[q])
                cpu.append((time.thread_time() - t0) / gathers * 1e9)

    cpus: list[list[float]] = [[], []]
    threads = [threading.Thread(target=worker, args=(i, cpus[i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"alone": float(np.median(alone)), "pressure": float(np.median(cpus[0] + cpus[1]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="another source tree to compare")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (each tree once per round)")
    ap.add_argument("--reps", type=int, default=3, help="calls per measurement in a round")
    ap.add_argument("--k", type=int, default=1 << 19, help="columns (table rows; B13: 2^19)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args.k, args.reps)))
        return
    trees = [str(ROOT)] + [str(Path(t).resolve()) for t in args.tree]
    got: dict[str, list[dict]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            cmd = [sys.executable, __file__, "--worker", f"--reps={args.reps}", f"--k={args.k}"]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if res.returncode:
                sys.exit(f"lpn_encode: the run on {tree} failed: {res.stderr.strip()[-400:]}")
            got[tree].append(json.loads(res.stdout))
    print(f"uptime: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min load)")
    for tree, rows in got.items():
        med = {key: float(np.median([r[key] for r in rows])) for key in ("alone", "pressure")}
        print(
            f"{tree}: alone {med['alone']:.2f} ns/gather, 2 threads x 2 tables "
            f"{med['pressure']:.2f} ns/gather (medians of {len(rows)} rounds)"
        )


if __name__ == "__main__":
    main()

"""A cost model of the server with W workers: its time PROJECTED from the CPU seconds one
embedded run measured per step (``HEState.select_seconds``, ``HEState.linear_seconds``).

**Inputs** (one run with the embedded server, W = 0; CPU seconds, which unlike wall time do
not depend on the machine's load): ``expand`` (the expansion of the one-hot ciphertexts),
``products`` (expansion + selection + tensor products, steps 2-4), ``finish`` (switching,
relinearization, packing, re-randomization, flooding: step 5), ``linear`` (the plain-weight
HE products: router, dense and attention linears, the experts of ``all``/``dispatch``) and
the server's CPU seconds for the whole run; ``rest`` is what is left (OT-based steps, the
secret × secret and norm products, the selections' input steps): it stays on the
coordinator.

**Model** for W workers (what the code does, :mod:`secmoe.distributed.pool`):

- *selection*: the workers form a grid of A expert groups × W/A output-block groups (A the
  largest divisor of W up to 8, :func:`~secmoe.distributed.pool.expert_groups`; A = W up to 8
  workers). A worker expands only its expert group's subtree of each selection's T·E leaves
  (A dividing E): ``expand · (T·E/A − 1 + log2 A) / (T·E − 1)``; then it does 1/W of the
  selection and tensor products and streams one accumulator per output block it holds (A/W of
  them), at a transfer cost ``worker · finish · A/W`` (a whole set of accumulators is the
  count of products the finish handles, hence in units of it); the coordinator finishes the
  sums (``finish``) plus ``coordinator + coordinator_sum · (A − 1)`` times ``finish``
  (receiving A streams per block, summing A − 1 of them), one output block while the workers
  compute the next.
- *plain-weight products*: the workers compute and pack them (1/W each, plus
  ``linear_worker · linear``); the coordinator keeps ``linear_coordinator · linear`` (adding
  its share to the inputs, the top merges, masking, flooding, switching, receiving).
- *wall time* on ``cores`` cores shared fairly by the coordinator and its W workers (default
  W + 1: idle cores, one each): the rest and the coordinator's share of the linears, then the
  workers' share of the linears (W jobs), each selection's expansion (W jobs, the coordinator
  waiting) and its products and finish (W workers and the coordinator side by side), each
  phase the makespan of its jobs under processor sharing.

**Calibration** (:data:`MEASURED_TRANSFER`, 2026-12-07, code with in-place ciphertext
transfers, ``crypto/seal_raw.py``, and numpy accumulators): ``benchmarks/ray_scaleout.py
--workers 0 1 2`` (``select``, E = 64, d = 256, d_ff = 1024, T = 8; CPU seconds of each
worker's and the coordinator's process) for the selection terms, ``--strategy all`` at E = 8
for the plain-weight terms; the figures are in ``benchmarks/results/ray_scaleout.jsonl``
and the README's "Scale-out on Ray" (validation: the CPU seconds of each process within 3 %
in sample, 8 % out of sample; the server's wall time of clean W = 1 and 2 runs on this
machine's 2 cores within 1-4 %). How the terms grow past W = 2 is an assumption (linear in A
for the coordinator's sums, in the blocks held for a worker's transfer), so larger W are
**projections**, for a fast link between the coordinator and its workers: not measurements.
Past 8 workers the coordinator's share stays that of 8 expert groups; what is left to it (the
finish, the rest) is then the floor, and each worker's expansion stays that of 1/8 of the
tree.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from .pool import MAX_EXPERT_GROUPS, expert_groups

__all__ = [
    "MEASURED_TRANSFER",
    "SelectCosts",
    "Transfer",
    "add_predict_arg",
    "project",
    "projected_report",
    "shared_makespan",
]


@dataclass(frozen=True)
class Transfer:
    """What workers add, in units of the embedded run's finish CPU seconds (``worker``: each
    worker's streaming of its accumulators and its fresh process's setup; ``coordinator``:
    receiving them; ``coordinator_sum``: summing one more worker's), and in units of the
    plain-weight products' CPU seconds what stays on the coordinator (``linear_coordinator``:
    its steps and receiving the units) and what each worker adds (``linear_worker``)."""

    worker: float
    coordinator: float
    coordinator_sum: float
    linear_coordinator: float
    linear_worker: float = 0.0


#: Calibrated at W = 1 and 2 (see the module's docstring).
MEASURED_TRANSFER = Transfer(
    worker=0.06,
    coordinator=0.054,
    coordinator_sum=0.076,
    linear_coordinator=0.10,
    linear_worker=0.045,
)


@dataclass(frozen=True)
class SelectCosts:
    """An embedded run's measured CPU seconds: ``leaves`` = T·E one-hot entries per selection
    (every selection of the run the same), the selections' steps summed over the run, the
    plain-weight HE products' (``linear``) and the server's CPU seconds for the whole run."""

    leaves: int
    expand: float
    products: float
    finish: float
    server: float
    linear: float = 0.0

    @classmethod
    def from_result(cls, r: dict[str, Any], leaves: int) -> SelectCosts:
        """From a ``secmoe bench moe|model --json`` result of the embedded server (a result
        without ``linear_cpu_seconds``, from older code, charges the plain-weight products to
        the coordinator: an upper bound)."""
        need = [f"select_{k}_cpu_seconds" for k in ("expand", "products", "finish")]
        missing = [k for k in need if k not in r]
        if missing or r.get("workers", 0):
            raise ValueError(
                "a projection needs an embedded run's per-step selection CPU seconds "
                f"(select strategy, --workers 0); missing: {', '.join(missing) or 'workers 0'}"
            )
        return cls(
            leaves,
            *(float(r[k]) for k in need),
            float(r["server_cpu_seconds"]),
            float(r.get("linear_cpu_seconds", 0.0)),
        )


def shared_makespan(works: list[float], cores: float) -> float:
    """Seconds until every job of ``works`` (CPU seconds each) is done when they run side by
    side on ``cores`` cores shared fairly (each of k running jobs at min(1, cores/k))."""
    t = done = 0.0
    todo = sorted(w for w in works if w > 0)
    for i, w in enumerate(todo):
        t += (w - done) / min(1.0, cores / (len(todo) - i))
        done = w
    return t


def project(
    c: SelectCosts,
    workers: int,
    transfer: Transfer = MEASURED_TRANSFER,
    cores: float = 0,
    groups: int | None = None,
) -> dict:
    """The PROJECTED seconds with ``workers`` workers (model in the module's docstring) on
    ``cores`` cores (0: W + 1, one each), the selections' experts in ``groups`` groups (A;
    None: as the pool chooses for E ≥ 8, :func:`~secmoe.distributed.pool.expert_groups`):
    ``worker_cpu`` (each worker), ``coordinator_cpu``, ``server_seconds`` (the run's server
    wall time) and ``embedded_seconds`` (the same model at W = 0: the server's CPU seconds),
    all for the whole run."""
    if workers < 1:
        raise ValueError(f"a projection needs at least one worker, got {workers}")
    a = groups or expert_groups(workers, MAX_EXPERT_GROUPS)
    if workers % a or c.leaves < a:
        raise ValueError(f"{a} expert groups for {workers} workers and {c.leaves} entries")
    cores = cores or workers + 1
    rest = c.server - c.products - c.finish - c.linear  # stays on the coordinator
    lin_c = transfer.linear_coordinator * c.linear
    lin_w = c.linear * ((1 - transfer.linear_coordinator) / workers + transfer.linear_worker)
    expand = c.expand * (c.leaves / a - 1 + math.log2(a)) / max(c.leaves - 1, 1)
    after = (c.products - c.expand) / workers + transfer.worker * c.finish * a / workers
    finish = c.finish * (1 + transfer.coordinator + transfer.coordinator_sum * (a - 1))
    wall = (
        rest
        + lin_c
        + shared_makespan([lin_w] * workers, cores)
        + shared_makespan([expand] * workers, cores)
        + shared_makespan([after] * workers + [finish], cores)
    )
    return {
        "workers": workers,
        "cores": cores,
        "worker_cpu": lin_w + expand + after,
        "coordinator_cpu": rest + lin_c + finish,
        "server_seconds": wall,
        "embedded_seconds": c.server,
    }


def add_predict_arg(p: argparse.ArgumentParser) -> None:
    """``--predict W [W ...]``."""
    p.add_argument(
        "--predict",
        type=int,
        nargs="+",
        metavar="W",
        help="after a run with the embedded server (select strategy), print the PROJECTED "
        "server time with W workers on W + 1 idle cores (secmoe.distributed.predict: from "
        "this run's per-step CPU seconds; a model, not a measurement)",
    )


def projected_report(r: dict[str, Any], leaves: int, workers: list[int]) -> dict[str, Any]:
    """The ``projected`` field of a bench result: per W, :func:`project` rounded, and the
    ratio to the embedded server's CPU seconds."""
    c = SelectCosts.from_result(r, leaves)
    out = {}
    for w in workers:
        m = project(c, w)
        out[str(w)] = {k: round(v, 3) for k, v in m.items() if k != "workers"}
        out[str(w)]["ratio"] = round(m["server_seconds"] / m["embedded_seconds"], 3)
    return {"note": "PROJECTION (secmoe.distributed.predict), not a measurement", **out}

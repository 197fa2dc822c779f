"""A cost model of the expert-parallel selection: the server's time with W workers, PROJECTED
from the CPU seconds one embedded run measured per step (``HEState.select_seconds``).

**Inputs** (one run with the embedded server, W = 0; CPU seconds, which unlike wall time do
not depend on the machine's load): ``expand`` (the expansion of the one-hot ciphertexts),
``products`` (expansion + selection + tensor products, steps 2-4), ``finish`` (switching,
relinearization, packing, re-randomization, flooding: step 5) and the server's CPU seconds
for the whole run.

**Model** for W workers, one core each, and a coordinator on its own core:

- a worker expands only its subtree of each selection's T·E leaves (W dividing E):
  ``expand · (T·E/W − 1 + log2 W) / (T·E − 1)``, does 1/W of the selection and tensor
  products, and pays ``worker_transfer · finish`` to export and send its accumulators (every
  worker sends a whole set of accumulators, one per token and output block, whatever W: the
  same count as the finish handles, hence measured in units of it);
- the coordinator does the finish plus ``coordinator_transfer · finish`` (receiving, summing
  and importing the accumulators) and the rest of the run (everything that is not a
  selection: unchanged — the workers now also compute the plain-weight HE products of the
  rest, which the model still charges to the coordinator: an upper bound there);
- the coordinator finishes an output block while the workers compute the next ones (the
  stream), so the selection takes ``expand_W + max(the workers' products and transfer after
  their expansion, the coordinator's finish)``; the rest of the run adds.

**Calibration of the transfer terms** (:data:`MEASURED_TRANSFER`): the two side-by-side pairs
(embedded, ``--workers 2``) of ``benchmarks/results/ray_scaleout.jsonl`` (``select``, E = 64,
d = 256, d_ff = 1024, T = 8; CPU seconds of each worker's and the coordinator's process):
the busiest worker did 4.50 and 4.26 CPU seconds more than its expansion and products
(0.50 and 0.47 of the embedded run's finish), the coordinator 2.01 and 1.83 more than its
finish and the rest (0.22 and 0.20): in all 22 % more CPU than the embedded run. The terms are
the pairs' means; calibrated on W = 2 only, so how they grow with W is an assumption (the
worker's term constant, the coordinator's too: it sums W streams, which this model does not
charge per worker). Projections are for idle cores and a fast link between the coordinator
and its workers: not measurements.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MEASURED_TRANSFER",
    "SelectCosts",
    "Transfer",
    "add_predict_arg",
    "project",
    "projected_report",
]


@dataclass(frozen=True)
class Transfer:
    """Ray's overhead, in units of the embedded run's finish CPU seconds: per worker (export
    and send its accumulators) and on the coordinator (receive, sum, import them)."""

    worker: float
    coordinator: float


#: Calibrated at W = 2 (see the module's docstring).
MEASURED_TRANSFER = Transfer(worker=0.485, coordinator=0.21)


@dataclass(frozen=True)
class SelectCosts:
    """An embedded run's measured CPU seconds: ``leaves`` = T·E one-hot entries per selection
    (every selection of the run the same), the selections' steps summed over the run, and the
    server's CPU seconds for the whole run."""

    leaves: int
    expand: float
    products: float
    finish: float
    server: float

    @classmethod
    def from_result(cls, r: dict[str, Any], leaves: int) -> SelectCosts:
        """From a ``secmoe bench moe|model --json`` result of the embedded server."""
        need = [f"select_{k}_cpu_seconds" for k in ("expand", "products", "finish")]
        missing = [k for k in need if k not in r]
        if missing or r.get("workers", 0):
            raise ValueError(
                "a projection needs an embedded run's per-step selection CPU seconds "
                f"(select strategy, --workers 0); missing: {', '.join(missing) or 'workers 0'}"
            )
        return cls(leaves, *(float(r[k]) for k in need), float(r["server_cpu_seconds"]))


def project(c: SelectCosts, workers: int, transfer: Transfer = MEASURED_TRANSFER) -> dict:
    """The PROJECTED seconds with ``workers`` workers (model in the module's docstring):
    ``worker_cpu`` (each worker), ``coordinator_cpu``, ``server_seconds`` (the run's server
    time on W + 1 idle cores) and ``embedded_seconds`` (the same model at W = 0: the server's
    CPU seconds), all for the whole run."""
    if workers < 1:
        raise ValueError(f"a projection needs at least one worker, got {workers}")
    if c.leaves < workers:
        raise ValueError(f"{workers} workers for {c.leaves} one-hot entries")
    rest = c.server - c.products - c.finish  # not a selection: stays on the coordinator
    expand = c.expand * (c.leaves / workers - 1 + math.log2(workers)) / max(c.leaves - 1, 1)
    after = (c.products - c.expand) / workers + transfer.worker * c.finish
    finish = c.finish * (1 + transfer.coordinator)
    return {
        "workers": workers,
        "worker_cpu": expand + after,
        "coordinator_cpu": rest + finish,
        "server_seconds": rest + expand + max(after, finish),
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
        "server time with W workers (secmoe.distributed.predict: from this run's per-step CPU "
        "seconds; a model, not a measurement)",
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

"""The coordinator of `serve --workers` serves from its ExpertStore: the experts' float
weights are in files, not in its memory, once the workers hold them, and a restarted worker
is sent its experts again from the files (this process's pool, no Ray)."""

from __future__ import annotations

import gc

from secmoe.commands.serve import KINDS
from secmoe.distributed import LocalPool
from secmoe.distributed.worker import ShardWorker
from secmoe.model.expert_store import ExpertStore
from secmoe.model.fold import fold_norms
from secmoe.model.secure import RunOptions
from secmoe.model.session import client_session, serve_session
from secmoe.model.weights import load_weights
from secmoe.net import memory_pair, run_pair
from tests.hf_helpers import argmax_agreement, hf_case, max_err

NAME = "mixtral-lm-gqa-swa-untied"


async def _session(weights, pool):
    cch, sch = memory_pair()
    try:
        res, _ = await run_pair(
            client_session(cch, hf_case(NAME).input_ids, options=RunOptions("select")),
            serve_session(sch, weights, kinds=KINDS, pool=pool),  # as `secmoe serve` does
            timeout=600,
        )
    finally:
        await cch.close()
        await sch.close()
    return res.output


async def test_the_coordinator_holds_none_of_the_experts_and_resends_them_after_a_restart(
    tmp_path,
):
    """Two sessions on 2 workers with the checkpoint loaded and folded into a store (as
    `serve --workers` loads it): both within transformers' fixed-point tolerance, with no page
    of the experts resident in this process after each; before the second, worker 1 restarts
    (a new incarnation holding nothing, as Ray restarts an actor) and is sent its experts
    again, read back from the files."""
    case, store = hf_case(NAME), ExpertStore(tmp_path)
    weights = fold_norms(load_weights(case.dir, experts=store))
    gc.collect()  # the unfolded experts went with the weights that held them
    store.release()
    pool = LocalPool(2)
    for session in range(2):
        if session:
            pool.members[1] = ShardWorker(1)
        out = await _session(weights, pool)
        assert max_err(out, case) <= case.fixed_tol
        assert argmax_agreement(out, case) == 1.0
        assert store.resident_bytes() == 0 < store.nbytes
        assert min(pool.encoded_bytes("select")) > 0
    assert pool.restarts == 1

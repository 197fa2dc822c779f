"""A session serves many batches (issue 20, item 3): one setup, batches until the client
closes it, the keys' noise-flooding budget or the server's TTL ends it (then the client goes
on in a new session); session kinds; the server's memory budget. In-process, on the bundled
model with few tokens."""

import math

import numpy as np
import pytest

from secmoe.commands.client import figures, run_client
from secmoe.model.reference import run
from secmoe.model.secure import RunOptions
from secmoe.model.session import (
    ClientSession,
    MemoryBudget,
    SessionOver,
    SessionRefused,
    batches_covered,
    flood_demand,
    plan_flooding,
    planned_memory,
    serve_session,
)
from secmoe.model.weights import load_bundled, load_heldout
from secmoe.net import run_pair
from secmoe.net.memory import memory_pair
from secmoe.progress import Reporter

BUNDLED = load_bundled()
X = load_heldout()[0][:, :2]  # two patch tokens per image: small and quick


async def _run(x, *, batch, options, **serve_kw):
    """``run_client`` against a server serving sessions on one in-memory link until the
    client closes one; returns the client's run and the server's session results."""
    cch, sch = memory_pair()
    served = []

    async def server():
        while True:
            res = await serve_session(sch, BUNDLED, setup_idle=None, **serve_kw)
            served.append(res)
            if res.ended is None:
                return

    async def link():
        return cch

    async def keep(_):
        return None

    try:
        client = run_client(link, keep, x, batch=batch, options=options, reporter=Reporter(True))
        out, _ = await run_pair(client, server(), timeout=600)
    finally:
        await cch.close()
        await sch.close()
    return out, served


def test_plan_flooding_covers_the_batches_asked_for_within_the_cap():
    demand = flood_demand(BUNDLED.config, (1, 2), RunOptions("all"))
    kappa, covered = plan_flooding(demand, 1)
    assert kappa == 24 and covered == min(2**24 // d for d in demand.values() if d)
    kappa, covered = plan_flooding(demand, 10**9)  # more than 2^30 can cover: capped
    assert kappa == 30 and covered == batches_covered(demand, dict.fromkeys(demand, 2**30))
    assert covered < 10**9
    with pytest.raises(SessionRefused, match="more than the 2"):
        plan_flooding(demand, 1, fixed=int(math.log2(max(demand.values()))) - 1)


async def test_the_flooding_budget_ends_a_session_exactly_and_a_new_one_goes_on():
    """κ fixed just above one batch's demand: the first session serves exactly the batches
    its keys' flooding covers (the server checks the keys' own counters), refuses the next,
    and the client goes on in a new session; every output is right."""
    options = RunOptions("all")
    demand = flood_demand(BUNDLED.config, (1, 2), options)
    kappa = math.ceil(math.log2(max(demand.values()))) + 1
    covered = min(2**kappa // d for d in demand.values() if d)
    assert 2 <= covered <= 3
    x = X[: covered + 1]
    out, served = await _run(x, batch=1, options=options, union_bits=kappa)
    assert [s.batches for s in served] == [covered, 1]
    assert "noise-flooding budget" in served[0].ended and served[1].ended is None
    f = figures(out)
    assert f["sessions"] == 2 and f["batches"] == covered + 1
    assert [s["batches"] for s in f["per_session"]] == [covered, 1]
    assert "noise-flooding budget" in f["per_session"][0]["ended"]
    assert [b["session"] for b in f["per_batch"]] == [1] * covered + [2]
    np.testing.assert_array_equal(out.output.argmax(-1), run(BUNDLED, x).output.argmax(-1))


async def test_a_partial_last_batch_is_padded_and_its_rows_dropped():
    x = X[:3]
    out, served = await _run(x, batch=2, options=RunOptions("dispatch"))
    assert [s.batches for s in served] == [1 * 2]
    assert out.output.shape[0] == 3
    ref = run(BUNDLED, x).output
    np.testing.assert_allclose(out.output, ref, atol=0.05)


async def test_the_ttl_ends_a_session_before_its_next_batch():
    cch, sch = memory_pair()

    async def client():
        s = await ClientSession.open(cch, X[:1], options=RunOptions("all"))
        with pytest.raises(SessionOver, match=r"TTL of 0\.001 s has passed after 0 batches"):
            await s.run(s.inputs)
        await s.close()  # nothing to send: the server ended it
        return s

    try:
        _, res = await run_pair(
            client(), serve_session(sch, BUNDLED, setup_idle=None, session_ttl=0.001), timeout=300
        )
    finally:
        await cch.close()
        await sch.close()
    assert res.batches == 0 and "TTL" in res.ended


async def _request(req, **serve_kw):
    """The server's answer to one raw request (no cryptography follows a refusal)."""
    cch, sch = memory_pair()

    async def client():
        await cch.recv(tag="setup/model")
        await cch.send(req, tag="setup/request")
        return await cch.recv(tag="setup/answer")

    async def server():
        with pytest.raises(SessionRefused):
            await serve_session(sch, BUNDLED, **serve_kw)

    try:
        answer, _ = await run_pair(client(), server(), timeout=60)
    finally:
        await cch.close()
        await sch.close()
    return answer


async def test_an_unknown_session_kind_is_refused_with_the_kinds_served():
    answer = await _request({"kind": "teleport", "strategy": "all", "shape": [1, 2]})
    assert not answer["ok"]
    assert "unknown session kind 'teleport'" in answer["error"] and "infer" in answer["error"]


async def test_a_session_beyond_the_free_memory_is_refused_with_the_figures():
    plan = planned_memory(BUNDLED, (4, 8), RunOptions("all"))
    budget = MemoryBudget(plan + plan // 2)
    budget.reserve(plan // 2 + 1)  # another session holds a third (and a byte)
    req = {"strategy": "all", "shape": [4, 8]}
    answer = await _request(req, memory=budget)
    assert not answer["ok"] and "plans" in answer["error"] and "MB free" in answer["error"]
    assert budget.reserved == plan // 2 + 1  # nothing left reserved by the refused one
    budget.release(1)
    budget.reserve(plan)  # exactly what is free: it fits

"""Server workers on Ray actors (one local Ray runtime, num_cpus = 2, for the module): the
reply is the embedded server's bit for bit; `secmoe bench moe --workers N` sends the same
messages with 0, 1 and 2 workers (select, all); a worker killed during a selection fails it with
"server worker lost", told to the client, and the next selection works on the restarted
actor."""

from __future__ import annotations

import gc
import json
import os
import re

import numpy as np
import pytest
import ray

from secmoe.cli import main
from secmoe.crypto.prg import PRG
from secmoe.distributed import RayPool, WorkerLost
from secmoe.net import PeerAborted, run_local
from secmoe.protocols.he_select import (
    ideal_select,
    plan_select,
    select_client,
    select_server,
    setup_select_client,
    setup_select_server,
)
from tests.distributed.test_local_pool import NON_FUSED, Owner
from tests.he.test_he_select import make_selection


@pytest.fixture(scope="module")
def runtime():
    # Ray's workers run at niceness 15 by default: behind the other tests' processes they
    # would hardly run (RayPool sets this too when it starts the runtime itself)
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Ray kills workers when the host's memory passes 95 %, whoever uses it: on a machine
    # shared with other jobs that fails these tests for nothing of theirs
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    gc.collect()  # no handle of the runtime left behind (its clients would outlive it)
    ray.shutdown()


def transcript(path):
    """(party, direction, path, tag, bytes, phase) of every message but the bench's own report
    (timings), sorted (both parties and their forks run concurrently). The HE keys are SEAL's
    compressed serialization of random polynomials: their size varies from run to run whoever
    computes, so it is left out."""
    with open(path) as f:
        events = [json.loads(line) for line in f]
    keys = "he/setup/keys"
    return sorted(
        (e["party"], e["dir"], e["path"], e["tag"], e["tag"] != keys and e["bytes"], e["phase"])
        for e in events
        if e["phase"] != "report"
    )


@pytest.mark.parametrize("strategy", ["select", "all"])
def test_bench_moe_sends_the_same_messages_with_0_1_2_workers(runtime, tmp_path, capsys, strategy):
    """A whole MoE layer: every message (party, direction, path, tag, bytes, phase) is the
    same with the embedded server and with 1 and 2 workers, for the selection (its experts on
    the workers) and for the plain-weight products (the router's, and every expert's with
    `all`: their blocks on the workers); the output is right; with select the workers hold
    the experts' encoded weights in halves and the router's blocks; the Ray runtime (started
    by the test) is left running by the command."""
    layer = ["bench", "moe", "--strategy", strategy, "--experts", "4", "--tokens", "2",
             "--d-model", "16", "--d-ff", "32", "--json"]  # fmt: skip
    runs = {}
    for workers in (0, 1, 2):
        path = tmp_path / f"w{workers}.jsonl"
        assert main([*layer, "--workers", str(workers), "--transcript", str(path)]) == 0
        runs[workers] = (json.loads(capsys.readouterr().out.splitlines()[-1]), transcript(path))
    base, events = runs[0]
    assert any(e[3] == "he/mm/y" for e in events)
    for workers in (1, 2):
        res, ev = runs[workers]
        assert ev == events
        assert res["max_abs_err_vs_fixed"] < 2e-3
        assert res["bytes_c2s"] == base["bytes_c2s"] and res["rounds"] == base["rounds"]
    assert ray.is_initialized()
    if strategy != "select":
        return
    assert any(e[3] == "he/sel/y" for e in events)
    assert [runs[w][0]["workers"] for w in (0, 1, 2)] == [0, 1, 2]
    whole = base["select_weights_bytes"][0]
    assert runs[1][0]["select_weights_bytes"] == [whole]
    assert runs[2][0]["select_weights_bytes"] == [whole // 2, whole // 2]
    assert min(runs[1][0]["linear_weights_bytes"]) > 0  # the router's blocks


def test_bench_model_sends_the_same_messages_with_0_and_2_workers(runtime, tmp_path, capsys):
    """The whole bundled-size model (digits-moe: a dense and an MoE block, E = 4, streamed
    weights): with `--workers 2` every message is the embedded server's (so the bytes and
    rounds, per row too), the output matches the fixed-point reference as closely (it differs
    from run to run only by the truncations' ±1 ulp: the shares are fresh), and the workers
    did the selection's products (their CPU seconds, their shards); the embedded run's
    `--predict 2` projects a shorter server time."""
    model = ["bench", "model", "--preset", "digits-moe", "--tokens", "2", "--strategy",
             "select", "--check", "--json"]  # fmt: skip
    runs = {}
    for workers in (0, 2):
        path = tmp_path / f"m{workers}.jsonl"
        predict = ["--predict", "2"] if workers == 0 else []
        argv = [*model, "--workers", str(workers), "--transcript", str(path), *predict]
        assert main(argv) == 0
        runs[workers] = (json.loads(capsys.readouterr().out.splitlines()[-1]), transcript(path))
    (base, events), (res, ev) = runs[0], runs[2]
    assert 0 < base["projected"]["2"]["ratio"] < 1 and "projected" not in res
    assert any(e[3] == "he/sel/y" for e in events) and ev == events
    for key in ("bytes_c2s", "bytes_s2c", "rounds", "messages"):
        assert res[key] == base[key]
    assert [r["rounds"] for r in res["layers"]] == [r["rounds"] for r in base["layers"]]
    assert base["max_abs_err_vs_fixed"] < 1e-2 and res["max_abs_err_vs_fixed"] < 1e-2
    assert base["workers"] == 0 and res["workers"] == 2
    assert "select_expand_cpu_seconds" in base and "select_expand_cpu_seconds" not in res
    assert min(res["worker_cpu_seconds"]) > 0
    assert len(res["select_weights_bytes"]) == 2 and min(res["select_weights_bytes"]) > 0


async def selection(plan, case, weights, abort=False):
    """One selection over the channel; with ``abort`` the server, like `secmoe serve`, sends
    the client the error of a lost worker (and returns it)."""
    t_c, t_s, x_c, x_s, _ws, _r = case

    async def client(ch):
        prg = PRG(b"\x11" * 16)
        he = await setup_select_client(ch, prg, plan)
        return await select_client(ch, he, t_c, x_c, plan, prg)

    async def server(ch):
        he = await setup_select_server(ch, plan)
        try:
            return await select_server(ch, he, t_s, x_s, weights(he), PRG(b"\x22" * 16))
        except WorkerLost as exc:
            if not abort:
                raise
            await ch.abort(f"server error: {exc}")  # as `secmoe serve` does
            return exc

    return await run_local(client, server, timeout=120)


async def test_a_worker_lost_during_a_selection_fails_it_and_the_next_one_works(runtime):
    """Worker 1 is killed (Ray restarts it) while the selection runs on it: the server fails
    with WorkerLost and the client receives "server worker lost" (no hang); the next session
    on the same pool is exact, the restarted worker having been sent its keys and shard
    again."""
    t, e, d, h = NON_FUSED
    plan = plan_select(t, e, d, h)
    case = make_selection(t, e, d, h, seed=b"ray-case-0000001")
    ws = case[4]
    pool = RayPool(2, timeout=60)
    owners = []

    def sharded(he):
        owners.append(Owner())
        return pool.session(he, owners[-1]).prepare(
            ("c",), plan, lambda i: [ws[j] for j in i], False
        )

    stream = pool._stream

    def kill_after_submit(w, method, *args):
        items = stream(w, method, *args)
        if w == 1:
            ray.kill(pool.members[1], no_restart=False)
        return items

    try:
        pool._stream = kill_after_submit
        with pytest.raises(Exception) as err:
            await selection(plan, case, sharded, abort=True)
        assert "server worker lost" in str(err.value)
        assert isinstance(err.value.__cause__, PeerAborted)
        del err  # its traceback holds the failed selection's frames
        pool._stream = stream
        (yc, ys) = await selection(plan, case, sharded)
        assert pool.restarts == 1
        for m, want in enumerate(ideal_select(*case[:4], ws)):
            assert np.array_equal(yc[m] + ys[m], want)
    finally:
        pool.close()


def test_bench_with_workers_over_their_budget_fails_with_one_line(runtime, capsys):
    """`--max-encoded-gb` below a worker's shard (the router's one weight block of 0.26 MB,
    prepared first; E = 4, 2 workers: 2 experts each): the command fails with one line
    naming the worker, the shard and the gigabytes (no traceback, no hang); without
    --workers the option is refused."""
    layer = ["bench", "moe", "--strategy", "select", "--experts", "4", "--tokens", "2",
             "--d-model", "16", "--d-ff", "32"]  # fmt: skip
    assert main([*layer, "--workers", "2", "--max-encoded-gb", "0.0002"]) != 0
    err = capsys.readouterr().err
    assert re.search(r"server worker \d refuses shard \w+ \(products 0-0\)", err)
    assert "needs 0.000262 GB" in err and "budget of 0.0002 GB" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main([*layer, "--max-encoded-gb", "1"])
    assert "--max-encoded-gb is a budget per worker" in capsys.readouterr().err

"""The cost model of the server with workers (secmoe.distributed.predict): its arithmetic on
hand-made costs, its fit to the W = 1 and 2 measurements it was calibrated on, and
`--predict`'s place in the CLI (labelled a projection; refused where it has nothing to project
from)."""

from __future__ import annotations

import json

import pytest

from secmoe.cli import main
from secmoe.distributed.predict import (
    SelectCosts,
    Transfer,
    project,
    projected_report,
    shared_makespan,
)

NONE = Transfer(0.0, 0.0, 0.0, 0.0)

#: Measured (2026-12-07, benchmarks/results/ray_scaleout.jsonl: select, E = 64, d = 256,
#: d_ff = 1024, T = 8; code with in-place transfers and numpy accumulators), per pair: the
#: embedded run's expand, products, finish, server and plain-weight-product CPU seconds; with
#: W workers each worker's and the coordinator's CPU seconds.
PAIRS = [
    ((22.139, 28.604, 6.039, 35.154, 0.095), 1, ([28.342], 6.778)),
    ((22.139, 28.604, 6.039, 35.154, 0.095), 2, ([14.626, 15.166], 7.160)),
    ((22.008, 28.432, 6.078, 35.023, 0.095), 2, ([14.716, 14.409], 7.339)),
    ((20.174, 26.025, 5.589, 32.081, 0.091), 2, ([14.181, 13.242], 6.714)),
]
#: The same for ``all`` at E = 8 (the plain-weight products): the embedded server's CPU and
#: its plain-weight products' share; with 2 workers theirs and the coordinator's.
ALL = ((7.155, 6.504), ([3.224, 3.221], 1.296))


def test_one_worker_without_transfer_moves_the_products_only():
    c = SelectCosts(leaves=8, expand=3.0, products=10.0, finish=4.0, server=20.0)
    m = project(c, 1, NONE)
    assert m["worker_cpu"] == pytest.approx(10.0)  # all of the products, expansion included
    assert m["coordinator_cpu"] == pytest.approx(10.0)  # the finish and the rest (6)
    assert m["server_seconds"] == pytest.approx(6 + 3 + max(7, 4))
    assert m["embedded_seconds"] == 20.0


def test_a_worker_expands_its_subtree_only():
    """Leaves T·E = 8 over 2 workers: 8/2 − 1 + log2 2 = 4 of the 7 automorphisms."""
    c = SelectCosts(leaves=8, expand=7.0, products=7.0, finish=0.0, server=7.0)
    assert project(c, 2, NONE)["worker_cpu"] == pytest.approx(4.0)
    assert project(c, 8, NONE)["worker_cpu"] == pytest.approx(3.0)  # 0 + log2 8


def test_transfer_terms_are_in_units_of_the_finish_and_the_linears():
    c = SelectCosts(leaves=64, expand=0.0, products=8.0, finish=2.0, server=13.0, linear=2.0)
    t = Transfer(worker=0.5, coordinator=0.25, coordinator_sum=0.125, linear_coordinator=0.25)
    m = project(c, 4, t)
    lin_w = 2.0 * 0.75 / 4
    assert m["worker_cpu"] == pytest.approx(lin_w + 8 / 4 + 0.5 * 2)
    finish = 2 * (1 + 0.25 + 0.125 * 3)
    assert m["coordinator_cpu"] == pytest.approx(1 + 0.5 + finish)  # rest, linears, finish
    assert m["server_seconds"] == pytest.approx(1 + 0.5 + lin_w + max(3.0, finish))


def test_shared_cores():
    """Processor sharing: k jobs on c cores each run at min(1, c/k)."""
    assert shared_makespan([1.0, 1.0], 1) == pytest.approx(2.0)
    assert shared_makespan([1.0, 3.0], 2) == pytest.approx(3.0)
    assert shared_makespan([1.0, 1.0, 1.0], 2) == pytest.approx(1.5)
    assert shared_makespan([1.0, 1.0, 2.0], 2) == pytest.approx(1.5 + 1.0)
    assert shared_makespan([0.0, 0.0], 2) == 0.0
    c = SelectCosts(leaves=64, expand=6.0, products=8.0, finish=2.0, server=11.0)
    idle, two = project(c, 2, NONE), project(c, 2, NONE, cores=2)
    assert two["worker_cpu"] == idle["worker_cpu"]  # cores change the time, not the work
    assert idle["server_seconds"] == pytest.approx(1 + 6 * 32 / 63 + max(1.0, 2.0))
    # two workers (1 CPU s each after the expansion) and the finish (2) on 2 cores: 1.5 + 1
    assert two["server_seconds"] == pytest.approx(1 + 6 * 32 / 63 + 2.5)


def test_past_eight_workers_the_coordinators_share_stops_growing():
    """The coordinator sums A streams of accumulators per output block (A − 1 sums): up to 8
    workers A = W and its CPU grows with W; past 8 the workers split the output blocks
    instead (A = 8), so its CPU stays and more workers still help. With every worker its own
    expert group (A = W, the layout before the grid) its sums would outweigh what the
    workers save past ~8 workers."""
    c = SelectCosts(leaves=512, expand=22.1, products=28.6, finish=6.0, server=35.2, linear=0.1)
    ws = (1, 2, 4, 8, 16, 64)
    grid = {w: project(c, w) for w in ws}
    flat = {w: project(c, w, groups=w) for w in ws}
    times = {w: m["server_seconds"] for w, m in grid.items()}
    coord = {w: m["coordinator_cpu"] for w, m in grid.items()}
    assert times[1] > times[2] > times[4] > times[8] > times[16] > times[64]
    assert coord[1] < coord[2] < coord[4] < coord[8] == coord[16] == coord[64]
    assert all(times[w] >= coord[w] for w in ws)
    assert all(flat[w] == grid[w] for w in (1, 2, 4, 8))
    assert flat[64]["server_seconds"] > flat[16]["server_seconds"] > times[8]
    with pytest.raises(ValueError, match="3 expert groups for 8 workers"):
        project(c, 8, groups=3)


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_the_calibrated_model_is_within_10_percent_at_one_and_two_workers(pair):
    """Each worker's (mean) and the coordinator's CPU seconds within 10 % (in sample: the
    terms are fitted on these pairs); without the transfer terms the coordinator is low."""
    (x, p, f, s, lin), w, (workers, coordinator) = PAIRS[pair]
    c = SelectCosts(512, x, p, f, s, lin)
    m = project(c, w)
    assert abs(m["worker_cpu"] / (sum(workers) / w) - 1) < 0.1
    assert abs(m["coordinator_cpu"] / coordinator - 1) < 0.1
    if w == 2:
        assert project(c, w, NONE)["coordinator_cpu"] / coordinator - 1 < -0.08


def test_the_plain_weight_products_go_to_the_workers():
    """``all`` at E = 8: nearly all of the server's CPU is plain-weight products; with 2
    workers the model puts each worker's and the coordinator's CPU within 10 %."""
    (server, linear), (workers, coordinator) = ALL
    c = SelectCosts(8, 0.0, 0.0, 0.0, server, linear)
    m = project(c, 2)
    assert abs(m["worker_cpu"] / (sum(workers) / 2) - 1) < 0.1
    assert abs(m["coordinator_cpu"] / coordinator - 1) < 0.1
    assert project(c, 2, NONE)["coordinator_cpu"] < coordinator  # not all of it moves


def test_projection_needs_an_embedded_run():
    r = {"workers": 2, "select_finish_cpu_seconds": 1.0, "server_cpu_seconds": 3.0}
    with pytest.raises(ValueError, match="missing: select_expand_cpu_seconds"):
        projected_report(r, 8, [2])
    with pytest.raises(ValueError, match="at least one worker"):
        project(SelectCosts(8, 1, 2, 1, 4), 0)


def test_bench_moe_predict_is_labelled_a_projection(capsys):
    layer = ["bench", "moe", "--strategy", "select", "--experts", "4", "--tokens", "2",
             "--d-model", "16", "--d-ff", "32", "--predict", "2", "4"]  # fmt: skip
    assert main([*layer, "--json"]) == 0
    r = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "PROJECTION" in r["projected"]["note"] and set(r["projected"]) == {"note", "2", "4"}
    assert 0 < r["linear_cpu_seconds"] < r["server_cpu_seconds"]  # the router's HE product
    assert r["seconds"] == max(r["server_seconds"], r["client_seconds"])
    want = project(SelectCosts.from_result(r, 8), 2)["server_seconds"]
    assert r["projected"]["2"]["server_seconds"] == pytest.approx(want, abs=1e-3)
    assert main(layer) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "workers:" in x]
    assert len(lines) == 2 and all(x.startswith("PROJECTED") for x in lines)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "2"], "--predict projects from a select run with the embedded server"),
        (["--strategy", "all"], "--predict projects from a select run with the embedded server"),
        (["--predict", "0"], "--predict: worker counts must be at least 1"),
    ],
)
def test_predict_bad_arguments(extra, message, capsys):
    argv = ["bench", "moe", "--experts", "4", "--tokens", "2", "--predict", "2", *extra]
    with pytest.raises(SystemExit) as exc:  # argparse's usage error
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_predict_without_a_selection_keeps_the_run_and_says_why(capsys):
    """--layers 1 of digits-moe has no MoE block: the run's figures are printed, with the
    reason there is no projection instead of one."""
    argv = ["bench", "model", "--preset", "digits-moe", "--tokens", "2", "--layers", "1",
            "--predict", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert r["bytes_c2s"] > 0 and set(r["projected"]) == {"note"}
    assert r["projected"]["note"].startswith("no projection: ")

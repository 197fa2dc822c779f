"""``secmoe bench model``: the whole secure forward pass on streamed weights, per-layer table.

A tiny preset (digits-moe: a dense and an MoE block), both parties in one process: the output
matches the fixed-point reference, the per-part rows add up to the measured totals, both
parties count the same bytes, and the bytes depend only on the public shapes (a run with other
weights and inputs, cut to the first block, repeats the same rows byte for byte: what
``benchmarks/paper_table.py``'s composition relies on).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from secmoe.bench.model_bench import part_of
from secmoe.bench.registry import REGISTRY
from secmoe.bench.runner import run_bench
from secmoe.cli import build_parser, main, run_async
from secmoe.model.config import preset
from secmoe.model.lazy_weights import lazy_random_weights, materialize
from secmoe.model.weights import BUNDLED_DIR, BUNDLED_NAME, init_random

pytestmark = pytest.mark.timeout(300)

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from ray_scaleout import whole_model  # noqa: E402

SUMMED = ("bytes_c2s", "bytes_s2c", "framing_bytes", "messages")


def bench(*argv: str) -> dict:
    args = build_parser().parse_args(["bench", "model", *argv])
    op = REGISTRY["model"]
    op.params(args)
    return run_async(run_bench(op, args))


@pytest.fixture(scope="module")
def whole() -> dict:
    return bench("--preset", "digits-moe", "--tokens", "8", "--strategy", "select", "--check")


def test_output_matches_fixed_point(whole: dict) -> None:
    assert whole["max_abs_err_vs_fixed"] < 1e-2


def test_rows_add_up_to_the_totals(whole: dict) -> None:
    total = whole["bytes_c2s"] + whole["bytes_s2c"]
    assert whole["bytes_online_by_party"] == {"client": total, "server": total}
    for table in (whole["layers"], list(whole["groups"].values()), whole["per_layer"].values()):
        rows = list(table)
        assert sum(r["bytes_c2s"] for r in rows) == whole["bytes_c2s"]
        assert sum(r["bytes_s2c"] for r in rows) == whole["bytes_s2c"]
        assert sum(r["framing_bytes"] for r in rows) == whole["framing_bytes"]
        assert sum(r["messages"] for r in rows) == whole["messages"]
        assert sum(r["seconds"] for r in rows) == pytest.approx(whole["seconds"], abs=0.05)
    # every flight has a message in some row: the rows' rounds cover the total (boundary
    # flights shared by two rows count twice)
    for table in (whole["layers"], whole["groups"].values(), whole["per_layer"].values()):
        assert whole["rounds"] <= sum(r["rounds"] for r in table) <= 1.1 * whole["rounds"]
    groups = whole["groups"]
    for kind in ("embedding", "attention", "dense FFN", "norms", "MoE route", "MoE experts"):
        assert groups[kind]["bytes_c2s"] + groups[kind]["bytes_s2c"] > 0, kind
    assert {"embed", "layer0", "layer1", "final_norm", "head"} <= set(whole["per_layer"])
    assert set(whole["encode_seconds_per_layer"]) == {"0", "1"}
    assert whole["peak_rss_mb"]["server"] > 0 and whole["estimates"]["wan"] > whole["seconds"]


def test_the_servers_plain_weight_products_are_split_by_row(whole: dict) -> None:
    """``server_linear_cpu_seconds``: positive in the rows with a plain-weight HE product, zero
    in the norms and the selection, at most the row's server CPU; the rows (and groups, and
    layers) add up to the total, which is the server's own count (``linear_cpu_seconds``)."""
    rows = {r["row"]: r for r in whole["layers"]}
    for row in ("embed", "layer0/attn", "layer0/ffn", "layer1/attn", "layer1/moe/route", "head"):
        assert 0 < rows[row]["server_linear_cpu_seconds"] <= rows[row]["server_cpu_seconds"], row
    for row in ("layer0/attn_norm", "layer1/moe/select", "final_norm"):
        assert rows[row]["server_linear_cpu_seconds"] == 0, row
    total = whole["server_linear_cpu_seconds"]
    assert total == pytest.approx(whole["linear_cpu_seconds"], abs=2e-3)
    for table in (whole["layers"], whole["groups"].values(), whole["per_layer"].values()):
        assert sum(r["server_linear_cpu_seconds"] for r in table) == pytest.approx(total, abs=2e-3)


def test_the_whole_model_projection_composes_the_split(whole: dict) -> None:
    """``ray_scaleout.py --whole`` on this run (a dense and an MoE block) as the first two
    blocks of a 12-block Switch model (6 MoE): the plain-weight products' CPU is the run's plus
    5 × each block's (as ``paper_table.py`` composes every figure), the selections' 6 × the
    run's one MoE block; with workers the time and the coordinator's CPU are below the single
    process's. A row without the split (older code) is refused, saying why."""
    row = {**whole, "run": {"model": "switch-base-8", "strategy": "select", "layers": 2}}
    row |= {"load_avg_before": [1.0] * 3, "load_avg_after": [1.0] * 3}
    out = whole_model(row, [2, 4])
    dense, moe = whole["per_layer"]["layer0"], whole["per_layer"]["layer1"]

    def composed(key: str) -> float:
        return whole[key] + 5 * (dense[key] + moe[key])

    assert out["plain_weight_products_server_cpu"] == pytest.approx(
        composed("server_linear_cpu_seconds")
    )
    assert out["server_cpu"] == pytest.approx(composed("server_cpu_seconds"))
    sel = whole["select_products_cpu_seconds"] + whole["select_finish_cpu_seconds"]
    assert out["selections_server_cpu"] == pytest.approx(6 * sel)
    for w in (2, 4):
        m = out[f"projected_{w}_workers"]
        assert m["lan_min"] < out["measured_lan_cpu_min"]
        assert m["coordinator_cpu"] < out["server_cpu"]
    old = {k: v for k, v in row.items() if k != "server_linear_cpu_seconds"}
    with pytest.raises(SystemExit, match="lacks the server's plain-weight HE products' CPU"):
        whole_model(old, [2])


def test_bytes_depend_only_on_shapes(whole: dict) -> None:
    first = bench("--preset", "digits-moe", "--strategy", "select", "--layers", "1", "--seed", "7")
    mine = {r["row"]: r for r in first["layers"]}
    theirs = {r["row"]: r for r in whole["layers"]}
    for row in ("embed", "layer0/attn_norm", "layer0/attn", "layer0/ffn_norm", "layer0/ffn"):
        for k in (*SUMMED, "rounds"):
            assert mine[row][k] == theirs[row][k], (row, k)
    assert "layer1/attn" not in mine


def test_streamed_weights_are_regenerated_identically() -> None:
    cfg = preset("digits-moe")
    w = lazy_random_weights(cfg, seed=3)
    a, b = w.layers[1].ffn, w.layers[1].ffn
    assert a is not b  # nothing is kept
    assert np.array_equal(a.w1, b.w1) and a.w1.shape == (cfg.n_experts, cfg.d_model, cfg.d_ff)
    full = materialize(w)
    assert np.array_equal(full.layers[0].attn.wq, w.layers[0].attn.wq)
    assert not np.array_equal(full.layers[0].attn.wq, w.layers[1].attn.wq)
    ref = init_random(cfg, 3)  # the same distribution: same shapes, norms 1
    assert full.layers[1].ffn.w2.shape == ref.layers[1].ffn.w2.shape
    assert np.array_equal(full.layers[0].attn_norm.weight, ref.layers[0].attn_norm.weight)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "digits-moe", "--tokens", "9"], "--tokens 9 outside [1, 8]"),
        (["--preset", "digits-moe", "--layers", "3"], "--layers 3 outside [1, 2]"),
        ([], "give exactly one of --preset NAME or --model DIR"),
        (["--model", "/nonexistent"], "no such file or directory"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "model", *argv]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_parts() -> None:
    assert part_of("layer3/moe/dispatch/gather/he/x") == (
        "layer3/moe/dispatch/gather",
        "MoE dispatch",
    )
    assert part_of("layer3/moe/dispatch/ffn/w1/he0") == ("layer3/moe/dispatch", "MoE experts")
    assert part_of("layer3/moe/route/router/he") == ("layer3/moe/route", "MoE route")
    assert part_of("layer2/ffn_norm/x") == ("layer2/ffn_norm", "norms")


def test_checkpoint_runs_streamed() -> None:
    fixture = Path(__file__).parent / "fixtures" / "hf" / "mixtral-lm-tied"
    res = bench("--model", str(fixture), "--tokens", "2", "--strategy", "dispatch")
    assert res["params"]["model"] == "mixtral-lm-tied"
    assert sum(r["bytes_c2s"] + r["bytes_s2c"] for r in res["layers"]) == res["rows_bytes_total"]
    assert res["rows_bytes_total"] == res["bytes_c2s"] + res["bytes_s2c"] > 0
    assert res["groups"]["MoE experts"]["server_linear_cpu_seconds"] > 0  # dispatch's experts
    n = res["config"]["n_layers"]
    assert set(res["encode_seconds_per_layer"]) == {str(i) for i in range(n)}


def test_the_server_folds_the_norms_where_it_can() -> None:
    """mixtral-tiny (RMSNorm, LM head) folds: the same output as the folded fixed-point model,
    and the norms send less than with ``--no-fold-norms``; digits-moe's LayerNorm β before
    q/k/v cannot fold, which the result says."""
    argv = ("--preset", "mixtral-tiny", "--tokens", "3", "--strategy", "all", "--layers", "1")
    on, off = bench(*argv, "--check"), bench(*argv, "--no-fold-norms")
    assert on["norms_folded"] and on["fold_refused"] is None and not off["norms_folded"]
    assert on["max_abs_err_vs_fixed"] < 1e-2
    norms_on, norms_off = (
        r["groups"]["norms"]["bytes_c2s"] + r["groups"]["norms"]["bytes_s2c"] for r in (on, off)
    )
    assert norms_on < norms_off


def test_a_norm_that_cannot_fold_is_reported() -> None:
    """The bundled digits model has a LayerNorm β before q/k/v (no bias there): it runs
    unfolded, and the result says why."""
    bundled = BUNDLED_DIR / f"{BUNDLED_NAME}.safetensors"
    res = bench("--model", str(bundled), "--tokens", "2", "--layers", "1", "--strategy", "all")
    assert not res["norms_folded"] and "attn_norm.bias" in res["fold_refused"]


def test_making_a_streamed_layer_is_not_charged_to_the_rows(monkeypatch) -> None:
    """The server makes each streamed layer when the forward pass reaches it (generated or
    read, then folded): a deployed server has its weights before any session, so that time is
    excluded from the rows and from the encoding. Here making each layer takes 5 s longer:
    the rows of each layer's first step (its attention norm, ~0.1 s), where it ran, and the
    encoding's total stay far below it."""
    import secmoe.bench.model_bench as mb

    real = mb._server_weights

    def slow(args, cfg):
        w = real(args, cfg)
        source = w.layers.source

        def make(i):
            time.sleep(5.0)
            return source(i)

        w.layers.source = make
        return w

    monkeypatch.setattr(mb, "_server_weights", slow)
    r = bench("--preset", "digits-moe", "--tokens", "4", "--strategy", "select")
    rows = {row["row"]: row["seconds"] for row in r["layers"]}
    assert rows["layer0/attn_norm"] < 5.0 and rows["layer1/attn_norm"] < 5.0
    assert r["encode_seconds"] < 5.0

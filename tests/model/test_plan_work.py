"""The plan's stage work (progress estimates): its shape, and its fit to measured stage times."""

import json
from pathlib import Path

import numpy as np

from secmoe.model.config import preset
from secmoe.model.plan_work import stage_work
from secmoe.model.secure import RunOptions

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results" / "paper_table.jsonl"


def test_stages_follow_the_layers_and_the_strategy():
    cfg = preset("switch-base-8")
    select = stage_work(cfg, RunOptions("select"), (1, 8))
    assert len(select) == cfg.n_layers + 2 and select[-1] == 0  # an encoder: no head
    dense, moe = select[1], select[2]  # layer 1 is an MoE layer, layer 0 dense
    assert cfg.is_moe(1) and not cfg.is_moe(0)
    # select multiplies every expert's W1 and W2 for every token: E·T rows instead of T
    ffn = 2 * 8 * cfg.d_model * cfg.d_ff
    assert moe - dense == (cfg.n_experts - 1) * ffn + 8 * cfg.d_model * cfg.n_experts
    dispatch = stage_work(cfg, RunOptions("dispatch", capacity_factor=1.0), (1, 8))
    assert dispatch[2] < moe and dispatch[1] == dense
    assert stage_work(cfg, RunOptions("select"), (2, 8))[0] == 2 * select[0]


def test_stage_work_predicts_the_measured_stage_times():
    """The whole Switch-Base-8 ``select`` run on record: each stage's share of the work is
    within a factor of 2 of its share of the measured CPU seconds (both parties': what the
    time-left estimate relies on, free of the shared machine's load, under which identical
    MoE layers' wall times differ 3×); counting layers instead is off by more than 3 (it
    gives the dense layers about 4× their share)."""
    run = next(
        r
        for r in map(json.loads, RESULTS.read_text().splitlines())
        if r.get("run", {}).get("layers") is None
        and r["run"].get("model") == "switch-base-8"
        and r["run"].get("strategy") == "select"
    )
    cfg = preset("switch-base-8")
    work = np.array(stage_work(cfg, RunOptions("select"), (1, 8))[:-1], dtype=float)
    per = run["per_layer"]
    stages = [per["embed"]] + [per[f"layer{i}"] for i in range(12)]
    seconds = np.array([s["client_cpu_seconds"] + s["server_cpu_seconds"] for s in stages])
    ratio = (work / work.sum()) / (seconds / seconds.sum())
    worst = np.maximum(ratio, 1 / ratio).max()
    layers_only = np.full(13, 1 / 13) / (seconds / seconds.sum())
    assert worst < 2 < 3 < np.maximum(layers_only, 1 / layers_only).max(), ratio.round(2)

"""Capacity follows the model unless asked otherwise; every capacity value a client can send is
checked before any cryptography (issue 14 item 2, issue 15 defect 2: `--capacity-factor inf`
and `--capacity 10^20` once crashed the server)."""

import dataclasses

import numpy as np
import pytest

from secmoe.app import capacity_line, capacity_summary, reference_capacity
from secmoe.model.config import preset
from secmoe.model.reference import capacity_of, run
from secmoe.model.secure import RunOptions, moe_spec
from secmoe.model.session import ServerLimits, SessionRefused, check_request
from secmoe.model.weights import load_bundled, load_heldout

SWITCH = preset("digits-moe")  # top-1 of 4 experts, T ≤ 8
MIXTRAL = preset("mixtral-tiny")  # top-2 of 8, no capacity


def check(**kw):
    """The server's request check of a dispatch request for one sequence of 8 tokens."""
    return check_request({"strategy": "dispatch", "shape": [1, 8], **kw}, SWITCH, ServerLimits())


@pytest.mark.parametrize(
    ("cfg", "tokens", "want"),
    [
        (SWITCH.replace(expert_capacity=3), 8, 3),  # Switch: min(T, expert_capacity)
        (SWITCH.replace(expert_capacity=64), 8, 8),  # google/switch-base-*: 64 ≥ T
        (SWITCH, 8, 8),  # no expert_capacity: nothing dropped (not ⌈1.25·k·T/E⌉ = 3)
        (MIXTRAL, 16, 16),
    ],
)
def test_the_default_capacity_is_the_models(cfg, tokens, want):
    assert moe_spec(cfg).capacity_for(tokens) == want
    assert capacity_of(cfg, tokens, None) == want  # the references' default agrees


@pytest.mark.parametrize(
    ("options", "want"),
    [
        (RunOptions("dispatch", capacity=2), 2),
        (RunOptions("select", capacity_factor=1.0), 2),  # ⌈1·1·8/4⌉
        (RunOptions("all", capacity_factor=1.0, capacity=5), 5),  # the capacity wins
        (RunOptions("dispatch", capacity=10**20), 8),  # beyond T means T
        (RunOptions("dispatch", capacity_factor=1e308), 8),  # no overflow: cf·k ≥ E means T
        (RunOptions("dispatch", capacity_factor=10**400), 8),
        (RunOptions("dispatch", capacity_factor=1e-300), 1),
    ],
)
def test_an_explicit_capacity_replaces_the_models_and_stays_in_1_to_t(options, want):
    assert moe_spec(SWITCH.replace(expert_capacity=3), options).capacity_for(8) == want


def test_the_gate_rule_follows_norm_topk_prob_not_the_arch():
    assert moe_spec(SWITCH).norm_topk is False and moe_spec(MIXTRAL).norm_topk is True
    assert moe_spec(MIXTRAL.replace(norm_topk_prob=False)).norm_topk is False


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"capacity_factor": float("inf")}, "capacity factor must be a finite number > 0, got inf"),
        ({"capacity_factor": float("nan")}, "got nan"),
        ({"capacity_factor": -1.5}, "got -1.5"),
        ({"capacity_factor": 0}, "got 0"),
        ({"capacity_factor": True}, "malformed capacity factor True"),
        ({"capacity_factor": "1.25"}, "malformed capacity factor '1.25'"),
        ({"capacity": 0}, "capacity must be an integer ≥ 1, got 0"),
        ({"capacity": -(10**30)}, "got an integer of 100 bits"),
        ({"capacity": 2.0}, "malformed capacity 2.0"),
        ({"capacity": True}, "malformed capacity True"),
        ({"capacity": [3]}, "malformed capacity [3]"),
        ({"capacity": "x" * 1000}, "malformed capacity 'xxxxxxxxx"),
    ],
)
def test_the_request_check_refuses_every_bad_capacity_with_its_reason(kw, msg):
    with pytest.raises(SessionRefused) as err:
        check(**kw)
    assert msg in str(err.value) and len(str(err.value)) < 120


def test_the_request_check_accepts_huge_capacities_as_t():
    for kw in ({"capacity": 10**20}, {"capacity_factor": 1e308}, {"capacity_factor": 10**400}):
        options, (_, t), *_ = check(**kw)
        assert moe_spec(SWITCH, options).capacity_for(t) == t == 8


@pytest.mark.parametrize("kw", [{"capacity": 0}, {"capacity_factor": float("inf")}])
def test_run_options_refuse_bad_values_before_any_connection(kw):
    with pytest.raises(ValueError, match="capacity"):
        RunOptions("dispatch", **kw)


def test_the_summary_says_which_capacity_ran_and_that_it_differs():
    cfg = SWITCH.replace(expert_capacity=4)
    own = capacity_summary(cfg, RunOptions("dispatch"), 8)
    assert own == {"tokens": 8, "capacity": 4, "model_capacity": 4, "capacity_differs": False}
    assert "the model's own" in capacity_line(own)
    asked = capacity_summary(cfg, RunOptions("select", capacity=2), 8)
    assert asked["capacity"] == 2 and asked["capacity_differs"] is True
    assert "DIFFERS from the model's C = 4" in capacity_line(asked)
    assert "nothing dropped" in capacity_line(capacity_summary(SWITCH, RunOptions(), 8))


def test_the_reference_follows_the_models_capacity_by_default():
    w = load_bundled()
    capped = dataclasses.replace(w, config=w.config.replace(expert_capacity=1))
    x = load_heldout()[0][:4]
    default = run(capped, x)
    assert not default.routing[0].kept.all()  # C = 1 drops tokens ...
    np.testing.assert_array_equal(default.output, run(capped, x, capacity=1).output)
    assert np.abs(default.output - run(capped, x, capacity=False).output).max() > 1e-3
    assert reference_capacity(capped, RunOptions("all"), 8) == 1  # and so does the secure run

"""Every ``secmoe bench OP`` runs at its default arguments (issue 15, item 13).

``matmul`` runs at its true defaults (8×768×3072: large enough that a weight drawn outside the
public bound shows up); the other ops keep every default but their size, which is made small so
the whole file stays fast. Each run must succeed and, where the op checks itself against
plaintext, be exact or accurate.
"""

import json

import pytest

from secmoe.bench import REGISTRY
from secmoe.cli import main

SMALL = {
    "channel": ["--size", "4096", "--count", "4", "--pings", "5"],
    "ot": ["--n", "2048"],
    "moe": ["--tokens", "2", "--d-model", "16", "--d-ff", "32", "--experts", "4"],
    "model": ["--preset", "digits-moe", "--tokens", "2"],  # a model is required
    **{op: ["--shape", "2x8"] for op in ("gelu", "silu", "layernorm", "rmsnorm")},
    "softmax": ["--shape", "2x4x4"],
    **{op: ["--n", "64"] for op in ("mul", "trunc", "compare", "relu", "b2a", "mux")},
    **{op: ["--n", "4"] for op in ("argmax", "topk")},
    "matmul": [],  # the real defaults
}


def test_every_registered_op_is_covered():
    assert set(SMALL) == set(REGISTRY)


@pytest.mark.parametrize("op", sorted(SMALL))
def test_bench_runs_at_its_defaults(op, capsys):
    assert main(["bench", op, "--json", *SMALL[op]]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["op"] == op
    if "exact" in res:
        assert res["exact"] is True
    if op == "matmul":
        assert res["params"]["shape"] == [8, 768, 3072] and res["params"]["mode"] == "plain-weight"


@pytest.mark.parametrize("mode", ["secret-secret", "select"])
def test_bench_matmul_other_modes(mode, capsys):
    assert main(["bench", "matmul", "--json", "--mode", mode, "--shape", "2x16x8"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["exact"] is True

"""`secmoe demo`: both parties in one process on the bundled model, in batches of sessions."""

import json

import numpy as np
import pytest

from secmoe.cli import main
from secmoe.model.reference import run
from secmoe.model.weights import load_bundled, load_heldout


def test_demo_in_batches_agrees_with_plaintext(tmp_path, capsys):
    transcript = tmp_path / "demo.jsonl"
    argv = ["demo", "--samples", "3", "--batch", "2", "--strategy", "all", "--json"]
    assert main([*argv, "--transcript", str(transcript)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    x, labels = load_heldout()
    ref = run(load_bundled(), x[:3]).output.argmax(-1)
    assert out["samples"] == 3
    assert out["plaintext_pred"] == ref.tolist()
    assert out["secure_pred"] == ref.tolist()
    assert out["agreement_with_plaintext"] == 1.0
    assert out["max_abs_err_vs_fixed"] < 0.05
    assert out["plaintext_accuracy"] == float(np.mean(ref == labels[:3]))
    # two batches in one session: the per-layer table covers both batches, the setup
    # (one request in the transcript) is counted once
    assert out["sessions"] == 1 and out["batches"] == 2
    assert [b["sequences"] for b in out["per_batch"]] == [2, 1]
    assert out["bytes_c2s"] == sum(r["bytes_c2s"] for r in out["per_layer"].values())
    assert out["bytes_c2s"] == sum(b["bytes_c2s"] for b in out["per_batch"])
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert sum(e.get("tag") == "setup/request" for e in lines) == 1
    setup = sum(e["bytes"] for e in lines if e.get("phase") == "setup")
    assert out["setup_bytes"] == out["per_session"][0]["setup_bytes"] == setup


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--samples", "0"], "must be at least 1"),
        (["demo", "--batch", "0"], "must be at least 1"),
        (["demo", "--samples", "x"], "not an integer"),
    ],
)
def test_demo_rejects_bad_counts(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_rejects_more_samples_than_the_split_has(capsys):
    assert main(["demo", "--samples", "100000"]) == 1
    assert "held-out split has" in capsys.readouterr().err

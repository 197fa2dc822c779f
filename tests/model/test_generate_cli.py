"""`secmoe serve` + `secmoe generate` over TCP on 127.0.0.1 (two processes): the generated ids
are the float reference's greedy choices (checked to have clear margins), the JSON gives the
per-token figures; usage errors are one line before any connection."""

from __future__ import annotations

import json
import subprocess

import numpy as np
from tokenizers import Tokenizer

from secmoe.model.reference import run
from secmoe.model.weights import load_weights
from tests.hf_helpers import FIXTURES
from tests.test_schema import check_schema
from tests.test_serve_infer import SECMOE, free_port, serve, wait_listening
from tests.test_text import TOKENIZER

LM = FIXTURES / "mixtral-lm-fused"  # 1 layer, vocabulary 64 = the fixture tokenizer's
TEXT = "the dog sees a bird ."


def _greedy(ids: list[int], n: int) -> tuple[list[int], float]:
    """The float reference's greedy continuation and its smallest logit margin."""
    w, seq, margin = load_weights(LM), np.asarray([ids]), np.inf
    for _ in range(n):
        logits = run(w, seq).output[0, -1]
        top = np.sort(logits)
        margin = min(margin, top[-1] - top[-2])
        seq = np.concatenate([seq, [[int(logits.argmax())]]], axis=1)
    return seq[0, len(ids) :].tolist(), float(margin)


def test_generate_streams_the_reference_greedy_text_over_tcp():
    # sampled with top-1 (the server runs the top-k on shares): always the greedy choice
    tok = Tokenizer.from_file(str(TOKENIZER))
    expected, margin = _greedy(tok.encode(TEXT).ids, 2)
    assert margin > 0.1  # a clear choice: fixed point cannot flip it
    port = free_port()
    cmd = ["generate", "--connect", f"127.0.0.1:{port}", "--text", TEXT, "--json"]
    cmd += ["--tokenizer", str(TOKENIZER), "--max-new-tokens", "2", "--top-k", "1", "--seed", "5"]
    server = serve(port, "--model", str(LM), "--sessions", "1")
    try:
        wait_listening(port, server)
        out = subprocess.run(
            [*SECMOE, *cmd],
            capture_output=True,
            text=True,
            timeout=600,
        )
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    check_schema(res, "generate")  # the README's table of `secmoe generate --json`
    assert res["ids"] == expected
    assert res["text"] == tok.decode(expected)
    assert res["stopped"] == "max_new_tokens" and res["eos_id"] is None
    assert res["sampling"] == {"temperature": 1.0, "top_k": 1, "seed": 5}
    assert [t["index"] for t in res["tokens"]] == [0, 1]
    assert all(t["bytes"] > 0 and t["rounds"] > 0 and t["seconds"] > 0 for t in res["tokens"])
    assert res["tokens"][1]["bytes"] < res["tokens"][0]["bytes"]  # a step on the cache
    assert server.returncode == 0 and "Traceback" not in err


def test_generate_usage_errors_are_one_line(tmp_path):
    base = [*SECMOE, "generate", "--connect", "127.0.0.1:9", "--text", TEXT]
    cases = [
        (["--tokenizer", str(tmp_path / "no.json")], "not found"),
        (["--tokenizer", str(TOKENIZER), "--eos-id", "99"], "--eos-id 99 is outside"),
        (["--tokenizer", str(TOKENIZER), "--max-new-tokens", "0"], "must be at least 1"),
        (["--tokenizer", str(TOKENIZER), "--seed", "3"], "give --temperature or --top-k"),
        (["--tokenizer", str(TOKENIZER), "--temperature", "200"], "in (0, 100]"),
    ]
    for extra, message in cases:
        out = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert message in out.stderr and "Traceback" not in out.stderr

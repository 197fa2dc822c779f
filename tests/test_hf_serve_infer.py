"""`secmoe serve --model DIR` on a checkpoint transformers wrote, `secmoe infer` against it:
two processes over TCP on 127.0.0.1, the output equal to transformers' within tolerance.

The fixture is a SwitchTransformersForConditionalGeneration checkpoint with GeLU experts and
``expert_capacity: 2`` (it drops tokens); the client runs ``dispatch`` without naming a
capacity, so the model's own capacity must be the one that runs (issue 14).
"""

import json
import subprocess

import numpy as np

from tests.hf_helpers import argmax_agreement, hf_case, max_err
from tests.test_serve_infer import SECMOE, free_port, wait_listening

CASE = "switch-cg-s2-gelu-cap2"


def test_serve_a_transformers_checkpoint_and_infer_over_tcp(tmp_path):
    case = hf_case(CASE)
    assert case.info["dropped"] > 0  # the model's capacity matters on this input
    np.save(tmp_path / "ids.npy", case.input_ids, allow_pickle=False)
    port = free_port()
    serve = ["serve", "--model", str(case.dir), "--listen", f"127.0.0.1:{port}", "--sessions", "1"]
    infer = ["infer", "--connect", f"127.0.0.1:{port}", "--input", str(tmp_path / "ids.npy")]
    server = subprocess.Popen(
        [*SECMOE, *serve],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, server)  # the probe fails the handshake: not a session
        out = subprocess.run(
            [*SECMOE, *infer, "--strategy", "dispatch", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    logits = np.asarray(res["logits"])
    assert max_err(logits, case) <= case.fixed_tol
    assert argmax_agreement(logits, case) == 1.0
    assert res["prediction"] == case.output.argmax(-1).tolist()
    capacity = json.loads((case.dir / "config.json").read_text())["expert_capacity"]
    ran = {k: res[k] for k in ("capacity", "model_capacity", "capacity_differs")}
    assert ran == {"capacity": capacity, "model_capacity": capacity, "capacity_differs": False}
    assert server.returncode == 0
    assert "session 1 from 127.0.0.1:" in err and ": done in" in err
    assert "Traceback" not in err

"""`secmoe serve` and `secmoe infer` as two processes over TCP, as users run them."""

import json
import socket
import subprocess
import sys
import time

import numpy as np

from secmoe.model.reference import run
from secmoe.model.weights import load_bundled, load_heldout

SECMOE = [sys.executable, "-m", "secmoe.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, server: subprocess.Popen, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server never listened")


def test_serve_survives_a_bad_client_and_answers_the_next(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [*SECMOE, "serve", "--listen", f"127.0.0.1:{port}", "--sessions", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # wait_listening's probe is session 1 (it connects and leaves without a word)
        wait_listening(port, server)
        with socket.create_connection(("127.0.0.1", port)) as s:  # session 2: garbage
            s.sendall(b"\x00\x00\x00\x05hello")
        x = load_heldout()[0][3:4]
        np.save(tmp_path / "x.npy", x)
        out = subprocess.run(
            [
                *SECMOE,
                "infer",
                "--connect",
                f"127.0.0.1:{port}",
                "--input",
                str(tmp_path / "x.npy"),
                "--strategy",
                "all",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout.strip().splitlines()[-1])
        plain = run(load_bundled(), x).output
        assert res["prediction"] == plain.argmax(-1).tolist()
        np.testing.assert_allclose(res["logits"], plain, atol=0.05)
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0
    assert "session 3: done" in err
    assert "Traceback" not in err


def test_infer_splits_a_batch_into_sessions_within_the_servers_limit(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [*SECMOE, "serve", "--listen", f"127.0.0.1:{port}", "--sessions", "4", "--max-batch", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    x = load_heldout()[0][:2]
    np.save(tmp_path / "x.npy", x)
    infer = [*SECMOE, "infer", "--connect", f"127.0.0.1:{port}", "--input", str(tmp_path / "x.npy")]
    try:
        wait_listening(port, server)  # session 1
        too_big = subprocess.run(  # session 2: refused, with the reason
            [*infer, "--strategy", "dispatch", "--batch", "2"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        out = subprocess.run(  # sessions 3 and 4, one image each
            [*infer, "--strategy", "dispatch", "--batch", "1", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert too_big.returncode == 1 and "batch size 2 outside [1, 1]" in too_big.stderr
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["sessions"] == 2
    assert res["prediction"] == run(load_bundled(), x).output.argmax(-1).tolist()
    assert "session 4: done" in err and "Traceback" not in err


def test_infer_against_nothing_is_one_line():
    out = subprocess.run(
        [*SECMOE, "infer", "--connect", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "cannot connect" in out.stderr
    assert "Traceback" not in out.stderr

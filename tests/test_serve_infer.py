"""`secmoe serve` and `secmoe infer` as two processes over TCP, as users run them."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from secmoe.cli import build_parser
from secmoe.commands.serve import served_weights
from secmoe.model.reference import run
from secmoe.model.weights import load_bundled, load_heldout, load_weights
from tests.hf_helpers import FIXTURES

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


def serve(port: int, *args: str) -> subprocess.Popen:
    """``secmoe serve`` on 127.0.0.1:``port``; its stderr is the server's log."""
    return subprocess.Popen(
        [*SECMOE, "serve", "--listen", f"127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def infer(port: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``secmoe infer`` against 127.0.0.1:``port``, to completion."""
    return subprocess.run(
        [*SECMOE, "infer", "--connect", f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_serve_survives_a_bad_client_and_answers_the_next(tmp_path):
    port = free_port()
    server = serve(port, "--sessions", "1")
    try:
        # wait_listening's probe (it connects and leaves without a word) and a garbage
        # connection fail the handshake: rejected, and not counted as sessions
        wait_listening(port, server)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"\x00\x00\x00\x05hello")
        x = load_heldout()[0][3:4]
        np.save(tmp_path / "x.npy", x)
        out = infer(port, "--input", str(tmp_path / "x.npy"), "--strategy", "all", "--json")
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout.strip().splitlines()[-1])
        plain = run(load_bundled(), x).output
        assert res["prediction"] == plain.argmax(-1).tolist()
        np.testing.assert_allclose(res["logits"], plain, atol=0.05)
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0
    assert err.count("rejected a connection") == 2
    assert "session 1 from 127.0.0.1:" in err and ": done in" in err
    assert "Traceback" not in err


def test_infer_sends_batches_through_one_session_within_the_servers_limit(tmp_path):
    """Two batches of one image in one session over TCP: the setup (one request, its bytes
    in the transcript's setup phase) is paid and reported once, online figures per batch."""
    port = free_port()
    server = serve(port, "--sessions", "2", "--max-batch", "1")
    x = load_heldout()[0][:2]
    np.save(tmp_path / "x.npy", x)
    given = ["--input", str(tmp_path / "x.npy"), "--strategy", "dispatch"]
    transcript = tmp_path / "t.jsonl"
    try:
        wait_listening(port, server)  # not a session
        too_big = infer(port, *given, "--batch", "2")  # session 1: refused, with the reason
        out = infer(port, *given, "--batch", "1", "--json", "--transcript", str(transcript))
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert too_big.returncode == 1 and "batch size 2 outside [1, 1]" in too_big.stderr
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["schema"] == 1 and res["sessions"] == 1 and res["batches"] == 2
    assert res["prediction"] == run(load_bundled(), x).output.argmax(-1).tolist()
    events = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert sum(e["tag"] == "setup/request" for e in events) == 1
    setup = sum(e["bytes"] for e in events if e["phase"] == "setup")
    assert res["setup_bytes"] == res["per_session"][0]["setup_bytes"] == setup > 0
    batches = res["per_batch"]
    assert [b["sequences"] for b in batches] == [1, 1]
    assert res["bytes_c2s"] == sum(b["bytes_c2s"] for b in batches)
    online = sum(e["bytes"] for e in events if e["phase"] == "online")
    assert online == sum(b["bytes_c2s"] + b["bytes_s2c"] for b in batches)
    # the second batch costs the same online bytes as the first, within the
    # data-dependent entropy of a few encodings (no setup in it)
    b1, b2 = (b["bytes_c2s"] + b["bytes_s2c"] for b in batches)
    assert abs(b1 - b2) < 0.01 * b1 and setup > 0.05 * b1
    assert "session 1 from" in err and "refused: batch size 2" in err
    assert "session 2 from" in err and "for 2 batch(es)" in err and "Traceback" not in err


def test_infer_against_nothing_is_one_line():
    out = subprocess.run(
        [*SECMOE, "infer", "--connect", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "cannot connect" in out.stderr
    assert "Traceback" not in out.stderr


BAD_INPUTS = {
    "nan.npy": (np.full((1, 8, 8), np.nan), "NaN or infinite"),
    "inf.npy": (np.full((1, 8, 8), np.inf), "NaN or infinite"),
    "huge.npy": (np.full((1, 8, 8), 1e12), "what the first layer takes"),
    "empty.npy": (np.zeros((0, 8, 8)), "empty"),
    "rank4.npy": (np.zeros((1, 1, 8, 8)), "expected patch features"),
    "strings.npy": (np.array([["a", "b"]]), "must be numbers"),
    "negative_ids.npy": (np.array([[1, -2, 3]]), "negative"),
}


@pytest.mark.parametrize("name", [*BAD_INPUTS, "archive.npz", "text.npy", "objects.npy"])
def test_infer_checks_its_input_before_connecting(tmp_path, name):
    path = tmp_path / name
    if name in BAD_INPUTS:
        np.save(path, BAD_INPUTS[name][0])
        want = BAD_INPUTS[name][1]
    elif name == "archive.npz":
        np.savez(path, x=np.zeros((1, 8, 8)))
        want = ".npz archive"
    elif name == "text.npy":
        path.write_text("1 2 3\n")
        want = "not a .npy file"
    else:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        want = "cannot be read as a plain array"
    # nobody listens on the port: an input error must come first, as one line
    out = subprocess.run(
        [*SECMOE, "infer", "--connect", f"127.0.0.1:{free_port()}", "--input", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert want in out.stderr and "cannot connect" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_infer_checks_token_ids_and_shape_against_the_servers_model(tmp_path):
    """What needs the model (patch width, vocabulary, seq_len) is checked once its config
    arrives, before any cryptography; the server hears why the client stopped."""
    port = free_port()
    server = serve(port, "--sessions", "1")
    np.save(tmp_path / "wide.npy", np.zeros((1, 8, 5)))
    try:
        wait_listening(port, server)
        out = infer(port, "--input", str(tmp_path / "wide.npy"), timeout=120)
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert out.returncode == 1 and "do not fit" in out.stderr and "Traceback" not in out.stderr
    assert "the client failed" in err and "do not fit" in err, err


def test_serve_folds_the_norms_where_the_model_allows(capsys):
    """A model with RMSNorms is served folded (the same function: the reference output agrees);
    the bundled model's LayerNorm β cannot fold: it is served as it is, and the log says why;
    --no-fold-norms keeps γ on shares."""
    parser = build_parser()
    fixture = str(FIXTURES / "mixtral-lm-tied")
    folded = served_weights(parser.parse_args(["serve", "--listen", ":0", "--model", fixture]))
    plain = load_weights(fixture)
    assert folded.config.norms_folded and not plain.config.norms_folded
    ids = np.array([[3, 17, 5]])
    assert np.allclose(run(folded, ids).output, run(plain, ids).output, atol=1e-4)
    assert "γ is folded" in capsys.readouterr().err
    kept = served_weights(parser.parse_args(["serve", "--listen", ":0", "--no-fold-norms"]))
    assert not kept.config.norms_folded
    assert capsys.readouterr().err == ""
    bundled = served_weights(parser.parse_args(["serve", "--listen", ":0"]))
    assert not bundled.config.norms_folded
    assert "cannot fold" in capsys.readouterr().err


def test_serve_with_workers_keeps_the_experts_in_files(tmp_path, capsys):
    """With --workers the served model's experts are in an ExpertStore in --expert-dir (loaded
    and folded there, none of their pages resident), computing what the model in memory
    computes; a store on a tmpfs is logged as memory."""
    parser = build_parser()
    fixture = str(FIXTURES / "mixtral-lm-gqa-swa-untied")
    argv = ["serve", "--listen", ":0", "--model", fixture, "--workers", "2"]
    stored = served_weights(parser.parse_args([*argv, "--expert-dir", str(tmp_path)]))
    memory = served_weights(parser.parse_args(argv[:-2]))
    assert stored.store is not None and memory.store is None
    assert stored.store.directory == tmp_path and stored.store.nbytes > 0
    assert stored.store.resident_bytes() == 0
    ids = np.array([[3, 17, 5, 9]])
    np.testing.assert_array_equal(run(stored, ids).output, run(memory, ids).output)
    assert "file system in memory" not in capsys.readouterr().err
    mounts = Path("/proc/mounts").read_text().splitlines()
    if any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts):
        served_weights(parser.parse_args([*argv, "--expert-dir", "/dev/shm"]))
        assert "file system in memory" in capsys.readouterr().err

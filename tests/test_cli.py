"""The command line, run as users run it: as subprocesses."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from secmoe import cli

SECMOE = [sys.executable, "-m", "secmoe.cli"]


def run(*args, timeout=60, **kw):
    return subprocess.run([*SECMOE, *args], capture_output=True, text=True, timeout=timeout, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("secmoe ")


def test_bench_channel_local_json():
    out = run("bench", "channel", "--json", "--count", "4", "--pings", "10")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
        "op",
        "params",
        "bytes_c2s",
        "bytes_s2c",
        "rounds",
        "seconds",
        "setup_bytes",
        "setup_seconds",
        "throughput_MBps",
    ):
        assert key in res
    assert res["bytes_c2s"] > 4 * (1 << 20)


def test_bench_channel_two_processes_identical_bytes(tmp_path):
    port = free_port()
    args = ["bench", "channel", "--json", "--count", "4", "--pings", "10"]
    server = subprocess.Popen(
        [
            *SECMOE,
            *args,
            "--party",
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--transcript",
            str(tmp_path / "s.jsonl"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = run(*args, "--party", "client", "--connect", f"127.0.0.1:{port}")
    sout, serr = server.communicate(timeout=60)
    assert client.returncode == 0, client.stderr
    assert server.returncode == 0, serr
    c = json.loads(client.stdout.strip().splitlines()[-1])
    s = json.loads(sout.strip().splitlines()[-1])
    for key in ("bytes_c2s", "bytes_s2c", "rounds", "messages", "framing_bytes", "seconds"):
        assert c[key] == s[key]
    local = json.loads(run(*args).stdout.strip().splitlines()[-1])
    assert (local["bytes_c2s"], local["bytes_s2c"], local["rounds"]) == (
        c["bytes_c2s"],
        c["bytes_s2c"],
        c["rounds"],
    )
    summary = run("transcript", str(tmp_path / "s.jsonl"), "--json")
    assert summary.returncode == 0
    assert json.loads(summary.stdout)["total"]["messages"] > 0


def test_listening_server_exits_nonzero_on_garbage():
    port = free_port()
    server = subprocess.Popen(
        [*SECMOE, "bench", "channel", "--party", "server", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    _, err = server.communicate(timeout=30)
    sock.close()
    assert server.returncode == 1
    assert err.count("\n") == 1 and err.startswith("secmoe: error:") and "secmoe party" in err


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["bench", "channel", "--party", "server"], "needs --listen"),
        (["bench", "channel", "--party", "client", "--connect", "nohostport"], "HOST:PORT"),
        (["bench", "channel", "--listen", "127.0.0.1:1"], "need --party"),
        (["bench", "channel", "--size", "0"], "must be positive"),
        (["bench", "nosuchop"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line(args, msg):
    out = run(*args)
    assert out.returncode in (1, 2)
    assert msg in out.stderr and "Traceback" not in out.stderr


def test_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run("bench", "channel", "--party", "server", "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 1 and "address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreachable_server_is_one_line():
    out = run(
        "bench",
        "channel",
        "--party",
        "client",
        "--connect",
        f"127.0.0.1:{free_port()}",
        "--connect-timeout",
        "0.5",
    )
    assert out.returncode == 1 and "cannot connect" in out.stderr


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (
            ["ot", "--kind", "acot", "--bits", "64", "--n", "1000", "--source", "iknp"],
            lambda r: r["bytes_per_item"] == pytest.approx(24, abs=0.1),
        ),
        (["relu", "--n", "300", "--bits", "24"], lambda r: r["max_abs_err_ulp"] == 0),
        (
            ["topk", "--n", "20", "--experts", "5", "--k", "2", "--bits", "24"],
            lambda r: r["max_abs_err_ulp"] == 0,
        ),
        (["trunc", "--n", "300"], lambda r: r["max_abs_err_ulp"] <= 1),
    ],
)
def test_bench_ops_json(args, check):
    out = run("bench", *args, "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["setup_bytes"] > 0 and res["bytes_c2s"] + res["bytes_s2c"] > 0
    assert check(res)


MOE_DIMS = ["--experts", "4", "--tokens", "6", "--d-model", "16", "--d-ff", "32"]


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("dispatch", []),
        ("reveal", []),
        ("dispatch", ["--top-k", "2", "--ffn", "swiglu", "--capacity", "2"]),  # overflow
        ("select", ["--top-k", "2", "--ffn", "swiglu"]),
    ],
)
def test_bench_moe_small(strategy, extra):
    out = run("bench", "moe", "--strategy", strategy, *MOE_DIMS, *extra, "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["max_abs_err_vs_fixed"] < 1e-3
    assert res.get("INSECURE", False) is (strategy == "reveal")


@pytest.mark.parametrize("mode", ["plain-weight", "secret-secret", "select"])
def test_bench_matmul_modes_are_exact(mode):
    out = run(
        "bench",
        "matmul",
        "--shape",
        "3x20x12",
        "--mode",
        mode,
        "--experts",
        "3",
        "--heads",
        "2",
        "--json",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["exact"] is True and res["rounds"] == 2


def test_bench_matmul_bad_shape_is_one_line():
    out = run("bench", "matmul", "--shape", "8x768")
    assert out.returncode == 1 and "TxDxH" in out.stderr


def test_bench_ot_silent_setup_matches_declared():
    from secmoe.protocols.ot.pool import OTPool

    out = run("bench", "ot", "--kind", "cot", "--n", "1000", "--source", "silent", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    declared = OTPool.setup_cost("silent")
    assert res["setup_bytes"] == declared["bytes_c2s"] + declared["bytes_s2c"]
    assert res["bytes_per_item"] < 1  # the setup made the rows: the draw costs its announcement


def test_bench_model_prints_readable_tables_without_json():
    out = run("bench", "model", "--preset", "digits-moe", "--tokens", "2", "--strategy", "reveal")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("part "))
    assert header.split()[:4] == ["part", "c2s", "s2c", "rounds"]
    assert any(line.startswith("group ") for line in lines)
    rows = [line.split()[0] for line in lines if line.startswith("layer")]
    assert "layer0/attn" in rows and "layer1/moe/reveal" in rows
    assert "{'row'" not in out.stdout and "'bytes_c2s'" not in out.stdout  # no raw dicts
    assert "peak RSS" in out.stdout


def test_no_transparent_huge_pages_unless_asked(monkeypatch):
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    before = multiarray._get_madvise_hugepage()
    try:
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")  # the user's choice is kept
        multiarray._set_madvise_hugepage(True)
        cli.no_transparent_huge_pages()
        assert multiarray._get_madvise_hugepage() is True
        monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE")
        cli.no_transparent_huge_pages()
        assert multiarray._get_madvise_hugepage() is False
        assert os.environ["NUMPY_MADVISE_HUGEPAGE"] == "0"  # inherited by child processes
    finally:
        multiarray._set_madvise_hugepage(before)

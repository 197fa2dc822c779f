"""Progress of a real private-inference session (issue 20): a rich line on a terminal with the
layers done and the bytes so far; plain lines otherwise; nothing when quiet (``--json``)."""

import os
import pty
import re
import select
import subprocess
import time
from io import StringIO

import numpy as np
import pytest
from rich.console import Console

from secmoe.cli import main
from secmoe.model.secure import RunOptions
from secmoe.model.session import client_session, serve_session
from secmoe.model.weights import load_weights
from secmoe.net import run_pair
from secmoe.net.memory import memory_pair
from secmoe.progress import Reporter, _Work
from tests.hf_helpers import FIXTURES
from tests.test_serve_infer import SECMOE, free_port, serve, wait_listening

MODEL = FIXTURES / "mixtral-lm-tied"  # 2 layers, vocabulary 64


async def _session(reporter: Reporter, label: str = "session 1") -> tuple[int, int]:
    """One secure session (2 tokens, both parties here) reported by ``reporter`` on the
    client's side; returns the client's (sent, received) payload bytes."""
    weights = load_weights(MODEL)
    cch, sch = memory_pair()
    ids = np.array([[3, 17]])
    with reporter.session(label, cch.stats, "client") as progress:
        await run_pair(
            client_session(cch, ids, options=RunOptions("all"), progress=progress),
            serve_session(sch, weights, setup_idle=None),
            timeout=120,
        )
    total = cch.stats.total()
    await cch.close()
    await sch.close()
    return total.bytes_c2s, total.bytes_s2c


def _mb(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]


async def test_not_a_terminal_prints_one_plain_line_per_layer_with_bytes():
    lines: list[str] = []
    reporter = Reporter(console=Console(file=StringIO()), line=lines.append)
    assert not reporter.live
    sent, received = await _session(reporter)
    pattern = (
        r"session 1: layer (\d)/2 done \(sent ([\d.]+ [KMG]?B), received ([\d.]+ [KMG]?B), "
        r"about \d+ s left\)"
    )
    found = [re.fullmatch(pattern, line) for line in lines]
    assert all(found) and [int(m[1]) for m in found] == [1, 2], lines
    # bytes grow layer by layer and stay within the session's totals (the output's reveal
    # comes after the last layer)
    sent_mb = [_mb(m[2]) for m in found]
    recv_mb = [_mb(m[3]) for m in found]
    assert 0 < sent_mb[0] < sent_mb[1] <= sent / 1e6 + 0.01
    assert 0 < recv_mb[0] < recv_mb[1] <= received / 1e6 + 0.01


async def test_quiet_prints_nothing():
    lines: list[str] = []
    out = StringIO()
    reporter = Reporter(
        quiet=True, console=Console(file=out, force_terminal=True), line=lines.append
    )
    assert not reporter.live
    reporter.log("sequences 0-1 of 4")
    with reporter.session("s", memory_pair()[0].stats, "client", 2) as progress:
        progress("layer 1/2 done")
    assert lines == [] and out.getvalue() == ""


def test_the_time_left_follows_the_announced_stage_work():
    lines: list[str] = []
    reporter = Reporter(console=Console(file=StringIO()), line=lines.append)
    with reporter.session("s", memory_pair()[0].stats, "client") as progress:
        progress("plan work 10,10,70,10")  # embedding, a dense layer, an MoE layer, the head
        time.sleep(0.2)
        progress("layer 1/2 done")  # 20 of 100 done: four times the elapsed time is left
        progress("routing")
    assert len(lines) == 2, lines  # the plan itself prints nothing
    left = float(re.search(r"about (\d+) s left", lines[0])[1])
    assert 0.7 <= left <= 1.5, lines[0]
    assert lines[1].startswith("s: routing (") and "left" not in lines[1]


def test_a_bar_counts_layers_but_fills_by_stage_work():
    work = _Work(None)
    assert work.event("plan work 10,10,70,10") == "plan"
    assert (work.total, work.completed, work.layers_text()) == (100, 10, "0/2 layers")
    assert work.event("layer 1/2 done") == "layer"
    assert (work.completed, work.layers_text()) == (20, "1/2 layers")
    assert work.event("layer 2/2 done") == "layer" and work.completed == 90
    assert work.event("routing") is None
    counted = _Work(4)  # no plan: the layers are the work
    counted.event("layer 1/4 done")
    assert (counted.total, counted.completed) == (4, 1)


async def test_a_terminal_gets_a_bar_with_layers_and_bytes():
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=150, color_system=None)
    reporter = Reporter(console=console, line=lambda msg: (_ for _ in ()).throw(AssertionError))
    assert reporter.live
    sent, received = await _session(reporter, "session 7")
    assert "\x1b[" in out.getvalue()  # drawn with terminal control codes, not plain lines
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    final = [line for line in re.split(r"[\r\n]", screen) if line.strip()][-1]
    assert final.startswith("session 7") and "2/2 layers" in final, final
    m = re.search(r"sent ([\d.]+ [KMG]?B), received ([\d.]+ [KMG]?B)", final)
    assert m is not None, final
    # the final refresh shows the whole session's bytes (rounded to the unit shown)
    assert abs(_mb(m[1]) - sent / 1e6) < 0.01 and abs(_mb(m[2]) - received / 1e6) < 0.01
    assert re.search(r"\d:\d\d:\d\d", final)  # elapsed


def test_infer_under_a_pseudo_terminal_draws_the_bar(tmp_path):
    """`secmoe infer` with stderr on a pseudo-terminal: the rich line, not plain lines."""
    port = free_port()
    server = serve(port, "--model", str(MODEL), "--sessions", "1")
    master, slave = pty.openpty()
    try:
        wait_listening(port, server)
        tokenizer = FIXTURES.parent / "tokenizer" / "tokenizer.json"
        argv = ["infer", "--connect", f"127.0.0.1:{port}", "--strategy", "all"]
        argv += ["--text", "the cat sat", "--tokenizer", str(tokenizer)]
        env = os.environ | {"COLUMNS": "140", "TERM": "xterm"}
        env.pop("NO_COLOR", None)
        client = subprocess.Popen(
            [*SECMOE, *argv], stdout=subprocess.PIPE, stderr=slave, env=env, text=True
        )
        os.close(slave)
        chunks = []  # read while it runs: a full pty would block the client's writes
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the pty's writer is gone and everything was read
                break
            if not data:
                break
            chunks.append(data)
        stdout, _ = client.communicate(timeout=120)
        server.communicate(timeout=60)
    finally:
        server.kill()
        os.close(master)
    assert client.returncode == 0 and "next token" in stdout
    screen = b"".join(chunks).decode()
    assert "\x1b[" in screen and "… session" not in screen  # drawn, not plain lines
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert re.search(r"session 1 .*2/2 layers sent [\d.]+ [KMG]?B, received [\d.]+ [KMG]?B", text)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["moe", "--experts", "4", "--tokens", "4", "--d-model", "32", "--d-ff", "32"],
            "MoE layer E=4 select (client): layer 1/1 done (sent ",
        ),
        (
            ["model", "--preset", "digits-moe", "--tokens", "4", "--layers", "1"],
            "digits-moe select (client): layer 1/1 done (sent ",
        ),
    ],
)
def test_benches_report_progress_unless_json(argv, line, capsys):
    assert main(["bench", *argv]) == 0
    assert line in capsys.readouterr().err
    assert main(["bench", *argv, "--json"]) == 0
    assert "layer 1/1 done" not in capsys.readouterr().err

"""`secmoe serve --max-sessions K --queue Q` (issue 20, item 4), over real sockets on
127.0.0.1: sessions side by side, a stalled client beside a good one, the queue's "server
busy" notes, the refusal beyond the queue, and the listener's bound on handshakes."""

import asyncio
import json
import re
import subprocess
import time

import numpy as np
import pytest

from secmoe.app import APP_PARAMS
from secmoe.model.reference import run
from secmoe.model.weights import load_bundled, load_heldout
from secmoe.net import HandshakeError
from secmoe.net.tcp import connect, listen

from .test_serve_infer import SECMOE, free_port, serve, wait_listening

X = load_heldout()[0]


def _infer_async(port: int, tmp_path, i: int) -> subprocess.Popen:
    """``secmoe infer --json`` of held-out image ``i``, started (not waited for)."""
    path = tmp_path / f"x{i}.npy"
    np.save(path, X[i : i + 1])
    given = ["--input", str(path), "--strategy", "all", "--json"]
    return subprocess.Popen(
        [*SECMOE, "infer", "--connect", f"127.0.0.1:{port}", *given],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen, i: int) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["prediction"] == run(load_bundled(), X[i : i + 1]).output.argmax(-1).tolist()
    return err


async def _stalled(port: int, hold: float) -> str:
    """Handshake, read the model, then say nothing for ``hold`` seconds (or until dropped)."""
    ch = await connect("127.0.0.1", port, params=APP_PARAMS, connect_timeout=10, timeout=60)
    try:
        await ch.recv(tag="setup/model")
        try:
            await ch.recv(tag="setup/answer", timeout=hold)
        except Exception as exc:  # dropped by the server (or our own hold ran out)
            return str(exc)
        return "answered"
    finally:
        await ch.close()


def test_two_clients_at_once_are_served_side_by_side(tmp_path):
    port = free_port()
    server = serve(port, "--sessions", "2", "--max-sessions", "2")
    try:
        wait_listening(port, server)
        clients = [_infer_async(port, tmp_path, i) for i in (0, 1)]
        errs = [_result(c, i) for i, c in enumerate(clients)]
        _, log = server.communicate(timeout=60)
    finally:
        server.kill()
    assert not any("server busy" in e for e in errs)
    # both started before either ended: side by side
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if ": started" in line]
    ends = [i for i, line in enumerate(lines) if ": done in" in line]
    assert len(starts) == 2 and len(ends) == 2 and max(starts) < min(ends), log
    assert "Traceback" not in log


def test_a_stalled_client_does_not_delay_a_good_one_beside_it(tmp_path):
    """K = 2: a client stalled in its setup holds one session; a good client is served at
    once in the other, while the stalled one still waits for its deadline."""
    port = free_port()
    server = serve(port, "--max-sessions", "2", "--setup-timeout", "600")

    async def scenario() -> str | None:
        stalled = asyncio.ensure_future(_stalled(port, 600))
        await asyncio.sleep(1.0)
        good = await asyncio.to_thread(lambda: _result(_infer_async(port, tmp_path, 2), 2))
        assert "server busy" not in good
        if stalled.done():
            return stalled.result()
        stalled.cancel()
        return None

    try:
        wait_listening(port, server)
        stalled = asyncio.run(scenario())
    finally:
        server.kill()
        _, log = server.communicate(timeout=30)
    # the good client did not wait for the stalled one's deadline
    assert stalled is None, (stalled, log)


def test_waiting_clients_are_told_their_place_and_beyond_the_queue_refused(tmp_path):
    """K = 1, Q = 1: a stalled client holds the session; the next waits, told "server busy,
    0 ahead"; the third is refused with the reason; when the stalled one is dropped (its setup
    deadline) the waiting one is served."""
    port = free_port()
    server = serve(port, "--max-sessions", "1", "--queue", "1", "--setup-timeout", "4")

    async def scenario():
        stalled = asyncio.ensure_future(_stalled(port, 60))
        await asyncio.sleep(1.5)
        notes: list[str] = []
        waiting = asyncio.ensure_future(
            connect("127.0.0.1", port, params=APP_PARAMS, timeout=60, on_wait=notes.append)
        )
        await asyncio.sleep(1.0)
        with pytest.raises(HandshakeError) as refused:
            await connect("127.0.0.1", port, params=APP_PARAMS, timeout=60)
        t0 = time.monotonic()
        ch = await waiting  # admitted once the stalled session ends
        waited = time.monotonic() - t0
        model = await ch.recv(tag="setup/model")
        await ch.close()
        return notes, str(refused.value), waited, model, await stalled

    try:
        wait_listening(port, server)
        notes, refused, waited, model, stalled = asyncio.run(scenario())
    finally:
        server.kill()
        _, log = server.communicate(timeout=30)
    assert (
        notes and notes[0] == "server busy: 1 sessions running, 0 ahead of this client in the queue"
    )
    assert "server busy: 1 sessions running and 1 clients waiting, its queue is full" in refused
    assert "config" in model and waited < 4 + 3  # no later than the stalled one's deadline
    assert "sent nothing" in stalled or "silent" in stalled or "idle" in stalled, stalled
    assert re.search(r"rejected a connection: .*queue is full", log), log


async def test_the_listener_bounds_connections_in_their_handshake():
    """A flood of connections that never say hello: beyond max_pending they are closed at
    once (not held open until their handshake deadline)."""
    lst = await listen("127.0.0.1", 0, params=APP_PARAMS, max_pending=2, handshake_timeout=30)
    try:
        conns = [await asyncio.open_connection("127.0.0.1", lst.port) for _ in range(4)]
        await asyncio.sleep(0.3)
        assert lst.pending == 2
        closed = []
        for reader, _ in conns:
            try:
                async with asyncio.timeout(1):
                    closed.append(await reader.read(1) == b"")
            except (TimeoutError, ConnectionError):
                closed.append(False)
        assert closed.count(True) == 2  # the two beyond the bound
        with pytest.raises(Exception, match="more than 2 connections in their handshake"):
            await lst.accept(1)
        for _, writer in conns:
            writer.close()
    finally:
        await lst.close()


def test_a_session_beyond_max_memory_is_refused_with_the_reason(tmp_path):
    port = free_port()
    server = serve(port, "--sessions", "1", "--max-memory", "1")
    np.save(tmp_path / "x.npy", X[:1])
    try:
        wait_listening(port, server)
        out = subprocess.run(
            [
                *SECMOE,
                "infer",
                "--connect",
                f"127.0.0.1:{port}",
                "--input",
                str(tmp_path / "x.npy"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        _, log = server.communicate(timeout=60)
    finally:
        server.kill()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert re.search(r"plans \d+ MB of memory, more than the 1 MB free", out.stderr), out.stderr
    assert "refused: the session plans" in log

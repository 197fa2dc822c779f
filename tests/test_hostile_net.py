"""Hostile and clumsy peers against a net-level server on 127.0.0.1 (issue 15, defects 4 and 8).

Each attack must end only its own session, with a clear one-line error on the server and an
abort reason on the attacker's side where it still listens, within bounded memory (the
session's accounted buffer, and the allocations traced while it runs), and the server must then
serve a good client.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np
import pytest

from secmoe.net import (
    ChannelTimeout,
    HandshakeError,
    LimitExceeded,
    PeerAborted,
    PeerDisconnected,
    ProtocolError,
)
from secmoe.net.channel import HELD_OVERHEAD
from secmoe.net.codec import encode
from secmoe.net.tcp import _hello, connect, listen

from .hostile import CRASH, PARAMS, EchoServer, frame, raw_session, send_raw

MiB = 1 << 20


def one_clear_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text and not text.rstrip().endswith(":"), repr(text)
    return text


async def attacker(port: int, **kw):
    """A real client (handshake done) whose session we abuse."""
    return await connect("127.0.0.1", port, params=PARAMS, timeout=5, **kw)


async def told(ch) -> str:
    """What the server told the attacker before closing (its abort reason)."""
    with pytest.raises(PeerAborted) as info:
        await ch.recv(tag="anything", timeout=5)
    await ch.close()
    return one_clear_line(info.value)


async def test_junk_to_many_paths_is_cut_off_at_the_path_limit():
    async with EchoServer(max_paths=32) as srv:
        ch = await attacker(srv.port)
        for i in range(40):  # 5 kB: the server reads it all, so its close does not reset
            await ch.fork(f"junk{i}").send(b"x" * 100, tag="j")
        end = await srv.next_end()
        assert isinstance(end.error, LimitExceeded)
        assert "more than 32 channels" in one_clear_line(end.error)
        assert end.peak_buffered <= 33 * (100 + 16 + HELD_OVERHEAD)
        assert end.paths <= 34  # echo + 32 + the one refused at most
        assert "the server failed: the client sent to more than 32 channels" in await told(ch)
        assert await srv.serves_a_good_client()


@pytest.mark.parametrize(
    ("piece", "count", "match"),
    [
        (frame("later", "j", bytes(64 << 10)), 1024, "buffer budget"),  # 64 MiB nobody reads
        (frame("later", "j", b"") * 4096, 50, "buffer budget"),  # 200k empty messages
        (frame("later", "j", bytes(64 << 10), more=True), 1024, "exceeds the maximum of"),
    ],
    ids=["many-messages", "empty-messages", "one-64MiB-message"],
)
async def test_buffered_bytes_stay_within_the_budget(piece, count, match):
    """64 MiB (or 200k frames) of junk at a session with a 2 MiB budget and 1 MiB messages:
    the session fails once past its limit, and what the server held stays bounded."""
    budget = 2 * MiB
    async with EchoServer(max_buffered=budget, max_message=MiB) as srv:
        _, writer = await raw_session(srv.port)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            with contextlib.suppress(ConnectionError):
                for _ in range(count):  # the same bytes object again and again: nothing new
                    writer.write(piece)
                    await writer.drain()
            end = await srv.next_end()
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
            writer.close()
        assert isinstance(end.error, LimitExceeded)
        assert match in one_clear_line(end.error)
        assert end.peak_buffered <= budget
        assert end.buffered == 0  # dropped when the session failed
        assert peak < 16 * MiB, peak  # (without limits: 64 MiB and more)
        assert await srv.serves_a_good_client()


async def test_a_clumsy_client_sending_too_much_is_told_why():
    """A secmoe client (its reader running) streaming messages beyond the server's maximum:
    its next send and its pending receive both raise the server's reason."""
    async with EchoServer(max_message=MiB) as srv:
        ch = await attacker(srv.port)
        echo = ch.fork("echo")
        waiter = asyncio.ensure_future(echo.recv(tag="pong"))
        reason = "the server failed: message 'ping' on channel 'echo' exceeds the maximum of"
        with pytest.raises(PeerAborted, match=reason):
            for _ in range(20):
                await echo.send(np.zeros(MiB, np.uint64), tag="ping")
        with pytest.raises(PeerAborted, match=reason):
            await waiter
        await ch.close()
        assert isinstance((await srv.next_end()).error, LimitExceeded)
        assert await srv.serves_a_good_client()


async def test_a_kept_error_does_not_keep_what_the_peer_sent():
    """A server loop keeps the error (and the channel) while it logs: the 32 MiB the peer sent
    before the limit must be freed all the same (a traceback would hold them)."""
    lst = await listen("127.0.0.1", 0, params=PARAMS, max_message=32 * MiB)
    piece = frame("echo", "ping", bytes(MiB), more=True)

    async def attack():
        _, writer = await raw_session(lst.port)
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(piece)
                await writer.drain()
        writer.close()

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        flood = asyncio.ensure_future(attack())
        ch = await lst.accept(5)
        with pytest.raises(LimitExceeded) as info:
            await ch.fork("echo").recv(tag="ping")
        await ch.abort(str(info.value))
        await flood
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        await lst.close()
    assert ch.session.error is not None and info.value is not None  # both still alive
    assert kept < 4 * MiB, kept


async def test_a_silent_client_is_dropped_at_the_idle_limit_naming_what_was_awaited():
    async with EchoServer(idle_timeout=0.3) as srv:  # each receive alone would wait 600 s
        ch = await attacker(srv.port)
        t0 = time.monotonic()
        end = await srv.next_end()
        assert isinstance(end.error, ChannelTimeout)
        assert time.monotonic() - t0 < 3
        text = one_clear_line(end.error)
        assert "the client sent nothing for 0.3 s while the server waited for 'ping'" in text
        assert "on channel 'echo'" in text
        assert "the server failed: the client sent nothing for 0.3 s" in await told(ch)
        assert await srv.serves_a_good_client()


async def test_a_slow_client_is_dropped_at_the_session_deadline():
    async with EchoServer(deadline=0.6, idle_timeout=0.3) as srv:
        ch = await attacker(srv.port)
        echo = ch.fork("echo")
        t0 = time.monotonic()
        with pytest.raises(PeerAborted, match=r"the session exceeded its deadline of 0\.6 s"):
            for i in range(100):  # a ping every 0.1 s keeps it from being idle
                await echo.send(i, tag="ping")
                assert await echo.recv(tag="pong") == i
                await asyncio.sleep(0.1)
        assert 0.5 < time.monotonic() - t0 < 3
        end = await srv.next_end()
        assert "exceeded its deadline" in one_clear_line(end.error)
        await ch.close()
        assert await srv.serves_a_good_client()


async def test_a_client_that_never_reads_cannot_hold_a_sending_server():
    """Pings of 1 MB whose pongs are never read: the server's send blocks once the socket
    buffers are full, and the session deadline still ends it (the link is reset)."""
    async with EchoServer(deadline=1.0) as srv:
        _, writer = await raw_session(srv.port)
        ping = frame("echo", "ping", encode(np.zeros(1 << 17, np.uint64)))
        t0 = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(ping)
                await writer.drain()
        end = await srv.next_end()
        assert "exceeded its deadline of 1 s" in one_clear_line(end.error)
        assert time.monotonic() - t0 < 7  # the deadline + 2 s for the abort + 2 s to close
        writer.close()
        assert await srv.serves_a_good_client()


async def test_a_failing_server_tells_the_client_why_in_one_line():
    async with EchoServer() as srv:
        ch = await attacker(srv.port)
        await ch.fork("echo").send(CRASH + "\n\x1b[31mred", tag="ping")
        reason = await told(ch)
        assert reason.startswith("the server failed: RuntimeError: cannot echo 'crash")
        assert "\x1b" not in reason
        assert isinstance((await srv.next_end()).error, RuntimeError)
        assert await srv.serves_a_good_client()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (frame("echo", "ping", b"\xc1"), "malformed message: not msgpack"),
        (frame("echo", "ping", b"\x91" * 5000), "malformed message: nested too deeply"),
        (frame("echo", "ping", b"\x92\x01"), "malformed message: Unpack failed"),
        (frame("echo", "pong", b"\x01"), "tag mismatch on channel 'echo'"),
        (frame("/", "abort", b"\x01"), "abort frame carries no reason"),
        (frame("/x", "y", b""), "reserved channel"),
        (frame("echo", "ping", b"\x01", more=True) + frame("echo", "j", b""), "interleaved"),
    ],
)
async def test_malformed_messages_are_named_to_both_sides(raw, match):
    async with EchoServer() as srv:
        reader, writer = await raw_session(srv.port)
        writer.write(raw)
        await writer.drain()
        end = await srv.next_end()
        assert isinstance(end.error, ProtocolError)
        assert match in one_clear_line(end.error)
        rest = await asyncio.wait_for(reader.read(), 5)  # the abort frame, then EOF
        assert b"abort" in rest and match.split(":")[0].encode() in rest
        writer.close()
        assert await srv.serves_a_good_client()


async def test_a_killed_client_ends_only_its_session():
    async with EchoServer() as srv:
        code = textwrap.dedent(
            f"""
            import asyncio, sys
            from secmoe.net.tcp import _hello, connect, listen
            async def main():
                ch = await connect("127.0.0.1", {srv.port}, params={PARAMS!r})
                await ch.session.link.write(b"\\0\\0\\1\\0")  # half a frame
                print("ready", flush=True)
                await asyncio.sleep(60)
            asyncio.run(main())
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        try:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line.strip() == b"ready"
            os.kill(proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            end = await srv.next_end()
            assert isinstance(end.error, PeerDisconnected)
            assert time.monotonic() - t0 < 3
            one_clear_line(end.error)
        finally:
            proc.kill()
            proc.wait()
        assert await srv.serves_a_good_client()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage instead of a hello
        frame("", "hello", b"\x81\xa5magic\xa3xyz"),  # a hello from another protocol
        frame("", "hello", b"\xc1"),  # a hello that is not msgpack
        b"\x7f\xff\xff\xff",  # a hello of 2 GiB
        b"\x00\x00\x00\x10\x00",  # a truncated hello, then the write side closed
        *[  # hellos of the right shape with fields of the wrong type
            frame("", "hello", encode({**_hello("client", PARAMS, "s"), key: value}))
            for key, value in [
                ("params", [1, 2]),
                ("params", {1: 2}),  # keys that do not sort with the server's
                ("role", ["x"]),
                ("session", 5),
                ("version", "x" * 100_000),
            ]
        ],
    ],
)
async def test_a_bad_handshake_is_refused_and_the_server_goes_on(raw):
    async with EchoServer() as srv:
        await send_raw(srv.port, raw, handshake=False)
        end = await srv.next_end()
        assert end.handshake and isinstance(end.error, HandshakeError | PeerDisconnected)
        assert len(one_clear_line(end.error)) < 600
        assert await srv.serves_a_good_client()


async def test_sessions_stay_independent_under_attack():
    """A good client is served while another connection streams junk at the same server."""
    async with EchoServer(max_buffered=MiB) as srv:
        flood = asyncio.ensure_future(
            send_raw(srv.port, frame("later", "j", b"\x00" * 60_000) * 100)
        )
        await asyncio.sleep(0)
        ch = await attacker(srv.port)
        echo = ch.fork("echo")
        await echo.send(np.arange(10), tag="ping")
        np.testing.assert_array_equal(await echo.recv(tag="pong"), np.arange(10))
        await ch.close()
        await flood
        ends = [await srv.next_end(), await srv.next_end()]
        assert sorted(type(e.error).__name__ for e in ends) == [
            "LimitExceeded",
            "PeerDisconnected",
        ]

"""A net-level server on 127.0.0.1 for hostile-peer tests, and a good client to check it.

:class:`EchoServer` accepts sessions one after another in the background (each in its own
task) and answers every ``ping`` on channel ``echo`` with a ``pong`` carrying the same value,
until the session ends. How each session ended is kept (never raised), so a test can check that
a hostile peer was dropped with a clear error and that the server still serves a good client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from secmoe.net import Channel, NetError, PeerDisconnected, Session
from secmoe.net.codec import encode
from secmoe.net.framing import Frame, encode_frame
from secmoe.net.tcp import _hello, connect, listen

PARAMS = {"ring_bits": 64, "frac_bits": 18}
CRASH = "crash"  # a ping carrying this string makes the server's handler raise


@dataclass
class Ended:
    """How one server-side session ended (figures copied: the session itself is dropped)."""

    error: BaseException
    seconds: float  # from the session's start (or the failed handshake) to its end
    handshake: bool = False  # the connection failed before a session began
    peak_buffered: int = 0
    buffered: int = 0  # after the end
    paths: int = 0  # FIFOs the session created

    def __post_init__(self) -> None:  # keep no frames (and so no session) alive
        self.error = self.error.with_traceback(None)
        self.error.__cause__ = self.error.__context__ = None

    @classmethod
    def of(cls, session: Session, error: BaseException, seconds: float) -> Ended:
        return cls(
            error, seconds, False, session.peak_buffered, session.buffered, len(session._queues)
        )


class EchoServer:
    """Listens on 127.0.0.1:0; ``session_kw`` configure every session (limits, deadlines).

    ``deadline``: each session must be over this many seconds after it is accepted.
    """

    def __init__(self, *, deadline: float | None = None, **session_kw: Any) -> None:
        self.deadline = deadline
        self.session_kw = {"params": PARAMS, "handshake_timeout": 2.0, **session_kw}
        self.ended: asyncio.Queue[Ended] = asyncio.Queue()
        self.crashes: list[BaseException] = []  # anything but a NetError: a bug
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> EchoServer:
        self.listener = await listen("127.0.0.1", 0, **self.session_kw)
        self.port = self.listener.port
        self._spawn(self._accept_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        await self.listener.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                ch = await self.listener.accept()
            except NetError as exc:
                self.ended.put_nowait(Ended(exc, time.monotonic() - t0, handshake=True))
                continue
            self._spawn(self._serve(ch))

    async def _serve(self, ch: Channel) -> None:
        t0 = time.monotonic()
        if self.deadline is not None:
            ch.session.set_deadline(self.deadline)
        echo = ch.fork("echo")
        try:
            while True:
                x = await echo.recv(tag="ping")
                if isinstance(x, str) and x.startswith(CRASH):
                    raise RuntimeError(f"cannot echo {x!r}")
                await echo.send(x, tag="pong")
        except NetError as exc:
            await ch.abort(str(exc))
            self.ended.put_nowait(Ended.of(ch.session, exc, time.monotonic() - t0))
        except Exception as exc:  # the handler's own failure: the peer is told why
            await ch.abort(f"{type(exc).__name__}: {exc}")
            self.ended.put_nowait(Ended.of(ch.session, exc, time.monotonic() - t0))
            if not str(exc).startswith("cannot echo"):
                self.crashes.append(exc)

    async def next_end(self, timeout: float = 10.0) -> Ended:
        """How the next session (or connection) ended."""
        return await asyncio.wait_for(self.ended.get(), timeout)

    async def serves_a_good_client(self) -> bool:
        """Run a good client (three pings of different types); True iff all come back."""
        values = [np.arange(1000, dtype=np.uint64), {"k": [1, "two", b"3"]}, 2**70]
        ch = await connect("127.0.0.1", self.port, params=PARAMS, timeout=5)
        try:
            echo = ch.fork("echo")
            for v in values:
                await echo.send(v, tag="ping")
                got = await echo.recv(tag="pong")
                same = np.array_equal(got, v) if isinstance(v, np.ndarray) else got == v
                if not same:
                    return False
        finally:
            await ch.close()
        end = await self.next_end()
        return isinstance(end.error, PeerDisconnected) and not self.crashes


def frame(path: str, tag: str, payload: bytes, *, more: bool = False, phase: str = "online"):
    """One encoded frame carrying ``payload`` as it is."""
    return encode_frame(Frame(path, tag, 1, phase, more, payload))


def hello_frame(role: str = "client", params: dict[str, Any] | None = None) -> bytes:
    """A valid hello of ``role`` (session id "fuzz")."""
    return frame("", "hello", encode(_hello(role, params or PARAMS, "fuzz")), phase="handshake")


async def raw_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection that has completed the handshake (its hello sent, the reply read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello_frame())
    await writer.drain()
    n = int.from_bytes(await reader.readexactly(4), "big")
    await reader.readexactly(n)
    return reader, writer


async def send_raw(port: int, data: bytes, *, handshake: bool = True) -> None:
    """Connect, (handshake,) send ``data``, close the write side and wait for the server to
    close (at most 5 s)."""
    if handshake:
        reader, writer = await raw_session(port)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(5):
            while await reader.read(1 << 16):
                pass
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()

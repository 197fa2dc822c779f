"""The in-memory link: both parties as tasks in one event loop.

Every message is encoded and framed exactly as over TCP, so byte counts are the real ones.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .channel import Channel, Link, Session
from .errors import PeerDisconnected

_EOF = b""


class MemoryLink(Link):
    """One end of an in-process pipe (an unbounded queue of byte strings each way)."""

    def __init__(self, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise PeerDisconnected("the link is closed")
        if data:
            self._outbox.put_nowait(data)

    async def read(self) -> bytes:
        data = await self._inbox.get()
        if data is _EOF:
            self._inbox.put_nowait(_EOF)
            raise PeerDisconnected("the peer closed the connection")
        return data

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(_EOF)


def memory_links() -> tuple[MemoryLink, MemoryLink]:
    """Two connected in-memory links (client end, server end)."""
    c2s: asyncio.Queue[bytes] = asyncio.Queue()
    s2c: asyncio.Queue[bytes] = asyncio.Queue()
    return MemoryLink(s2c, c2s), MemoryLink(c2s, s2c)


def memory_pair(**session_kw: Any) -> tuple[Channel, Channel]:
    """A connected (client, server) pair of channels in this event loop.

    Keyword arguments go to both :class:`Session` objects (``timeout``, ``max_frame``, …).
    """
    client_link, server_link = memory_links()
    return (
        Channel(Session(client_link, "client", **session_kw)),
        Channel(Session(server_link, "server", **session_kw)),
    )

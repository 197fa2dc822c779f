"""The two-party channel: typed, tagged messages over a link, with forks and accounting.

A :class:`Session` owns one link (in-memory or TCP) and demultiplexes incoming frames into one
FIFO per fork path. A :class:`Channel` is a view of the session at one path::

    await ch.send(x, tag="mul/e")        # encode (msgpack), frame, account, write
    y = await ch.recv(tag="mul/e")       # the peer's next message on this path; tag checked
    sub = ch.fork("expert3")             # path "…/expert3": its own FIFO, run concurrently
    with ch.phase("setup"): ...          # the phase the bytes are recorded under

Receives have a deadline (the session's ``timeout`` unless given); a mismatched tag raises
:class:`TagMismatch` at once, naming the path and both tags. Both parties record every message
(sent and received) in ``ch.stats``, so their figures agree. See :mod:`secmoe.net.stats` for
what the figures mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from .codec import decode, encode
from .errors import ChannelTimeout, PeerDisconnected, ProtocolError, TagMismatch
from .framing import DEFAULT_MAX_FRAME, Frame, FrameDecoder, encode_frame, split_message
from .stats import Stats

ROLES = ("client", "server")
DEFAULT_TIMEOUT = 600.0  # seconds a party waits for its peer's next message
DEFAULT_MAX_MESSAGE = 4 << 30  # 4 GiB

Recorder = Callable[[dict[str, Any], bytes], None]


class Link(ABC):
    """A reliable, ordered byte pipe to the peer (in-memory queue or TCP stream)."""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Write bytes (whole frames); may wait for buffer space."""

    @abstractmethod
    async def read(self) -> bytes:
        """Read the next available bytes; raise :class:`PeerDisconnected` at end of stream."""

    @abstractmethod
    async def close(self) -> None:
        """Close the link; pending reads on the peer end with :class:`PeerDisconnected`."""


class Session:
    """One party's end of a two-party session: link, demultiplexer, stats, phase.

    Args:
        link: the transport.
        role: ``"client"`` or ``"server"``.
        timeout: default deadline (s) for every receive.
        max_frame: the largest chunk per frame (larger messages are split).
        max_message: the largest message accepted from the peer (bytes).
        recorder: called with one event dict per message sent or received (transcripts).
    """

    def __init__(
        self,
        link: Link,
        role: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_message: int = DEFAULT_MAX_MESSAGE,
        recorder: Recorder | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.link = link
        self.role = role
        self.timeout = timeout
        self.max_frame = max_frame
        self.max_message = max_message
        self.recorder = recorder
        self.stats = Stats()
        self.phase = "online"
        self.start = time.perf_counter()
        self._seq = 0
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._partial: dict[str, list[Frame]] = {}
        self._partial_size: dict[str, int] = {}
        self._decoder = FrameDecoder(max_frame)
        self._reader: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    # -- sending -----------------------------------------------------------------------------
    async def send_message(self, path: str, tag: str, depth: int, payload: bytes) -> int:
        """Frame and write one message; returns its framing bytes."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise PeerDisconnected("the channel is closed")
        frames = split_message(path, tag, depth, self.phase, payload, self.max_frame)
        wire = b"".join(encode_frame(f) for f in frames)
        await self.link.write(wire)
        return len(wire) - len(payload)

    # -- receiving ---------------------------------------------------------------------------
    def queue(self, path: str) -> asyncio.Queue[Any]:
        q = self._queues.get(path)
        if q is None:
            q = self._queues[path] = asyncio.Queue()
            if self._error is not None:
                q.put_nowait(self._error)
        if self._reader is None and not self._closed:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        return q

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.link.read()
                for frame in self._decoder.feed(data):
                    self._deliver(frame)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            err = (
                exc
                if isinstance(exc, PeerDisconnected | ProtocolError)
                else PeerDisconnected(f"link failed: {exc!r}")
            )
            self.fail(err)

    def _deliver(self, frame: Frame) -> None:
        parts = self._partial.setdefault(frame.path, [])
        if parts and (parts[0].tag != frame.tag or parts[0].depth != frame.depth):
            raise ProtocolError(f"interleaved chunks on channel {frame.path!r}")
        parts.append(frame)
        size = self._partial_size.get(frame.path, 0) + len(frame.chunk)
        if size > self.max_message:
            raise ProtocolError(
                f"message on {frame.path!r} exceeds the maximum of {self.max_message} bytes"
            )
        self._partial_size[frame.path] = size
        if frame.more:
            return
        del self._partial[frame.path], self._partial_size[frame.path]
        payload = b"".join(p.chunk for p in parts) if len(parts) > 1 else frame.chunk
        wire = sum(p.wire for p in parts)
        self.queue(frame.path).put_nowait(
            (frame.tag, frame.depth, frame.phase, payload, wire - len(payload))
        )

    def fail(self, err: BaseException) -> None:
        """Put the session in the failed state: every pending and later receive raises."""
        if self._error is None:
            self._error = err
        for q in self._queues.values():
            q.put_nowait(err)

    def record(self, event: dict[str, Any], payload: bytes) -> None:
        """Hand one message's event (and its payload) to the recorder, if any."""
        if self.recorder is not None:
            self._seq += 1
            event = {
                "seq": self._seq,
                "t": round(time.perf_counter() - self.start, 6),
                "party": self.role,
                **event,
            }
            self.recorder(event, payload)

    async def close(self) -> None:
        """Close the link and stop the reader."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        await self.link.close()
        self.fail(PeerDisconnected("the channel is closed"))


class Channel:
    """A party's view of a session at one fork path. See the module docstring."""

    def __init__(self, session: Session, path: str = "", parent: Channel | None = None) -> None:
        self.session = session
        self.path = path
        self.parent = parent
        self._depth = parent.depth if parent is not None else 0
        self._child_depth = 0

    @property
    def role(self) -> str:
        """``"client"`` or ``"server"``."""
        return self.session.role

    @property
    def peer(self) -> str:
        return "server" if self.role == "client" else "client"

    @property
    def stats(self) -> Stats:
        """The session's accounting (shared by every fork)."""
        return self.session.stats

    @property
    def depth(self) -> int:
        """The deepest message flight this channel (or a finished fork of it) depends on."""
        return max(self._depth, self._child_depth)

    def _direction(self, sending: bool) -> str:
        return "c2s" if (self.role == "client") == sending else "s2c"

    async def send(self, obj: Any, *, tag: str) -> None:
        """Send one message to the peer on this path."""
        payload = encode(obj)
        depth = self.depth + 1
        framing = await self.session.send_message(self.path, tag, depth, payload)
        self._account(tag, self.session.phase, payload, framing, depth, sending=True)

    async def recv(self, *, tag: str, timeout: float | None = None) -> Any:
        """Receive the peer's next message on this path, which must carry ``tag``.

        Raises:
            TagMismatch: the peer sent another tag (the parties are out of step).
            ChannelTimeout: nothing arrived within the deadline.
            PeerDisconnected: the peer closed the connection.
            ProtocolError: the peer sent a malformed frame or message.
        """
        deadline = self.session.timeout if timeout is None else timeout
        queue = self.session.queue(self.path)
        try:
            async with asyncio.timeout(deadline):
                item = await queue.get()
        except TimeoutError:
            raise ChannelTimeout(
                f"{self.role} waited {deadline:g} s for {tag!r} on channel "
                f"{self.path or '(root)'!r}: the {self.peer} sent nothing"
            ) from None
        if isinstance(item, BaseException):
            queue.put_nowait(item)  # keep the session failed for every later receive
            raise item
        got_tag, depth, phase, payload, framing = item
        if got_tag != tag:
            err = TagMismatch(self.path or "(root)", tag, got_tag)
            self.session.fail(err)
            raise err
        self._depth = max(self._depth, depth)
        node = self.parent
        while node is not None:
            node._child_depth = max(node._child_depth, depth)
            node = node.parent
        self._account(tag, phase, payload, framing, depth, sending=False)
        return decode(payload)

    def _account(
        self, tag: str, phase: str, payload: bytes, framing: int, depth: int, sending: bool
    ) -> None:
        direction = self._direction(sending)
        self.session.stats.record(phase, self.path, direction, len(payload), framing, depth)
        self.session.record(
            {
                "dir": direction,
                "path": self.path,
                "tag": tag,
                "bytes": len(payload),
                "framing": framing,
                "round": depth,
                "phase": phase,
            },
            payload,
        )

    def fork(self, name: str) -> Channel:
        """An independent sub-channel at path ``self.path/name`` (its own FIFO).

        Names must be unique among forks of one parent that run at the same time; both parties
        must fork the same names.
        """
        if not name or "/" in name:
            raise ValueError(f"fork name must be non-empty and contain no '/': {name!r}")
        return Channel(self.session, f"{self.path}/{name}" if self.path else name, self)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the messages sent inside the block under phase ``name``."""
        previous = self.session.phase
        self.session.phase = name
        try:
            yield
        finally:
            self.session.phase = previous

    async def close(self) -> None:
        """Close the session (all forks)."""
        await self.session.close()

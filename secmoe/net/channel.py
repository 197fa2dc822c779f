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
from .errors import (
    ChannelTimeout,
    LimitExceeded,
    NetError,
    PeerAborted,
    PeerDisconnected,
    ProtocolError,
    TagMismatch,
    one_line,
    shown,
)
from .framing import DEFAULT_MAX_FRAME, Frame, FrameDecoder, encode_frame, split_message
from .stats import Stats

ROLES = ("client", "server")
DEFAULT_TIMEOUT = 600.0  # seconds a party waits for its peer's next message
DEFAULT_MAX_MESSAGE = 1 << 30  # 1 GiB: the largest message accepted from the peer
DEFAULT_MAX_BUFFERED = 2 << 30  # 2 GiB received but not yet consumed
DEFAULT_MAX_PATHS = 1024  # paths holding data that no local receive has opened yet
HELD_OVERHEAD = 256  # bytes each held frame counts beyond its chunk (bookkeeping objects)
CONTROL_PATH = "/"  # reserved: fork paths never start with "/"
ABORT_TAG = "abort"
ABORT_SECONDS = 2.0  # how long a party tries to deliver its abort frame

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
    """One party's end of a two-party session: link, demultiplexer, stats, phase, limits.

    Memory is bounded whatever the peer sends: one message is at most ``max_message`` bytes,
    all received-but-unconsumed data (queued messages and partial chunked ones, each held
    frame counting its chunk plus :data:`HELD_OVERHEAD`) at most ``max_buffered``, and at most
    ``max_paths`` paths may hold data that no local receive has opened; the frame decoder
    holds at most one frame (``max_frame``) besides. Time is bounded too: every receive by its
    deadline (``timeout``), the wait for the peer by ``idle_timeout`` (no bytes for that long
    while a receive is pending) and the whole session by ``session_timeout``.

    Exceeding a limit fails the session (:class:`LimitExceeded` or :class:`ChannelTimeout`,
    naming the limit): every pending and later receive and send raises it, the buffers are
    dropped, the peer is sent an abort frame with the reason, and the link is closed. A peer's
    abort frame fails this session with :class:`PeerAborted` ("the server failed: …").

    Args:
        link: the transport.
        role: ``"client"`` or ``"server"``.
        timeout: default deadline (s) for every receive.
        max_frame: the largest chunk per frame (larger messages are split).
        max_message: the largest message accepted from the peer (bytes).
        max_buffered: the budget of received-but-unconsumed bytes.
        max_paths: how many paths the peer may fill before this party opens them.
        idle_timeout: fail if the peer sends nothing for this long while a receive waits.
        session_timeout: fail if the session is not over this many seconds after it began.
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
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        max_paths: int = DEFAULT_MAX_PATHS,
        idle_timeout: float | None = None,
        session_timeout: float | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self.link = link
        self.role = role
        self.peer = "server" if role == "client" else "client"
        self.timeout = timeout
        self.max_frame = max_frame
        self.max_message = max_message
        self.max_buffered = max_buffered
        self.max_paths = max_paths
        self.recorder = recorder
        self.stats = Stats()
        self.phase = "online"
        self.start = time.perf_counter()
        self.buffered = 0  # bytes held (see HELD_OVERHEAD) and not yet consumed
        self.peak_buffered = 0
        self.largest_message = 0  # bytes of the largest message received so far
        self._seq = 0
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._opened: set[str] = set()
        self._unopened: set[str] = set()
        self._partial: dict[str, list[Frame]] = {}
        self._partial_size: dict[str, int] = {}
        self._decoder = FrameDecoder(max_frame)
        self._reader: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._told = False
        # deadlines: a single timer, armed at the earliest one and re-armed lazily
        self.idle_timeout: float | None = None
        self._deadline: float | None = None
        self._deadline_seconds = 0.0
        self._waiting: dict[tuple[str, str], int] = {}
        self._idle_since = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self.set_idle_timeout(idle_timeout)
        self.set_deadline(session_timeout)

    @property
    def error(self) -> BaseException | None:
        """Why the session failed, or ``None``."""
        return self._error

    # -- deadlines ---------------------------------------------------------------------------
    def set_idle_timeout(self, seconds: float | None) -> None:
        """Fail the session if the peer sends nothing for ``seconds`` while a receive waits
        (``None``: no idle limit; each receive still has its own deadline)."""
        self.idle_timeout = seconds
        self._rearm()

    def set_deadline(self, seconds: float | None) -> None:
        """Fail the session unless it is over ``seconds`` from now (``None``: no deadline)."""
        self._deadline = None if seconds is None else time.monotonic() + seconds
        self._deadline_seconds = seconds or 0.0
        self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._arm()

    def _arm(self) -> None:
        """Arm the timer at the earliest deadline (unless it is armed earlier already)."""
        if self._error is not None or self._closed:
            return
        due = [] if self._deadline is None else [self._deadline]
        if self.idle_timeout is not None and self._waiting:
            due.append(self._idle_since + self.idle_timeout)
        if not due or (self._timer is not None and self._timer_due <= min(due)):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # constructed outside the event loop: armed at the first receive
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = min(due)
        self._timer = loop.call_later(max(0.0, self._timer_due - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._error is not None:
            return
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            self._shutdown(
                ChannelTimeout(f"the session exceeded its deadline of {self._deadline_seconds:g} s")
            )
        elif (
            self.idle_timeout is not None
            and self._waiting
            and now - self._idle_since >= self.idle_timeout
        ):
            path, tag = next(iter(self._waiting))
            self._shutdown(
                ChannelTimeout(
                    f"the {self.peer} sent nothing for {self.idle_timeout:g} s while the "
                    f"{self.role} waited for {tag!r} on channel {path or '(root)'!r}"
                )
            )
        else:
            self._arm()

    # -- sending -----------------------------------------------------------------------------
    async def send_message(self, path: str, tag: str, depth: int, payload: bytes) -> int:
        """Frame and write one message; returns its framing bytes."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._expire()
        if self._error is not None:
            raise self._error
        if self._closed:
            raise PeerDisconnected("the channel is closed")
        frames = split_message(path, tag, depth, self.phase, payload, self.max_frame)
        wire = b"".join(encode_frame(f) for f in frames)
        try:
            await self.link.write(wire)
        except NetError:
            if self._error is not None:  # the link was closed because the session failed
                raise self._error from None
            raise
        return len(wire) - len(payload)

    # -- receiving ---------------------------------------------------------------------------
    def _open(self, path: str) -> asyncio.Queue[Any]:
        """The FIFO of ``path`` (opened by this party: no longer counts against max_paths)."""
        q = self._queue(path)
        self._opened.add(path)
        self._unopened.discard(path)
        if self._reader is None and not self._closed:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        return q

    def _queue(self, path: str) -> asyncio.Queue[Any]:
        q = self._queues.get(path)
        if q is None:
            q = self._queues[path] = asyncio.Queue()
            if self._error is not None:
                q.put_nowait(self._error)
        return q

    async def receive(
        self, path: str, tag: str, timeout: float | None = None
    ) -> tuple[Any, int, str, bytes, int]:
        """The peer's next message on ``path``, which must carry ``tag``.

        Returns ``(value, depth, phase, payload, framing)``: the decoded message, its round
        depth and phase, its payload bytes and its framing bytes. Raises as
        :meth:`Channel.recv` does.
        """
        deadline = self.timeout if timeout is None else timeout
        queue = self._open(path)
        key = (path, tag)
        if not self._waiting:
            self._idle_since = time.monotonic()
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self._arm()
        try:
            async with asyncio.timeout(deadline):
                item = await queue.get()
        except TimeoutError:
            raise ChannelTimeout(
                f"{self.role} waited {deadline:g} s for {tag!r} on channel "
                f"{path or '(root)'!r}: the {self.peer} sent nothing"
            ) from None
        finally:
            if self._waiting[key] == 1:
                del self._waiting[key]
            else:
                self._waiting[key] -= 1
        if isinstance(item, BaseException):
            queue.put_nowait(item)  # keep the session failed for every later receive
            raise item
        got_tag, depth, phase, payload, framing, held = item
        self.buffered -= held
        if got_tag != tag:
            err = TagMismatch(path or "(root)", tag, got_tag)
            self._shutdown(err)
            raise err
        try:
            value = decode(payload)
        except ProtocolError as exc:
            err = ProtocolError(f"{exc} (tag {tag!r} on channel {path or '(root)'!r})")
            self._shutdown(err)
            raise err from None
        return value, depth, phase, payload, framing

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.link.read()
                self._idle_since = time.monotonic()
                for frame in self._decoder.feed(data):
                    self._deliver(frame)
        except asyncio.CancelledError:
            raise
        except PeerAborted as exc:
            self._drop_buffers()
            self.fail(exc)
        except PeerDisconnected as exc:
            self.fail(exc)
        except ProtocolError as exc:
            self._shutdown(exc)
        except BaseException as exc:
            self.fail(PeerDisconnected(f"link failed: {exc!r}"))

    def _deliver(self, frame: Frame) -> None:
        path = frame.path
        if path.startswith(CONTROL_PATH):
            raise self._control_error(frame)
        if path not in self._opened and path not in self._unopened:
            if len(self._unopened) >= self.max_paths:
                raise LimitExceeded(
                    f"the {self.peer} sent to more than {self.max_paths} channels this party "
                    f"has not opened (the last: {shown(path)})"
                )
            self._unopened.add(path)
        parts = self._partial.setdefault(path, [])
        if parts and (parts[0].tag != frame.tag or parts[0].depth != frame.depth):
            raise ProtocolError(f"interleaved chunks on channel {shown(path)}")
        size = self._partial_size.get(path, 0) + len(frame.chunk)
        if size > self.max_message:
            raise LimitExceeded(
                f"message {shown(frame.tag)} on channel {shown(path or '(root)')} exceeds "
                f"the maximum of {self.max_message} bytes"
            )
        held = len(frame.chunk) + HELD_OVERHEAD
        if self.buffered + held > self.max_buffered:
            raise LimitExceeded(
                f"the {self.peer} sent more than {self.max_buffered} bytes that this party "
                "has not consumed (buffer budget)"
            )
        self.buffered += held
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        parts.append(frame)
        self._partial_size[path] = size
        if frame.more:
            return
        del self._partial[path], self._partial_size[path]
        self.largest_message = max(self.largest_message, size)
        payload = b"".join(p.chunk for p in parts) if len(parts) > 1 else frame.chunk
        wire = sum(p.wire for p in parts)
        self._queue(path).put_nowait(
            (
                frame.tag,
                frame.depth,
                frame.phase,
                payload,
                wire - len(payload),
                size + HELD_OVERHEAD * len(parts),
            )
        )

    def _control_error(self, frame: Frame) -> NetError:
        """What a frame on the reserved control path means: only the peer's abort is defined."""
        if frame.path != CONTROL_PATH or frame.tag != ABORT_TAG or frame.more:
            return ProtocolError(
                f"frame {shown(frame.tag)} on the reserved channel {shown(frame.path)}"
            )
        try:
            reason = decode(frame.chunk)
        except ProtocolError:
            reason = None
        if not isinstance(reason, str):
            return ProtocolError(f"the {self.peer}'s abort frame carries no reason")
        return PeerAborted(f"the {self.peer} failed: {one_line(reason) or 'no reason given'}")

    def fail(self, err: BaseException) -> None:
        """Put the session in the failed state: every pending and later receive raises.

        The error is kept without its traceback and chained exceptions: their frames would
        keep what the peer sent (up to a whole message) alive as long as the error is.
        """
        err.__traceback__ = err.__cause__ = err.__context__ = None
        if self._error is None:
            self._error = err
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for q in self._queues.values():
            q.put_nowait(err)

    def _drop_buffers(self) -> None:
        """Free what the peer sent and nobody will consume (the session is over)."""
        for q in self._queues.values():
            while not q.empty():
                q.get_nowait()
        self._partial.clear()
        self._partial_size.clear()
        self.buffered = 0

    def _shutdown(self, err: BaseException) -> None:
        """Fail the session for a reason found here; tell the peer and close (in a task)."""
        self._drop_buffers()
        self.fail(err)
        if self._closer is None:
            reason = str(self._error)
            self._closer = asyncio.get_running_loop().create_task(self._tell_and_close(reason))

    async def _tell_and_close(self, reason: str) -> None:
        """Best effort, at most ABORT_SECONDS: send the peer an abort frame, then close."""
        if not self._told and not isinstance(self._error, PeerDisconnected):
            self._told = True
            frame = Frame(CONTROL_PATH, ABORT_TAG, 0, ABORT_TAG, False, encode(one_line(reason)))
            with contextlib.suppress(Exception):
                async with asyncio.timeout(ABORT_SECONDS):
                    await self.link.write(encode_frame(frame))
        with contextlib.suppress(Exception):
            await self.link.close()

    async def abort(self, reason: str) -> None:
        """End the session because this party failed: the peer's receives raise
        :class:`PeerAborted` with ``reason`` (one line). Best effort, never raises."""
        if self._error is None:
            self._drop_buffers()
            self.fail(NetError(f"this party aborted the session: {one_line(reason)}"))
            await self._tell_and_close(reason)
        await self.close()

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
        """Close the link and stop the reader (and the timer)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._closer is not None:
            with contextlib.suppress(Exception):
                await self._closer
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
            PeerDisconnected: the peer closed the connection (:class:`PeerAborted`: it failed
                and said why).
            ProtocolError: the peer sent a malformed frame or message
                (:class:`LimitExceeded`: beyond a limit of the session).
        """
        value, depth, phase, payload, framing = await self.session.receive(self.path, tag, timeout)
        self._depth = max(self._depth, depth)
        node = self.parent
        while node is not None:
            node._child_depth = max(node._child_depth, depth)
            node = node.parent
        self._account(tag, phase, payload, framing, depth, sending=False)
        return value

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

    async def abort(self, reason: str) -> None:
        """End the session (all forks) because this party failed; see :meth:`Session.abort`."""
        await self.session.abort(reason)

    async def close(self) -> None:
        """Close the session (all forks)."""
        await self.session.close()

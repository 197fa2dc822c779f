"""TCP transport: asyncio streams, a checked handshake, optional TLS, deadlines everywhere.

Connection set-up (before any protocol message)::

    client                                   server
      │── hello {version, role, params, session} ──▶│  checks version, roles, params
      │◀── hello {…, ok, error} ────────────────────│  (refusal names what differs)

A server with a limit of concurrent sessions (``listen(max_sessions=K, max_queue=Q)``) holds
back its hello from a client with a good hello while K sessions run: it sends instead, at
least every :data:`QUEUE_NOTE_INTERVAL` seconds, a note ``{magic, queue: n, active: K}`` (n
clients ahead of it), and its hello when a session ends; beyond Q waiting clients it refuses
(a hello with ``error``: the server is busy). A waiting client must send nothing: a byte or
its leaving ends its wait. ``params`` is a small dict of the public parameters both parties
must share (ring, model digest, …): a mismatch is reported key by key. The session id is
chosen by the client unless the server requires a given one. Handshake bytes are not part
of the session's stats.

After the handshake the stream carries frames (:mod:`secmoe.net.framing`); an oversized or
malformed frame fails the session with a :class:`ProtocolError` and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import PROTOCOL_VERSION
from .channel import Channel, Link, Session
from .codec import decode, encode
from .errors import (
    ChannelTimeout,
    HandshakeError,
    NetError,
    PeerDisconnected,
    ProtocolError,
    one_line,
    shown,
)
from .framing import LEN, Frame, check_frame_length, encode_frame, parse_body

MAGIC = "secmoe"
READ_SIZE = 1 << 20
HANDSHAKE_MAX = 1 << 16
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Seconds between a waiting client's queue notes (well within its handshake timeout).
QUEUE_NOTE_INTERVAL = 2.0
#: Connections a listener handshakes at once; more are closed at once (an unbounded number
#: of half-open handshakes would hold memory and file descriptors).
DEFAULT_MAX_PENDING = 64


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings: this party's certificate and key, and a CA to verify the peer.

    A server with ``ca`` requires client certificates signed by it (mutual authentication). A
    client with ``ca`` verifies the server against it (and ``server_hostname``, default the
    host it connects to); without ``ca`` a client uses the system's trust store.
    """

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    server_hostname: str | None = None

    def server_context(self) -> ssl.SSLContext:
        if not (self.cert and self.key):
            raise ValueError("a TLS server needs --tls-cert and --tls-key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if self.ca:
            ctx.load_verify_locations(self.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert and self.key:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


class StreamLink(Link):
    """A :class:`Link` over an asyncio stream pair; writes wait at most ``write_timeout``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, write_timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.write_timeout = write_timeout
        self._closing: asyncio.Future[None] | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise PeerDisconnected("the connection is closed")
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise ChannelTimeout(
                f"the peer did not read for {self.write_timeout:g} s (send buffer full)"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise PeerDisconnected(f"connection lost while sending: {exc}") from exc

    async def read(self) -> bytes:
        try:
            data = await self.reader.read(READ_SIZE)
        except (ConnectionError, OSError) as exc:
            raise PeerDisconnected(f"connection lost: {exc}") from exc
        if not data:
            raise PeerDisconnected("the peer closed the connection")
        return data

    async def close(self) -> None:
        """Close after flushing what is buffered; a peer that does not read for 2 s gets the
        connection reset instead (a pending write then ends at once). Done once, however many
        callers (the one closing task is shielded: a cancelled caller cannot break it)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except Exception:
            pass


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6). Raises ``ValueError``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9000), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _diff(role: str, ours: dict[str, Any], theirs: dict[Any, Any]) -> str:
    peer = "server" if role == "client" else "client"
    keys = sorted(set(ours) | set(theirs), key=repr)
    return one_line(
        ", ".join(
            f"{k}: {role}={shown(ours.get(k), 60)} {peer}={shown(theirs.get(k), 60)}"
            for k in keys
            if ours.get(k) != theirs.get(k)
        )
    )


def _hello(role: str, params: dict[str, Any], session: str) -> dict[str, Any]:
    return {
        "magic": MAGIC,
        "version": PROTOCOL_VERSION,
        "role": role,
        "params": params,
        "session": session,
    }


def check_hello(hello: Any, role: str, params: dict[str, Any], session: str | None) -> str:
    """Validate a peer's hello; return the session id. Raises :class:`HandshakeError`."""
    if not isinstance(hello, dict) or hello.get("magic") != MAGIC:
        raise HandshakeError("the peer is not a secmoe party (bad handshake)")
    if hello.get("version") != PROTOCOL_VERSION:
        raise HandshakeError(
            f"protocol version mismatch: ours {PROTOCOL_VERSION}, "
            f"peer {shown(hello.get('version'))}"
        )
    peer_role = "server" if role == "client" else "client"
    if hello.get("role") == role:
        raise HandshakeError(f"both parties claim the role {role!r}")
    if hello.get("role") != peer_role:
        raise HandshakeError(f"the peer claims the role {shown(hello.get('role'))}")
    theirs = hello.get("params")
    if not isinstance(theirs, dict):
        raise HandshakeError(f"the peer's parameters are not a map: {shown(theirs)}")
    if theirs != params:
        raise HandshakeError(f"parameter mismatch: {_diff(role, params, theirs)}")
    sid = hello.get("session")
    if not isinstance(sid, str) or not sid:
        raise HandshakeError("the peer sent no session id")
    if session is not None and sid != session:
        raise HandshakeError(f"session id mismatch: ours {session!r}, peer {shown(sid)}")
    return sid


async def _send_hello(writer: asyncio.StreamWriter, hello: dict[str, Any]) -> None:
    writer.write(encode_frame(Frame("", "hello", 0, "handshake", False, encode(hello))))
    await writer.drain()


async def _recv_hello(reader: asyncio.StreamReader) -> Any:
    """Read exactly one frame (the peer's hello) and decode it.

    Only the hello's own bytes are consumed: whatever the peer sent right after it (the
    server's first session message, say) stays in the stream for the session's decoder.
    """
    try:
        (n,) = LEN.unpack(await reader.readexactly(LEN.size))
        check_frame_length(n, HANDSHAKE_MAX)
        frame = parse_body(await reader.readexactly(n))
    except asyncio.IncompleteReadError:
        raise PeerDisconnected("the peer closed the connection during the handshake") from None
    except ProtocolError as exc:
        raise HandshakeError(f"the peer is not a secmoe party ({exc})") from None
    if frame.tag != "hello":
        raise HandshakeError("the peer is not a secmoe party (bad handshake)")
    try:
        return decode(frame.chunk)
    except ProtocolError as exc:
        raise HandshakeError(f"the peer is not a secmoe party ({exc})") from None


def _is_queue_note(reply: Any) -> bool:
    """Whether a server's handshake frame is a queue note (not its hello)."""
    return isinstance(reply, dict) and "queue" in reply and not reply.get("error")


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    role: str,
    params: dict[str, Any],
    session: str | None,
    timeout: float,
    on_wait: Callable[[str], None] | None = None,
    wait: float = 600.0,
    admit: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """The hello exchange within ``timeout`` (a client: per frame, waiting at most ``wait``
    seconds in a busy server's queue, ``on_wait`` told each note; a server: ``admit`` waits
    for a session slot, sending notes, after the client's hello is checked)."""
    wait_until = asyncio.get_running_loop().time() + wait
    try:
        async with asyncio.timeout(timeout) as limit:
            if role == "client":
                sid = session or os.urandom(16).hex()
                await _send_hello(writer, _hello(role, params, sid))
                reply = await _recv_hello(reader)
                while _is_queue_note(reply):  # the server is busy: wait, told our place
                    if on_wait is not None:
                        on_wait(
                            f"server busy: {shown(reply.get('active'))} sessions running, "
                            f"{shown(reply.get('queue'))} ahead of this client in the queue"
                        )
                    loop = asyncio.get_running_loop()
                    budget = min(timeout, max(0.0, wait_until - loop.time()))
                    if budget <= 0:
                        raise HandshakeError(f"still queued at the busy server after {wait:g} s")
                    limit.reschedule(loop.time() + budget)
                    reply = await _recv_hello(reader)
                if isinstance(reply, dict) and reply.get("error"):
                    reason = one_line(str(reply["error"]))
                    raise HandshakeError(f"the server refused the session: {reason}")
                check_hello(reply, role, params, sid)
                return sid
            hello = await _recv_hello(reader)
            try:
                sid = check_hello(hello, role, params, session)
                if admit is not None:
                    limit.reschedule(None)  # the queue has its own deadlines (the notes)
                    await admit()
            except HandshakeError as exc:  # not a secmoe party, or the queue is full
                with contextlib.suppress(Exception):
                    await _send_hello(writer, {**_hello(role, params, ""), "error": str(exc)})
                raise
            await _send_hello(writer, _hello(role, params, sid))
            return sid
    except TimeoutError:
        raise HandshakeError(f"the peer did not complete the handshake in {timeout:g} s") from None
    except (ConnectionError, OSError) as exc:
        raise PeerDisconnected(f"connection lost during the handshake: {exc}") from exc


async def _open_session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    role: str,
    params: dict[str, Any],
    session: str | None,
    handshake_timeout: float,
    session_kw: dict[str, Any],
    **wait: Any,
) -> Channel:
    try:
        await _handshake(reader, writer, role, params, session, handshake_timeout, **wait)
    except BaseException:
        writer.close()
        raise
    link = StreamLink(reader, writer, session_kw.get("timeout", 600.0))
    return Channel(Session(link, role, **session_kw))


async def connect(
    host: str,
    port: int,
    *,
    params: dict[str, Any] | None = None,
    session: str | None = None,
    tls: TLSConfig | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    on_wait: Callable[[str], None] | None = None,
    **session_kw: Any,
) -> Channel:
    """Connect to a listening server as the client, retrying until ``connect_timeout``. A
    busy server queues the client: ``on_wait`` gets each note ("server busy: …, n ahead …");
    the wait is bounded by the session's ``timeout`` (default 600 s).

    Raises:
        NetError: the host cannot be resolved, or nobody accepted before the deadline.
        HandshakeError: the server is not a compatible secmoe party, or refused (busy).
    """
    ssl_ctx = tls.client_context() if tls else None
    hostname = (tls.server_hostname or host) if tls else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_timeout
    delay = 0.05
    while True:
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ssl_ctx, server_hostname=hostname
                )
            break
        except socket.gaierror as exc:
            raise NetError(f"cannot resolve host {host!r}: {exc.strerror}") from None
        except ssl.SSLError as exc:
            raise HandshakeError(f"TLS handshake with {host}:{port} failed: {exc}") from None
        except (TimeoutError, OSError) as exc:
            if loop.time() + delay >= deadline:
                reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or exc
                raise NetError(
                    f"cannot connect to {host}:{port} within {connect_timeout:g} s ({reason})"
                ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    return await _open_session(
        reader,
        writer,
        "client",
        params or {},
        session,
        handshake_timeout,
        session_kw,
        on_wait=on_wait,
        wait=session_kw.get("timeout", 600.0),
    )


class Listener:
    """A listening socket that hands out one server-side :class:`Channel` per connection.

    With ``max_sessions`` K, at most K channels are out at once: each ends with
    :meth:`release`; a client that arrives meanwhile waits in a queue of at most
    ``max_queue`` (told its place, see the module's docstring), and one beyond it is refused
    with the reason. At most ``max_pending`` connections are in their handshake at once; more
    are closed at once. Failed handshakes are handed out by :meth:`accept` as errors (at most
    ``max_pending`` kept)."""

    def __init__(
        self, max_sessions: int | None = None, max_queue: int = 0, max_pending: int = 0
    ) -> None:
        self._server: asyncio.base_events.Server | None = None
        self.max_sessions, self.max_queue, self.max_pending = max_sessions, max_queue, max_pending
        self.active = 0  # channels handed out and not released
        self.pending = 0  # connections in their handshake (before the queue)
        self._queue: asyncio.Queue[Channel | NetError] = asyncio.Queue()
        self._errors = 0  # failed handshakes in the queue
        self._waiting: list[asyncio.Future[None]] = []

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def waiting(self) -> int:
        """Clients in the queue."""
        return len(self._waiting)

    async def accept(self, timeout: float | None = None) -> Channel:
        """The next connected, handshaken session. Raises ``HandshakeError`` (or another
        :class:`NetError`) for a connection that failed its handshake."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise ChannelTimeout(f"no client connected within {timeout:g} s") from None
        if isinstance(item, NetError):
            self._errors -= 1
            raise item
        return item

    def release(self) -> None:
        """A channel's session has ended: its slot goes to the first waiting client."""
        self.active -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiting and (self.max_sessions is None or self.active < self.max_sessions):
            fut = self._waiting.pop(0)
            if not fut.done():
                fut.set_result(None)
                self.active += 1

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Wait for a session slot, telling the client its place in the queue; refuse it if
        the queue is full. The slot is this connection's once this returns."""
        free = self.max_sessions is None or self.active < self.max_sessions
        if free and not self._waiting:
            self.active += 1
            return
        if len(self._waiting) >= self.max_queue:
            raise HandshakeError(
                f"server busy: {self.active} sessions running and {len(self._waiting)} clients "
                "waiting, its queue is full; try again later"
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        left = asyncio.ensure_future(reader.read(1))  # a waiting client must send nothing
        try:
            while not fut.done():
                note = {"magic": MAGIC, "queue": self._waiting.index(fut), "active": self.active}
                await _send_hello(writer, note)
                await asyncio.wait(
                    [fut, left], timeout=QUEUE_NOTE_INTERVAL, return_when=asyncio.FIRST_COMPLETED
                )
                if left.done() and not fut.done():
                    raise PeerDisconnected("the client left the queue")
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # granted as it failed: the slot goes on
            elif fut in self._waiting:
                self._waiting.remove(fut)
            fut.cancel()
            raise
        finally:
            left.cancel()
        if fut.cancelled():  # the listener closed
            raise HandshakeError("the server stopped before a session was free")
        if left.done() and not left.cancelled():
            self.release()
            raise PeerDisconnected("the client left the queue")

    def _fail(self, exc: NetError) -> None:
        """Hand out a failed handshake (at most ``max_pending`` kept; more are dropped)."""
        if self._errors < max(1, self.max_pending):
            self._errors += 1
            self._queue.put_nowait(exc)

    async def close(self) -> None:
        assert self._server is not None
        """Stop listening; waiting clients are told, handshaken channels nobody accepted are
        aborted with the reason."""
        self._server.close()
        for fut in self._waiting:
            fut.cancel()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Channel):
                await item.abort("the server stopped before this session started")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await self._server.wait_closed()


async def listen(
    host: str,
    port: int,
    *,
    params: dict[str, Any] | None = None,
    session: str | None = None,
    tls: TLSConfig | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_sessions: int | None = None,
    max_queue: int = 0,
    max_pending: int = DEFAULT_MAX_PENDING,
    **session_kw: Any,
) -> Listener:
    """Listen on ``host:port`` as the server (see :class:`Listener` for ``max_sessions``,
    ``max_queue``, ``max_pending``). Raises :class:`NetError` if the port is taken."""
    ssl_ctx = tls.server_context() if tls else None
    lst = Listener(max_sessions, max_queue, max_pending)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if lst.pending >= max_pending:
            writer.transport.abort()
            lst._fail(NetError(f"more than {max_pending} connections in their handshake"))
            return
        lst.pending += 1
        counted, admitted = True, False

        async def admit() -> None:
            nonlocal counted, admitted
            lst.pending, counted = lst.pending - 1, False
            await lst._admit(reader, writer)
            admitted = True

        try:
            ch = await _open_session(
                reader,
                writer,
                "server",
                params or {},
                session,
                handshake_timeout,
                session_kw,
                admit=admit,
            )
        except (NetError, ssl.SSLError, OSError) as exc:
            if admitted:
                lst.release()
            lst._fail(exc if isinstance(exc, NetError) else HandshakeError(str(exc)))
            return
        except Exception as exc:  # a hello nobody foresaw: still only that connection fails
            if admitted:
                lst.release()
            reason = one_line(f"{type(exc).__name__}: {exc}", 200)
            lst._fail(HandshakeError(f"bad handshake ({reason})"))
            return
        finally:
            if counted:
                lst.pending -= 1
        lst._queue.put_nowait(ch)

    try:
        lst._server = await asyncio.start_server(
            on_connect,
            host,
            port,
            ssl=ssl_ctx,
            ssl_handshake_timeout=handshake_timeout if ssl_ctx else None,
            backlog=max_pending,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise NetError(f"cannot listen on {host}:{port}: address already in use") from None
        raise NetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return lst


async def accept_one(
    host: str, port: int, *, accept_timeout: float | None = None, **kw: Any
) -> Channel:
    """Listen, accept exactly one session, stop listening, and return its channel."""
    listener = await listen(host, port, **kw)
    try:
        return await listener.accept(accept_timeout)
    finally:
        await listener.close()

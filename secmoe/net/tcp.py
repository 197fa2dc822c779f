"""TCP transport: asyncio streams, a checked handshake, optional TLS, deadlines everywhere.

Connection set-up (before any protocol message)::

    client                                   server
      │── hello {version, role, params, session} ──▶│  checks version, roles, params
      │◀── hello {…, ok, error} ────────────────────│  (refusal names what differs)

``params`` is a small dict of the public parameters both parties must share (ring, model
digest, …): a mismatch is reported key by key. The session id is chosen by the client unless
the server requires a given one. Handshake bytes are not part of the session's stats.

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


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    role: str,
    params: dict[str, Any],
    session: str | None,
    timeout: float,
) -> str:
    try:
        async with asyncio.timeout(timeout):
            if role == "client":
                sid = session or os.urandom(16).hex()
                await _send_hello(writer, _hello(role, params, sid))
                reply = await _recv_hello(reader)
                if isinstance(reply, dict) and reply.get("error"):
                    reason = one_line(str(reply["error"]))
                    raise HandshakeError(f"the server refused the session: {reason}")
                check_hello(reply, role, params, sid)
                return sid
            hello = await _recv_hello(reader)
            try:
                sid = check_hello(hello, role, params, session)
            except HandshakeError as exc:
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
) -> Channel:
    try:
        await _handshake(reader, writer, role, params, session, handshake_timeout)
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
    **session_kw: Any,
) -> Channel:
    """Connect to a listening server as the client, retrying until ``connect_timeout``.

    Raises:
        NetError: the host cannot be resolved, or nobody accepted before the deadline.
        HandshakeError: the server is not a compatible secmoe party.
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
        reader, writer, "client", params or {}, session, handshake_timeout, session_kw
    )


SessionHandler = Callable[[Channel], Awaitable[None]]


class Listener:
    """A listening socket that hands out one server-side :class:`Channel` per connection."""

    def __init__(self, server: asyncio.base_events.Server, queue: asyncio.Queue[Any]) -> None:
        self._server = server
        self._queue = queue

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.sockets[0].getsockname()[1]

    async def accept(self, timeout: float | None = None) -> Channel:
        """The next connected, handshaken session. Raises ``HandshakeError`` for a bad peer."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise ChannelTimeout(f"no client connected within {timeout:g} s") from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        self._server.close()
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
    **session_kw: Any,
) -> Listener:
    """Listen on ``host:port`` as the server. Raises :class:`NetError` if the port is taken."""
    ssl_ctx = tls.server_context() if tls else None
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ch = await _open_session(
                reader, writer, "server", params or {}, session, handshake_timeout, session_kw
            )
        except (NetError, ssl.SSLError, OSError) as exc:
            queue.put_nowait(exc if isinstance(exc, NetError) else HandshakeError(str(exc)))
            return
        except Exception as exc:  # a hello nobody foresaw: still only that connection fails
            reason = one_line(f"{type(exc).__name__}: {exc}", 200)
            queue.put_nowait(HandshakeError(f"bad handshake ({reason})"))
            return
        queue.put_nowait(ch)

    try:
        server = await asyncio.start_server(
            on_connect,
            host,
            port,
            ssl=ssl_ctx,
            ssl_handshake_timeout=handshake_timeout if ssl_ctx else None,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise NetError(f"cannot listen on {host}:{port}: address already in use") from None
        raise NetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return Listener(server, queue)


async def accept_one(
    host: str, port: int, *, accept_timeout: float | None = None, **kw: Any
) -> Channel:
    """Listen, accept exactly one session, stop listening, and return its channel."""
    listener = await listen(host, port, **kw)
    try:
        return await listener.accept(accept_timeout)
    finally:
        await listener.close()

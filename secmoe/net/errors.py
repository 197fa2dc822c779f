"""Errors raised by the net layer. All derive from :class:`NetError`."""

from __future__ import annotations

REASON_MAX = 500  # characters of a reason sent to the peer or shown from it


def one_line(text: str, limit: int = REASON_MAX) -> str:
    """``text`` as one printable line of at most ``limit`` characters (peer-supplied text is
    shown only through this: no newlines or terminal escapes reach a log)."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def shown(value: object, limit: int = 120) -> str:
    """A peer-supplied value (path, tag, header, request field) as it appears in an error: its
    repr, clipped; an integer too large to print usefully by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return one_line(repr(value), limit)


def quoted(value: object) -> str:
    """A (possibly hostile) request value as quoted in a refusal: :func:`shown`, kept short."""
    return shown(value, 40)


_KINDS = {  # msgpack's errors, some of which carry no text
    "ExtraData": "extra bytes after the message",
    "FormatError": "not msgpack (a reserved byte)",
    "StackError": "nested too deeply",
}


def describe(exc: BaseException) -> str:
    """A non-empty one-line description of a decoding error (its kind and its text)."""
    name = type(exc).__name__
    text = one_line(str(exc), 200)
    kind = _KINDS.get(name)
    if kind is None:
        return text or name
    return f"{kind} ({text})" if text else f"{kind} ({name})"


class NetError(Exception):
    """Base class of every channel/transport error."""


class ProtocolError(NetError):
    """The peer sent something that violates the wire protocol (bad frame, bad handshake)."""


class TagMismatch(ProtocolError):
    """The received message's tag is not the one this party expected: the parties desynced."""

    def __init__(self, path: str, expected: str, received: str) -> None:
        super().__init__(
            f"tag mismatch on channel {shown(path)}: this party expected {expected!r}, "
            f"the peer sent {shown(received)}"
        )
        self.path = path
        self.expected = expected
        self.received = received


class LimitExceeded(ProtocolError):
    """The peer exceeded one of the session's limits (message size, buffer budget, paths)."""


class PeerDisconnected(NetError):
    """The peer closed the connection (or the link broke) while we were waiting for it."""


class PeerAborted(PeerDisconnected):
    """The peer failed and said why before closing: "the server failed: <reason>"."""


class ChannelTimeout(NetError, TimeoutError):
    """A wait on the peer exceeded its deadline."""


class HandshakeError(ProtocolError):
    """The two parties disagree on version, parameters, session or roles."""


class PartyError(Exception):
    """A two-party run failed; the message names the party (and the other's state)."""

"""Errors raised by the net layer. All derive from :class:`NetError`."""

from __future__ import annotations


class NetError(Exception):
    """Base class of every channel/transport error."""


class ProtocolError(NetError):
    """The peer sent something that violates the wire protocol (bad frame, bad handshake)."""


class TagMismatch(ProtocolError):
    """The received message's tag is not the one this party expected: the parties desynced."""

    def __init__(self, path: str, expected: str, received: str) -> None:
        super().__init__(
            f"tag mismatch on channel {path!r}: this party expected {expected!r}, "
            f"the peer sent {received!r}"
        )
        self.path = path
        self.expected = expected
        self.received = received


class PeerDisconnected(NetError):
    """The peer closed the connection (or the link broke) while we were waiting for it."""


class ChannelTimeout(NetError, TimeoutError):
    """A wait on the peer exceeded its deadline."""


class HandshakeError(ProtocolError):
    """The two parties disagree on version, parameters, session or roles."""


class PartyError(Exception):
    """A two-party run failed; the message names the party (and the other's state)."""

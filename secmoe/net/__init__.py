"""The net layer: bytes between two parties (channel, codec, transports, accounting)."""

from .channel import DEFAULT_TIMEOUT, Channel, Link, Session
from .errors import (
    ChannelTimeout,
    HandshakeError,
    LimitExceeded,
    NetError,
    PartyError,
    PeerAborted,
    PeerDisconnected,
    ProtocolError,
    TagMismatch,
)
from .memory import memory_pair
from .run import run_local, run_pair
from .stats import Counter, Delta, Stats

__all__ = [
    "DEFAULT_TIMEOUT",
    "Channel",
    "ChannelTimeout",
    "Counter",
    "Delta",
    "HandshakeError",
    "LimitExceeded",
    "Link",
    "NetError",
    "PartyError",
    "PeerAborted",
    "PeerDisconnected",
    "ProtocolError",
    "Session",
    "Stats",
    "TagMismatch",
    "memory_pair",
    "run_local",
    "run_pair",
]

"""Frames: how messages are cut and labelled on the wire.

A frame is ``u32 length ‖ u16 header length ‖ msgpack header ‖ chunk``, where the header is
``[path, tag, depth, phase, more]``. A message larger than the maximum frame size is sent as
several frames (``more`` = 1 on all but the last), so large arrays are chunked, not refused.
Everything but the chunk is *framing*; the chunks of one message add up to its payload.

:class:`FrameDecoder` reassembles frames from a byte stream fed in arbitrary fragments.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

from .errors import ProtocolError, describe, shown

LEN = struct.Struct(">I")
HLEN = struct.Struct(">H")
DEFAULT_MAX_FRAME = 16 << 20  # 16 MiB of chunk per frame
MAX_HEADER = 4096


@dataclass(frozen=True)
class Frame:
    """One frame: its labels and its chunk of the message payload."""

    path: str
    tag: str
    depth: int
    phase: str
    more: bool
    chunk: bytes
    wire: int = 0  # bytes this frame took on the wire (set when parsed)


def encode_frame(frame: Frame) -> bytes:
    """Serialize one frame, length prefix included."""
    head = msgpack.packb([frame.path, frame.tag, frame.depth, frame.phase, int(frame.more)])
    if len(head) > MAX_HEADER:
        raise ValueError("frame header too long (path or tag too long)")
    body_len = HLEN.size + len(head) + len(frame.chunk)
    return LEN.pack(body_len) + HLEN.pack(len(head)) + head + frame.chunk


def split_message(
    path: str, tag: str, depth: int, phase: str, payload: bytes, max_frame: int
) -> list[Frame]:
    """Cut one message's payload into frames of at most ``max_frame`` chunk bytes."""
    if not payload:
        return [Frame(path, tag, depth, phase, False, b"")]
    view = memoryview(payload)
    starts = range(0, len(payload), max_frame)
    last = starts[-1]
    return [
        Frame(path, tag, depth, phase, s != last, bytes(view[s : s + max_frame])) for s in starts
    ]


def parse_body(body: bytes | memoryview) -> Frame:
    """Parse a frame body (without its length prefix). Raises :class:`ProtocolError`."""
    view = memoryview(body)
    if len(view) < HLEN.size:
        raise ProtocolError("frame too short for its header")
    (hlen,) = HLEN.unpack_from(view)
    if hlen > MAX_HEADER or HLEN.size + hlen > len(view):
        raise ProtocolError(f"bad frame header length {hlen}")
    try:
        head = msgpack.unpackb(view[HLEN.size : HLEN.size + hlen], raw=False)
    except Exception as exc:
        raise ProtocolError(f"malformed frame header: {describe(exc)}") from exc
    if not (
        isinstance(head, list)
        and len(head) == 5
        and isinstance(head[0], str)
        and isinstance(head[1], str)
        and isinstance(head[2], int)
        and isinstance(head[3], str)
        and head[4] in (0, 1)
    ):
        raise ProtocolError(f"malformed frame header {shown(head, 200)}")
    chunk = bytes(view[HLEN.size + hlen :])
    return Frame(head[0], head[1], head[2], head[3], bool(head[4]), chunk, LEN.size + len(view))


class FrameDecoder:
    """Incremental decoder: feed bytes in any fragments, get complete frames out."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._limit = max_frame + HLEN.size + MAX_HEADER

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return the frames completed by them.

        Whole frames are parsed in place from ``data``; only an incomplete tail is buffered.
        """
        if self._buf:
            self._buf += data
            data, self._buf = bytes(self._buf), bytearray()
        view = memoryview(data)
        out, pos, end = [], 0, len(view)
        while end - pos >= LEN.size:
            (n,) = LEN.unpack_from(view, pos)
            check_frame_length(n, self._limit)
            if end - pos - LEN.size < n:
                break
            out.append(parse_body(view[pos + LEN.size : pos + LEN.size + n]))
            pos += LEN.size + n
        if pos < end:
            self._buf = bytearray(view[pos:])
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return len(self._buf)


def check_frame_length(n: int, limit: int) -> None:
    """Reject a frame whose announced length exceeds ``limit`` before reading it."""
    if n > limit:
        raise ProtocolError(f"frame of {n} bytes exceeds the maximum of {limit} bytes")

"""Fuzz: a few thousand mutated frames at a server on 127.0.0.1 (issue 15, "Done when").

A seeded mutator (truncations, bit flips, length fields, hello, header and payload msgpack
type confusion, huge declared lengths, splices, garbage) turns valid hellos and valid messages into
hostile ones. Each goes over its own connection (after a real handshake for message mutants),
the write side is then closed, and the server must end that connection with a clear one-line
net error (or echo it, if the mutant is still valid), never crash, keep its buffers within the
session's budget and its process memory bounded, and afterwards serve a good client.
"""

from __future__ import annotations

import asyncio
import gc
import struct
import time
from collections import Counter

import msgpack
import numpy as np

from secmoe.net import NetError
from secmoe.net.codec import EXT_BIGINT, EXT_BOOLARRAY, EXT_NDARRAY, encode
from secmoe.net.framing import LEN, encode_frame, split_message
from secmoe.net.tcp import _hello

from .hostile import PARAMS, EchoServer, frame, hello_frame, send_raw

CASES = 3000
PARALLEL = 8
MiB = 1 << 20
HUGE = [0, 1, 5, 0x7FFF, 0xFFFF, 1 << 24, 1 << 31, (1 << 32) - 1]


def corpus() -> list[tuple[bool, bytes]]:
    """(after the handshake?, valid bytes): a hello, and pings of every wire type."""
    values = [
        np.arange(50, dtype=np.uint64),
        np.ones((3, 5), dtype=bool),
        np.zeros((2, 2), dtype=np.float32),
        {"a": [1, 2.5, "x", b"y", None, True]},
        2**100,
        -(2**70),
        "text",
    ]
    chunked = split_message(
        "echo", "ping", 1, "online", encode(np.arange(300, dtype=np.uint32)), 256
    )
    return [
        (False, hello_frame()),
        *[(True, frame("echo", "ping", encode(v))) for v in values],
        (True, b"".join(encode_frame(f) for f in chunked)),
    ]


def ext(code: int, head: object, body: bytes = b"") -> bytes:
    """An extension value of the codec with an arbitrary header (type confusion)."""
    h = msgpack.packb(head)
    return msgpack.packb(msgpack.ExtType(code, struct.pack("<H", len(h)) + h + body))


def header_frame(head: object, chunk: bytes = b"") -> bytes:
    """A frame whose msgpack header is ``head`` (anything, not only the 5 fields)."""
    h = msgpack.packb(head, use_bin_type=True)
    return LEN.pack(2 + len(h) + len(chunk)) + struct.pack(">H", len(h)) + h + chunk


CONFUSED_HEADERS = [
    None,
    1,
    "echo",
    [],
    {"path": "echo"},
    ["echo", "ping", 1, "online"],
    ["echo", "ping", 1, "online", 0, 0],
    [1, "ping", 1, "online", 0],
    ["echo", b"ping", 1, "online", 0],
    ["echo", "ping", 1.5, "online", 0],
    ["echo", "ping", -1, "online", 0],
    ["echo", "ping", 2**64 - 1, "online", 0],
    ["echo", "ping", 1, "online", 2],
    ["echo", "ping", 1, None, 0],
    ["e" * 3000, "ping", 1, "online", 0],
    ["/", "abort", 0, "abort", 0],
]
CONFUSED_PAYLOADS = [
    b"",
    b"\xc1",
    b"\x91" * 100_000,  # deep nesting
    b"\xdd\xff\xff\xff\xff",  # an array of 2^32 - 1 elements, none sent
    b"\xdf\xff\xff\xff\xff",  # a map of 2^32 - 1 entries
    b"\xdb\xff\xff\xff\xff",  # a str of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # a bin of 4 GiB
    b"\xc9\xff\xff\xff\xff\x01",  # an ext of 4 GiB
    ext(EXT_NDARRAY, ["O", [2]], b"\0" * 16),
    ext(EXT_NDARRAY, ["<U4", [1]], b"\0" * 16),
    ext(EXT_NDARRAY, ["V8", [1]], b"\0" * 8),
    ext(EXT_NDARRAY, ["i8,i8", [1]], b"\0" * 16),
    ext(EXT_NDARRAY, ["not a dtype", [1]], b""),
    ext(EXT_NDARRAY, ["<u8", [1 << 40]], b"\0" * 8),
    ext(EXT_NDARRAY, ["<u8", [1 << 32, 1 << 32, 1 << 32]], b""),
    ext(EXT_NDARRAY, ["<u8", [0, 1 << 62]], b""),
    ext(EXT_NDARRAY, ["<u8", [-1]], b""),
    ext(EXT_NDARRAY, ["<u8", [1] * 100], b"\0" * 8),
    ext(EXT_NDARRAY, ["<u8", "x"], b""),
    ext(EXT_NDARRAY, [1, [1]], b"\0" * 8),
    ext(EXT_NDARRAY, None, b""),
    ext(EXT_BOOLARRAY, [1 << 40], b"\xff"),
    ext(EXT_BOOLARRAY, {"x": 1}, b""),
    msgpack.packb(msgpack.ExtType(EXT_BIGINT, b"")),
    msgpack.packb(msgpack.ExtType(EXT_BIGINT, b"\xff" * 100_000)),
    msgpack.packb(msgpack.ExtType(99, b"xyz")),
    msgpack.packb(msgpack.ExtType(EXT_NDARRAY, b"\xff")),
    msgpack.packb({(1, 2): 3}, use_bin_type=True),
    msgpack.packb(1.5) + msgpack.packb(2),  # extra bytes
]


CONFUSED_VALUES = [None, 1, -1, 2**70, 1.5, "x", "", b"x", [1], {}, {1: 2}, {"a": [1]}, "v" * 5000]


def confused_hello(rng: np.random.Generator) -> bytes:
    """A hello with one field of an unexpected type or value, or no dict at all."""
    hello = _hello("client", PARAMS, "fuzz")
    key = str(rng.choice([*hello, "extra"]))
    value = CONFUSED_VALUES[int(rng.integers(len(CONFUSED_VALUES)))]
    body = encode({**hello, key: value} if rng.integers(8) else value)
    return frame("", "hello", body, phase="handshake")


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """One to three random mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 10))
        if op == 0 and buf:  # truncation
            del buf[int(rng.integers(0, len(buf))) :]
        elif op == 1 and buf:  # bit flips
            for _ in range(int(rng.integers(1, 9))):
                buf[int(rng.integers(0, len(buf)))] ^= 1 << int(rng.integers(0, 8))
        elif op == 2 and len(buf) >= 4:  # the frame length field
            near = max(0, len(buf) - 4 + int(rng.integers(-8, 9)))
            buf[0:4] = LEN.pack(int(rng.choice([*HUGE, near])))
        elif op == 3 and len(buf) >= 6:  # the header length field
            buf[4:6] = struct.pack(">H", int(rng.choice([*HUGE[:5], int(rng.integers(0, 64))])))
        elif op == 4:  # header type confusion
            buf = bytearray(
                header_frame(CONFUSED_HEADERS[int(rng.integers(len(CONFUSED_HEADERS)))])
            )
        elif op == 5:  # payload type confusion and huge declared lengths
            payload = CONFUSED_PAYLOADS[int(rng.integers(len(CONFUSED_PAYLOADS)))]
            buf = bytearray(frame("echo", "ping", payload))
        elif op == 6:  # splice random bytes in
            at = int(rng.integers(0, len(buf) + 1))
            buf[at:at] = rng.bytes(int(rng.integers(1, 64)))
        elif op == 7 and buf:  # repeat a slice
            a = int(rng.integers(0, len(buf)))
            b = int(rng.integers(a, len(buf) + 1))
            buf[b:b] = buf[a:b] * int(rng.integers(1, 4))
        elif op == 8:  # hello type confusion (after the handshake: an unexpected hello)
            buf = bytearray(confused_hello(rng))
        else:  # garbage
            buf = bytearray(rng.bytes(int(rng.integers(1, 200))))
    return bytes(buf)


def rss() -> int:
    gc.collect()
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def test_fuzzed_frames_never_crash_hang_or_bloat_the_server():
    rng = np.random.default_rng(15)
    base = corpus()
    cases = [base[int(rng.integers(len(base)))] for _ in range(CASES)]
    budget = 4 * MiB
    async with EchoServer(max_buffered=budget, max_message=MiB, idle_timeout=2.0) as srv:
        assert await srv.serves_a_good_client()
        before = rss()
        t0 = time.monotonic()
        for start in range(0, CASES, PARALLEL):
            await asyncio.gather(
                *[
                    send_raw(srv.port, mutate(rng, data), handshake=after)
                    for after, data in cases[start : start + PARALLEL]
                ]
            )
        ends = [await srv.next_end(timeout=10) for _ in range(CASES)]
        seconds = time.monotonic() - t0
        grown = rss() - before
        assert not srv.crashes, srv.crashes[:3]
        kinds = Counter()
        for end in ends:
            assert isinstance(end.error, NetError), repr(end.error)
            text = str(end.error)
            assert text and "\n" not in text and len(text) < 600, repr(text)
            assert not text.rstrip().endswith(":"), repr(text)
            assert end.seconds < 5, (end.seconds, text)
            assert end.peak_buffered <= budget
            kinds[type(end.error).__name__] += 1
        print(f"\n{CASES} mutants in {seconds:.1f} s, RSS +{grown / MiB:.1f} MiB: {dict(kinds)}")
        assert kinds["HandshakeError"] and kinds["ProtocolError"] and kinds["PeerDisconnected"]
        assert grown < 64 * MiB
        assert srv.ended.empty()  # one end per connection, no more
        assert await srv.serves_a_good_client()

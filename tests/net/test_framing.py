import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secmoe.net.errors import ProtocolError
from secmoe.net.framing import LEN, FrameDecoder, encode_frame, split_message


def _wire(payloads: list[bytes], max_frame: int) -> bytes:
    return b"".join(
        encode_frame(f)
        for i, p in enumerate(payloads)
        for f in split_message(f"p{i % 3}", f"t{i}", i + 1, "online", p, max_frame)
    )


@settings(max_examples=60)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    st.integers(1, 64),
    st.lists(st.integers(1, 97), min_size=1, max_size=50),
)
def test_frames_survive_any_fragmentation(payloads, max_frame, cuts):
    wire = _wire(payloads, max_frame)
    dec = FrameDecoder(max_frame)
    frames, pos, i = [], 0, 0
    while pos < len(wire):  # feed the stream in odd fragments
        step = cuts[i % len(cuts)]
        frames += dec.feed(wire[pos : pos + step])
        pos, i = pos + step, i + 1
    assert dec.pending == 0
    rebuilt, cur = [], b""
    for f in frames:
        cur += f.chunk
        if not f.more:
            rebuilt.append(cur)
            cur = b""
    assert rebuilt == payloads
    assert sum(f.wire for f in frames) == len(wire)


def test_large_message_is_chunked_not_refused():
    frames = split_message("x", "t", 1, "online", b"a" * 1000, 300)
    assert [len(f.chunk) for f in frames] == [300, 300, 300, 100]
    assert [f.more for f in frames] == [True, True, True, False]


def test_oversized_frame_is_rejected_before_reading_it():
    dec = FrameDecoder(max_frame=1024)
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        dec.feed(LEN.pack(10**9))


@pytest.mark.parametrize("body", [b"\x00", b"\x00\x05abc", b"\x00\x01\xc1", b"\x00\x02\x91\x01"])
def test_garbage_frames_raise(body):
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(LEN.pack(len(body)) + body)

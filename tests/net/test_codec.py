import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secmoe.net.codec import EXT_NDARRAY, decode, encode
from secmoe.net.errors import ProtocolError

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)

NUMERIC = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex128,
]


@given(values)
def test_roundtrip_python_values(v):
    assert decode(encode(v)) == v


@pytest.mark.parametrize("dtype", NUMERIC)
@given(data=st.data())
def test_roundtrip_arrays(dtype, data):
    arr = data.draw(
        hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0),
            elements={"allow_nan": False} if np.dtype(dtype).kind in "fc" else None,
        )
    )
    out = decode(encode(arr))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    out.flat[:1] = 0  # decoded arrays are writable


@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40)))
def test_bool_arrays_are_bit_packed(arr):
    enc = encode(arr)
    assert len(enc) <= (arr.size + 7) // 8 + 16
    np.testing.assert_array_equal(decode(enc), arr)


def test_uint64_extremes_and_big_ints():
    arr = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    np.testing.assert_array_equal(decode(encode(arr)), arr)
    for v in (2**64, -(2**63) - 1, 2**300, -(2**200)):
        assert decode(encode(v)) == v
    assert decode(encode(np.uint64(2**64 - 1))) == 2**64 - 1


def test_non_contiguous_and_big_endian_arrays():
    a = np.arange(20, dtype=np.uint64).reshape(4, 5)[:, ::2]
    np.testing.assert_array_equal(decode(encode(a)), a)
    b = np.arange(5, dtype=">u4")
    np.testing.assert_array_equal(decode(encode(b)), b)


def test_refuses_objects_and_unknown_types():
    with pytest.raises(TypeError):
        encode(np.array([object()], dtype=object))
    with pytest.raises(TypeError):
        encode({1, 2})


def _ext_array(dtype: str, shape: list, body: bytes) -> bytes:
    head = msgpack.packb([dtype, shape])
    return msgpack.packb(msgpack.ExtType(EXT_NDARRAY, struct.pack("<H", len(head)) + head + body))


def test_malformed_inputs_raise_protocol_error():
    with pytest.raises(ProtocolError):
        decode(b"\xc1")  # never-used msgpack byte
    with pytest.raises(ProtocolError):
        decode(encode([1, 2])[:-1])  # truncated
    with pytest.raises(ProtocolError, match="array body"):
        decode(_ext_array("<u8", [2], b"x" * 3))  # body shorter than the shape says
    with pytest.raises(ProtocolError, match="not allowed"):
        decode(_ext_array("|O", [1], b"x" * 8))  # object arrays never decode
    with pytest.raises(ProtocolError, match="shape"):
        decode(_ext_array("<u8", [-1], b""))
    with pytest.raises(ProtocolError, match="extension"):
        decode(msgpack.packb(msgpack.ExtType(42, b"")))

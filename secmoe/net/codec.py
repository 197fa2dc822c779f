"""The wire codec: msgpack with numpy arrays and arbitrary-size ints as extension types.

Encodes None, bool, int (any size), float, str, bytes, list/tuple (decoded as list), dict and
numpy arrays of every numeric dtype (``uint64`` included). ``bool`` arrays are bit-packed
(1 bit per element on the wire). numpy scalars are sent as Python scalars. Nothing else is
accepted, and nothing is ever unpickled: decoding only builds the types above.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import numpy as np

from .errors import ProtocolError, describe, shown

EXT_NDARRAY = 1
EXT_BOOLARRAY = 2
EXT_BIGINT = 3

_ALLOWED_KINDS = frozenset("iufc")  # signed, unsigned, float, complex; bool handled apart
_HDR = struct.Struct("<H")
MAX_DIMS = 32


def _pack_header(obj: Any) -> bytes:
    head = msgpack.packb(obj)
    return _HDR.pack(len(head)) + head


def _unpack_header(data: bytes) -> tuple[Any, memoryview]:
    view = memoryview(data)
    if len(view) < _HDR.size:
        raise ProtocolError("truncated array header")
    (n,) = _HDR.unpack_from(view)
    if len(view) < _HDR.size + n:
        raise ProtocolError("truncated array header")
    head = msgpack.unpackb(view[_HDR.size : _HDR.size + n])
    return head, view[_HDR.size + n :]


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype == np.bool_:
            packed = np.packbits(obj.reshape(-1))
            return msgpack.ExtType(EXT_BOOLARRAY, _pack_header(list(obj.shape)) + packed.tobytes())
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"cannot send arrays of dtype {obj.dtype}")
        arr = np.asarray(obj, dtype=obj.dtype.newbyteorder("<"), order="C")
        head = _pack_header([arr.dtype.str, list(arr.shape)])
        return msgpack.ExtType(EXT_NDARRAY, head + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, int):  # beyond msgpack's 64-bit range
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(EXT_BIGINT, obj.to_bytes(length, "big", signed=True))
    raise TypeError(f"cannot send objects of type {type(obj).__name__}")


def _shape(raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and d >= 0 for d in raw):
        raise ProtocolError(f"bad array shape {shown(raw)}")
    if len(raw) > MAX_DIMS:
        raise ProtocolError(f"array of {len(raw)} dimensions (at most {MAX_DIMS})")
    return tuple(raw)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        head, body = _unpack_header(data)
        if not (isinstance(head, list) and len(head) == 2 and isinstance(head[0], str)):
            raise ProtocolError("bad array header")
        try:
            dtype = np.dtype(head[0])
        except Exception as exc:  # numpy raises TypeError, ValueError, SyntaxError, …
            raise ProtocolError(f"bad array dtype {shown(head[0])}") from exc
        if dtype.kind not in _ALLOWED_KINDS:
            raise ProtocolError(f"array dtype {shown(head[0])} is not allowed on the wire")
        shape = _shape(head[1])
        count = math.prod(shape)
        if count * dtype.itemsize != len(body):
            raise ProtocolError(
                f"array body is {len(body)} bytes, expected {shown(count * dtype.itemsize, 40)} "
                f"for shape {shown(shape)} {dtype}"
            )
        arr = np.frombuffer(body, dtype=dtype).reshape(shape)
        return arr.astype(dtype.newbyteorder("="), copy=True)
    if code == EXT_BOOLARRAY:
        head, body = _unpack_header(data)
        shape = _shape(head)
        count = math.prod(shape)
        if len(body) != (count + 7) // 8:
            raise ProtocolError(f"bit-packed array body is {len(body)} bytes for {count} bits")
        bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8), count=count)
        return bits.astype(bool).reshape(shape)
    if code == EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    raise ProtocolError(f"unknown extension type {code}")


def encode(obj: Any) -> bytes:
    """Encode one message. Raises ``TypeError`` for unsupported types."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def decode(data: bytes) -> Any:
    """Decode one message. Raises :class:`ProtocolError` on malformed input."""
    try:
        return msgpack.unpackb(
            data, ext_hook=_ext_hook, raw=False, strict_map_key=False, use_list=True
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types for garbage, some without text
        raise ProtocolError(f"malformed message: {describe(exc)}") from exc

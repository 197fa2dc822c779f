"""SEAL objects ↔ numpy, and compact wire packing of RNS residues.

SEAL (through ``tenseal.sealapi``) exposes its objects only through ``save(path)`` /
``load(context, path)``, in SEAL's documented format: a 16-byte header (magic 0xA15E, header
size, version, compression mode, reserved, total size) then the object's members, compressed
with zstd by default. Measured on this machine (N = 8192, four primes, one ciphertext):
save + read + decompress ≈ 1 ms, write + load of an uncompressed body ≈ 0.15 ms.

This module builds and parses the members with numpy:

- ciphertext: parms_id (4×u64), is_ntt_form (u8), size, N, L (u64 each), scale (f64),
  correction factor (u64), then a DynArray (its own 16-byte header, a u64 count, the data laid
  out poly-major, then RNS component, then coefficient);
- plaintext (and secret key): parms_id, coeff_count (u64), scale (f64), DynArray.

Objects go through one small file per thread in a RAM-backed directory (``/dev/shm`` when it
exists); loads are uncompressed, saves are decompressed with the zstd that SEAL itself links
(``ZSTD_decompress`` from the ``_sealapi_cpp`` extension, via ctypes) or zlib.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Sequence

import numpy as np
import tenseal.sealapi as sealapi

SEAL_MAGIC = 0xA15E
_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
_CT_META = struct.Struct("<4QBQQQdQ")
_PT_META = struct.Struct("<4QQd")
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2

_tls = threading.local()
_zstd = None
_paths: list[str] = []
_paths_lock = threading.Lock()


@atexit.register
def _cleanup() -> None:
    with _paths_lock:
        for path in _paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        _paths.clear()


def _zstd_lib():
    global _zstd
    if _zstd is None:
        import _sealapi_cpp  # the extension module that links zstd

        lib = ctypes.CDLL(_sealapi_cpp.__file__)
        lib.ZSTD_decompress.restype = ctypes.c_size_t
        lib.ZSTD_decompress.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        lib.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
        lib.ZSTD_getFrameContentSize.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.ZSTD_isError.restype = ctypes.c_uint
        lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
        _zstd = lib
    return _zstd


def _zstd_decompress(data: bytes) -> bytes:
    lib = _zstd_lib()
    size = lib.ZSTD_getFrameContentSize(data, len(data))
    if size >= (1 << 63):  # unknown or error
        raise ValueError("SEAL object: zstd frame without a content size")
    out = ctypes.create_string_buffer(int(size))
    n = lib.ZSTD_decompress(out, int(size), data, len(data))
    if lib.ZSTD_isError(n):
        raise ValueError("SEAL object: zstd decompression failed")
    return out.raw[:n]


def _scratch_path() -> str:
    path = getattr(_tls, "path", None)
    if path is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, path = tempfile.mkstemp(prefix="secmoe-he-", suffix=".seal", dir=base)
        os.close(fd)
        with _paths_lock:
            _paths.append(path)
        _tls.path = path
    return path


def header_template() -> bytes:
    """A valid SEAL header from this SEAL build (version fields), compression none."""
    tpl = getattr(_tls, "header", None)
    if tpl is None:
        pt = sealapi.Plaintext(1)
        path = _scratch_path()
        pt.save(path)
        with open(path, "rb") as f:
            raw = f.read(_HEADER.size)
        magic, hsize, major, minor, _c, _r, _s = _HEADER.unpack(raw)
        if magic != SEAL_MAGIC or hsize != _HEADER.size:
            raise RuntimeError("unexpected SEAL serialization header")
        tpl = (major, minor)
        _tls.header = tpl
    return tpl


def _header(body_len: int) -> bytes:
    major, minor = header_template()
    return _HEADER.pack(SEAL_MAGIC, _HEADER.size, major, minor, COMPR_NONE, 0, 16 + body_len)


def save_body(obj) -> bytes:
    """The uncompressed member bytes of any SEAL object (``save`` + decompression)."""
    path = _scratch_path()
    obj.save(path)
    with open(path, "rb") as f:
        raw = f.read()
    magic, _h, _ma, _mi, compr, _r, size = _HEADER.unpack_from(raw)
    if magic != SEAL_MAGIC or size != len(raw):
        raise ValueError("not a SEAL object")
    body = raw[_HEADER.size :]
    if compr == COMPR_ZSTD:
        return _zstd_decompress(body)
    if compr == COMPR_ZLIB:
        return zlib.decompress(body)
    return body


def load_body(obj, context, body: bytes):
    """Load ``obj`` (a fresh SEAL object) from uncompressed member bytes; returns ``obj``."""
    path = _scratch_path()
    with open(path, "wb") as f:
        f.write(_header(len(body)))
        f.write(body)
    obj.load(context, path)
    return obj


def save_file_bytes(obj) -> bytes:
    """SEAL's own serialization (compressed, seeded where SEAL seeds): for keys on the wire."""
    path = _scratch_path()
    obj.save(path)
    with open(path, "rb") as f:
        return f.read()


def load_file_bytes(obj, context, data: bytes):
    """Load ``obj`` from bytes produced by :func:`save_file_bytes`; returns ``obj``."""
    path = _scratch_path()
    with open(path, "wb") as f:
        f.write(data)
    obj.load(context, path)
    return obj


def _dynarray(data: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(data, dtype="<u8").reshape(-1)
    return _header(8 + flat.nbytes) + struct.pack("<Q", flat.size) + flat.tobytes()


def ciphertext_body(
    parms_id: Sequence[int], data: np.ndarray, ntt: bool, *, scale: float = 1.0
) -> bytes:
    """Members of a ciphertext with ``data`` of shape (size, L, N)."""
    size, nmod, n = data.shape
    meta = _CT_META.pack(*parms_id, int(ntt), size, n, nmod, scale, 1)
    return meta + _dynarray(data)


def parse_ciphertext(body: bytes) -> tuple[list[int], bool, np.ndarray]:
    """(parms_id, is_ntt_form, data of shape (size, L, N)) from ciphertext members."""
    *pid, ntt, size, n, nmod, _scale, _corr = _CT_META.unpack_from(body)
    off = _CT_META.size + _HEADER.size
    (count,) = struct.unpack_from("<Q", body, off)
    if count != size * n * nmod:
        raise ValueError("ciphertext: data length does not match its metadata")
    arr = np.frombuffer(body, dtype="<u8", count=count, offset=off + 8)
    return list(pid), bool(ntt), arr.astype(np.uint64).reshape(size, nmod, n)


def plaintext_body(parms_id: Sequence[int], data: np.ndarray) -> bytes:
    """Members of a plaintext: coefficients (N,) with zero parms_id, or NTT form (L, N)."""
    flat = np.ascontiguousarray(data, dtype=np.uint64).reshape(-1)
    return _PT_META.pack(*parms_id, flat.size, 1.0) + _dynarray(flat)


def parse_plaintext(body: bytes) -> tuple[list[int], np.ndarray]:
    """(parms_id, flat coefficient data) from plaintext (or secret-key) members."""
    *pid, count, _scale = _PT_META.unpack_from(body)
    off = _PT_META.size + _HEADER.size
    (n,) = struct.unpack_from("<Q", body, off)
    if n != count:
        raise ValueError("plaintext: data length does not match its metadata")
    return list(pid), np.frombuffer(body, dtype="<u8", count=n, offset=off + 8).astype(np.uint64)


# --- compact wire packing ------------------------------------------------------------------


def pack_residues(res: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """Residues of shape (..., L, M) → ``uint8`` (..., M·Σwidths), little-endian, per prime."""
    res = np.ascontiguousarray(res, dtype="<u8")
    if res.shape[-2] != len(widths):
        raise ValueError("pack_residues: one width per prime")
    b = res.view(np.uint8).reshape(*res.shape, 8)
    parts = [b[..., i, :, :w] for i, w in enumerate(widths)]
    lead = res.shape[:-2]
    return np.concatenate([p.reshape(*lead, -1) for p in parts], axis=-1)


def unpack_residues(buf: np.ndarray, widths: Sequence[int], m: int) -> np.ndarray:
    """Inverse of :func:`pack_residues` for M = ``m`` coefficients per prime."""
    buf = np.asarray(buf, dtype=np.uint8)
    need = m * sum(widths)
    if buf.shape[-1] != need:
        raise ValueError(f"packed residues: got {buf.shape[-1]} bytes, expected {need}")
    lead = buf.shape[:-1]
    out = np.zeros((*lead, len(widths), m, 8), dtype=np.uint8)
    off = 0
    for i, w in enumerate(widths):
        out[..., i, :, :w] = buf[..., off : off + m * w].reshape(*lead, m, w)
        off += m * w
    return out.view("<u8").reshape(*lead, len(widths), m).astype(np.uint64)


#: Values per step of :func:`pack_bits` (a multiple of 8, so steps end on byte boundaries).
_BIT_CHUNK = 1 << 15


def pack_bits(lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    """The low ``bits`` (≤ 128) of the integers hi·2^64 + lo, bit-packed per row (little-endian
    bit order): (..., M) ``uint64`` words → ``uint8`` (..., ⌈M·bits/8⌉)."""
    if not 1 <= bits <= 128:
        raise ValueError("pack_bits: 1 to 128 bits per value")
    lead, m = lo.shape[:-1], lo.shape[-1]
    count = int(np.prod(lead, dtype=np.int64))
    lo2, hi2 = lo.reshape(count, m), hi.reshape(count, m)
    out = np.empty((lo2.shape[0], (m * bits + 7) // 8), dtype=np.uint8)
    for r in range(lo2.shape[0]):
        parts = []
        for s in range(0, m, _BIT_CHUNK):
            sl = slice(s, s + _BIT_CHUNK)
            words = np.stack([lo2[r, sl], hi2[r, sl]], axis=1).astype("<u8")
            b = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, :bits]
            parts.append(np.packbits(b.reshape(-1), bitorder="little"))
        if parts:
            out[r] = np.concatenate(parts)
    return out.reshape(*lead, -1)


def unpack_bits(buf: np.ndarray, bits: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_bits` for M = ``m`` values per row: (lo, hi) ``uint64`` words."""
    buf = np.asarray(buf, dtype=np.uint8)
    need = (m * bits + 7) // 8
    if buf.shape[-1] != need:
        raise ValueError(f"packed values: got {buf.shape[-1]} bytes, expected {need}")
    lead = buf.shape[:-1]
    rows = buf.reshape(int(np.prod(lead, dtype=np.int64)), need)
    words = np.zeros((rows.shape[0], m, 2), dtype="<u8")
    for r in range(rows.shape[0]):
        for s in range(0, m, _BIT_CHUNK):
            c = min(_BIT_CHUNK, m - s)
            chunk = rows[r, s * bits // 8 : (s * bits // 8) + (c * bits + 7) // 8]
            b = np.unpackbits(chunk, bitorder="little")[: c * bits].reshape(c, bits)
            full = np.zeros((c, 128), dtype=np.uint8)
            full[:, :bits] = b
            words[r, s : s + c] = np.packbits(full, axis=1, bitorder="little").view("<u8")
    words = words.astype(np.uint64)
    return words[..., 0].reshape(*lead, m), words[..., 1].reshape(*lead, m)

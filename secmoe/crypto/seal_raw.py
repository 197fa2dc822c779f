"""A SEAL ciphertext's residues read in place, without serialization.

``tenseal.sealapi`` gives no buffer view of a ciphertext, only ``save``, which compresses with
zstd: measured on this machine, 6.6 ms to save one ciphertext of size 2 at N = 16384 with six
primes (1.5 MB; :func:`~secmoe.crypto.he_serial.save_body` then decompresses it), against
~0.2 ms to copy it. :func:`ciphertext_residues` copies the residues out of the C++ object:
pybind11 keeps the address of the wrapped ``seal::Ciphertext`` right after the Python object's
header, and SEAL 4 lays a ciphertext out as ``parms_id`` (4 × u64), ``is_ntt_form`` (bool,
padded to 8 bytes), ``size``, ``poly_modulus_degree``, ``coeff_modulus_size`` (u64 each),
``scale`` (f64), ``correction_factor`` (u64), then its ``DynArray`` of coefficients (a memory
pool handle of two words, ``capacity``, ``size``, the data pointer), poly-major, then RNS
component, then coefficient — the order of SEAL's serialization.

:func:`ciphertext_from_residues` is the converse (SEAL's ``load`` of an uncompressed body:
~1-2 ms against ~0.1 ms): a ciphertext allocated by SEAL for the parameters, its residues
copied in and its NTT flag set.

Every access checks that layout against what the Python API reports (``parms_id``, NTT form,
size, N, L; the array's size is size·N·L and within its capacity), a write checks that every
residue is below its prime (as SEAL's ``load`` does), and once per process the first read and
the first write are compared with SEAL's own serialization; where a check fails, or on a
TenSEAL release not in :data:`LAYOUT_CHECKED`, they return None, and
:meth:`~secmoe.crypto.he.HEContext.export_ct` / ``import_ct`` serialize as before.
Only ciphertexts (public data) go through here.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence

import numpy as np
import tenseal
import tenseal.sealapi as sealapi

from . import he_serial as ser

__all__ = ["ciphertext_from_residues", "ciphertext_residues"]

#: Bytes of a Python object's header (reference count, type), after which pybind11 keeps the
#: address of the C++ object it wraps.
_PY_HEAD = 2 * ctypes.sizeof(ctypes.c_void_p)
#: u64 words of ``seal::Ciphertext`` read: metadata (0-9), DynArray (10-14).
_WORDS = 15
_PARMS, _NTT, _SIZE, _N, _L = slice(0, 4), 4, 5, 6, 7
_CAPACITY, _COUNT, _DATA = 12, 13, 14

#: Per direction ("read", "write"): whether in-place access matched SEAL's serialization in
#: this process (absent: not yet checked).
_checked: dict[str, bool] = {}
#: TenSEAL releases whose objects were checked to have this layout: reading another's could
#: fault before any check runs (a wrong address), so they serialize instead.
LAYOUT_CHECKED = ("0.3.18",)
_PLATFORM_OK = (
    sys.byteorder == "little"
    and ctypes.sizeof(ctypes.c_void_p) == 8
    and tenseal.__version__ in LAYOUT_CHECKED
)


def _object(ct: sealapi.Ciphertext) -> int:
    return ctypes.c_void_p.from_address(id(ct) + _PY_HEAD).value or 0


def _data(ct: sealapi.Ciphertext) -> np.ndarray | None:
    """The residues (size, L, N) of ``ct`` as a view of its memory (valid while ``ct`` lives
    unresized), or None if the object's layout does not check."""
    addr = _object(ct)
    size, n, level = ct.size(), ct.poly_modulus_degree(), ct.coeff_modulus_size()
    count = size * n * level
    if not addr or not count:
        return None
    w = np.ctypeslib.as_array((ctypes.c_uint64 * _WORDS).from_address(addr))
    if (
        [int(v) for v in w[_PARMS]] != list(ct.parms_id())
        or int(w[_NTT]) & 0xFF != int(ct.is_ntt_form())
        or (int(w[_SIZE]), int(w[_N]), int(w[_L])) != (size, n, level)
        or int(w[_COUNT]) != count
        or int(w[_CAPACITY]) < count
        or not int(w[_DATA])
    ):
        return None
    buf = (ctypes.c_uint64 * count).from_address(int(w[_DATA]))
    return np.ctypeslib.as_array(buf).reshape(size, level, n)


def _serialized(ct: sealapi.Ciphertext) -> tuple[bool, np.ndarray]:
    _pid, ntt, data = ser.parse_ciphertext(ser.save_body(ct))
    return ntt, data


def ciphertext_residues(ct: sealapi.Ciphertext) -> np.ndarray | None:
    """The residues (size, L, N) of ``ct`` (a copy), read in place; None where this build's
    layout does not check (then serialize)."""
    if not _PLATFORM_OK or _checked.get("read") is False:
        return None
    view = _data(ct)
    out = None if view is None else view.copy()
    if "read" not in _checked and out is not None:
        _checked["read"] = np.array_equal(out, _serialized(ct)[1])
    return out if _checked.get("read") else None


def ciphertext_from_residues(
    context: sealapi.SEALContext,
    parms_id: Sequence[int],
    primes: Sequence[int],
    data: np.ndarray,
    ntt: bool,
) -> sealapi.Ciphertext | None:
    """A ciphertext at ``parms_id`` (whose primes are ``primes``) holding ``data`` (size, L, N),
    NTT form or not; None where a residue is not below its prime or this build's layout does
    not check (then load through SEAL, which says what is wrong)."""
    data = np.asarray(data).astype(np.uint64, copy=False)
    size, level, _n = data.shape
    if not _PLATFORM_OK or _checked.get("write") is False or len(primes) != level:
        return None
    if not (data < np.asarray(primes, dtype=np.uint64)[:, None]).all():
        return None
    try:
        ct = sealapi.Ciphertext(context, list(parms_id), size)
        ct.resize(context, list(parms_id), size)
    except ValueError:  # a size SEAL does not allocate (below 2, above 16): let load say so
        return None
    view = _data(ct)
    if view is None or view.shape != data.shape:
        _checked["write"] = False
        return None
    np.copyto(view, data)
    ctypes.c_uint8.from_address(_object(ct) + 8 * _NTT).value = int(ntt)
    if "write" not in _checked:
        got_ntt, got = _serialized(ct)
        _checked["write"] = got_ntt == ntt and ct.is_ntt_form() == ntt and np.array_equal(got, data)
    return ct if _checked["write"] else None

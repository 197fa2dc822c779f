"""The cryptographic PRG: AES-128 in counter mode (AES-NI through ``cryptography``).

Every secret in secmoe (shares, masks, OT choices, keys' randomness we generate) comes from a
:class:`PRG`. A PRG is seeded from ``os.urandom`` unless a seed is given; fixed seeds are for
tests (reproducible transcripts) only.

Output is produced in large batched calls: one ``encryptor.update`` over a zero buffer.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 16


_ZEROS = np.zeros(0, np.uint8)


def _zeros(n: int) -> np.ndarray:
    """A read-only all-zero buffer of n bytes (the CTR plaintext of :meth:`PRG.fill`)."""
    global _ZEROS
    z = _ZEROS  # one read: another thread may replace it meanwhile
    if z.size < n:
        z = np.zeros(max(n, 2 * z.size, 1 << 16), np.uint8)
        z.flags.writeable = False
        _ZEROS = z
    return z[:n]


class PRG:
    """AES-128-CTR keystream generator.

    Args:
        seed: 16 bytes; ``None`` draws a fresh seed from the operating system.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is None:
            seed = os.urandom(SEED_BYTES)
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        self._seed = bytes(seed)
        self._enc = Cipher(algorithms.AES(self._seed), modes.CTR(b"\x00" * 16)).encryptor()

    def random_bytes(self, n: int) -> bytes:
        """n pseudorandom bytes."""
        if n < 0:
            raise ValueError("n must be non-negative")
        return self._enc.update(bytes(n))

    def fill(self, out: np.ndarray) -> None:
        """Overwrite ``out`` (a C-contiguous array) with the next ``out.nbytes`` bytes of the
        stream: the bytes :meth:`random_bytes` would return, written in place (no copy)."""
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("PRG.fill needs a writable C-contiguous array")
        buf = out.reshape(-1).view(np.uint8)
        self._enc.update_into(_zeros(buf.size), buf)

    def _array(self, shape: int | tuple[int, ...], dtype: type) -> np.ndarray:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        itemsize = np.dtype(dtype).itemsize
        return np.frombuffer(self.random_bytes(count * itemsize), dtype=dtype).reshape(shape)

    def uint64(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform ``uint64`` array (a writable copy)."""
        return self._array(shape, np.uint64).copy()

    def uint8(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform ``uint8`` array (a writable copy)."""
        return self._array(shape, np.uint8).copy()

    def ring(self, shape: int | tuple[int, ...], bits: int = 64) -> np.ndarray:
        """Uniform elements of Z_{2^bits} as ``uint64``."""
        x = self.uint64(shape)
        if bits < 64:
            x &= np.uint64((1 << bits) - 1)
        return x

    def bits(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform bits as a ``bool`` array."""
        return (self.uint8(shape) & 1).astype(bool)

    def below(self, bound: int, shape: int | tuple[int, ...]) -> np.ndarray:
        """Exactly uniform integers on [0, bound) as ``uint64`` (rejection sampling)."""
        if not 0 < bound <= (1 << 63):
            raise ValueError("bound must be in (0, 2^63]")
        shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape_t, dtype=np.int64))
        limit = np.uint64(((1 << 64) // bound) * bound - 1)  # accept v <= limit
        out = np.empty(0, dtype=np.uint64)
        while out.size < count:
            need = count - out.size
            v = self.uint64(need + need // 2 + 16)
            out = np.concatenate([out, v[v <= limit][:need]])
        return (out % np.uint64(bound)).reshape(shape_t)

    def derive(self, label: str) -> PRG:
        """An independent child PRG, seeded from this one's stream and a label."""
        seed = hashlib.sha256(self.random_bytes(SEED_BYTES) + label.encode()).digest()
        return PRG(seed[:SEED_BYTES])

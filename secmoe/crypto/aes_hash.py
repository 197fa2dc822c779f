"""Fixed-key-AES hashing of 128-bit blocks: a tweakable correlation-robust hash for OT extension.

A *block* is a 128-bit value. Arrays of blocks are ``uint64`` arrays whose last axis has length 2
(word 0 = bits 0..63, little-endian), so an ``(n, 2)`` block array is also an ``(n, 16)`` byte
array (``.view(np.uint8)``) in AES's byte order.

:func:`tccr` is the tweakable circular correlation-robust hash of Guo–Katz–Wang–Yu
(REF: eprint 2019/074, "Efficient and Secure Multiparty Computation from Fixed-Key Block
Ciphers"), built from a fixed-key permutation π = AES-128 under a public key::

    H(i, x) = π(π(x) ⊕ i) ⊕ π(x)

It costs two AES calls per block. The tweak i is a block: the OT index in its low word and a
domain (extension instance, output block number) in its high word, so no (tweak, input) pair
repeats within a session and the multi-instance security loss of an untweaked hash is avoided.

Every function works on whole arrays: each AES pass is a few large ``update_into`` calls in ECB
mode over contiguous buffers (AES-NI inside OpenSSL), never a call per block.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: The public fixed key of π (nothing up the sleeve: a hash of a label).
FIXED_KEY: bytes = hashlib.sha256(b"secmoe/aes_hash/fixed-key/v1").digest()[:16]

#: Bytes handed to one ``update_into`` call (keeps input and output slices in the L2 cache).
_SLICE = 1 << 16

_DOMAIN_BITS = 48
_DOMAIN_MASK = (1 << _DOMAIN_BITS) - 1
MAX_OUT_BLOCKS = 1 << (64 - _DOMAIN_BITS)


def aes_fixed(x: np.ndarray) -> np.ndarray:
    """π(x): fixed-key AES-128 applied to every block of ``x`` (shape ``(..., 2)`` uint64)."""
    x = np.ascontiguousarray(x, dtype=np.uint64)
    if x.ndim == 0 or x.shape[-1] != 2:
        raise ValueError(f"blocks need a last axis of length 2, got shape {x.shape}")
    src = x.reshape(-1).view(np.uint8)
    buf = np.empty(src.size + 16, dtype=np.uint8)
    enc = Cipher(algorithms.AES(FIXED_KEY), modes.ECB()).encryptor()
    for off in range(0, src.size, _SLICE):
        end = min(off + _SLICE, src.size)
        enc.update_into(src[off:end], buf[off : end + 15])
    return buf[: src.size].view(np.uint64).reshape(x.shape)


def xor_block(x: np.ndarray, block: np.ndarray) -> np.ndarray:
    """x ⊕ block for every block of ``x`` ``(n, 2)``, as a new array (word by word: numpy's
    broadcast over a last axis of 2 is 5× slower)."""
    out = np.empty(x.shape, np.uint64)
    np.bitwise_xor(x[:, 0], block[0], out=out[:, 0])
    np.bitwise_xor(x[:, 1], block[1], out=out[:, 1])
    return out


def tweak_high(domain: int, k: int = 0) -> np.uint64:
    """The high word of a tweak: a 48-bit domain and a 16-bit output-block number k."""
    if not 0 <= k < MAX_OUT_BLOCKS:
        raise ValueError(f"output block number {k} out of range")
    return np.uint64(((domain & _DOMAIN_MASK) << (64 - _DOMAIN_BITS)) | k)


def tccr(x: np.ndarray, index: np.ndarray, domain: int, k: int = 0) -> np.ndarray:
    """H(i, x) = π(π(x) ⊕ i) ⊕ π(x) for each block, with tweak i = (index, domain ∥ k).

    Args:
        x: blocks, shape ``(n, 2)`` uint64.
        index: per-block tweak low words, shape ``(n,)`` uint64 (the OT indices).
        domain: 48-bit domain separator (an extension instance).
        k: output-block number (for outputs longer than one block).

    Returns:
        ``(n, 2)`` uint64 blocks.
    """
    return tccr_wide(x, index, domain, 1, k0=k)[:, 0]


def tccr_wide(
    x: np.ndarray, index: np.ndarray, domain: int, nblocks: int, k0: int = 0
) -> np.ndarray:
    """``nblocks`` output blocks per input block: H(i ∥ k, x) for k = k0 .. k0 + nblocks − 1.

    π(x) is computed once and reused for every output block (``1 + nblocks`` AES calls per
    input block). Returns shape ``(n, nblocks, 2)``.
    """
    x = np.asarray(x, dtype=np.uint64)
    n = x.shape[0]
    index = np.asarray(index, dtype=np.uint64).reshape(n)
    y = aes_fixed(x)  # π(x)
    z = np.repeat(y[:, None, :], nblocks, axis=1) if nblocks > 1 else y.reshape(n, 1, 2).copy()
    z[:, :, 0] ^= index[:, None]
    z[:, :, 1] ^= np.array([tweak_high(domain, k0 + k) for k in range(nblocks)], dtype=np.uint64)
    z = aes_fixed(z)  # π(π(x) ⊕ i)
    z ^= y[:, None, :]
    return z


def hash_to_uint(
    x: np.ndarray, index: np.ndarray, domain: int, count: int, width: int
) -> np.ndarray:
    """``count`` fields of ``width`` bits per block from H: shape ``(n, count)``.

    ``width`` must be a power of two ≤ 64; the result dtype is the smallest unsigned type that
    holds it (uint8 for width ≤ 8). Fields are read LSB-first from the hash output.
    """
    if width not in (1, 2, 4, 8, 16, 32, 64):
        raise ValueError(f"field width must be a power of two ≤ 64, got {width}")
    n = np.asarray(x).shape[0]
    nblocks = max(1, -(-count * width // 128))
    raw = tccr_wide(x, index, domain, nblocks).reshape(n, -1).view(np.uint8)
    if width >= 8:
        return raw.view(f"<u{width // 8}")[:, :count].copy()
    fields = np.take(_split_table(width), raw[:, : -(-count // (8 // width))], axis=0)
    return fields.reshape(n, -1)[:, :count].copy()


def _split_table(width: int) -> np.ndarray:
    """``table[b]`` = the ``8 // width`` fields of byte b, LSB first: ``(256, 8 // width)``."""
    shifts = np.arange(0, 8, width, dtype=np.uint8)
    return ((np.arange(256, dtype=np.uint8)[:, None] >> shifts) & ((1 << width) - 1)).astype(
        np.uint8
    )

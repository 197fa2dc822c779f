"""The local linear code of Ferret's primal-LPN step: y = e ⊕ A·u over 128-bit blocks.

Computes, for a public sparse matrix A ∈ F_2^{n×k} with exactly d ones per row (d = 10), the
map ``out_i ⊕= ⨁_{j<d} base[A(i, j)]`` for a k-vector of blocks ``base``: the "A·u" half of
Ferret's LPN encoding; the sparse noise e is the MPCOT output already in ``out``. The code is
local (no communication) and linear, so applied by both parties to their halves of COTs with a
global Δ it maps COTs to COTs: (q, q ⊕ b·Δ) ↦ (A·q, A·q ⊕ (A·b)·Δ).

Who learns what: A is public (derived from the parameters); nothing is sent.

REF: K. Yang, C. Weng, X. Lan, J. Zhang, X. Wang, "Ferret: Fast Extension for coRRElated oT
with small communication", CCS 2020, eprint 2020/924, §3 (primal-LPN with a d-local linear
code, d = 10, as in their implementation).

The matrix, in pages of :data:`PAGE` rows: row i = p·PAGE + u has the d column indices
A(i, j) = w mod k if k is a power of two (exactly uniform; every current parameter set), else
⌊w·k / 2^32⌋ (within k/2^32 < 10^−3 of uniform, as emp-ot's ``% k``), where w is 32-bit word
j·PAGE + u of the AES-128-CTR keystream of a public key (a hash of (n, k, d)) started at
counter block p·2^64. A is public; its rows are i.i.d.

Cost: nothing on the wire. Compute per output row: 40 bytes of AES-CTR, d index reductions, d
16-byte gathers from the k-vector (random accesses: the hot loop) and d block XORs. A page is
one AES call (its keystream, 640 KiB, stays in the L2 cache) and one compiled pass over its
rows (:func:`secmoe.crypto.kernels.lpn_rows`, without the GIL; numpy's gather through
(d, PAGE) temporaries was 45% of Ferret's time at 10^7 COTs).
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secmoe.crypto import kernels

#: Ones per row of A (Ferret's d).
D = 10

#: Rows per page: the unit of A's definition (both parties must agree on it) and of the work
#: loop (measured best of 2^13..2^15 with both parties' threads running in one process).
PAGE = 1 << 14


def code_key(n: int, k: int, d: int = D) -> bytes:
    """The public AES key from which the matrix A of an (n, k, d) code is derived."""
    label = f"secmoe/ferret/lpn/v1/{n}/{k}/{d}".encode()
    return hashlib.sha256(label).digest()[:16]


class LocalCode:
    """The public d-local matrix A ∈ F_2^{n×k} and its application to block vectors.

    Args:
        n: output length (rows of A).
        k: input length (columns of A).
        d: ones per row.
    """

    def __init__(self, n: int, k: int, d: int = D) -> None:
        if not 1 <= d <= k or n < 1 or k >= 1 << 32:
            raise ValueError(f"bad code shape n={n}, k={k}, d={d}")
        self.n, self.k, self.d = n, k, d
        self.key = code_key(n, k, d)
        self._zeros = np.zeros(4 * d * PAGE, np.uint8)  # read-only: the CTR plaintext

    def _keystream(self, page: int, out: np.ndarray) -> None:
        """Page ``page``'s keystream words into ``out`` (a ``d·PAGE`` uint32 buffer, + slack)."""
        nonce = (page << 64).to_bytes(16, "big")
        enc = Cipher(algorithms.AES(self.key), modes.CTR(nonce)).encryptor()
        enc.update_into(self._zeros, out)

    def _reduce(self, w: np.ndarray) -> np.ndarray:
        """Keystream words (uint64) → indices in [0, k) (see the module docstring)."""
        if self.k & (self.k - 1) == 0:
            return w & np.uint64(self.k - 1)
        return (w * np.uint64(self.k)) >> np.uint64(32)

    def indices(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """A's column indices for rows [start, stop): ``(stop − start, d)`` int64 (for tests)."""
        stop = self.n if stop is None else stop
        ks = np.empty(4 * self.d * PAGE + 16, np.uint8)
        rows = []
        for page in range(start // PAGE, -(-stop // PAGE)):
            self._keystream(page, ks)
            w = ks[: 4 * self.d * PAGE].view("<u4").reshape(self.d, PAGE).astype(np.uint64)
            rows.append(self._reduce(w).astype(np.int64).T)
        a = np.concatenate(rows) if rows else np.empty((0, self.d), np.int64)
        off = start // PAGE * PAGE
        return np.ascontiguousarray(a[start - off : stop - off])

    def encode(self, out: np.ndarray, base: np.ndarray, start: int = 0) -> None:
        """In place: ``out[i] ⊕= ⨁_j base[A(start + i, j)]`` for every row of ``out``.

        Args:
            out: ``(m, 2)`` uint64 blocks, C-contiguous (rows start .. start + m − 1 of y).
            base: ``(k, 2)`` uint64 blocks (the vector u).
            start: the first row's index in A (fastest at a multiple of :data:`PAGE`).
        """
        if base.shape != (self.k, 2) or base.dtype != np.uint64:
            raise ValueError(f"base must be ({self.k}, 2) uint64, got {base.dtype} {base.shape}")
        if out.ndim != 2 or out.shape[1] != 2 or not out.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous (m, 2) uint64 block array")
        m, d = out.shape[0], self.d
        if start < 0 or start + m > self.n:
            raise ValueError(f"rows [{start}, {start + m}) exceed n = {self.n}")
        src = np.ascontiguousarray(base)
        ks = np.empty(4 * d * PAGE + 16, np.uint8)
        words = ks[: 4 * d * PAGE].view("<u4").reshape(d, PAGE)
        pow2 = self.k & (self.k - 1) == 0
        row = start
        while row < start + m:
            page, u0 = divmod(row, PAGE)
            w = min(PAGE, u0 + start + m - row) - u0
            self._keystream(page, ks)
            kernels.lpn_rows(words, u0, self.k, pow2, src, out[row - start : row - start + w])
            row += w


def ideal_encode(out: np.ndarray, base: np.ndarray, code: LocalCode, start: int = 0) -> np.ndarray:
    """Reference for :meth:`LocalCode.encode` (a slow, obviously correct loop over d)."""
    a = code.indices(start, start + out.shape[0])
    y = np.array(out, dtype=np.uint64, copy=True)
    for j in range(code.d):
        y ^= base[a[:, j]]
    return y

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
one AES-CTR stream, written row by row into a padded ``(d, PAGE + 16)`` buffer (640 KiB, in
the L2 cache; unpadded, its d rows would share L1 sets), and one compiled pass over its rows
(:func:`secmoe.crypto.kernels.lpn_rows`, without the GIL; numpy's gather through (d, PAGE)
temporaries was 45% of Ferret's time at 10^7 COTs) that prefetches the gathers 12 rows ahead
(``prefetcht1``) and sums each row's blocks in a vector register. Measured at B13's shape
(k = 2^19, an 8 MiB table; thread CPU on the shared 2-core EPYC at load 5–7, medians,
``benchmarks/lpn_encode.py``): 1.9–2.0 ns per gather alone, 0.5 of it AES, and 2.1–2.3 with
2 threads × 2 live tables (before: 3.4–4.1 and 4.8–5.6 ns); 1.5 ns with an L1-resident table,
so the loop is now bound more by its instructions than by memory.

Cache blocking (bucket a group's (row, column) pairs by L2-sized column ranges, then apply each
bucket with its range cache-resident) was measured and not adopted: its scatter (~1 ns) plus
its per-pair read-modify-write of ``out`` (1.3–2.2 ns) cost more than a prefetched gather.
"""

from __future__ import annotations

import hashlib
import mmap

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secmoe.crypto import kernels

#: Ones per row of A (Ferret's d).
D = 10

#: Rows per page: the unit of A's definition (both parties must agree on it) and of the work
#: loop (measured best of 2^13..2^15 with both parties' threads running in one process).
PAGE = 1 << 14

#: Padding words after each keystream row of a page buffer: rows exactly PAGE words (64 KiB)
#: apart would map to the same L1 cache sets, and the kernel reads all d of them at once.
_PAD = 16


#: Bytes of a transparent huge page (x86-64).
_HUGE_PAGE = 1 << 21


def table(rows: int) -> np.ndarray:
    """An empty ``(rows, 2)`` uint64 block array for :meth:`LocalCode.encode`'s input ``base``,
    on transparent huge pages where the kernel grants them (``madvise``; the ``secmoe``
    command turns numpy's own advice off): the code's random gathers then miss the TLB far
    less (a 2^20 ReLU's encoding: 6.6 s of thread CPU on 4 KiB pages, 5.1 s on huge pages)."""
    nbytes = rows * 16
    mem = mmap.mmap(-1, nbytes + _HUGE_PAGE)
    raw = np.frombuffer(mem, np.uint8)
    off = -raw.ctypes.data % _HUGE_PAGE  # a multiple of the page size: mmap is page-aligned
    if hasattr(mmap, "MADV_HUGEPAGE"):
        mem.madvise(mmap.MADV_HUGEPAGE, off, nbytes)
    return raw[off : off + nbytes].view(np.uint64).reshape(rows, 2)


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
        self._zeros = np.zeros(4 * PAGE, np.uint8)  # read-only: the CTR plaintext of one row

    def _page_buffer(self) -> np.ndarray:
        """A buffer for one page's keystream: ``(d, PAGE + _PAD)`` little-endian uint32."""
        return np.empty((self.d, PAGE + _PAD), "<u4")

    def _keystream(self, page: int, words: np.ndarray) -> None:
        """Page ``page``'s keystream into ``words`` (a :meth:`_page_buffer`): row j, columns
        [0, PAGE), holds words j·PAGE .. j·PAGE + PAGE − 1 (one CTR stream, d calls)."""
        nonce = (page << 64).to_bytes(16, "big")
        enc = Cipher(algorithms.AES(self.key), modes.CTR(nonce)).encryptor()
        raw = words.view(np.uint8)
        for j in range(self.d):
            enc.update_into(self._zeros, raw[j])  # the padding takes update_into's slack

    def _reduce(self, w: np.ndarray) -> np.ndarray:
        """Keystream words (uint64) → indices in [0, k) (see the module docstring)."""
        if self.k & (self.k - 1) == 0:
            return w & np.uint64(self.k - 1)
        return (w * np.uint64(self.k)) >> np.uint64(32)

    def indices(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """A's column indices for rows [start, stop): ``(stop − start, d)`` int64 (for tests)."""
        stop = self.n if stop is None else stop
        words = self._page_buffer()
        rows = []
        for page in range(start // PAGE, -(-stop // PAGE)):
            self._keystream(page, words)
            rows.append(self._reduce(words[:, :PAGE].astype(np.uint64)).astype(np.int64).T)
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
        m = out.shape[0]
        if start < 0 or start + m > self.n:
            raise ValueError(f"rows [{start}, {start + m}) exceed n = {self.n}")
        src = np.ascontiguousarray(base)
        words = self._page_buffer()
        pow2 = self.k & (self.k - 1) == 0
        row = start
        while row < start + m:
            page, u0 = divmod(row, PAGE)
            w = min(PAGE, u0 + start + m - row) - u0
            self._keystream(page, words)
            kernels.lpn_rows(words, u0, self.k, pow2, src, out[row - start : row - start + w])
            row += w


def ideal_encode(out: np.ndarray, base: np.ndarray, code: LocalCode, start: int = 0) -> np.ndarray:
    """Reference for :meth:`LocalCode.encode` (a slow, obviously correct loop over d)."""
    a = code.indices(start, start + out.shape[0])
    y = np.array(out, dtype=np.uint64, copy=True)
    for j in range(code.d):
        y ^= base[a[:, j]]
    return y

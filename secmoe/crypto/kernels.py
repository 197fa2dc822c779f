"""Compiled inner loops of OT extension (numba): bit transpose, LPN encoding, GGM levels.

Each kernel is the loop that numpy could only run as several whole-array passes or a gather
(profiles in issue 18: at 10^7 COTs, numpy's ``take`` of the LPN step was 45% of Ferret's time
and the slab transpose 40% of IKNP's). They compute exactly what the numpy code computed —
the same bits, so the protocols' messages and outputs are unchanged — in one pass each,
without temporaries, and release the GIL (``nogil``), so the two parties of a local run (and
the worker threads of :func:`asyncio.to_thread`) run them in parallel.

No cryptography is written here: every AES call stays in ``cryptography`` (OpenSSL, AES-NI);
the kernels only move, select and XOR its output. They are compiled on first use and cached
on disk (``cache=True``): the first call on a fresh machine compiles them (measured 2–6 s in
all, on the shared 2-core machine); a later process loads the cache at its first call (~0.4 s),
which :func:`warm` lets a session do in its setup phase. Each kernel is called with one type
signature only (inputs are passed read-only, see :func:`readonly`), so it compiles once.

Layouts: a block is ``(2,)`` uint64 (see :mod:`secmoe.crypto.aes_hash`); a bit matrix is
``(rows, cols // 64)`` uint64, LSB-first (see :mod:`secmoe.crypto.bitmatrix`).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_ONE = np.uint64(1)
#: 64-bit words per column tile of the transpose: one 64-byte cache line of each input row.
_TILE = 8
#: Words ahead of the current tile whose cache lines :func:`transpose_xor` prefetches
#: (measured best of 8..128: 2.0 against 2.9 ms per 128 × 2^18 bits without prefetching).
_PREFETCH_WORDS = 32


def _prefetch_hint(locality: int):  # type: ignore[no-untyped-def]
    """An intrinsic ``prefetch(arr, idx)``: ``llvm.prefetch`` (read) of ``arr.ravel()[idx]``
    with the given locality (3: ``prefetcht0``, into L1; 2: ``prefetcht1``): a hint, no effect
    on the result."""

    @intrinsic
    def prefetch(typingctx, arr, idx):  # type: ignore[no-untyped-def]
        sig = types.void(arr, idx)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            fn = builder.module.declare_intrinsic(
                "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            )
            ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
            loc = ir.Constant(i32, locality)
            builder.call(fn, [ptr, ir.Constant(i32, 0), loc, ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


#: Prefetch into L1 (high locality): the transpose's input lines, read within a few tiles.
_prefetch = _prefetch_hint(3)
#: Prefetch with ``prefetcht1``: the LPN gathers (see :func:`lpn_rows`).
_prefetch_t1 = _prefetch_hint(2)


#: Round j's mask of the 64 × 64 transpose: the bits whose index has bit j clear.
_M32, _M16, _M8, _M4, _M2, _M1 = (
    np.uint64(sum(1 << b for b in range(64) if not b & j)) for j in (32, 16, 8, 4, 2, 1)
)


@njit(cache=True, nogil=True, inline="always")
def _swap_round(x: np.ndarray, j: int, mask: np.uint64) -> None:
    """Round j: swap the (rows k with bit j clear, bit-columns with bit j set) sub-blocks with
    the (rows k + j, bit-columns with bit j clear) ones, in each of the 8 lanes."""
    sj = np.uint64(j)
    for k0 in range(0, 64, 2 * j):
        for k in range(k0, k0 + j):
            for q in range(_TILE):
                t = ((x[k, q] >> sj) ^ x[k + j, q]) & mask
                x[k + j, q] ^= t
                x[k, q] ^= t << sj


@njit(cache=True, nogil=True)
def _transpose64(x: np.ndarray) -> None:
    """In place: ``x`` ``(64, 8)`` holds 8 64 × 64 bit blocks (block q = words x[:, q]); each
    is transposed (Hacker's Delight §7-3: six rounds of masked swaps). Not inlined: LLVM's
    vectorization of the inlined loop measured 2× slower than this scalar code."""
    _swap_round(x, 32, _M32)
    _swap_round(x, 16, _M16)
    _swap_round(x, 8, _M8)
    _swap_round(x, 4, _M4)
    _swap_round(x, 2, _M2)
    _swap_round(x, 1, _M1)


@njit(cache=True, nogil=True)
def transpose_xor(m: np.ndarray, u: np.ndarray, sel: np.ndarray, out: np.ndarray) -> None:
    """``out`` = the bit transpose of ``m ⊕ (u & sel[:, None])`` (pass ``sel`` all zeros for a
    plain transpose): m, u C-contiguous ``(64R, W)``, sel ``(64R,)``, out ``(64W, R)``, all
    uint64. Output row c, word rb holds bits 64·rb .. 64·rb + 63 of column c.

    Tiles of 8 words × 64 rows are read a cache line per row (the lines 4 tiles ahead
    prefetched: 64R rows far apart are too many streams for the hardware prefetcher) and
    their 8 blocks transposed in a 4 KiB buffer.
    """
    rows, w = m.shape
    r = rows // 64
    mf, uf = m.reshape(-1), u.reshape(-1)
    buf = np.zeros((r, 64, _TILE), np.uint64)
    for w0 in range(0, w, _TILE):
        nw = min(_TILE, w - w0)
        for rb in range(r):
            x = buf[rb]
            for k in range(64):
                row = 64 * rb + k
                s = sel[row]
                if nw == _TILE:  # constant trip counts: unrolled
                    if w0 + _PREFETCH_WORDS < w:
                        _prefetch(mf, row * w + w0 + _PREFETCH_WORDS)
                        _prefetch(uf, row * w + w0 + _PREFETCH_WORDS)
                    for q in range(_TILE):
                        x[k, q] = m[row, w0 + q] ^ (u[row, w0 + q] & s)
                else:
                    for q in range(nw):
                        x[k, q] = m[row, w0 + q] ^ (u[row, w0 + q] & s)
            _transpose64(x)
        for q in range(nw):
            o = 64 * (w0 + q)
            for k in range(64):
                for rb in range(r):
                    out[o + k, rb] = buf[rb, k, q]


#: Rows ahead whose gathers :func:`lpn_rows` prefetches (measured best of 2..32 with
#: ``prefetcht0``: 3.8 against 6.6–7.6 ns per gather from an 8 MiB table without prefetching;
#: in today's loop 12..32 measure alike, 6 and 8 5–15% slower).
_PREFETCH_ROWS = 12


@intrinsic
def _xor_block(typingctx, flat, idx, a0, a1):  # type: ignore[no-untyped-def]
    """``(a0 ^ flat[idx], a1 ^ flat[idx + 1])`` for a C-contiguous uint64 array ``flat``, by
    one 128-bit load and XOR: in a loop, LLVM then keeps the running sum in one vector register
    (``vpxor`` from memory; two scalar loads and XORs per block cost 20% more in
    :func:`lpn_rows`)."""
    if not (isinstance(flat, types.Array) and flat.dtype == types.uint64 and flat.layout == "C"):
        return None
    sig = types.UniTuple(types.uint64, 2)(flat, idx, a0, a1)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        v2, i32 = ir.VectorType(ir.IntType(64), 2), ir.IntType(32)
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), v2.as_pointer())
        acc = builder.insert_element(ir.Constant(v2, ir.Undefined), args[2], ir.Constant(i32, 0))
        acc = builder.insert_element(acc, args[3], ir.Constant(i32, 1))
        r = builder.xor(acc, builder.load(ptr, align=8))
        lanes = [builder.extract_element(r, ir.Constant(i32, q)) for q in (0, 1)]
        return context.make_tuple(builder, signature.return_type, lanes)

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _lpn_index(v: np.uint32, kk: np.uint64, pow2: bool) -> np.uint64:
    """A keystream word → a column index in [0, k): v mod k (k a power of two) or ⌊v·k/2^32⌋.
    Unsigned, as every index in :func:`lpn_rows`: numba then emits no negative-index wrap."""
    w = np.uint64(v)
    return (w & (kk - _ONE)) if pow2 else ((w * kk) >> np.uint64(32))


@njit(cache=True, nogil=True)
def lpn_rows(
    words: np.ndarray, u0: int, k: int, pow2: bool, base: np.ndarray, out: np.ndarray
) -> None:
    """In place, for each row i of ``out`` ``(w, 2)``: out[i] ⊕= ⨁_j base[idx(words[j, u0 + i])].

    ``words`` ``(d, ≥ PAGE)`` uint32 is one page of the code's keystream (row j: word j·PAGE + u
    at column u); idx(v) = v mod k when ``pow2`` (k a power of two), else ⌊v·k / 2^32⌋
    (:meth:`secmoe.protocols.ot.lpn.LocalCode`). The gathers of row i + 12 are prefetched
    while row i is summed (the table, 8 MiB for k = 2^19, is out of the L2 cache), with
    ``prefetcht1``: ns per gather, alone / 2 threads × 2 tables (``benchmarks/lpn_encode.py``),
    went from 2.9–3.7 / 3.6–5.0 with ``prefetcht0`` to 2.4–2.8 / 2.5–3.0, and to 1.9 / 2.1
    with the sum in one vector register (:func:`_xor_block`) and unsigned indices.
    """
    d = words.shape[0]
    kk = np.uint64(k)
    n = out.shape[0]
    flat = base.reshape(-1)
    two, ahead = np.uint64(2), np.uint64(_PREFETCH_ROWS)
    for i in range(n):
        u = np.uint64(u0 + i)
        if i + _PREFETCH_ROWS < n:
            for j in range(d):
                _prefetch_t1(flat, two * _lpn_index(words[j, u + ahead], kk, pow2))
        a0 = out[i, 0]
        a1 = out[i, 1]
        for j in range(d):
            a0, a1 = _xor_block(flat, two * _lpn_index(words[j, u], kk, pow2), a0, a1)
        out[i, 0] = a0
        out[i, 1] = a1


@njit(cache=True, nogil=True)
def ggm_children(o: np.ndarray, x: np.ndarray, t: int, sums: np.ndarray, clear_lsb: bool) -> None:
    """One slice of a GGM level: ``o ⊕= x`` (o holds π_β(x)), ``sums[p mod t] ⊕= o[p]``, then,
    if ``clear_lsb``, bit 0 of every ``o[p]`` cleared. o, x ``(m, 2)``, sums ``(t, 2)``."""
    clear = ~_ONE
    for p in range(o.shape[0]):
        a0 = o[p, 0] ^ x[p, 0]
        a1 = o[p, 1] ^ x[p, 1]
        i = p % t
        sums[i, 0] ^= a0
        sums[i, 1] ^= a1
        o[p, 0] = a0 & clear if clear_lsb else a0
        o[p, 1] = a1


def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``: kernels take their inputs so, whatever the caller's array,
    so that numba compiles one specialization (writability is part of its array type)."""
    v = a.view()
    v.flags.writeable = False
    return v


def warm() -> None:
    """Load (or, on a fresh machine, compile) every kernel now, on tiny inputs of the types
    the protocols pass: a session calls this in its setup phase, so that no timed operation
    pays for it."""
    blocks = np.zeros((64, 2), np.uint64)
    m = readonly(np.zeros((64, 1), np.uint64))
    transpose_xor(m, m, np.zeros(64, np.uint64), np.empty((64, 1), np.uint64))
    lpn_rows(np.zeros((1, 64), np.uint32), 0, 64, True, blocks, np.zeros((2, 2), np.uint64))
    ggm_children(blocks[:2], blocks[2:4], 1, blocks[4:5], True)

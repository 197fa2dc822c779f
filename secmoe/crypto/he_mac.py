"""Negacyclic NTTs and NTT-domain multiply-accumulates of RNS polynomials (numba), for
encrypted selection.

In the NTT domain a product of ring elements is pointwise: residue i, slot n of a·w is
a[i, n]·w[i, n] mod q_i. :meth:`RnsMac.mac` computes sums of many such products,
acc += Σ a·w, exactly as SEAL's ``multiply_plain`` + ``add_inplace`` on NTT-form ciphertexts
would (the same residues, bit for bit), without a SEAL call, a plaintext object or a temporary
ciphertext per product; :meth:`RnsMac.ntt` is SEAL's forward NTT (the same table of roots,
the same order), so plaintexts need no SEAL round trip either; :meth:`RnsMac.scale`
multiplies by a constant.
:mod:`secmoe.protocols.he_select` multiplies every expanded one-hot ciphertext by every
expert's weight block this way (issue 18's profile: SEAL's ``multiply_plain`` 0.75 ms per
product at N = 16384, six primes, plus ``add_inplace`` and a plaintext conversion through
SEAL's serialization per weight block and call).

Methods. Products: with 28-bit limbs (x = x1·2^28 + x0, q < 2^56) the limb products are summed
in three 64-bit lanes, c0 += x0·w0, c1 += x0·w1 + x1·w0, c2 += x1·w1 (32-bit multiplies:
the loop vectorizes, where a 64×64→128-bit product would not), reduced once per
:data:`_LIMIT` terms and at the end, (c0 + c1·2^28 + c2·2^56) mod q. The loop runs over chunks
of :data:`CHUNK` slots, so that a sum's lanes stay in the L1 cache while all its terms are
added. NTT: Cooley–Tukey with Harvey's lazy butterflies (values in [0, 4q)), Shoup's
multiplication by each root (its high product from 32-bit halves, which vectorizes).

Kernels release the GIL (``nogil``) and compile once (``cache=True``; C-contiguous ``uint64``
arrays, ``int64`` indices).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

U64 = np.uint64
#: Slots per chunk of :func:`_mac` (three lanes of 4 KiB each; 512 measured best of 256..4096).
CHUNK = 512
_M32, _S32 = np.uint64(0xFFFFFFFF), np.uint64(32)
#: Butterfly groups at least this long run on array views (they vectorize), shorter ones on
#: indices (a view's set-up costs more than they do; 4 measured best of 1..64).
_WIDE = 4
_M28, _S28 = np.uint64((1 << 28) - 1), np.uint64(28)
#: Terms summed between reductions: c1 < 2^56 + LIMIT·2·(2^28 − 1)^2 < 2^64.
_LIMIT = ((1 << 64) - 1 - (1 << 56)) // (2 * ((1 << 28) - 1) ** 2)


@njit(cache=True, nogil=True, inline="always")
def _mulhi_split(v: np.uint64, c0: np.uint64, c1: np.uint64) -> np.uint64:
    """High 64 bits of v·c, c = c1·2^32 + c0, from 32-bit halves (vectorizes)."""
    v0, v1 = v & _M32, v >> _S32
    t = v1 * c0 + ((v0 * c0) >> _S32)
    w1 = (t & _M32) + v0 * c1
    return v1 * c1 + (t >> _S32) + (w1 >> _S32)


@njit(cache=True, nogil=True, inline="always")
def _reduce(v: np.uint64, q: np.uint64, k: np.ndarray) -> np.uint64:
    """v mod q for any v < 2^64 (Barrett with ⌊2^64/q⌋ = k[1]·2^32 + k[0]: the estimate is
    low by at most 2)."""
    r = v - _mulhi_split(v, k[0], k[1]) * q
    r = r - q if r >= q else r
    return r - q if r >= q else r


@njit(cache=True, nogil=True, inline="always")
def _shoup(v: np.uint64, c: np.uint64, c0: np.uint64, c1: np.uint64, q: np.uint64) -> np.uint64:
    """v·c mod q for v < 2^64, c < q, ⌊c·2^64/q⌋ = c1·2^32 + c0."""
    r = v * c - _mulhi_split(v, c0, c1) * q
    return r - q if r >= q else r


@njit(cache=True, nogil=True, inline="always")
def _combine(c0: np.uint64, c1: np.uint64, c2: np.uint64, q: np.uint64, k: np.ndarray) -> np.uint64:
    """(c0 + c1·2^28 + c2·2^56) mod q; k: :meth:`RnsMac._constants`."""
    v = _reduce(c0, q, k) + _shoup(c1, k[2], k[3], k[4], q)
    v = v - q if v >= q else v
    v += _shoup(c2, k[5], k[6], k[7], q)
    return v - q if v >= q else v


@njit(cache=True, nogil=True)
def _mac(
    acc: np.ndarray,
    src: np.ndarray,
    w: np.ndarray,
    pairs: np.ndarray,
    starts: np.ndarray,
    primes: np.ndarray,
    consts: np.ndarray,
) -> None:
    """acc[a, s, i] = (acc[a, s, i] + Σ_{(a, l, k) ∈ pairs} src[l, s, i]·w[k, i]) mod q_i
    (slotwise), for s < S, i < L: acc (A, S, L, N) in [0, q), src (P, S, ≥L, N) and
    w (K, ≥L, N) in [0, q < 2^56); pairs (M, 3) sorted by a, group g (one a) =
    pairs[starts[g]:starts[g+1]]; ``consts`` per prime: see :func:`_combine`."""
    n_s, n_l, n = acc.shape[1:]
    c0 = np.empty(CHUNK, np.uint64)
    c1 = np.empty(CHUNK, np.uint64)
    c2 = np.empty(CHUNK, np.uint64)
    for i in range(n_l):
        q, k = primes[i], consts[i]
        for n0 in range(0, n, CHUNK):
            width = min(CHUNK, n - n0)
            for g in range(starts.shape[0] - 1):
                a = pairs[starts[g], 0]
                for s in range(n_s):
                    c0[:] = 0
                    c1[:] = 0
                    c2[:] = 0
                    count = 0
                    for p in range(starts[g], starts[g + 1]):
                        xr = src[pairs[p, 1], s, i, n0 : n0 + width]
                        wr = w[pairs[p, 2], i, n0 : n0 + width]
                        for t in range(width):
                            x, y = xr[t], wr[t]
                            x0, x1, y0, y1 = x & _M28, x >> _S28, y & _M28, y >> _S28
                            c0[t] += x0 * y0
                            c1[t] += x0 * y1 + x1 * y0
                            c2[t] += x1 * y1
                        count += 1
                        if count == _LIMIT:
                            count = 0
                            for t in range(width):
                                c0[t] = _combine(c0[t], c1[t], c2[t], q, k)
                                c1[t] = 0
                                c2[t] = 0
                    out = acc[a, s, i, n0 : n0 + width]
                    for t in range(width):
                        v = out[t] + _combine(c0[t], c1[t], c2[t], q, k)
                        out[t] = v - q if v >= q else v


@njit(cache=True, nogil=True)
def _scale(a: np.ndarray, c: np.ndarray, primes: np.ndarray) -> None:
    """In place, a[j, i] ↦ a[j, i]·c[i, 0] mod q_i: a (J, L, N) in [0, q), c[i] = (c_i, its
    Shoup factor's 32-bit halves)."""
    for j in range(a.shape[0]):
        for i in range(a.shape[1]):
            q, x = primes[i], a[j, i]
            for k in range(x.shape[0]):
                x[k] = _shoup(x[k], c[i, 0], c[i, 1], c[i, 2], q)


@njit(cache=True, nogil=True)
def _ntt(a: np.ndarray, roots: np.ndarray, rfac: np.ndarray, primes: np.ndarray) -> None:
    """In place, a[j, i] ↦ its negacyclic NTT mod q_i in SEAL's order: a (J, L, N) in
    [0, q); roots[i, k] = ψ_i^rev(k) (:func:`_root_table`), rfac their Shoup factors."""
    n = a.shape[2]
    for i in range(a.shape[1]):
        q = primes[i]
        two_q = q + q
        for j in range(a.shape[0]):
            x = a[j, i]
            m, gap = 1, n >> 1
            while m < n:
                for g in range(m):
                    r, rp = roots[i, m + g], rfac[i, m + g]
                    c0, c1 = rp & _M32, rp >> _S32
                    if gap >= _WIDE:  # views: the loop vectorizes
                        xa = x[2 * g * gap : (2 * g + 1) * gap]
                        xb = x[(2 * g + 1) * gap : (2 * g + 2) * gap]
                        for k in range(gap):
                            u = xa[k]
                            u = u - two_q if u >= two_q else u
                            v = xb[k]
                            v = v * r - _mulhi_split(v, c0, c1) * q
                            xa[k] = u + v
                            xb[k] = u + two_q - v
                    else:  # short loops: no views (their set-up would cost more)
                        for k in range(2 * g * gap, (2 * g + 1) * gap):
                            u = x[k]
                            u = u - two_q if u >= two_q else u
                            v = x[k + gap]
                            v = v * r - _mulhi_split(v, c0, c1) * q
                            x[k] = u + v
                            x[k + gap] = u + two_q - v
                m <<= 1
                gap >>= 1
            for k in range(n):
                u = x[k]
                u = u - two_q if u >= two_q else u
                x[k] = u - q if u >= q else u


@njit(cache=True, nogil=True)
def _small_to_rns(polys: np.ndarray, primes: np.ndarray, out: np.ndarray) -> None:
    """out[j, i, n] = polys[j, n] mod q_i for signed |polys| < min q_i."""
    for j in range(polys.shape[0]):
        for i in range(primes.shape[0]):
            q = primes[i]
            for n in range(polys.shape[1]):
                v = polys[j, n]
                out[j, i, n] = np.uint64(v) if v >= 0 else q - np.uint64(-v)


def _root_table(q: int, n: int) -> list[int]:
    """ψ^rev(k) for k < n: ψ the smallest primitive 2n-th root of unity mod q (SEAL's
    choice), rev the log2(n)-bit reversal (SEAL's table order)."""
    if (q - 1) % (2 * n):
        raise ValueError(f"{q} is not 1 mod 2N")
    for x in range(2, q):
        g = pow(x, (q - 1) // (2 * n), q)
        if pow(g, n, q) == q - 1:
            break
    psi, cur, g2 = g, g, g * g % q
    for _ in range(n):
        psi, cur = min(psi, cur), cur * g2 % q
    bits = n.bit_length() - 1
    table = [0] * n
    power = 1
    for k in range(n):
        table[int(f"{k:0{bits}b}"[::-1], 2) if bits else 0] = power
        power = power * psi % q
    return table


class RnsMac:
    """NTTs and NTT-domain multiply-accumulates at one RNS level (``primes``: each below
    2^56 and 1 mod 2N)."""

    def __init__(self, primes: Sequence[int]) -> None:
        ps = [int(q) for q in primes]
        if not ps or max(ps) >= 1 << 56:
            raise ValueError("RnsMac needs primes below 2^56")
        self.primes = np.array(ps, dtype=U64)
        self._consts = np.array([self._constants(q) for q in ps], dtype=U64)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _constants(q: int) -> list[int]:
        """Per prime: ⌊2^64/q⌋ (32-bit halves), 2^28 mod q and 2^56 mod q with their Shoup
        factors (halves)."""
        out = [((1 << 64) // q) & 0xFFFFFFFF, (1 << 64) // q >> 32]
        for c in ((1 << 28) % q, (1 << 56) % q):
            f = (c << 64) // q
            out += [c, f & 0xFFFFFFFF, f >> 32]
        return out

    def prepare(self, n: int) -> None:
        """Build the NTT tables for N = ``n`` and load (on a fresh machine, compile) the
        kernels on zero inputs of the types the protocols pass: a session's setup phase, so
        that no timed operation pays for them."""
        a = self.small_to_rns(np.zeros((1, n), dtype=np.int64))
        self.ntt(a)
        self.scale(a, [1] * self.level)
        self.mac(a[None].copy(), a[None], a, [(0, 0, 0)])

    @property
    def level(self) -> int:
        return len(self.primes)

    def small_to_rns(self, polys: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Residues (J, L, N) of signed polynomials (J, N), |coefficients| < min q_i (into
        ``out``, C-contiguous, if given: a reused buffer costs no page faults)."""
        polys = np.ascontiguousarray(polys, dtype=np.int64)
        shape = (polys.shape[0], self.level, polys.shape[1])
        if out is None:
            out = np.empty(shape, dtype=U64)
        elif out.shape != shape or out.dtype != U64 or not out.flags.c_contiguous:
            raise ValueError(f"output buffer {out.shape} is not C-contiguous uint64 {shape}")
        _small_to_rns(polys, self.primes, out)
        return out

    def ntt(self, a: np.ndarray) -> np.ndarray:
        """In place and returned: the negacyclic NTT (SEAL's, bit for bit) of each residue
        polynomial of a (J, L, N) (residues in [0, q_i), N a power of two)."""
        if a.dtype != U64 or not a.flags.c_contiguous or a.ndim != 3 or a.shape[1] != self.level:
            raise ValueError(f"NTT input must be C-contiguous uint64 (J, {self.level}, N)")
        tab = self._tables.get(a.shape[2])
        if tab is None:
            ps = [int(q) for q in self.primes]
            roots = [_root_table(q, a.shape[2]) for q in ps]
            fac = [[(r << 64) // q for r in row] for row, q in zip(roots, ps, strict=True)]
            tab = np.array(roots, dtype=U64), np.array(fac, dtype=U64)
            self._tables[a.shape[2]] = tab
        _ntt(a, tab[0], tab[1], self.primes)
        return a

    def scale(self, a: np.ndarray, c: Sequence[int]) -> np.ndarray:
        """In place and returned: a (J, L, N) (residues, either domain) times the constant
        c (its residues c[i] mod q_i, either domain: a constant is the same in both)."""
        if a.dtype != U64 or not a.flags.c_contiguous or a.ndim != 3 or a.shape[1] != self.level:
            raise ValueError(f"scaled array must be C-contiguous uint64 (J, {self.level}, N)")
        fac = []
        for ci, q in zip(c, self.primes.tolist(), strict=True):
            f = (int(ci) << 64) // q
            fac.append([int(ci), f & 0xFFFFFFFF, f >> 32])
        _scale(a, np.array(fac, dtype=U64), self.primes)
        return a

    def mac(
        self,
        acc: np.ndarray,
        src: np.ndarray,
        w: np.ndarray,
        pairs: np.ndarray | Sequence[tuple[int, int, int]],
    ) -> None:
        """In place: acc[a] += src[l] ⊙ w[k] mod q for every (a, l, k) in ``pairs``, to each
        of the S components of src[l]: acc (A, S, L, N), src (P, S, ≥L, N), w (K, ≥L, N),
        NTT-domain residues in [0, q_i) (L: this level; only the first L primes of src and w
        are read). Exactly SEAL's multiply_plain + add_inplace on NTT-form ciphertexts."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 3)
        pairs = np.ascontiguousarray(pairs[np.argsort(pairs[:, 0], kind="stable")])
        if acc.ndim != 4 or acc.shape[2] != self.level or src.shape[1] != acc.shape[1]:
            raise ValueError(f"accumulators {acc.shape}, sources {src.shape} at level {self.level}")
        if (
            min(src.shape[2], w.shape[1]) < self.level
            or not src.shape[3] == w.shape[2] == acc.shape[3]
        ):
            raise ValueError(f"sources {src.shape}, multipliers {w.shape} do not match")
        if pairs.size and (
            pairs.min() < 0 or (pairs.max(axis=0) >= (len(acc), len(src), len(w))).any()
        ):
            raise ValueError("multiply-accumulate index out of range")
        if not all(x.dtype == U64 and x.flags.c_contiguous for x in (acc, src, w)):
            raise ValueError("multiply-accumulate arrays must be C-contiguous uint64")
        starts = np.flatnonzero(np.diff(pairs[:, 0], prepend=-1, append=-1) != 0)
        _mac(acc, src, w, pairs, starts, self.primes, self._consts)

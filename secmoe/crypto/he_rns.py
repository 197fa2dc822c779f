"""Exact RNS arithmetic on numpy ``uint64`` for secmoe's BFV layer (no SEAL, no I/O).

Residues mod primes q < 2^61 are ``uint64``. Products by a *fixed* multiplier use Shoup's
method (w' = ⌊w·2^64/q⌋ precomputed; one 64×64→128 high product per element, done with 32-bit
halves), which covers everything the protocols need: scaling by constants, products by the
secret key or the public key in the NTT domain, CRT recombination.

Message encoding with t = 2^b (b ≤ 64) uses exact scaling: Δ(m) = round(q·m / 2^b) mod q.
Decoding at a two-prime level returns round(2^b·φ / q) mod 2^b for the phase φ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .prg import PRG

U64 = np.uint64
_M32 = U64(0xFFFFFFFF)
_S32 = U64(32)


def mulhi64(a: np.ndarray, b: np.ndarray | np.uint64) -> np.ndarray:
    """High 64 bits of the 128-bit products a·b (elementwise, broadcasting)."""
    a = np.asarray(a, dtype=U64)
    b = np.asarray(b, dtype=U64)
    a_lo, a_hi = a & _M32, a >> _S32
    b_lo, b_hi = b & _M32, b >> _S32
    t = a_hi * b_lo + ((a_lo * b_lo) >> _S32)
    w1 = (t & _M32) + a_lo * b_hi
    return a_hi * b_hi + (t >> _S32) + (w1 >> _S32)


def shoup_factor(w: int | np.ndarray, q: int) -> np.ndarray:
    """⌊w·2^64 / q⌋ for w < q (scalar or array), as ``uint64``."""
    if np.ndim(w) == 0:
        return U64((int(w) << 64) // q)
    flat = np.asarray(w, dtype=U64).reshape(-1)
    out = np.fromiter(((int(v) << 64) // q for v in flat.tolist()), dtype=U64, count=flat.size)
    return out.reshape(np.shape(w))


def shoup_mul(x: np.ndarray, w: np.ndarray | np.uint64, wp: np.ndarray | np.uint64, q: int):
    """x·w mod q for any x < 2^64, w < q (w' = :func:`shoup_factor`), result in [0, q)."""
    x = np.asarray(x, dtype=U64)
    qq = U64(q)
    r = x * w - mulhi64(x, wp) * qq
    return np.where(r >= qq, r - qq, r)


def add_mod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a + b) mod q for a, b in [0, q)."""
    qq = U64(q)
    s = a + b
    return np.where(s >= qq, s - qq, s)


def sub_mod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """(a − b) mod q for a, b in [0, q)."""
    qq = U64(q)
    return np.where(a >= b, a - b, a + (qq - b))


def neg_mod(a: np.ndarray, q: int) -> np.ndarray:
    """(−a) mod q for a in [0, q)."""
    return np.where(a == 0, a, U64(q) - a)


def signed_to_rns(x: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """Signed integers (int64) → residues, shape ``(L, *x.shape)``."""
    x = np.asarray(x, dtype=np.int64)
    neg = x < 0
    mag = np.where(neg, -x, x).astype(U64)  # −(−2^63) wraps to 2^63 as uint64: still right
    out = np.empty((len(primes), *x.shape), dtype=U64)
    for i, q in enumerate(primes):
        r = mag % U64(q)
        out[i] = np.where(neg & (r != 0), U64(q) - r, r)
    return out


def centered_to_rns(x: np.ndarray, primes: Sequence[int], bits: int = 64) -> np.ndarray:
    """Ring elements of Z_{2^bits} taken as centered integers in [−2^(bits−1), 2^(bits−1))."""
    x = np.asarray(x, dtype=U64)
    if bits < 64:
        x = x & U64((1 << bits) - 1)
        shift = U64(64 - bits)
        signed = (x << shift).view(np.int64) >> np.int64(64 - bits)
    else:
        signed = x.view(np.int64)
    return signed_to_rns(signed, primes)


def uint_to_rns(x: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """Unsigned 64-bit integers → residues, shape ``(L, *x.shape)``."""
    x = np.asarray(x, dtype=U64)
    return np.stack([x % U64(q) for q in primes])


class Scaler:
    """Exact-scaling encoder m ↦ round(q·m / 2^bits) mod q_i at one RNS level.

    Args:
        primes: the level's primes (q = their product).
        bits: log2 of the plaintext modulus (1 ≤ bits ≤ 64).
    """

    def __init__(self, primes: Sequence[int], bits: int) -> None:
        if not 1 <= bits <= 64:
            raise ValueError("bits must be in [1, 64]")
        self.primes = tuple(int(p) for p in primes)
        self.bits = bits
        q = 1
        for p in self.primes:
            q *= p
        self.q = q
        q_hi, q_lo = q >> bits, q & ((1 << bits) - 1)
        self._q_lo = U64(q_lo)
        self._hi = [(U64(q_hi % p), shoup_factor(q_hi % p, p)) for p in self.primes]

    def encode(self, m: np.ndarray) -> np.ndarray:
        """Residues of round(q·m/2^bits) for m in [0, 2^bits) (``uint64``), shape (L, …)."""
        m = np.asarray(m, dtype=U64)
        b = self.bits
        if b < 64:
            m = m & U64((1 << b) - 1)
        lo = m * self._q_lo
        hi = mulhi64(m, self._q_lo)
        if b == 64:
            rnd = hi + (lo >> U64(63))
        else:
            rnd = (hi << U64(64 - b)) | (lo >> U64(b))
            rnd = rnd + ((lo >> U64(b - 1)) & U64(1))
        out = np.empty((len(self.primes), *m.shape), dtype=U64)
        for i, p in enumerate(self.primes):
            w, wp = self._hi[i]
            out[i] = add_mod(shoup_mul(m, w, wp, p), rnd % U64(p), p)
        return out


class Decoder2:
    """m = round(2^bits·φ / (q0·q1)) mod 2^bits from the residues (a0, a1) of φ.

    Valid for primes below 2^50 (float64 carries the fractional parts with error < 2^−9,
    negligible next to the noise margin of a correct decryption).
    """

    def __init__(self, q0: int, q1: int, bits: int) -> None:
        if max(q0, q1) >= 1 << 50:
            raise ValueError("Decoder2 needs primes below 2^50")
        self.q0, self.q1, self.bits = int(q0), int(q1), bits
        inv = pow(q0, -1, q1)
        self._inv = (U64(inv), shoup_factor(inv, q1))
        self._i1 = U64((1 << bits) // q1)
        self._r1 = float((1 << bits) % q1) / float(q1)
        self._s0 = float(1 << bits) / (float(q0) * float(q1))

    def decode(self, a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
        """The messages (``uint64`` in [0, 2^bits)) of phases given by residues a0, a1."""
        q1 = self.q1
        a0 = np.asarray(a0, dtype=U64)
        a1 = np.asarray(a1, dtype=U64)
        d = sub_mod(a1, a0 % U64(q1), q1)
        v = shoup_mul(d, self._inv[0], self._inv[1], q1)  # φ = a0 + q0·v, v < q1
        frac = v.astype(np.float64) * self._r1 + a0.astype(np.float64) * self._s0
        m = v * self._i1 + np.rint(frac).astype(U64)
        if self.bits < 64:
            m &= U64((1 << self.bits) - 1)
        return m


def decode_exact(residues: np.ndarray, primes: Sequence[int], bits: int) -> np.ndarray:
    """Reference decoder with Python integers (any level): round(2^bits·φ/q) mod 2^bits."""
    residues = np.asarray(residues, dtype=U64)
    q = 1
    for p in primes:
        q *= int(p)
    basis = []
    for p in primes:
        qi = q // int(p)
        basis.append(qi * pow(qi, -1, int(p)))
    flat = residues.reshape(len(primes), -1)
    out = np.empty(flat.shape[1], dtype=U64)
    for j in range(flat.shape[1]):
        phi = sum(int(flat[i, j]) * basis[i] for i in range(len(primes))) % q
        out[j] = ((phi << bits) + q // 2) // q % (1 << bits)
    return out.reshape(residues.shape[1:])


# --- samplers (all randomness from a PRG) -------------------------------------------------


def sample_ternary(prg: PRG, n: int) -> np.ndarray:
    """Uniform ternary coefficients in {−1, 0, 1} (``int64``)."""
    return prg.below(3, n).astype(np.int64) - 1


def sample_cbd(prg: PRG, shape: int | tuple[int, ...], eta: int = 21) -> np.ndarray:
    """Centered binomial noise: Σ_{k<η} (a_k − b_k) with uniform bits (``int64``, |e| ≤ η)."""
    shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(shape_t, dtype=np.int64))
    nbytes = (2 * eta + 7) // 8
    bits = np.unpackbits(prg.uint8((count, nbytes)), axis=1)[:, : 2 * eta]
    e = bits[:, :eta].sum(axis=1, dtype=np.int64) - bits[:, eta:].sum(axis=1, dtype=np.int64)
    return e.reshape(shape_t)


def sample_uniform_rns(prg: PRG, primes: Sequence[int], n: int) -> np.ndarray:
    """A uniform element of R_q (each residue uniform mod its prime), shape (L, n)."""
    return np.stack([prg.below(int(q), n) for q in primes])


def sample_flood_rns(prg: PRG, beta: int, primes: Sequence[int], n: int) -> np.ndarray:
    """Residues of integers uniform in [−2^β, 2^β), shape (L, n) (flooding noise)."""
    words = (beta + 1 + 63) // 64
    raw = prg.uint64((words, n))
    top_bits = beta + 1 - 64 * (words - 1)
    if top_bits < 64:
        raw[words - 1] &= U64((1 << top_bits) - 1)
    out = np.empty((len(primes), n), dtype=U64)
    for i, q in enumerate(primes):
        acc = raw[0] % U64(q)
        for k in range(1, words):
            c = pow(2, 64 * k, q)
            acc = add_mod(acc, shoup_mul(raw[k], U64(c), shoup_factor(c, q), q), q)
        off = U64(pow(2, beta, q))
        out[i] = sub_mod(acc, np.full(n, off, dtype=U64), q)
    return out

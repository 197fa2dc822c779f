"""The group for base OT: ristretto255 (RFC 9496), implemented with Python integers.

Why this group: base OT (Chou–Orlandi) needs a prime-order group with point addition, scalar
multiplication and a canonical encoding, at the 128-bit level. ristretto255 is exactly that: the
prime-order quotient of edwards25519 (order ℓ = 2^252 + 277423…, ~126-bit generic security, the
level of X25519/Ed25519), with a canonical 32-byte encoding that rejects every non-canonical or
off-group string, so no cofactor pitfalls. The alternatives lose: ``cryptography``'s X25519/P-256
expose no point addition, and a 3072-bit MODP group (RFC 3526) costs ~4 ms per exponentiation in
Python (≈1 s for 128 OTs) and 384-byte elements on the wire.

Arithmetic: extended twisted-Edwards coordinates (X : Y : Z : T), a = −1, with the complete
``add-2008-hwcd-3`` and ``dbl-2008-hwcd`` formulas (Hisil–Wong–Carter–Dawson 2008).
Variable-base multiplication uses a 4-bit fixed window (~252 doublings + 64 additions, ~1 ms);
:class:`FixedBase` precomputes a radix-16 comb for a point used many times (the generator, the
Chou–Orlandi sender's A), after which a multiplication is 64 additions.

Not constant-time (Python integers): timing side channels are out of scope here; secmoe's model
is semi-honest parties and the base OTs are run once per session.

A point is a tuple ``(X, Y, Z, T)`` of ints mod p; points are compared with :func:`equal`, not
``==`` (projective coordinates are not unique).
"""

from __future__ import annotations

from secmoe.crypto.prg import PRG

Point = tuple[int, int, int, int]

#: The field prime 2^255 − 19.
P = 2**255 - 19
#: The group order ℓ (prime).
ORDER = 2**252 + 27742317777372353535851937790883648493
#: Bytes of an encoded element.
ENCODED_BYTES = 32

D = -121665 * pow(121666, P - 2, P) % P
D2 = 2 * D % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _is_negative(x: int) -> bool:
    return x % P & 1 == 1


def _abs(x: int) -> int:
    x %= P
    return P - x if x & 1 else x


def sqrt_ratio_m1(u: int, v: int) -> tuple[bool, int]:
    """RFC 9496 §4.2: (was_square, the non-negative square root of u/v or of SQRT_M1·u/v)."""
    u %= P
    v %= P
    v3 = v * v % P * v % P
    v7 = v3 * v3 % P * v % P
    r = u * v3 % P * pow(u * v7 % P, (P - 5) // 8, P) % P
    check = v * r % P * r % P
    correct = check == u
    flipped = check == (-u) % P
    flipped_i = check == (-u) * SQRT_M1 % P
    if flipped or flipped_i:
        r = r * SQRT_M1 % P
    return correct or flipped, _abs(r)


INVSQRT_A_MINUS_D = sqrt_ratio_m1(1, (-1 - D) % P)[1]

IDENTITY: Point = (0, 1, 1, 0)


def _base_point() -> Point:
    # The edwards25519 base point: y = 4/5, x non-negative.
    y = 4 * pow(5, P - 2, P) % P
    ok, x = sqrt_ratio_m1(y * y - 1, D * y * y + 1)
    assert ok
    return (x, y, 1, x * y % P)


GENERATOR: Point = _base_point()


def add(p1: Point, p2: Point) -> Point:
    """p1 + p2 (complete formula: works for doubling and the identity too)."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * D2 % P * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def double(p1: Point) -> Point:
    """2·p1."""
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def neg(p1: Point) -> Point:
    """−p1."""
    x1, y1, z1, t1 = p1
    return (-x1 % P, y1, z1, -t1 % P)


def sub(p1: Point, p2: Point) -> Point:
    """p1 − p2."""
    return add(p1, neg(p2))


def equal(p1: Point, p2: Point) -> bool:
    """Equality in the ristretto255 group (RFC 9496 §4.5)."""
    x1, y1, _, _ = p1
    x2, y2, _, _ = p2
    return (x1 * y2 - y1 * x2) % P == 0 or (y1 * y2 - x1 * x2) % P == 0


def mul(k: int, p1: Point) -> Point:
    """k·p1 for any integer k (4-bit fixed window)."""
    k %= ORDER
    table = [IDENTITY, p1]
    for _ in range(14):
        table.append(add(table[-1], p1))
    acc = IDENTITY
    for shift in range(252, -1, -4):
        acc = double(double(double(double(acc))))
        digit = (k >> shift) & 15
        if digit:
            acc = add(acc, table[digit])
    return acc


class FixedBase:
    """Precomputed multiples of one point: ``table[i][d] = d·16^i·point`` (64 × 16 points).

    Building it costs about four variable-base multiplications; each :meth:`mul` is then at
    most 64 additions.
    """

    def __init__(self, point: Point) -> None:
        self.point = point
        self._table: list[list[Point]] = []
        base = point
        for _ in range(64):
            row = [IDENTITY, base]
            for _ in range(14):
                row.append(add(row[-1], base))
            self._table.append(row)
            base = add(row[15], base)  # 16·base

    def mul(self, k: int) -> Point:
        """k·point."""
        k %= ORDER
        acc = IDENTITY
        for i in range(64):
            digit = (k >> (4 * i)) & 15
            if digit:
                acc = add(acc, self._table[i][digit])
        return acc


_GENERATOR_TABLE: FixedBase | None = None


def base_mul(k: int) -> Point:
    """k·G for the generator G (comb table built on first use)."""
    global _GENERATOR_TABLE
    if _GENERATOR_TABLE is None:
        _GENERATOR_TABLE = FixedBase(GENERATOR)
    return _GENERATOR_TABLE.mul(k)


def random_scalar(prg: PRG) -> int:
    """A uniform scalar in [1, ℓ) (512 PRG bits reduced mod ℓ: bias < 2^−259)."""
    while True:
        k = int.from_bytes(prg.random_bytes(64), "little") % ORDER
        if k:
            return k


def encode(p1: Point) -> bytes:
    """The canonical 32-byte encoding (RFC 9496 §4.3.2)."""
    x0, y0, z0, t0 = p1
    u1 = (z0 + y0) * (z0 - y0) % P
    u2 = x0 * y0 % P
    _, invsqrt = sqrt_ratio_m1(1, u1 * u2 % P * u2)
    den1 = invsqrt * u1 % P
    den2 = invsqrt * u2 % P
    z_inv = den1 * den2 % P * t0 % P
    if _is_negative(t0 * z_inv):
        x, y = y0 * SQRT_M1 % P, x0 * SQRT_M1 % P
        den_inv = den1 * INVSQRT_A_MINUS_D % P
    else:
        x, y, den_inv = x0, y0, den2
    if _is_negative(x * z_inv):
        y = -y % P
    s = _abs(den_inv * (z0 - y))
    return s.to_bytes(32, "little")


def decode(data: bytes) -> Point:
    """Decode a canonical encoding (RFC 9496 §4.3.1).

    Raises:
        ValueError: if ``data`` is not the canonical encoding of a group element.
    """
    if len(data) != ENCODED_BYTES:
        raise ValueError(f"ristretto255 element must be 32 bytes, got {len(data)}")
    s = int.from_bytes(data, "little")
    if s >= P or _is_negative(s):
        raise ValueError("non-canonical ristretto255 encoding")
    ss = s * s % P
    u1 = (1 - ss) % P
    u2 = (1 + ss) % P
    u2_sqr = u2 * u2 % P
    v = (-(D * u1 % P * u1) - u2_sqr) % P
    was_square, invsqrt = sqrt_ratio_m1(1, v * u2_sqr)
    den_x = invsqrt * u2 % P
    den_y = invsqrt * den_x % P * v % P
    x = _abs(2 * s * den_x)
    y = u1 * den_y % P
    t = x * y % P
    if not was_square or _is_negative(t) or y == 0:
        raise ValueError("invalid ristretto255 encoding")
    return (x, y, 1, t)

"""Arithmetic in the ring Z_{2^ℓ} on numpy ``uint64`` and fixed-point encoding.

Values live in ``uint64`` arrays whatever ℓ is; :class:`Ring` reduces them mod 2^ℓ (a mask).
numpy's ``uint64`` arithmetic wraps mod 2^64, so for ℓ ≤ 64 add/sub/mul followed by
``ring.reduce`` is exact arithmetic mod 2^ℓ.

Fixed point: a real x is encoded as round(x · 2^f) mod 2^ℓ (two's complement). The paper uses
ℓ = 64, f = 18 (:data:`DEFAULT_RING`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ring:
    """Z_{2^bits} with fixed-point scale 2^frac_bits."""

    bits: int = 64
    frac_bits: int = 18

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 64:
            raise ValueError(f"ring bit width must be in [1, 64], got {self.bits}")
        if not 0 <= self.frac_bits < self.bits:
            raise ValueError(f"frac_bits must be in [0, bits), got {self.frac_bits}")

    @property
    def mask(self) -> np.uint64:
        """2^bits − 1 as ``uint64``."""
        return np.uint64((1 << self.bits) - 1)

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def scale(self) -> float:
        return float(1 << self.frac_bits)

    def reduce(self, x: np.ndarray) -> np.ndarray:
        """x mod 2^bits (as uint64)."""
        x = np.asarray(x, dtype=np.uint64)
        if self.bits == 64:
            return x
        return x & self.mask

    def from_signed(self, x: np.ndarray) -> np.ndarray:
        """Embed signed integers (int64) into the ring."""
        return self.reduce(np.asarray(x, dtype=np.int64).astype(np.uint64))

    def to_signed(self, x: np.ndarray) -> np.ndarray:
        """Interpret ring elements as signed integers in [−2^(ℓ−1), 2^(ℓ−1))."""
        x = self.reduce(x)
        if self.bits == 64:
            return x.view(np.int64) if x.dtype == np.uint64 else x.astype(np.int64)
        shift = np.uint64(64 - self.bits)
        return (x << shift).view(np.int64) >> np.int64(64 - self.bits)

    def encode(self, x: np.ndarray | float) -> np.ndarray:
        """Fixed-point encode reals: round(x · 2^f) mod 2^ℓ."""
        scaled = np.rint(np.asarray(x, dtype=np.float64) * self.scale)
        limit = 2.0 ** (self.bits - 1)
        if np.any(np.abs(scaled) >= limit):
            raise OverflowError(
                f"value out of fixed-point range ±2^{self.bits - 1 - self.frac_bits}"
            )
        return self.from_signed(scaled.astype(np.int64))

    def decode(self, x: np.ndarray, frac_bits: int | None = None) -> np.ndarray:
        """Fixed-point decode ring elements to float64 (scale 2^frac_bits, default f)."""
        f = self.frac_bits if frac_bits is None else frac_bits
        return self.to_signed(x).astype(np.float64) / float(1 << f)

    def with_bits(self, bits: int) -> Ring:
        """The same scale on a smaller ring (shares mod 2^bits stay valid shares)."""
        return Ring(bits=bits, frac_bits=min(self.frac_bits, bits - 1))


#: ℓ = 64, f = 18: the paper's setting and secmoe's default.
DEFAULT_RING = Ring(64, 18)

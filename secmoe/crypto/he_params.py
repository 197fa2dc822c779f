"""BFV parameter sets for secmoe's homomorphic linear layers, and their noise budgets.

Plaintext modulus and the share ring
------------------------------------
Shares live in Z_{2^ℓ} (ℓ = 64 by default). secmoe uses the plaintext modulus **t = 2^ℓ
itself**, so every homomorphic product is exact arithmetic mod 2^ℓ and needs no conversion of
the shares. SEAL caps its own plaintext modulus at 60 bits and requires it below every prime,
so t lives *outside* SEAL: secmoe encodes a message m ∈ Z_{2^ℓ} as the exact scaling
``round(q·m / 2^ℓ) mod q`` (computed in RNS with numpy, :mod:`secmoe.crypto.he_rns`) and
decrypts with ``round(2^ℓ·φ / q) mod 2^ℓ``. SEAL does only what does not depend on t: NTTs,
products by plaintext polynomials, ciphertext additions, modulus switching, key switching.
With exact scaling the product by a plaintext polynomial p adds only ‖p‖₁/2 of rounding
noise, whatever t is (q need not be divisible by t; Cheetah, eprint 2022/207, §3).

Ring and moduli (HE standard, Albrecht et al. 2018, 128-bit classical, uniform ternary secret,
error σ ≈ 3.2): log2(Q) ≤ 218 for N = 8192 and ≤ 438 for N = 16384, Q including SEAL's special
prime. Every RLWE sample secmoe publishes lives under the first data level or below.

- ``HE_8K`` (shared input × plaintext weights): N = 8192, data primes of 40, 40, 48, 48 bits
  (q ≈ 2^176) and a 42-bit special prime: log2 Q = 218. Results return at the level of the
  first two primes (q_L ≈ 2^80, 10 bytes per coefficient).
- ``HE_16K`` (secret × secret products and encrypted selection, whose noise is ≈ 2^64 times
  larger): N = 16384, data primes 40, 40, 56, 56, 56, 56, 56 (q ≈ 2^360) and a 60-bit special
  prime: log2 Q = 420.

Primes are ≡ 1 mod 2N (NTT-friendly), generated deterministically by SEAL's
``CoeffModulus.Create``; both parties derive identical lists and check them in setup.

Noise budget and circuit privacy
--------------------------------
Before a ciphertext goes back to the client, the server (1) re-randomizes it with a fresh
public-key encryption of zero, (2) adds a mask R (uniform in Z_{2^ℓ}) to the message, (3) adds
**flooding noise** uniform in [−2^β, 2^β) to each coefficient the client can decrypt, with
2^β ≥ 2^(σ+κ)·B, where B bounds the part of the noise that depends on the server's data, and
(4) switches to the two-prime output level. The client encrypts at the lowest level whose
modulus absorbs the flood (:func:`plan_noise`), so smaller products send smaller ciphertexts.
Flooding makes each coefficient's noise within
statistical distance B/2^β ≤ 2^−(σ+κ) of a distribution independent of the server's data; over
the at most 2^κ coefficients (κ = 24 by default) returned under one key the distance is ≤ 2^−σ
(σ = 40). Modulus switching scales the flood by q_L/q; what remains must stay below
q_L/2^(ℓ+1) for decryption to be correct, which :func:`plan_noise` checks.

Packed results: the key switches' noise
--------------------------------------
The server may merge 2^p sparse product ciphertexts into one before step (1)
(:class:`~secmoe.protocols.he_common.ProductPacker`): each merge applies a Galois automorphism
and switches its key with SEAL's Galois keys. A key switch of c (at a level with primes q_j)
adds Σ_j c_j·e_j / P + r0 + r1·s, with c_j ∈ [0, q_j) the RNS digits of c, e_j the key's
errors (|e| ≤ η = 21, SEAL's centered binomial), P the special prime and |r0|, |r1| ≤ ½ the
rounding of the division by P: at most N·η·Σ_j q_j / P + (N + 1)/2 per coefficient
(:meth:`HEParams.keyswitch_noise_bits`: 2^24.4 at ``HE_8K``, 2^16.8 at ``HE_16K``). c depends
on W, so this noise is data-dependent: the products are first multiplied by 2^−p mod q (q is
odd), each merge doubles what it merges and adds one key switch's noise, so a packed
coefficient carries its product's noise plus at most (2^p − 1) key switches' — B grows by that
much before β = ⌈log2 B⌉ + σ + κ is chosen (the flood then covers the packed ciphertext).

Returned coefficients: only the bits decryption needs
----------------------------------------------------
After step (4) each returned coefficient c ∈ [0, q_L) has ⌈log2 q_L⌉ = 80 bits, but its low
bits are mostly noise. The server sends ĉ = ⌊c/2^k⌋ (k = ``drop_c1`` for the N coefficients
of c1, ``drop_c0`` for c0 at the decryptable positions; :func:`plan_return_bits`), and the
client uses ĉ·2^k + 2^(k−1) (Cheetah and BumbleBee do the same). This is a public function of
the returned ciphertext, so it reveals nothing more; it only adds decryption noise. Per
coefficient the error δ = (c mod 2^k) − 2^(k−1) lies in [−2^(k−1), 2^(k−1)). In the phase
c0 + c1·s:

- c0: |δ0| ≤ 2^(k0−1);
- c1: Σ_j ±δ_j·s_(i−j). c1 is re-randomized, so its low bits (hence the δ_j) are uniform and
  independent of s; Hoeffding (range 2^k1 per term, N terms, failure 2^−41 two-sided) bounds
  the deviation by 2^k1·sqrt(N·ln(2^41)/2), and the mean −½ per term contributes
  ½·|Σ ±s_(i−j)| ≤ sqrt(N·ln(2^41)/2) for the uniform ternary s (same bound, range 2):
  in all (2^k1 + 1)·sqrt(N·ln(2^41)/2).

With B_pre = 2^(β − log2(q/q_L)) + the switch's rounding bound + 2 (what :func:`plan_noise`
checks), decryption stays exact if B_pre + (2^k1 + 1)·sqrt(N·ln(2^41)/2) + 2^(k0−1) ≤
q_L/2^(ℓ+1.5) (the same half-bit slack, which also covers the data-dependent noise,
≤ 2^−64 of the flood). :func:`plan_return_bits` picks the (k1, k0) that satisfy it with the
fewest bits sent. For ``HE_8K`` (N = 8192, flood mostly absorbed by the level) k1 = 5,
k0 = 14: c1 coefficients travel in 75 bits and c0 in 66, instead of 80.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

#: Statistical security parameter σ (flooding distance 2^−σ).
STAT_SEC = 40
#: log2 of the number of flooded coefficients covered by the σ bound (per key).
FLOOD_UNION_BITS = 24
#: HE-standard bound on log2(Q) at 128-bit classical security (ternary secret, σ_e ≈ 3.2).
HE_STANDARD_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
#: Centered binomial parameter for fresh noise (variance η/2 = 10.5, σ ≈ 3.24, |e| ≤ η).
CBD_ETA = 21
#: Tail factor for the rounding noise of a modulus switch (fails with probability ≤ 2^−40):
#: Hoeffding gives |Σ_j δ_j s_j| ≤ sqrt(N · ln(2^41) / 2) for δ_j ∈ [−½, ½], s ternary.
MODSWITCH_TAIL = math.log(2.0**41) / 2


@dataclass(frozen=True)
class HEParams:
    """One BFV parameter set.

    Attributes:
        name: label used on the wire (both parties must agree).
        n: ring dimension N (a power of two).
        data_bits: bit sizes of the data primes, lowest level first; the first
            ``out_primes`` of them form the level at which results return.
        special_bits: bit size of SEAL's special (key-switching) prime.
        out_primes: number of primes in the output level.
        plain_bits: ℓ, with plaintext modulus t = 2^ℓ.
        plain_mod_seal: the plaintext modulus handed to SEAL (only used to lift small signed
            plaintext coefficients, e.g. weights and the secret key; never for messages).
        pack_log: returned ciphertexts whose outputs sit on a stride up to 2^pack_log may be
            packed (:mod:`secmoe.protocols.he_common`); setup sends the Galois keys of the
            automorphisms X ↦ X^(2N/S + 1), S = 2, 4, …, 2^pack_log.
    """

    name: str
    n: int
    data_bits: tuple[int, ...]
    special_bits: int
    out_primes: int = 2
    plain_bits: int = 64
    plain_mod_seal: int = 1 << 36
    pack_log: int = 10

    def __post_init__(self) -> None:
        if self.n not in HE_STANDARD_128:
            raise ValueError(f"unsupported ring dimension {self.n}")
        if self.total_bits > HE_STANDARD_128[self.n]:
            raise ValueError(
                f"{self.name}: log2 Q = {self.total_bits} exceeds the HE-standard 128-bit bound "
                f"{HE_STANDARD_128[self.n]} for N = {self.n}"
            )
        if not 1 <= self.plain_bits <= 64:
            raise ValueError("plain_bits must be in [1, 64]")
        if not 1 <= self.out_primes <= len(self.data_bits):
            raise ValueError("out_primes out of range")
        if any(b > 60 for b in (*self.data_bits, self.special_bits)):
            raise ValueError("SEAL primes have at most 60 bits")

    @property
    def total_bits(self) -> int:
        """Nominal log2 of Q (data primes and special prime)."""
        return sum(self.data_bits) + self.special_bits

    @cached_property
    def all_primes(self) -> tuple[int, ...]:
        """Data primes then the special prime (SEAL's ``CoeffModulus.Create``)."""
        import tenseal.sealapi as sealapi

        mods = sealapi.CoeffModulus.Create(self.n, [*self.data_bits, self.special_bits])
        return tuple(int(m.value()) for m in mods)

    @property
    def primes(self) -> tuple[int, ...]:
        """The data primes (the first data level)."""
        return self.all_primes[: len(self.data_bits)]

    @property
    def q_bits(self) -> float:
        """log2 of the first data level's modulus q."""
        return sum(math.log2(p) for p in self.primes)

    @property
    def out_q_bits(self) -> float:
        """log2 of the output level's modulus q_L."""
        return sum(math.log2(p) for p in self.primes[: self.out_primes])

    @property
    def byte_widths(self) -> tuple[int, ...]:
        """Bytes per residue on the wire, per data prime."""
        return tuple((p.bit_length() + 7) // 8 for p in self.primes)

    @property
    def in_coeff_bytes(self) -> int:
        """Wire bytes per coefficient at the first data level."""
        return sum(self.byte_widths)

    @property
    def out_coeff_bytes(self) -> int:
        """Wire bytes per coefficient at the output level."""
        return sum(self.byte_widths[: self.out_primes])

    def describe(self) -> dict:
        """A JSON-ready description (sent and compared in setup)."""
        return {
            "name": self.name,
            "n": self.n,
            "primes": [int(p) for p in self.all_primes],
            "out_primes": self.out_primes,
            "plain_bits": self.plain_bits,
        }

    def modswitch_noise_bits(self) -> float:
        """log2 bound on the rounding noise left by switching to the output level."""
        per_switch = math.sqrt(self.n * MODSWITCH_TAIL) + 1.0
        return math.log2(2.0 * per_switch)

    def decrypt_margin_bits(self, out_bits: int | None = None) -> float:
        """log2 of the largest noise the output level decrypts correctly: q_L / 2^(b+1) for
        results wanted mod 2^b (default b = ℓ; a product whose client input is scaled by
        2^(ℓ−b) has its result's lowest wanted bit at weight q/2^b, see
        :class:`~secmoe.protocols.he_common.MatmulPlan`)."""
        return self.out_q_bits - (out_bits or self.plain_bits) - 1

    def keyswitch_noise_bits(self) -> float:
        """log2 of a worst-case bound on the noise one key switch (a Galois automorphism with
        SEAL's keys) adds at any data level: N·η·Σ_j q_j / P + (N + 1)/2 (module docstring)."""
        ks = self.n * CBD_ETA * sum(self.primes) / self.all_primes[-1]
        return math.log2(ks + (self.n + 1) / 2)


def level_bits(params: HEParams, level: int) -> float:
    """log2 of the modulus of the level with ``level`` primes."""
    return sum(math.log2(p) for p in params.primes[:level])


@dataclass(frozen=True)
class NoisePlan:
    """Flooding and input level for one product: flood uniform in [−2^β, 2^β) at ``level``."""

    beta: int
    level: int
    log2_bound: float

    def as_list(self) -> list:
        return [self.beta, self.level]


def plan_noise(
    params: HEParams,
    log2_bound: float,
    *,
    stat_sec: int = STAT_SEC,
    union_bits: int = FLOOD_UNION_BITS,
    extra_bits: float = 0.0,
    out_bits: int | None = None,
) -> NoisePlan:
    """β = ⌈log2_bound⌉ + σ + κ, and the smallest level whose modulus absorbs that flood.

    After switching to the output level the flood is scaled by q_L/q_level; it must stay (with
    the switch's rounding noise) below q_L/2^(ℓ+1). ``extra_bits`` reserves room for noise added
    after the flood (none in secmoe's protocols); ``out_bits``: the result is wanted mod
    2^out_bits only (:meth:`HEParams.decrypt_margin_bits`). Raises ``ValueError`` if even the
    top level is too small: the parameter set does not fit this product.
    """
    beta = math.ceil(log2_bound) + stat_sec + union_bits
    limit = params.decrypt_margin_bits(out_bits) - 0.5
    rest = 2.0 ** params.modswitch_noise_bits() + 2.0 + 2.0**extra_bits
    for level in range(params.out_primes, len(params.primes) + 1):
        scaled = beta - (level_bits(params, level) - params.out_q_bits)
        if math.log2(2.0**scaled + rest) < limit:
            return NoisePlan(beta, level, log2_bound)
    margin = params.decrypt_margin_bits(out_bits)
    raise ValueError(
        f"{params.name}: noise 2^{log2_bound:.1f} needs flooding 2^{beta}, more than the top "
        f"level (q = 2^{params.q_bits:.1f}) absorbs before switching to q_L = "
        f"2^{params.out_q_bits:.1f} (decryption limit 2^{margin:.1f}); "
        "use a larger parameter set or smaller plaintexts"
    )


@dataclass(frozen=True)
class ReturnBits:
    """Low bits dropped from each returned c1 and c0 coefficient, and the bits sent."""

    full: int
    drop_c1: int
    drop_c0: int

    @property
    def bits_c1(self) -> int:
        return self.full - self.drop_c1

    @property
    def bits_c0(self) -> int:
        return self.full - self.drop_c0


def plan_return_bits(
    params: HEParams,
    beta: int,
    level: int,
    n_c1: int = 1,
    n_c0: int = 0,
    out_bits: int | None = None,
) -> ReturnBits:
    """The (k1, k0) that keep decryption exact (module docstring) and minimize
    n_c1·(80 − k1) + n_c0·(80 − k0), the bits of n_c1 c1 and n_c0 c0 coefficients, for a
    result flooded with 2^β at ``level``, switched to the output level and wanted mod
    2^out_bits (default ℓ)."""
    full = math.prod(params.primes[: params.out_primes]).bit_length()
    limit = 2.0 ** (params.decrypt_margin_bits(out_bits) - 0.5)
    scaled = beta - (level_bits(params, level) - params.out_q_bits)
    room0 = limit - (2.0**scaled + 2.0 ** params.modswitch_noise_bits() + 2.0)
    root = math.sqrt(params.n * MODSWITCH_TAIL)
    best = ReturnBits(full, 0, 0)
    for k1 in range(min(full, 64)):
        room = room0 - ((2**k1 + 1) * root if k1 else 0.0)
        if room < 1.0:
            break
        k0 = min(full - 1, 63, math.floor(math.log2(room)) + 1)
        cand = ReturnBits(full, k1, k0)
        if n_c1 * cand.bits_c1 + n_c0 * cand.bits_c0 < n_c1 * best.bits_c1 + n_c0 * best.bits_c0:
            best = cand
    return best


HE_8K = HEParams(name="bfv8k-t2^64", n=8192, data_bits=(40, 40, 48, 48), special_bits=42)
HE_16K = HEParams(
    name="bfv16k-t2^64", n=16384, data_bits=(40, 40, 56, 56, 56, 56, 56), special_bits=60
)

PARAMS = {p.name: p for p in (HE_8K, HE_16K)}


def params_for(name: str) -> HEParams:
    """The parameter set called ``name``."""
    try:
        return PARAMS[name]
    except KeyError:
        raise ValueError(f"unknown HE parameter set {name!r}; known: {sorted(PARAMS)}") from None

"""BFV with plaintext modulus 2^ℓ on SEAL: contexts, keys, encryption, decryption, encoding.

Local only (no I/O). The protocols in :mod:`secmoe.protocols.he_linear` and siblings build on:

- :class:`HEContext` (both parties, no secrets): the SEAL context for one
  :class:`~secmoe.crypto.he_params.HEParams`, batched NTTs, plaintext encoding (signed small
  coefficients through SEAL's lifting; arbitrary residues through the NTT), import/export of
  ciphertexts as numpy arrays;
- :class:`SecretKey` (client): a ternary secret sampled from the client's :class:`PRG`, seeded
  symmetric encryption (c1 = a is expanded from a 16-byte seed, so only c0 travels), the public
  key for re-randomization, decryption of returned ciphertexts at the output level, and SEAL
  relinearization/Galois keys where a protocol needs them;
- :class:`PublicKey` (server): the client's public key as a SEAL ciphertext;
- :class:`ReturnPacker` (server): re-randomize, mask, flood, switch to the output level;
  :func:`pack_returned` then sends only the high bits of each coefficient that decryption
  needs (see :mod:`secmoe.crypto.he_params` for the analysis of both).

Messages are polynomials over Z_{2^ℓ}. Two encodings:

- **BFV** (scale Δ = q/2^ℓ, exact scaling): phase = round(q·m/2^ℓ) + e. Products by plaintext
  polynomials p give round(q·[m·p]_{2^ℓ}/2^ℓ) + e·p + (rounding ≤ ‖p‖₁/2).
- **BGV-style** (scale 1, noise a multiple of 2^ℓ): phase = m + 2^ℓ·e. The tensor product mod q
  (no rescaling) of a BFV and a BGV ciphertext is a BFV ciphertext of the product mod 2^ℓ, which
  is how encrypted selection multiplies two ciphertexts with t = 2^ℓ beyond SEAL's 60-bit cap.

Randomness: the secret key, every encryption's a, e and u, masks and flooding noise come from
secmoe's AES-CTR :class:`PRG`. Only SEAL's relinearization and Galois keys (needed by encrypted
selection) use SEAL's own CSPRNG (Blake2xb seeded from the OS), inside ``KeyGenerator``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tenseal.sealapi as sealapi

from . import he_serial as ser
from .he_params import CBD_ETA, FLOOD_UNION_BITS, STAT_SEC, HEParams, ReturnBits
from .he_rns import (
    Decoder2,
    Scaler,
    add_mod,
    mulhi64,
    neg_mod,
    sample_cbd,
    sample_flood_rns,
    sample_ternary,
    sample_uniform_rns,
    shoup_factor,
    shoup_mul,
    signed_to_rns,
    sub_mod,
    uint_to_rns,
)
from .prg import PRG
from .seal_raw import ciphertext_from_residues, ciphertext_residues

U64 = np.uint64
SEED_BYTES = 16
_MAX_CT_SIZE = 16  # SEAL_CIPHERTEXT_SIZE_MAX


class HEError(ValueError):
    """Inconsistent HE parameters or data (e.g. the two parties disagree)."""


class FloodBudgetExceeded(HEError):
    """Returning more coefficients under one key than its noise flooding covers."""


@dataclass
class FloodBudget:
    """The coefficients returned (flooded) under one client key, against the 2^κ the σ bound
    covers (:mod:`secmoe.crypto.he_params`: flooding sized with κ = ``union_bits`` keeps the
    union of all of them within 2^−σ of independent of the server's data)."""

    union_bits: int = FLOOD_UNION_BITS
    used: int = 0

    @property
    def limit(self) -> int:
        """2^κ."""
        return 1 << self.union_bits

    def charge(self, count: int) -> None:
        """Count ``count`` more returned coefficients; raise :class:`FloodBudgetExceeded`
        (and count nothing) if that would pass 2^κ."""
        if self.used + count > self.limit:
            raise FloodBudgetExceeded(
                f"noise-flooding budget of this key spent: {self.used} + {count} returned "
                f"coefficients exceed 2^{self.union_bits}, what the σ = {STAT_SEC} bound covers "
                "(a new session has new keys)"
            )
        self.used += count


def expand_a(seed: bytes, count: int, primes: Sequence[int], n: int) -> np.ndarray:
    """The uniform NTT-domain polynomials a_0..a_{count−1} of seeded ciphertexts, (count, L, N).

    Both parties expand the same seed with secmoe's PRG (AES-CTR, rejection sampling per prime).
    """
    if len(seed) != SEED_BYTES:
        raise HEError("ciphertext seed must be 16 bytes")
    prg = PRG(seed)
    return np.stack([sample_uniform_rns(prg, primes, n) for _ in range(count)])


class HEContext:
    """SEAL context, evaluator and encoders for one parameter set (no secrets).

    Levels are named by their number of primes: ``top`` = all data primes, ``out`` = the
    output level.
    """

    def __init__(self, params: HEParams) -> None:
        self.params = params
        self.n = params.n
        parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(params.n)
        parms.set_coeff_modulus([sealapi.Modulus(p) for p in params.all_primes])
        parms.set_plain_modulus(params.plain_mod_seal)
        self.seal = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        if not self.seal.parameters_set():
            raise HEError(f"SEAL rejects {params.name}: {self.seal.parameters_error_message()}")
        self.evaluator = sealapi.Evaluator(self.seal)
        self.primes = params.primes
        self.top = len(self.primes)
        self.out = params.out_primes
        self.pid: dict[int, list[int]] = {}
        cd = self.seal.first_context_data()
        while cd is not None:
            k = len(cd.parms().coeff_modulus())
            self.pid[k] = list(cd.parms_id())
            cd = cd.next_context_data()
        self.key_pid = list(self.seal.key_parms_id())
        if sorted(self.pid) != list(range(1, self.top + 1)):
            raise HEError("unexpected SEAL modulus chain")
        self._scalers: dict[tuple[int, int], Scaler] = {}
        q0, q1 = self.primes[0], self.primes[1]
        self.decoder = Decoder2(q0, q1, params.plain_bits) if self.out == 2 else None

    # --- encoding -----------------------------------------------------------------------
    def scaler(self, level: int | None = None, bits: int | None = None) -> Scaler:
        """The exact-scaling encoder round(q·m/2^bits) at ``level`` (default: top, ℓ)."""
        key = (level or self.top, bits or self.params.plain_bits)
        sc = self._scalers.get(key)
        if sc is None:
            sc = self._scalers[key] = Scaler(self.primes[: key[0]], key[1])
        return sc

    def encode_bfv(self, m: np.ndarray, level: int | None = None) -> np.ndarray:
        """Δ-scaled residues of messages m (…, N) over Z_{2^ℓ}: shape (…, L, N)."""
        r = self.scaler(level).encode(m)  # (L, …, N)
        return np.moveaxis(r, 0, -2)

    # --- SEAL objects <-> numpy ------------------------------------------------------------
    def import_ct(self, data: np.ndarray, ntt: bool) -> sealapi.Ciphertext:
        """A SEAL ciphertext from residues of shape (size, L, N)."""
        level = data.shape[1]
        ct = ciphertext_from_residues(self.seal, self.pid[level], self.primes[:level], data, ntt)
        if ct is not None:  # copied in place (:mod:`~secmoe.crypto.seal_raw`)
            return ct
        body = ser.ciphertext_body(self.pid[level], data, ntt)
        return ser.load_body(sealapi.Ciphertext(self.seal), self.seal, body)

    def export_ct(self, ct: sealapi.Ciphertext) -> np.ndarray:
        """Residues (size, L, N) of a SEAL ciphertext (in whatever form it is): read in place
        (:mod:`~secmoe.crypto.seal_raw`), else through SEAL's serialization."""
        data = ciphertext_residues(ct)
        if data is None:
            _pid, _ntt, data = ser.parse_ciphertext(ser.save_body(ct))
        return data

    def ntt(self, polys: np.ndarray, inverse: bool = False) -> np.ndarray:
        """Forward (or inverse) negacyclic NTT, SEAL's ordering, of polys (k, L, N)."""
        k = polys.shape[0]
        out = np.empty_like(polys)
        ev = self.evaluator
        for lo in range(0, k, _MAX_CT_SIZE - 1):
            chunk = polys[lo : lo + _MAX_CT_SIZE - 1]
            ct = self.import_ct(_nontransparent(chunk), ntt=inverse)
            if inverse:
                ev.transform_from_ntt_inplace(ct)
            else:
                ev.transform_to_ntt_inplace(ct)
            out[lo : lo + chunk.shape[0]] = self.export_ct(ct)[: chunk.shape[0]]
        return out

    def plain_small(self, coeffs: np.ndarray, level: int | None = None) -> sealapi.Plaintext:
        """NTT-form plaintext of a polynomial with small signed coefficients (|c| < 2^35)."""
        t = self.params.plain_mod_seal
        c = np.asarray(coeffs, dtype=np.int64)
        if c.shape != (self.n,):
            raise HEError(f"plaintext polynomial must have {self.n} coefficients")
        if np.any(np.abs(c) >= t // 2):
            raise HEError("plaintext coefficient too large for the small-plaintext path")
        body = ser.plaintext_body([0, 0, 0, 0], np.where(c < 0, c + t, c).astype(U64))
        pt = ser.load_body(sealapi.Plaintext(), self.seal, body)
        self.evaluator.transform_to_ntt_inplace(pt, self.pid[level or self.top])
        return pt

    def plain_monomial(self, k: int) -> sealapi.Plaintext:
        """The coefficient-form plaintext X^k (0 ≤ k < N), for products by BFV ciphertexts in
        coefficient form (SEAL's monomial path)."""
        c = np.zeros(self.n, dtype=U64)
        c[k] = 1
        return ser.load_body(sealapi.Plaintext(), self.seal, ser.plaintext_body([0, 0, 0, 0], c))

    def plain_from_ntt(self, residues: np.ndarray) -> sealapi.Plaintext:
        """NTT-form plaintext from NTT-domain residues (L, N) at level L."""
        body = ser.plaintext_body(self.pid[residues.shape[0]], residues)
        return ser.load_body(sealapi.Plaintext(), self.seal, body)

    def plains_rns(self, residues: np.ndarray) -> list[sealapi.Plaintext]:
        """NTT-form plaintexts from coefficient-domain residues (k, L, N) (any magnitude)."""
        nt = self.ntt(residues)
        return [self.plain_from_ntt(nt[i]) for i in range(nt.shape[0])]

    def digest(self) -> str:
        """A short hash of the parameters (compared by both parties in setup)."""
        return hashlib.sha256(repr(self.params.describe()).encode()).hexdigest()[:16]


# --- keys ----------------------------------------------------------------------------------


@dataclass
class SecretKey:
    """The client's secret key s (uniform ternary, from its PRG) and derived material."""

    ctx: HEContext
    s: np.ndarray  # int64 (N,) in {-1, 0, 1}
    s_ntt: np.ndarray = field(repr=False)  # (top, N) NTT-domain residues
    s_ntt_shoup: np.ndarray = field(repr=False)
    _seal_sk: sealapi.SecretKey | None = field(default=None, repr=False)

    @classmethod
    def generate(cls, ctx: HEContext, prg: PRG) -> SecretKey:
        """Sample s from ``prg`` and precompute its NTT form."""
        s = sample_ternary(prg, ctx.n)
        s_ntt = ctx.ntt(signed_to_rns(s, ctx.primes)[None])[0]
        shoup = np.stack([shoup_factor(s_ntt[i], q) for i, q in enumerate(ctx.primes)])
        return cls(ctx, s, s_ntt, shoup)

    def seal_secret_key(self) -> sealapi.SecretKey:
        """s as a SEAL secret key (NTT form at the key level, special prime included)."""
        if self._seal_sk is None:
            ctx = self.ctx
            t = ctx.params.plain_mod_seal
            body = ser.plaintext_body([0, 0, 0, 0], np.where(self.s < 0, self.s + t, self.s))
            pt = ser.load_body(sealapi.Plaintext(), ctx.seal, body)
            ctx.evaluator.transform_to_ntt_inplace(pt, ctx.key_pid)
            _pid, data = ser.parse_plaintext(ser.save_body(pt))
            sk_body = ser.plaintext_body(ctx.key_pid, data)
            self._seal_sk = ser.load_body(sealapi.SecretKey(), ctx.seal, sk_body)
        return self._seal_sk

    def _a_times_s(self, a: np.ndarray) -> np.ndarray:
        """a ⊙ s in the NTT domain, for a of shape (k, L, N) (L ≤ top)."""
        out = np.empty_like(a)
        for i in range(a.shape[1]):
            q = self.ctx.primes[i]
            out[:, i] = shoup_mul(a[:, i], self.s_ntt[i], self.s_ntt_shoup[i], q)
        return out

    def encrypt(
        self,
        m: np.ndarray,
        prg: PRG,
        *,
        encoding: str = "bfv",
        scale_bits: int | None = None,
        level: int | None = None,
    ) -> tuple[bytes, np.ndarray]:
        """Seeded symmetric encryptions of messages m (k, N) over Z_{2^ℓ}.

        Returns ``(seed, c0)`` with c0 of shape (k, L, N) in the NTT domain; c1 = a is
        :func:`expand_a` of the seed. ``encoding`` is ``"bfv"`` (phase Δ·m + e; with
        ``scale_bits`` > ℓ the message is scaled by q/2^scale_bits) or ``"bgv"`` (phase
        m + 2^ℓ·e, m taken as a centered integer).
        """
        ctx = self.ctx
        level = level or ctx.top
        primes = ctx.primes[:level]
        m = np.asarray(m, dtype=U64)
        k = m.shape[0]
        seed = prg.random_bytes(SEED_BYTES)
        a = expand_a(seed, k, primes, ctx.n)
        e = sample_cbd(prg, (k, ctx.n), CBD_ETA)
        if encoding == "bfv":
            bits = scale_bits or ctx.params.plain_bits
            if bits <= 64:
                msg = np.moveaxis(ctx.scaler(level, bits).encode(m), 0, -2)
            else:
                msg = encode_scaled_exact(m, primes, bits)
            poly = np.empty_like(msg)
            er = signed_to_rns(e, primes)  # (L, k, N)
            for i, q in enumerate(primes):
                poly[:, i] = add_mod(msg[:, i], er[i], q)
        elif encoding == "bgv":
            ell = ctx.params.plain_bits
            mr = np.moveaxis(signed_to_rns(_centered(m, ell), primes), 0, -2)
            er = signed_to_rns(e, primes)
            poly = np.empty_like(mr)
            for i, q in enumerate(primes):
                c = pow(2, ell, q)
                scaled = shoup_mul(er[i], U64(c), shoup_factor(c, q), q)
                poly[:, i] = add_mod(mr[:, i], scaled, q)
        else:
            raise HEError(f"unknown encoding {encoding!r}")
        c0 = ctx.ntt(poly)
        as_ = self._a_times_s(a)
        for i, q in enumerate(primes):
            c0[:, i] = sub_mod(c0[:, i], as_[:, i], q)
        return seed, c0

    def public_key(self, prg: PRG) -> tuple[bytes, np.ndarray]:
        """(seed, pk0) with pk0 = −a·s + e in the NTT domain at the top level (pk1 = a)."""
        return self.encrypt(np.zeros((1, self.ctx.n), dtype=U64), prg)

    def c1_times_s(self, c1: np.ndarray) -> np.ndarray:
        """c1·s for returned ciphertexts' c1 components (k, Lo, N), coefficient domain."""
        ctx = self.ctx
        k = c1.shape[0]
        out = np.empty_like(c1)
        for s in range(0, k, _MAX_CT_SIZE - 1):
            chunk = c1[s : s + _MAX_CT_SIZE - 1]
            ct = ctx.import_ct(_nontransparent(chunk), ntt=False)
            ctx.evaluator.transform_to_ntt_inplace(ct)
            ctx.evaluator.multiply_plain_inplace(ct, self.s_plain_ntt(c1.shape[1]))
            ctx.evaluator.transform_from_ntt_inplace(ct)
            out[s : s + chunk.shape[0]] = ctx.export_ct(ct)[: chunk.shape[0]]
        return out

    def s_plain_ntt(self, level: int) -> sealapi.Plaintext:
        """s as an NTT-form plaintext at ``level`` (cached).

        (SEAL's coefficient-form product has a monomial fast path that does not lift
        "negative" coefficients; NTT-form plaintexts are always lifted correctly.)
        """
        cache = self.__dict__.setdefault("_s_ntt_plains", {})
        if level not in cache:
            cache[level] = self.ctx.plain_small(self.s, level)
        return cache[level]

    def decrypt_returned(
        self,
        c1: np.ndarray,
        c0: Sequence[np.ndarray],
        positions: Sequence[np.ndarray],
    ) -> list[np.ndarray]:
        """Messages over Z_{2^ℓ} of returned ciphertexts at the output level.

        Args:
            c1: (k, 2, N) residues of the c1 components.
            c0: k arrays (2, P_i): c0 at the decryptable positions only.
            positions: k index arrays (P_i,).
        """
        ctx = self.ctx
        if ctx.decoder is None or c1.shape[1] != 2:
            raise HEError("decryption needs a two-prime output level")
        c1s = self.c1_times_s(c1)
        sizes = [len(p) for p in positions]
        a0 = np.empty(sum(sizes), dtype=U64)
        a1 = np.empty(sum(sizes), dtype=U64)
        off = 0
        for i, (pos, c0i) in enumerate(zip(positions, c0, strict=True)):
            sl = slice(off, off + len(pos))
            a0[sl] = add_mod(c0i[0], c1s[i, 0, pos], ctx.primes[0])
            a1[sl] = add_mod(c0i[1], c1s[i, 1, pos], ctx.primes[1])
            off += len(pos)
        m = ctx.decoder.decode(a0, a1)
        return np.split(m, np.cumsum(sizes)[:-1]) if sizes else []

    def relin_keys_bytes(self) -> bytes:
        """SEAL relinearization keys for s, in SEAL's seeded serialization (half size)."""
        kg = sealapi.KeyGenerator(self.ctx.seal, self.seal_secret_key())
        return ser.save_file_bytes(kg.create_relin_keys())

    def galois_keys_bytes(self, elements: Sequence[int]) -> bytes:
        """SEAL Galois keys for the automorphisms X ↦ X^g, g in ``elements`` (seeded)."""
        kg = sealapi.KeyGenerator(self.ctx.seal, self.seal_secret_key())
        return ser.save_file_bytes(kg.create_galois_keys(list(elements)))


def _nontransparent(chunk: np.ndarray) -> np.ndarray:
    """Append a dummy polynomial of ones if SEAL would see a 'transparent' ciphertext."""
    if chunk.shape[0] >= 2 and chunk[1:].any():
        return chunk
    return np.concatenate([chunk, np.ones_like(chunk[:1])])


def _centered(m: np.ndarray, bits: int) -> np.ndarray:
    """Ring elements of Z_{2^bits} as centered int64."""
    m = np.asarray(m, dtype=U64)
    if bits == 64:
        return m.view(np.int64)
    m = m & U64((1 << bits) - 1)
    return (m << U64(64 - bits)).view(np.int64) >> np.int64(64 - bits)


def encode_scaled_exact(m: np.ndarray, primes: Sequence[int], bits: int) -> np.ndarray:
    """round(q·m/2^bits) mod q_i with Python integers (any ``bits``); m (k, N) → (k, L, N)."""
    m = np.asarray(m, dtype=U64)
    q = 1
    for p in primes:
        q *= int(p)
    out = np.zeros((m.shape[0], len(primes), m.shape[1]), dtype=U64)
    half = 1 << (bits - 1)
    for r, c in zip(*np.nonzero(m), strict=True):
        v = (q * int(m[r, c]) + half) >> bits
        for i, p in enumerate(primes):
            out[r, i, c] = v % int(p)
    return out


@dataclass
class PublicKey:
    """The client's public key, held by the server (a SEAL ciphertext in NTT form, top level),
    and the flooding budget of every result returned under it."""

    ctx: HEContext
    ct: sealapi.Ciphertext
    _levels: dict = field(default_factory=dict, repr=False)
    budget: FloodBudget = field(default_factory=FloodBudget)

    @classmethod
    def from_wire(cls, ctx: HEContext, seed: bytes, pk0: np.ndarray) -> PublicKey:
        """Rebuild (pk0, a) from the seed and pk0 (1, top, N)."""
        a = expand_a(seed, 1, ctx.primes, ctx.n)
        return cls(ctx, ctx.import_ct(np.concatenate([pk0, a]), ntt=True))

    def at_level(self, level: int) -> sealapi.Ciphertext:
        """The public key switched down to ``level`` (NTT form; cached)."""
        if level == self.ctx.top:
            return self.ct
        ct = self._levels.get(level)
        if ct is None:
            ev = self.ctx.evaluator
            ct = sealapi.Ciphertext(self.ctx.seal)
            ev.transform_from_ntt(self.ct, ct)
            ev.mod_switch_to_inplace(ct, self.ctx.pid[level])
            ev.transform_to_ntt_inplace(ct)
            self._levels[level] = ct
        return ct


def load_relin_keys(ctx: HEContext, data: bytes) -> sealapi.RelinKeys:
    """Relinearization keys from :meth:`SecretKey.relin_keys_bytes`."""
    return ser.load_file_bytes(sealapi.RelinKeys(), ctx.seal, data)


def load_galois_keys(ctx: HEContext, data: bytes) -> sealapi.GaloisKeys:
    """Galois keys from :meth:`SecretKey.galois_keys_bytes`."""
    return ser.load_file_bytes(sealapi.GaloisKeys(), ctx.seal, data)


class ReturnPacker:
    """Server side: turn a result ciphertext into what the client may see.

    For each result (a SEAL ciphertext at some data level, NTT or coefficient form):

    1. re-randomize: add u·pk (u uniform ternary from the server's PRG) in the NTT domain and
       (e1, e2) centered-binomial noise, so that c1 is a fresh RLWE sample independent of the
       server's data;
    2. mask: add Δ·R at the P decryptable ``positions`` (R uniform in Z_{2^ℓ}; the server's
       share is −R); with ``out_bits`` b < ℓ (results wanted mod 2^b, the client's input
       scaled by 2^(ℓ−b)), R uniform in Z_{2^b} and Δ·2^(ℓ−b)·R added;
    3. flood: add noise uniform in [−2^β, 2^β) at the same positions;
    4. switch to the output level (SEAL's BFV modulus switching: divide and round);
    5. export c1 (all N coefficients) and c0 at the positions only.

    Every call charges its P positions to the key's :class:`FloodBudget` first (and raises
    :class:`FloodBudgetExceeded`, returning nothing, past 2^κ).

    Args:
        ctx: the context.
        pk: the client's public key.
        beta: flooding bits β (:func:`~secmoe.crypto.he_params.plan_noise`).
        out_bits: b, the results are wanted mod 2^b (default ℓ).
    """

    def __init__(
        self, ctx: HEContext, pk: PublicKey, beta: int, out_bits: int | None = None
    ) -> None:
        self.ctx = ctx
        self.pk = pk
        self.beta = beta
        self.out_bits = out_bits or ctx.params.plain_bits

    def finish(
        self, ct: sealapi.Ciphertext | None, positions: np.ndarray, prg: PRG, level: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (mask R (P,) ``uint64``, c1 (Lo, N), c0 (Lo, P)) at the output level.

        ``ct`` (at ``level``) None stands for an encryption of zero (a result with no terms).
        """
        self.pk.budget.charge(len(positions))
        ctx, ev = self.ctx, self.ctx.evaluator
        n = ctx.n
        # Step 1: u·pk in the NTT domain.
        u = sample_ternary(prg, n)
        z = sealapi.Ciphertext(ctx.seal)
        ev.multiply_plain(self.pk.at_level(level), ctx.plain_small(u, level), z)
        if ct is None:
            ct = z
        else:
            if ct.size() != 2 or ct.coeff_modulus_size() != level:
                raise HEError("ReturnPacker expects a two-component ciphertext at its level")
            if not ct.is_ntt_form():  # move u·pk rather than ct (the same sum, exactly)
                ev.transform_from_ntt_inplace(z)
            ev.add_inplace(ct, z)
        if ct.is_ntt_form():
            ev.transform_from_ntt_inplace(ct)
        # Steps 1-3 (coefficient domain): e1 + flood + Δ·R at the positions, e2.
        primes = ctx.primes[:level]
        e = sample_cbd(prg, (2, n), CBD_ETA)
        noise = np.moveaxis(signed_to_rns(e, primes), 0, 1)  # (2, L, N)
        r = prg.ring(len(positions), self.out_bits)
        dr = ctx.scaler(level).encode(r << U64(ctx.params.plain_bits - self.out_bits))  # (L, P)
        fl = sample_flood_rns(prg, self.beta, primes, len(positions))
        for i, q in enumerate(primes):
            col = noise[0, i, positions]
            noise[0, i, positions] = add_mod(add_mod(col, dr[i], q), fl[i], q)
        ev.add_inplace(ct, ctx.import_ct(noise, ntt=False))
        # Step 4: down to the output level.
        if level != ctx.out:
            ev.mod_switch_to_inplace(ct, ctx.pid[ctx.out])
        data = ctx.export_ct(ct)  # (2, Lo, N)
        return r, data[1], data[0][:, positions]


def shrink_returned(ctx: HEContext, res: np.ndarray, drop: int) -> tuple[np.ndarray, np.ndarray]:
    """⌊c/2^drop⌋ as 64-bit words (lo, hi) for the integers c ∈ [0, q_L) of output-level
    residues ``res`` (..., 2, M) (CRT: c = a0 + q0·v, v = (a1 − a0)·q0⁻¹ mod q1)."""
    if ctx.out != 2 or res.shape[-2] != 2:
        raise HEError("returned ciphertexts must be at a two-prime output level")
    q0, q1 = ctx.primes[0], ctx.primes[1]
    inv = pow(q0, -1, q1)
    a0, a1 = res[..., 0, :], res[..., 1, :]
    v = shoup_mul(sub_mod(a1, a0 % U64(q1), q1), U64(inv), shoup_factor(inv, q1), q1)
    lo = v * U64(q0) + a0
    hi = mulhi64(v, U64(q0)) + (lo < a0).astype(U64)  # carry of the low word
    if drop:
        lo = (lo >> U64(drop)) | (hi << U64(64 - drop))
        hi = hi >> U64(drop)
    return lo, hi


def grow_returned(ctx: HEContext, lo: np.ndarray, hi: np.ndarray, drop: int) -> np.ndarray:
    """Residues (..., 2, M) mod q0, q1 of (hi·2^64 + lo)·2^drop + 2^(drop−1) (the middle of
    the dropped range; just the integer when ``drop`` is 0)."""
    out = np.empty((*lo.shape[:-1], 2, lo.shape[-1]), dtype=U64)
    for i, q in enumerate(ctx.primes[:2]):
        w, s, mid = pow(2, 64, q), pow(2, drop, q), (1 << drop >> 1) % q
        r = add_mod(shoup_mul(hi, U64(w), shoup_factor(w, q), q), lo % U64(q), q)
        out[..., i, :] = add_mod(shoup_mul(r, U64(s), shoup_factor(s, q), q), U64(mid), q)
    return out


def pack_returned(
    ctx: HEContext, c1: np.ndarray, c0: np.ndarray, bits: ReturnBits
) -> tuple[np.ndarray, np.ndarray]:
    """Wire form of returned ciphertexts, only the bits decryption needs
    (:func:`~secmoe.crypto.he_params.plan_return_bits`): c1 (k, 2, N) → ``uint8``
    (k, ⌈N·bits_c1/8⌉) and c0 (2, P) → ``uint8`` (⌈P·bits_c0/8⌉,)."""
    c1b = ser.pack_bits(*shrink_returned(ctx, c1, bits.drop_c1), bits.bits_c1)
    return c1b, ser.pack_bits(*shrink_returned(ctx, c0, bits.drop_c0), bits.bits_c0)


def unpack_returned(
    ctx: HEContext, c1b: np.ndarray, c0b: np.ndarray, bits: ReturnBits, k: int, p: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_returned` (up to the dropped bits), checking sizes: k
    ciphertexts' c1 (k, 2, N) and c0 at P positions in all (2, P)."""
    c1b, c0b = np.asarray(c1b), np.asarray(c0b)
    if c1b.ndim != 2 or c1b.shape[0] != k or c0b.ndim != 1:
        raise HEError(f"expected {k} returned ciphertexts, got shapes {c1b.shape}, {c0b.shape}")
    c1 = grow_returned(ctx, *ser.unpack_bits(c1b, bits.bits_c1, ctx.n), bits.drop_c1)
    c0 = grow_returned(ctx, *ser.unpack_bits(c0b, bits.bits_c0, p), bits.drop_c0)
    return c1, c0


def pack_fresh(ctx: HEContext, c0: np.ndarray, level: int | None = None) -> np.ndarray:
    """Wire form of fresh c0 components (k, L, N) → ``uint8`` (k, N·bytes)."""
    level = level or ctx.top
    return ser.pack_residues(c0, ctx.params.byte_widths[:level])


def unpack_fresh(ctx: HEContext, buf: np.ndarray, k: int, level: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_fresh`, checking the count and that residues are reduced."""
    level = level or ctx.top
    buf = np.asarray(buf)
    if buf.ndim != 2 or buf.shape[0] != k:
        raise HEError(f"expected {k} fresh ciphertexts, got shape {buf.shape}")
    c0 = ser.unpack_residues(buf, ctx.params.byte_widths[:level], ctx.n)
    _check_reduced(c0, ctx.primes[:level])
    return c0


def _check_reduced(res: np.ndarray, primes: Sequence[int]) -> None:
    for i, q in enumerate(primes):
        if np.any(res[..., i, :] >= U64(q)):
            raise HEError("received residues are not reduced modulo their prime")


def add_rns(a: np.ndarray, b: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """(a + b) mod q_i for residue arrays (…, L, M)."""
    out = np.empty_like(a)
    for i, q in enumerate(primes):
        out[..., i, :] = add_mod(a[..., i, :], b[..., i, :], q)
    return out


def neg_rns(a: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """(−a) mod q_i for residue arrays (…, L, M)."""
    out = np.empty_like(a)
    for i, q in enumerate(primes):
        out[..., i, :] = neg_mod(a[..., i, :], q)
    return out


__all__ = [
    "FloodBudget",
    "FloodBudgetExceeded",
    "HEContext",
    "HEError",
    "PublicKey",
    "ReturnPacker",
    "SecretKey",
    "add_rns",
    "expand_a",
    "grow_returned",
    "load_galois_keys",
    "load_relin_keys",
    "neg_rns",
    "pack_fresh",
    "pack_returned",
    "shrink_returned",
    "uint_to_rns",
    "unpack_fresh",
    "unpack_returned",
]

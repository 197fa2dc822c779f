"""Local pieces of the HE layer: parameters, RNS arithmetic, encoding, serialization, keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from secmoe.crypto import he_serial as ser
from secmoe.crypto.he import (
    HEContext,
    HEError,
    PublicKey,
    ReturnPacker,
    SecretKey,
    expand_a,
    grow_returned,
    pack_fresh,
    pack_returned,
    shrink_returned,
    unpack_fresh,
    unpack_returned,
)
from secmoe.crypto.he_params import (
    HE_8K,
    HE_16K,
    HE_STANDARD_128,
    HEParams,
    ReturnBits,
    plan_noise,
    plan_return_bits,
)
from secmoe.crypto.he_rns import (
    Decoder2,
    Scaler,
    decode_exact,
    mulhi64,
    sample_cbd,
    sample_flood_rns,
    sample_ternary,
    shoup_factor,
    shoup_mul,
    signed_to_rns,
)
from secmoe.crypto.prg import PRG

U64 = np.uint64
EDGES = np.array([0, 1, 2, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1], dtype=U64)


@pytest.fixture(scope="module")
def ctx() -> HEContext:
    return HEContext(HE_8K)


@pytest.fixture(scope="module")
def keys(ctx):
    prg = PRG(b"k" * 16)
    sk = SecretKey.generate(ctx, prg)
    seed, pk0 = sk.public_key(prg)
    return sk, PublicKey.from_wire(ctx, seed, pk0)


def negacyclic(m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """m·w in Z_{2^64}[X]/(X^N + 1) (numpy uint64 wraps mod 2^64)."""
    n = m.shape[0]
    full = np.convolve(m, np.asarray(w, dtype=np.int64).astype(U64))
    out = full[:n].copy()
    out[: n - 1] -= full[n:]
    return out


# --- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("params", [HE_8K, HE_16K])
def test_parameter_sets_meet_he_standard(params: HEParams):
    assert params.total_bits <= HE_STANDARD_128[params.n]
    assert sealapi.CoeffModulus.MaxBitCount(params.n, sealapi.SEC_LEVEL_TYPE.TC128) >= sum(
        p.bit_length() for p in params.all_primes
    )
    assert all(p % (2 * params.n) == 1 for p in params.all_primes)
    assert len(set(params.all_primes)) == len(params.all_primes)
    assert params.out_coeff_bytes == 10
    assert params.decrypt_margin_bits() > params.modswitch_noise_bits() + 2


def test_oversized_parameter_set_is_rejected():
    with pytest.raises(ValueError, match="HE-standard"):
        HEParams("too-big", 8192, (60, 60, 60, 60), 60)


def test_noise_plan_picks_lowest_level_and_refuses_too_much():
    small = plan_noise(HE_16K, 20)
    big = plan_noise(HE_16K, 130)
    assert small.level < big.level <= len(HE_16K.primes)
    assert big.beta == 130 + 40 + 24
    with pytest.raises(ValueError, match="larger parameter set"):
        plan_noise(HE_8K, 90)


# --- RNS arithmetic -------------------------------------------------------------------------


def test_mulhi64_matches_python_integers():
    prg = PRG(b"m" * 16)
    a = np.concatenate([EDGES, prg.uint64(500)])
    b = np.concatenate([EDGES[::-1], prg.uint64(500)])
    want = [(int(x) * int(y)) >> 64 for x, y in zip(a, b, strict=True)]
    assert mulhi64(a, b).tolist() == want


@pytest.mark.parametrize("q", HE_8K.primes[:1] + HE_16K.primes[-1:])
def test_shoup_mul_matches_python_integers(q):
    prg = PRG(b"s" * 16)
    x = np.concatenate([EDGES, prg.uint64(300)])
    w = prg.below(q, 300)
    w = np.concatenate([np.full(len(EDGES), q - 1, dtype=U64), w])
    got = shoup_mul(x, w, shoup_factor(w, q), q)
    assert got.tolist() == [int(a) * int(b) % q for a, b in zip(x, w, strict=True)]


@pytest.mark.parametrize("bits", [64, 37, 1])
def test_exact_scaling_encoder_and_decoder(bits):
    primes = HE_8K.primes
    prg = PRG(b"e" * 16)
    m = prg.ring(400, bits)
    if bits == 64:
        m[: len(EDGES)] = EDGES
    enc = Scaler(primes, bits).encode(m)
    q = math.prod(primes)
    for j in range(0, 400, 37):
        v = (q * int(m[j]) + (1 << (bits - 1))) >> bits
        assert [int(enc[i, j]) for i in range(4)] == [v % p for p in primes]
    # at the output level, decoding the (noiseless) encoding gives m back
    lo = Scaler(primes[:2], bits).encode(m)
    assert np.array_equal(Decoder2(primes[0], primes[1], bits).decode(lo[0], lo[1]), m)
    assert np.array_equal(decode_exact(lo, primes[:2], bits), m)


def test_decoder_tolerates_noise_within_the_margin():
    primes = HE_8K.primes[:2]
    prg = PRG(b"n" * 16)
    m = prg.uint64(1000)
    enc = Scaler(primes, 64).encode(m)
    noise = signed_to_rns(prg.below(2**13, 1000).astype(np.int64) - 2**12, primes)
    noisy = np.stack([(enc[i] + noise[i]) % U64(p) for i, p in enumerate(primes)])
    assert np.array_equal(Decoder2(*primes, 64).decode(noisy[0], noisy[1]), m)


def test_signed_to_rns_edges():
    x = np.array([0, 1, -1, 2**62, -(2**63), 2**63 - 1], dtype=np.int64)
    for i, q in enumerate(HE_8K.primes):
        assert signed_to_rns(x, HE_8K.primes)[i].tolist() == [int(v) % q for v in x]


def test_samplers_ranges_and_determinism():
    a = sample_ternary(PRG(b"t" * 16), 4096)
    assert set(np.unique(a)) == {-1, 0, 1}
    e = sample_cbd(PRG(b"c" * 16), 20000)
    assert np.abs(e).max() <= 21 and abs(e.var() - 10.5) < 0.6
    assert np.array_equal(sample_cbd(PRG(b"c" * 16), 20000), e)
    primes = HE_8K.primes
    fl = sample_flood_rns(PRG(b"f" * 16), 100, primes, 64)
    q = math.prod(primes)
    vals = []
    for j in range(64):
        phi = 0
        for i, p in enumerate(primes):
            qi = q // p
            phi += int(fl[i, j]) * qi * pow(qi, -1, p)
        phi %= q
        vals.append(phi - q if phi > q // 2 else phi)
    assert all(-(2**100) <= v < 2**100 for v in vals)
    assert max(abs(v) for v in vals) > 2**90


# --- serialization --------------------------------------------------------------------------


def test_ciphertext_body_roundtrip_through_seal(ctx):
    prg = PRG(b"r" * 16)
    data = np.stack([np.stack([prg.below(q, ctx.n) for q in ctx.primes]) for _ in range(3)])
    ct = ctx.import_ct(data, ntt=True)
    assert ct.size() == 3 and ct.is_ntt_form() and ct.coeff_modulus_size() == 4
    body = ser.save_body(ct)
    pid, ntt, back = ser.parse_ciphertext(body)
    assert ntt and pid == ctx.pid[4] and np.array_equal(back, data)


def test_plaintext_body_roundtrip_and_unreduced_data_is_refused(ctx):
    coeffs = np.arange(ctx.n, dtype=U64) % U64(1000)
    pt = ser.load_body(sealapi.Plaintext(), ctx.seal, ser.plaintext_body([0] * 4, coeffs))
    _pid, back = ser.parse_plaintext(ser.save_body(pt))
    assert np.array_equal(back, coeffs)
    bad = np.zeros((2, 4, ctx.n), dtype=U64)
    bad[0, 0, 0] = U64(ctx.primes[0])
    with pytest.raises((RuntimeError, ValueError)):
        ctx.import_ct(bad, ntt=False)


def test_wire_packing_roundtrip_and_size_checks(ctx):
    prg = PRG(b"p" * 16)
    c0 = np.stack([np.stack([prg.below(q, ctx.n) for q in ctx.primes]) for _ in range(2)])
    buf = pack_fresh(ctx, c0)
    assert buf.shape == (2, ctx.n * 22) and buf.dtype == np.uint8
    assert np.array_equal(unpack_fresh(ctx, buf, 2), c0)
    with pytest.raises(HEError, match="expected 3"):
        unpack_fresh(ctx, buf, 3)
    bad = buf.copy()
    bad[0, :5] = 0xFF  # residue 2^40 − 1 ≥ q0
    with pytest.raises(HEError, match="not reduced"):
        unpack_fresh(ctx, bad, 2)


def test_ntt_roundtrip(ctx):
    prg = PRG(b"n" * 16)
    polys = np.stack([np.stack([prg.below(q, ctx.n) for q in ctx.primes]) for _ in range(20)])
    assert np.array_equal(ctx.ntt(ctx.ntt(polys), inverse=True), polys)
    one = polys[:1]
    assert np.array_equal(ctx.ntt(ctx.ntt(one), inverse=True), one)


# --- encryption, products, return path ------------------------------------------------------


def _server_product(ctx, pk, seed, c0, w, positions, beta, prg, level=4):
    a = expand_a(seed, c0.shape[0], ctx.primes[:level], ctx.n)
    ct = ctx.import_ct(np.stack([c0[0], a[0]]), ntt=True)
    if w is not None:
        ctx.evaluator.multiply_plain_inplace(ct, ctx.plain_small(w, level))
    return ReturnPacker(ctx, pk, beta).finish(ct, positions, prg, level)


@pytest.mark.parametrize("level", [4, 3])
def test_product_by_plaintext_is_exact_mod_2_64(ctx, keys, level):
    sk, pk = keys
    prg = PRG(b"x" * 16)
    m = prg.uint64((1, ctx.n))
    m[0, : len(EDGES)] = EDGES
    w = np.zeros(ctx.n, dtype=np.int64)
    w[[0, 1, 2, 77, ctx.n - 1]] = [3, -7, 2**15 - 1, -(2**15), 1]
    seed, c0 = sk.encrypt(m, prg, level=level)
    pos = np.arange(0, ctx.n, 3)
    beta = plan_noise(HE_8K, 25).beta if level == 4 else 0
    r, c1, c0p = _server_product(ctx, pk, seed, c0, w, pos, beta, PRG(b"y" * 16), level)
    got = sk.decrypt_returned(c1[None], [c0p], [pos])[0]
    assert np.array_equal(got - r, negacyclic(m[0], w)[pos])


def test_returned_noise_is_flooded(ctx, keys):
    """White box: the client's view of the noise spans the flooding range, not the raw noise."""
    sk, pk = keys
    prg = PRG(b"z" * 16)
    m = np.zeros((1, ctx.n), dtype=U64)
    seed, c0 = sk.encrypt(m, prg)
    pos = np.arange(ctx.n)
    plan = plan_noise(HE_8K, 25)
    r, c1, c0p = _server_product(ctx, pk, seed, c0, None, pos, plan.beta, PRG(b"w" * 16))
    phase = sk.c1_times_s(c1[None])[0]
    primes = ctx.primes[:2]
    phase = np.stack([(c0p[i] + phase[i]) % U64(p) for i, p in enumerate(primes)])
    enc_r = Scaler(primes, 64).encode(r)
    noise = np.stack([(phase[i] + U64(p) - enc_r[i]) % U64(p) for i, p in enumerate(primes)])
    q0 = primes[0]
    v = noise[0].astype(np.int64)
    v = np.where(v > q0 // 2, v - q0, v)  # |noise| < q0/2 here, so residue 0 determines it
    scaled = plan.beta - (HE_8K.q_bits - HE_8K.out_q_bits)  # log2 of the scaled flood
    assert np.abs(v).max() < 2 ** (scaled + 1) + 2**11
    assert v.std() > 2 ** (scaled - 2)


def test_bgv_encryption_decrypts(ctx, keys):
    sk, _pk = keys
    prg = PRG(b"g" * 16)
    m = prg.uint64((1, ctx.n))
    seed, c0 = sk.encrypt(m, prg, encoding="bgv")
    a = expand_a(seed, 1, ctx.primes, ctx.n)
    phase = ctx.ntt(np.stack([c0[0]]), inverse=True)[0]
    as_ = ctx.ntt(sk._a_times_s(a), inverse=True)[0]
    primes = ctx.primes
    q = math.prod(primes)
    for j in (0, 1, 500):
        phi = (
            sum(
                int((phase[i, j] + as_[i, j]) % U64(p)) * (q // p) * pow(q // p, -1, p)
                for i, p in enumerate(primes)
            )
            % q
        )
        phi = phi - q if phi > q // 2 else phi
        assert phi % (1 << 64) == int(m[0, j])
        assert abs((phi - int(m[0, j]) + (1 << 63)) // (1 << 64)) <= 22


def test_seal_secret_key_matches(ctx, keys):
    sk, _pk = keys
    key = sk.seal_secret_key()
    _pid, data = ser.parse_plaintext(ser.save_body(key))
    assert data.size == ctx.n * len(HE_8K.all_primes)
    assert np.array_equal(data[: ctx.n * 4].reshape(4, ctx.n), sk.s_ntt)


# --- returned coefficients: only the bits decryption needs ---------------------------------


def test_shrink_then_grow_is_within_half_a_dropped_unit(ctx):
    """⌊c/2^k⌋ on the wire, ⌊c/2^k⌋·2^k + 2^(k−1) back: error in [−2^(k−1), 2^(k−1)),
    checked with Python integers on random c and the ends of [0, q_L)."""
    q0, q1 = ctx.primes[0], ctx.primes[1]
    ql = q0 * q1
    prg = PRG(b"s" * 16)
    vals = [int(v) for v in prg.below(q0, 500)] + [0, 1, ql - 1, ql - 2**20, 2**64, 2**64 - 1]
    vals += [int(v) * q0 + int(u) for v, u in np.stack([prg.below(q1, 500), prg.below(q0, 500)]).T]
    res = np.array([[v % q0 for v in vals], [v % q1 for v in vals]], dtype=U64)
    for drop in (0, 1, 5, 14, 63):
        lo, hi = shrink_returned(ctx, res, drop)
        bits = ql.bit_length() - drop
        lo2, hi2 = ser.unpack_bits(ser.pack_bits(lo, hi, bits), bits, len(vals))
        back = grow_returned(ctx, lo2, hi2, drop)
        for j, v in enumerate(vals):
            assert (int(hi[j]) << 64) + int(lo[j]) == v >> drop
            w = ((v >> drop) << drop) + ((1 << drop) >> 1)
            assert (int(back[0, j]), int(back[1, j])) == (w % q0, w % q1)
            assert -(1 << drop >> 1) <= v - w < max(1, 1 << drop >> 1)


def test_dropped_bits_keep_decryption_exact_at_the_budget_extreme(ctx, keys, monkeypatch):
    """The largest flood the input level admits, every flooded coefficient at −2^β (the
    extreme, instead of uniform), and the planned bits dropped: decryption is still exact at
    every position; dropping 3 more bits of c0 breaks it (the budget is not slack)."""
    sk, pk = keys
    level = 3
    bound = max(b for b in range(-40, 40) if plan_noise(HE_8K, b).level <= level)
    beta = plan_noise(HE_8K, bound).beta
    primes = ctx.primes[:level]

    def extreme(_prg, b, ps, n):
        return np.stack([np.full(n, (-(1 << b)) % q, dtype=U64) for q in ps])

    monkeypatch.setattr("secmoe.crypto.he.sample_flood_rns", extreme)
    prg = PRG(b"e" * 16)
    m = prg.uint64((1, ctx.n))
    seed, c0 = sk.encrypt(m, prg, level=level)
    pos = np.arange(ctx.n)
    r, c1, c0p = _server_product(ctx, pk, seed, c0, None, pos, beta, PRG(b"f" * 16), level)
    bits = plan_return_bits(HE_8K, beta, level, ctx.n, len(pos))
    assert bits.drop_c1 >= 1 and bits.drop_c0 >= 1
    assert len(primes) == level

    def decrypt(b: ReturnBits) -> np.ndarray:
        c1b, c0b = pack_returned(ctx, c1[None], c0p, b)
        assert c1b.nbytes == -(-ctx.n * b.bits_c1 // 8)
        g1, g0 = unpack_returned(ctx, c1b, c0b, b, 1, len(pos))
        return sk.decrypt_returned(g1, [g0], [pos])[0] - r

    assert np.array_equal(decrypt(bits), m[0])
    worse = ReturnBits(bits.full, bits.drop_c1, bits.drop_c0 + 3)
    assert not np.array_equal(decrypt(worse), m[0])

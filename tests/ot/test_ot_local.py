"""Local OT primitives: the fixed-key-AES hash, bit matrices, ristretto255, base-OT steps."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secmoe.crypto import aes_hash, group
from secmoe.crypto.bitmatrix import (
    bits_to_words,
    pack_bits,
    packed_size,
    pick_bits,
    transpose,
    transpose_2d,
    transpose_masked,
    unpack_bits,
    words_to_bits,
)
from secmoe.crypto.prg import PRG
from secmoe.protocols.ot import base, iknp, kkot

# -- fixed-key AES hash ---------------------------------------------------------------------


def _pi(block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(aes_hash.FIXED_KEY), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def test_tccr_matches_per_block_definition():
    prg = PRG(b"h" * 16)
    x = prg.uint64((37, 2))
    idx = prg.uint64(37)
    domain, k = 0x123456789ABC, 5
    got = aes_hash.tccr(x, idx, domain, k)
    for j in (0, 1, 36):
        tweak = np.array([idx[j], aes_hash.tweak_high(domain, k)], dtype="<u8").tobytes()
        y = _pi(x[j].astype("<u8").tobytes())
        want = _xor(_pi(_xor(y, tweak)), y)  # H(i, x) = π(π(x) ⊕ i) ⊕ π(x)
        assert got[j].astype("<u8").tobytes() == want


def test_tccr_wide_blocks_are_tweaked_separately_and_large_batches_agree():
    prg = PRG(b"w" * 16)
    x = prg.uint64((70_000, 2))  # more than one update_into slice
    idx = np.arange(70_000, dtype=np.uint64)
    wide = aes_hash.tccr_wide(x, idx, 7, 3)
    assert wide.shape == (70_000, 3, 2)
    for k in range(3):
        np.testing.assert_array_equal(wide[:, k], aes_hash.tccr(x, idx, 7, k))
    assert not np.array_equal(wide[:, 0], wide[:, 1])
    assert not np.array_equal(aes_hash.tccr(x, idx, 7), aes_hash.tccr(x, idx, 8))
    assert not np.array_equal(aes_hash.tccr(x, idx, 7), aes_hash.tccr(x, idx + 1, 7))


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32, 64])
def test_hash_to_uint_fields_are_the_hash_bits(width):
    prg = PRG(b"f" * 16)
    x = prg.uint64((50, 2))
    idx = np.arange(50, dtype=np.uint64)
    count = 300 // width + 1
    fields = aes_hash.hash_to_uint(x, idx, 3, count, width)
    nblocks = -(-count * width // 128)
    raw = aes_hash.tccr_wide(x, idx, 3, nblocks).reshape(50, -1).view(np.uint8)
    bits = np.unpackbits(raw, axis=1, bitorder="little")[:, : count * width]
    want = (
        bits.reshape(50, count, width).astype(np.uint64) << np.arange(width, dtype=np.uint64)
    ).sum(axis=2, dtype=np.uint64)
    np.testing.assert_array_equal(fields.astype(np.uint64), want)


# -- bit matrices ----------------------------------------------------------------------------


def _transpose_ref(m: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(m.view(np.uint8), axis=1, bitorder="little")
    return np.packbits(np.ascontiguousarray(bits.T), axis=1, bitorder="little").view(np.uint64)


@pytest.mark.parametrize("shape", [(64, 1), (128, 1), (128, 3), (256, 17), (128, 1500), (64, 2049)])
def test_transpose_matches_reference_and_is_an_involution(shape):
    m = PRG(b"t" * 16).uint64(shape)
    t = transpose(m)
    assert t.shape == (64 * shape[1], shape[0] // 64)
    np.testing.assert_array_equal(t, _transpose_ref(m))
    np.testing.assert_array_equal(transpose(t), m)


@pytest.mark.parametrize("shape", [(128, 1), (128, 4096), (64, 13)])
def test_transpose_masked_is_the_transpose_of_the_masked_xor(shape):
    g = PRG(b"m" * 16)
    m, u = g.uint64(shape), g.uint64(shape)
    sel = np.where(g.bits(shape[0]), ~np.uint64(0), np.uint64(0))
    want = _transpose_ref(m ^ (u & sel[:, None]))
    np.testing.assert_array_equal(transpose_masked(m, u, sel), want)


def test_prg_fill_is_the_same_stream_as_random_bytes():
    a, b = PRG(b"f" * 16), PRG(b"f" * 16)
    for size in (1, 100, 3 * 65536 + 7):  # odd sizes, and larger than the first zero buffer
        buf = np.empty(size, np.uint8)
        a.fill(buf)
        assert buf.tobytes() == b.random_bytes(size)
    words = np.empty((3, 5), np.uint64)
    a.fill(words[1])  # a row of a larger array
    assert words[1].tobytes() == b.random_bytes(40)
    with pytest.raises(ValueError, match="C-contiguous"):
        a.fill(words[:, 0])  # a column: filling a copy would be silently lost


def test_transpose_bit_convention():
    m = np.zeros((128, 2), dtype=np.uint64)
    m[5, 1] = np.uint64(1) << np.uint64(3)  # row 5, column 64 + 3
    t = transpose(m)
    assert t[67, 0] == np.uint64(1) << np.uint64(5) and np.count_nonzero(t) == 1


def test_transpose_rejects_bad_shapes():
    with pytest.raises(ValueError):
        transpose(np.zeros((100, 2), dtype=np.uint64))
    with pytest.raises(ValueError):
        transpose(np.zeros((128, 2), dtype=np.uint32))


@pytest.mark.parametrize("bits", [*range(1, 65)])
@pytest.mark.parametrize("count", [0, 1, 7, 1001])
def test_pack_unpack_round_trip(bits, count):
    x = PRG(b"p" * 16).uint64(count)
    if bits < 64:
        x &= np.uint64((1 << bits) - 1)
    packed = pack_bits(x, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(count, bits)
    np.testing.assert_array_equal(unpack_bits(packed, count, bits), x)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 13])
def test_pick_bits_reads_the_values_at_the_indices(bits):
    g = PRG(b"q" * 16)
    x = g.uint64(1001) & np.uint64((1 << bits) - 1)
    at = g.below(1001, 300).astype(np.int64)
    np.testing.assert_array_equal(pick_bits(pack_bits(x, bits), 1001, bits, at), x[at])
    with pytest.raises(ValueError):
        pick_bits(np.zeros(3, dtype=np.uint8), 1001, bits, at)


def test_pack_layout_is_lsb_first_and_masks_high_bits():
    assert pack_bits(np.array([1, 2, 3, 0xFF], dtype=np.uint64), 2).tolist() == [0b11_11_10_01]
    assert pack_bits(np.array([5], dtype=np.uint64), 3).tolist() == [5]
    with pytest.raises(ValueError):
        unpack_bits(np.zeros(3, dtype=np.uint8), 5, 3)


def test_bits_words_round_trip():
    b = PRG(b"b" * 16).bits(200)
    w = bits_to_words(b, 5)
    assert w.shape == (5,) and w[4] == 0
    np.testing.assert_array_equal(words_to_bits(w, 200), b)
    assert int(bits_to_words(np.array([0, 1, 1], bool))[0]) == 0b110


# -- ristretto255 ----------------------------------------------------------------------------

# RFC 9496 Appendix A.1: encodings of 0·B .. 8·B.
RFC_MULTIPLES = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
    "da80862773358b466ffadfe0b3293ab3d9fd53c5ea6c955358f568322daf6a57",
    "e882b131016b52c1d3337080187cf768423efccbb517bb495ab812c4160ff44e",
    "f64746d3c92b13050ed8d80236a7f0007c3b3f962f5ba793d19a601ebb1df403",
    "44f53520926ec81fbd5a387845beb7df85a96a24ece18738bdcfa6a7822a176d",
    "903293d8f2287ebe10e2374dc1a53e0bc887e592699f02d077d5263cdd55601c",
]


def test_ristretto_rfc_vectors():
    p = group.IDENTITY
    for i, want in enumerate(RFC_MULTIPLES):
        assert group.encode(p).hex() == want
        assert group.encode(group.mul(i, group.GENERATOR)).hex() == want
        assert group.encode(group.base_mul(i)).hex() == want
        assert group.equal(group.decode(bytes.fromhex(want)), p)
        p = group.add(p, group.GENERATOR)


@pytest.mark.parametrize(
    "bad",
    [
        "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # non-canonical
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # = p
        "0100000000000000000000000000000000000000000000000000000000000000",  # negative
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # s = −1: y = 0
        "00",
    ],
)
def test_ristretto_rejects_bad_encodings(bad):
    with pytest.raises(ValueError):
        group.decode(bytes.fromhex(bad))


def test_ristretto_group_laws():
    prg = PRG(b"g" * 16)
    a, b = group.random_scalar(prg), group.random_scalar(prg)
    pa, pb = group.base_mul(a), group.base_mul(b)
    assert group.equal(group.add(pa, pb), group.base_mul(a + b))
    assert group.equal(group.sub(pa, pa), group.IDENTITY)
    assert group.equal(group.mul(b, pa), group.mul(a, pb))  # Diffie–Hellman
    assert group.equal(group.mul(group.ORDER - 1, pa), group.neg(pa))
    assert group.equal(group.FixedBase(pa).mul(b), group.mul(b, pa))
    assert group.equal(group.double(pa), group.add(pa, pa))
    assert group.equal(group.decode(group.encode(pa)), pa)


# -- base OT steps (no channel) --------------------------------------------------------------


def test_chou_orlandi_steps():
    choices = PRG(b"c" * 16).bits(16)
    a, a_enc = base.step_sender_setup(PRG(b"s" * 16))
    b_all, kc = base.step_receiver_choose(a_enc, choices, PRG(b"r" * 16), "t")
    k0, k1 = base.step_sender_keys(a, a_enc, b_all, 16, "t")
    np.testing.assert_array_equal(kc, np.where(choices[:, None], k1, k0))
    assert not (k0 == k1).all(axis=1).any()
    _, _, ideal_kc = base.ideal(choices, PRG(b"i" * 16))
    assert ideal_kc.shape == kc.shape


def test_bin_size_is_msgpack_bin():
    from secmoe.net.codec import encode

    for n in (0, 1, 255, 256, 65535, 65536, 100_000):
        assert base.bin_size(n) == len(encode(bytes(n)))


@pytest.mark.parametrize("shape", [(1, 1), (300, 7), (1024, 256), (257, 1024)])
def test_transpose_2d(shape):
    a = PRG(b"2" * 16).uint8(shape)
    np.testing.assert_array_equal(transpose_2d(a), a.T)


# -- 1-out-of-N steps with ideal COTs (no channel) -------------------------------------------


@pytest.mark.parametrize(("n_choices", "bits"), [(2, 1), (5, 3), (16, 2), (256, 8), (8, 40)])
def test_kkot_steps(n_choices, bits):
    g = PRG(b"k" * 16)
    c = 50
    m = kkot.index_bits(n_choices)
    x = g.below(n_choices, c).astype(np.int64)
    msgs = g.ring((c, n_choices), bits)
    delta = g.uint64(2)
    r = ((x[:, None] >> np.arange(m)) & 1).astype(bool).reshape(-1)
    q, t = iknp.ideal(delta, r, g)
    p0 = kkot.step_pads(q, 0, 9, m, bits)
    p1 = kkot.step_pads(q ^ delta, 0, 9, m, bits)
    ct = kkot.step_encrypt(msgs, p0, p1) & np.uint64((1 << bits) - 1)
    pad = kkot.step_receiver_pad(kkot.step_pads(t, 0, 9, m, bits), x)
    raw = pack_bits(ct, bits)
    got = kkot.step_decrypt(raw, pad, x, n_choices, bits) & np.uint64((1 << bits) - 1)
    np.testing.assert_array_equal(got, kkot.ideal(msgs, x))
    # Any other index decrypts to garbage (w.h.p. over 50 transfers).
    wrong = kkot.step_decrypt(raw, pad, (x + 1) % n_choices, n_choices, bits)
    assert not np.array_equal(
        wrong & np.uint64((1 << bits) - 1), kkot.ideal(msgs, (x + 1) % n_choices)
    )


def test_iknp_steps_give_the_correlation():
    g = PRG(b"i" * 16)
    words = 3
    g0, g1, r = g.uint64((128, words)), g.uint64((128, words)), g.bits(64 * words)
    s = g.bits(128)
    u, t = iknp.step_receiver(g0, g1, bits_to_words(r))
    mask = np.where(s, ~np.uint64(0), np.uint64(0))
    q = iknp.step_sender(np.where(s[:, None], g1, g0), u.copy(), mask)
    np.testing.assert_array_equal(t, q ^ (r[:, None] * bits_to_words(s)))


def test_xor_block_is_the_broadcast_xor():
    g = PRG(b"x" * 16)
    x, block = g.uint64((1001, 2)), g.uint64(2)
    got = aes_hash.xor_block(x, block)
    np.testing.assert_array_equal(got, x ^ block)
    assert got.base is None and not np.shares_memory(got, x)  # a new array

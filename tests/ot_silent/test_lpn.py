"""The local linear code of Ferret's LPN step: exact against a reference, linear, public."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secmoe.crypto.prg import PRG
from secmoe.protocols.ot import lpn
from secmoe.protocols.ot.lpn import LocalCode, ideal_encode


def _prg(tag: str) -> PRG:
    return PRG(tag.encode().ljust(16, b"\0")[:16])


@pytest.mark.parametrize(
    ("n", "k", "start", "m"),
    [
        (1, 10, 0, 1),
        (1000, 300, 0, 1000),
        (3 * lpn.PAGE + 5, 64, 0, 3 * lpn.PAGE + 5),  # pages, and a partial last page
        (3 * lpn.PAGE + 5, 5000, lpn.PAGE - 3, lpn.PAGE + 7),  # straddles pages, unaligned
        (2 * lpn.PAGE, 1 << 12, 777, 13),  # fewer rows than the prefetch distance
        (2 * lpn.PAGE, 1 << 12, lpn.PAGE - 12, 12),  # ends on a page boundary
        (2 * lpn.PAGE + 9, 1 << 16, 1001, lpn.PAGE + 3),  # k = 2^16: index v mod k
        (2 * lpn.PAGE + 9, (1 << 16) + 1, 5, 2 * lpn.PAGE + 3),  # k = 2^16 + 1: ⌊v·k/2^32⌋
    ],
)
def test_encode_matches_reference(n, k, start, m):
    g = _prg(f"enc{n}/{k}/{start}")
    code = LocalCode(n, k)
    base, out = g.uint64((k, 2)), g.uint64((m, 2))
    want = ideal_encode(out, base, code, start)
    code.encode(out, base, start)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("d", [1, 3])
def test_encode_other_row_weights(d):
    g = _prg(f"d{d}")
    code = LocalCode(lpn.PAGE + 50, 999, d)
    base, out = g.uint64((999, 2)), g.uint64((lpn.PAGE + 20, 2))
    want = ideal_encode(out, base, code, 30)
    code.encode(out, base, 30)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("k", [1 << 10, 1000])
def test_indices_are_the_documented_keystream_words(k):
    # A(p·PAGE + u, j) from word j·PAGE + u of one AES-128-CTR stream at counter block p·2^64,
    # computed here in one call (the code fills padded rows, d calls per page).
    code = LocalCode(3 * lpn.PAGE, k)
    page, rows = 2, np.arange(0, lpn.PAGE, 97)
    nonce = (page << 64).to_bytes(16, "big")
    enc = Cipher(algorithms.AES(code.key), modes.CTR(nonce)).encryptor()
    w = np.frombuffer(enc.update(bytes(4 * lpn.D * lpn.PAGE)), "<u4").astype(np.uint64)
    w = w.reshape(lpn.D, lpn.PAGE)[:, rows].T
    want = w % k if k & (k - 1) == 0 else (w * np.uint64(k)) >> np.uint64(32)
    got = code.indices(page * lpn.PAGE, (page + 1) * lpn.PAGE)[rows]
    np.testing.assert_array_equal(got, want.astype(np.int64))


def test_encode_in_pieces_equals_whole():
    g = _prg("pieces")
    code = LocalCode(2 * lpn.PAGE + 100, 777)
    base, y = g.uint64((777, 2)), g.uint64((code.n, 2))
    whole = y.copy()
    code.encode(whole, base)
    for a, b in [(0, 13), (13, lpn.PAGE + 1), (lpn.PAGE + 1, code.n)]:
        piece = np.ascontiguousarray(y[a:b])
        code.encode(piece, base, a)
        np.testing.assert_array_equal(piece, whole[a:b])


def test_linear_and_maps_cots_to_cots():
    # (q, q ⊕ b·Δ) ↦ (A·q, A·q ⊕ (A·b)·Δ): the COT correlation survives the code.
    g = _prg("linear")
    n, k = 5000, 400
    code = LocalCode(n, k)
    delta = g.uint64(2)
    q, b = g.uint64((k, 2)), g.bits(k)
    t = q ^ (b[:, None] * delta)
    yq, yt = np.zeros((n, 2), np.uint64), np.zeros((n, 2), np.uint64)
    code.encode(yq, q)
    code.encode(yt, t)
    ab = np.bitwise_xor.reduce(b[code.indices()], axis=1)  # A·b over F_2
    np.testing.assert_array_equal(yt, yq ^ (ab[:, None] * delta))


def test_indices_public_deterministic_and_in_range():
    a1 = LocalCode(20_000, 1234).indices()
    a2 = LocalCode(20_000, 1234).indices()
    assert a1.shape == (20_000, lpn.D)
    np.testing.assert_array_equal(a1, a2)  # both parties derive the same A
    assert a1.min() >= 0 and a1.max() < 1234
    assert not np.array_equal(LocalCode(20_000, 1235).indices()[:, 0] % 1234, a1[:, 0])
    # Roughly uniform columns: every column index is hit about 20000·10/1234 ≈ 162 times.
    counts = np.bincount(a1.reshape(-1), minlength=1234)
    assert counts.min() > 90 and counts.max() < 250
    np.testing.assert_array_equal(LocalCode(20_000, 1234).indices(777, 9000), a1[777:9000])


def test_rejects_bad_shapes():
    code = LocalCode(100, 50)
    with pytest.raises(ValueError):
        code.encode(np.zeros((10, 2), np.uint64), np.zeros((49, 2), np.uint64))
    with pytest.raises(ValueError):
        code.encode(np.zeros((10, 2), np.uint64), np.zeros((50, 2), np.uint64), start=95)
    with pytest.raises(ValueError):
        LocalCode(100, 5)  # k < d


def test_table_is_a_writable_block_array_the_code_reads():
    code = LocalCode(1000, 600)
    base = lpn.table(600)
    assert base.shape == (600, 2) and base.dtype == np.uint64 and base.flags.c_contiguous
    base[:] = PRG(b"t" * 16).uint64((600, 2))
    out = np.zeros((1000, 2), np.uint64)
    code.encode(out, base)
    np.testing.assert_array_equal(out, ideal_encode(np.zeros((1000, 2), np.uint64), base, code))

"""The local linear code of Ferret's LPN step: exact against a reference, linear, public."""

import numpy as np
import pytest

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
    ],
)
def test_encode_matches_reference(n, k, start, m):
    g = _prg(f"enc{n}/{k}/{start}")
    code = LocalCode(n, k)
    base, out = g.uint64((k, 2)), g.uint64((m, 2))
    want = ideal_encode(out, base, code, start)
    code.encode(out, base, start)
    np.testing.assert_array_equal(out, want)


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

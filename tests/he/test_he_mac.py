"""The NTT-domain kernels (crypto.he_mac) against SEAL and exact integer arithmetic: the NTT is
SEAL's bit for bit, the multiply-accumulate is SEAL's multiply_plain + add_inplace bit for bit,
and its lazy reduction stays exact past the number of terms summed between reductions."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sealapi

from secmoe.crypto import he_mac
from secmoe.crypto.he import HEContext
from secmoe.crypto.he_mac import RnsMac
from secmoe.crypto.he_params import HE_16K

U64 = np.uint64
LEVEL = 6


@pytest.fixture(scope="module")
def ctx():
    return HEContext(HE_16K)


def residues(rng, primes, shape, top=False):
    """Uniform residues of shape (..., L, N) (``top``: every one at q − 1, the extreme)."""
    out = np.empty(shape, dtype=U64)
    for i, q in enumerate(primes):
        part = out[..., i, :]
        out[..., i, :] = q - 1 if top else rng.integers(0, q, size=part.shape, dtype=U64)
    return out


def test_ntt_is_seals_transform(ctx):
    """Signed small polynomials (as weight blocks are) and arbitrary residues: the same NTT
    residues as SEAL's transform_to_ntt."""
    rng = np.random.default_rng(1)
    mac = RnsMac(ctx.primes[:LEVEL])
    polys = rng.integers(-(1 << 23), 1 << 23, size=(3, ctx.n))
    small = mac.small_to_rns(polys)
    for i, q in enumerate(ctx.primes[:LEVEL]):
        assert np.array_equal(small[:, i].astype(object), polys.astype(object) % q)
    arbitrary = residues(rng, ctx.primes[:LEVEL], (2, LEVEL, ctx.n))
    for a in (small, arbitrary):
        want = ctx.ntt(a)
        assert np.array_equal(mac.ntt(a.copy()), want)


def test_mac_is_seals_multiply_plain_and_add(ctx):
    """acc[a] += Σ src[l]·w[k] over pairs with repeated accumulators, sources and multipliers,
    sources with more primes than the level (only the first L read): SEAL's result exactly."""
    rng = np.random.default_rng(2)
    primes = ctx.primes[:LEVEL]
    mac = RnsMac(primes)
    src = residues(rng, ctx.primes[: LEVEL + 1], (3, 2, LEVEL + 1, ctx.n))
    w = residues(rng, primes, (4, LEVEL, ctx.n))
    acc = residues(rng, primes, (2, 2, LEVEL, ctx.n))
    pairs = [(1, 0, 3), (0, 2, 0), (1, 1, 1), (0, 0, 2), (1, 2, 3), (0, 2, 0)]
    got = acc.copy()
    mac.mac(got, src, w, pairs)
    ev = ctx.evaluator
    for a in range(2):
        ct = ctx.import_ct(acc[a], ntt=True)
        for aa, j, k in pairs:
            if aa != a:
                continue
            tmp = sealapi.Ciphertext(ctx.seal)
            ev.multiply_plain(
                ctx.import_ct(np.ascontiguousarray(src[j, :, :LEVEL]), ntt=True),
                ctx.plain_from_ntt(w[k]),
                tmp,
            )
            ev.add_inplace(ct, tmp)
        assert np.array_equal(got[a], ctx.export_ct(ct))


def test_lazy_reduction_is_exact_past_its_limit():
    """More terms into one sum than are added between reductions, all at the extreme q − 1
    (the largest limb products), and random ones: the exact sum mod q (Python integers)."""
    rng = np.random.default_rng(3)
    primes = HE_16K.primes[:LEVEL]
    mac = RnsMac(primes)
    n, terms = 16, 2 * he_mac._LIMIT + 3
    for top in (True, False):
        src = residues(rng, primes, (terms, 1, LEVEL, n), top)
        w = residues(rng, primes, (terms, LEVEL, n), top)
        acc = residues(rng, primes, (1, 1, LEVEL, n), top)
        want = acc.astype(object) + (src[:, 0].astype(object) * w.astype(object)).sum(axis=0)
        mac.mac(acc, src, w, [(0, t, t) for t in range(terms)])
        for i, q in enumerate(primes):
            assert np.array_equal(acc[0, 0, i].astype(object), want[0, 0, i] % q)


def test_bad_shapes_and_indices_are_refused():
    mac = RnsMac(HE_16K.primes[:2])
    acc = np.zeros((1, 2, 2, 8), dtype=U64)
    with pytest.raises(ValueError, match="index out of range"):
        mac.mac(acc, acc.copy(), np.zeros((1, 2, 8), dtype=U64), [(0, 1, 0)])
    with pytest.raises(ValueError, match="do not match"):
        mac.mac(acc, acc.copy(), np.zeros((1, 2, 4), dtype=U64), [(0, 0, 0)])
    with pytest.raises(ValueError, match="below 2\\^56"):
        RnsMac([(1 << 61) - 1])

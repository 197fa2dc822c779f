"""In-place ciphertext access (secmoe.crypto.seal_raw) agrees with SEAL's serialization."""

import numpy as np
import pytest

from secmoe.crypto import he_serial as ser
from secmoe.crypto.he import HEContext, HEError
from secmoe.crypto.he_params import HE_8K
from secmoe.crypto.seal_raw import ciphertext_from_residues, ciphertext_residues


@pytest.fixture(scope="module")
def ctx():
    return HEContext(HE_8K)


def _residues(ctx, size, level, seed):
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, q, size=(size, ctx.n), dtype=np.uint64) for q in ctx.primes[:level]]
    return np.stack(cols, axis=1)


@pytest.mark.parametrize(("size", "level", "ntt"), [(2, 4, True), (3, 2, False), (2, 1, True)])
def test_round_trip_matches_serialization(ctx, size, level, ntt):
    data = _residues(ctx, size, level, seed=size * 10 + level)
    ct = ciphertext_from_residues(ctx.seal, ctx.pid[level], ctx.primes[:level], data, ntt)
    assert ct is not None and ct.is_ntt_form() == ntt and ct.size() == size
    pid, got_ntt, got = ser.parse_ciphertext(ser.save_body(ct))  # SEAL's own view
    assert got_ntt == ntt and pid == list(ctx.pid[level])
    np.testing.assert_array_equal(got, data)
    np.testing.assert_array_equal(ciphertext_residues(ct), data)
    # SEAL computes on it as on a loaded ciphertext: ct + ct = 2·ct mod q
    loaded = ser.load_body(
        type(ct)(ctx.seal), ctx.seal, ser.ciphertext_body(ctx.pid[level], data, ntt)
    )
    ctx.evaluator.add_inplace(ct, loaded)
    q = np.array(ctx.primes[:level], dtype=np.uint64)[:, None]
    np.testing.assert_array_equal(ctx.export_ct(ct), (data + data) % q)


def test_evaluated_ciphertext_reads_like_serialization(ctx):
    ct = ctx.import_ct(_residues(ctx, 2, 4, seed=1), ntt=True)
    ctx.evaluator.transform_from_ntt_inplace(ct)
    _pid, ntt, want = ser.parse_ciphertext(ser.save_body(ct))
    assert not ntt
    np.testing.assert_array_equal(ciphertext_residues(ct), want)


def test_unreduced_residues_go_to_seal_which_refuses(ctx):
    data = _residues(ctx, 2, 2, seed=2)
    data[1, 1, 5] = ctx.primes[1]  # not below its prime
    assert ciphertext_from_residues(ctx.seal, ctx.pid[2], ctx.primes[:2], data, True) is None
    with pytest.raises((ValueError, RuntimeError, HEError)):
        ctx.import_ct(data, ntt=True)

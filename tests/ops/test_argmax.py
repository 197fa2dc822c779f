"""The index-carrying argmax (greedy decoding's next token) against numpy, and its cost."""

import numpy as np

from secmoe.crypto.ring import Ring
from secmoe.ops.argmax import argmax_index, argmax_index_cost
from tests.ops.test_piecewise import checked
from tests.protocols.helpers import mine, opened, run_parties, split

R = Ring(64, 18)


async def test_argmax_index_is_numpys_first_maximum_at_the_declared_cost():
    rng = np.random.default_rng(3)
    v = rng.integers(-(2**28), 2**28, (4, 37))  # an odd width: byes at several levels
    v[0] = 7  # all tied: the first index
    v[1, [5, 30]] = 2**29  # a tie between two maxima far apart
    v[2, 36] = 2**30 - 1  # the last entry (a bye) wins
    v[3, :] = -(2**29)
    v[3, 12] = -(2**29) + 1  # negatives, one ulp apart
    vs = split(R.from_signed(v), R, 4)

    async def body(p):
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        out = await argmax_index(p.fork("am"), mine(p, vs))
        checked(p, snap, mark, argmax_index_cost(p.ot, 4, 37, R))
        return out

    cv, sv = await run_parties(body)
    best, index = (opened((a, b), R) for a, b in zip(cv, sv, strict=True))
    np.testing.assert_array_equal(R.to_signed(best), v.max(axis=-1))
    np.testing.assert_array_equal(index.astype(np.int64), v.argmax(axis=-1))
    assert index.tolist() == [0, 5, 36, 12]

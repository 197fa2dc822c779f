import numpy as np
import pytest

from secmoe.crypto.ring import DEFAULT_RING as R
from secmoe.model.reference import capacity_mask
from secmoe.ops.dispatch import dispatch_tensor, ideal_dispatch
from tests.protocols.helpers import mine, opened, run_parties, split


@pytest.mark.parametrize(
    ("experts", "n_e", "cap"),
    [
        ([0, 1, 2, 3, 0, 1, 2, 3], 4, 2),  # balanced
        ([2, 2, 2, 2, 2, 0, 1, 2], 4, 2),  # overflow: expert 2 drops four tokens
        ([3, 3, 3], 4, 3),  # C = T keeps everything
        ([1], 2, 1),
    ],
)
def test_ideal_dispatch_matches_the_reference_capacity_rule(experts, n_e, cap):
    e = np.array(experts)
    d = ideal_dispatch(e, n_e, cap)
    kept = capacity_mask(e[None, :, None], n_e, cap)[0, :, 0]
    np.testing.assert_array_equal(d.sum(axis=(1, 2)), kept.astype(np.uint64))
    assert (d.sum(axis=0) <= 1).all()  # one token per bucket slot at most


async def test_dispatch_tensor_equals_plaintext_with_overflow_and_sequences():
    routes = np.array([[2, 2, 2, 0, 2, 1], [0, 1, 2, 0, 1, 2]])  # two sequences of 6
    n_e, cap = 3, 2
    onehot = (routes[..., None] == np.arange(n_e)).astype(np.uint64)
    xs = split(onehot, R)

    async def body(p):
        return await dispatch_tensor(p, mine(p, xs), cap)

    got = opened(await run_parties(body), R)
    want = np.stack([ideal_dispatch(r, n_e, cap) for r in routes])
    np.testing.assert_array_equal(got, want)

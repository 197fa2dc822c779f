import numpy as np
import pytest

from secmoe.crypto.ring import DEFAULT_RING as R
from secmoe.model.reference import capacity_mask
from secmoe.ops.dispatch import dispatch_tensor, ideal_dispatch, kept, positions
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


async def test_kept_is_the_reference_capacity_mask_per_sequence_with_top_k():
    # two sequences of 4 tokens, top-2 of 3 experts: expert 0 is everyone's first choice
    routes = np.array([[[0, 1], [0, 2], [1, 0], [2, 1]], [[2, 0], [0, 1], [1, 2], [0, 2]]])
    n_e, cap = 3, 2
    onehot = (routes[..., None] == np.arange(n_e)).astype(np.uint64)  # (B, T, k, E)
    b, t, k, _ = onehot.shape
    xs = split(onehot.reshape(b, t * k, n_e), R)

    async def body(p):
        return await kept(p, mine(p, xs), cap)

    c, s = await run_parties(body)
    got = (c ^ s).reshape(b, t, k)
    want = capacity_mask(routes, n_e, cap)
    np.testing.assert_array_equal(got, want)
    assert not want.all()  # the capacity binds: expert 0 drops in the first sequence


async def test_positions_count_earlier_assignments_to_the_same_expert():
    routes = np.array([3, 1, 3, 3, 0, 1])
    onehot = (routes[:, None] == np.arange(4)).astype(np.uint64)
    xs = split(onehot, R)

    async def body(p):
        return await positions(p, mine(p, xs))

    np.testing.assert_array_equal(opened(await run_parties(body), R), [0, 0, 1, 2, 0, 1])

"""Sampling the next token on shares (issue 21): temperature and top-k with the client's
Gumbel noise. The secure function equals its plaintext ideal given the same noise, at the
declared cost, and the server's view does not depend on the client's seed; the ideal's samples
follow softmax(z/τ) restricted to the top-k (a χ² test on a tiny vocabulary)."""

from collections import defaultdict

import numpy as np
import pytest

from secmoe.crypto.ring import DEFAULT_RING as R
from secmoe.ops.sampling import (
    GUMBEL_RANGE,
    check_sampling,
    gumbel_noise,
    ideal_next_token,
    next_token,
    next_token_cost,
    sampling_prg,
)
from secmoe.protocols.shares import reveal
from tests.ops.test_piecewise import checked
from tests.protocols.helpers import mine, run_parties, split

#: χ² quantiles at 0.999 for 2 and 5 degrees of freedom (a true distribution fails 1 in 1000).
CHI2_999 = {2: 13.82, 5: 20.52}


def _logits() -> np.ndarray:
    z = np.random.default_rng(8).normal(0, 2, (4, 11))
    z[1, [2, 9]] = z[1].max() + 1  # a tie for the first place
    z[2, [0, 5, 7]] = 3.25  # a tie across the top-k boundary
    return R.encode(z)


async def _secure(z: np.ndarray, top_k: int | None, seed: int | None, view: dict | None = None):
    """The index revealed to the client, and the client's noise as drawn (None: greedy)."""
    shares = split(z, R, 3)
    drawn: list[np.ndarray] = []

    def noise(shape):
        drawn.append(gumbel_noise(sampling_prg(seed), 0.8)(shape))
        return drawn[-1]

    async def body(p):
        if view is not None and p.role == "server":
            p.ch.session.recorder = lambda ev, _: view[ev["path"]].append(
                (ev["dir"], ev["tag"], ev["bytes"])
            )
        snap, mark = p.ch.stats.snapshot(), p.ot.mark()
        use = noise if seed is not None and p.role == "client" else None
        index = await next_token(p.fork("next"), mine(p, shares), top_k, use)
        checked(p, snap, mark, next_token_cost(p.ot, z.shape[0], z.shape[1], R, top_k))
        return await reveal(p.fork("token"), index, to="client")

    got, _ = await run_parties(body)
    return got.astype(np.int64), (drawn[0] if drawn else None)


@pytest.mark.parametrize(("top_k", "seed"), [(None, None), (None, 1), (3, None), (3, 2), (11, 3)])
async def test_next_token_is_its_ideal_given_the_same_noise_at_the_declared_cost(top_k, seed):
    z = _logits()
    got, noise = await _secure(z, top_k, seed)
    np.testing.assert_array_equal(got, ideal_next_token(z, R, top_k, noise))
    if seed is None:  # greedy, whatever k: the first maximum
        np.testing.assert_array_equal(got, R.to_signed(z).argmax(axis=-1))
    if top_k == 3:  # always one of the 3 largest (ties to the lower index)
        top = np.argsort(-R.to_signed(z), axis=-1, kind="stable")[:, :3]
        assert all(g in t for g, t in zip(got, top, strict=True))


async def test_the_server_sees_the_same_for_any_client_seed():
    # (a seed reproduces the samples: the noise is the seeded PRG's, the function on shares
    # its ideal's; tests/model/test_generate_sampling.py repeats a whole generation)
    z = _logits()
    views = []
    for seed in (1, 2):
        view: dict = defaultdict(list)
        got, noise = await _secure(z, 3, seed, view)
        views.append(dict(view))
        np.testing.assert_array_equal(got, ideal_next_token(z, R, 3, noise))
    assert views[0] == views[1] and views[0]


def _frequencies(z: np.ndarray, tau: float, top_k: int | None, n: int, seed: int) -> np.ndarray:
    """n samples of the ideal function on one row of logits, with the client's Gumbel noise."""
    slots = z.size if top_k is None else top_k
    noise = gumbel_noise(sampling_prg(seed), tau)((n, slots))
    rows = np.broadcast_to(R.encode(z), (n, z.size))
    picks = ideal_next_token(rows, R, top_k, noise)
    return np.bincount(picks, minlength=z.size)


@pytest.mark.parametrize("top_k", [None, 3])
def test_samples_follow_the_softmax_over_the_top_k(top_k):
    z, tau, n = np.array([1.2, -0.4, 2.0, 0.9, 1.7, -2.0]), 0.7, 40_000
    counts = _frequencies(z, tau, top_k, n, seed=top_k or 0)
    keep = np.argsort(-z)[: top_k or z.size]
    want = np.zeros_like(z)
    want[keep] = np.exp((z[keep] - z.max()) / tau)
    want = want / want.sum() * n
    assert counts[want == 0].sum() == 0  # nothing outside the top-k
    chi2 = float((((counts - want) ** 2)[keep] / want[keep]).sum())
    assert chi2 < CHI2_999[keep.size - 1]
    # a colder temperature concentrates on the largest logit: the test can tell them apart
    cold = _frequencies(z, tau / 4, top_k, n, seed=9)
    assert float((((cold - want) ** 2)[keep] / want[keep]).sum()) > 10 * CHI2_999[keep.size - 1]


def test_gumbel_noise_moments_range_and_the_seeded_prg():
    g = gumbel_noise(sampling_prg(7), 2.0)((200_000,))
    assert abs(g.mean() - 2.0 * np.euler_gamma) < 0.02  # E[Gumbel(0, 1)] = γ
    assert abs(g.std() - 2.0 * np.pi / np.sqrt(6)) < 0.02
    assert 2.0 * GUMBEL_RANGE[0] <= g.min() and g.max() <= 2.0 * GUMBEL_RANGE[1]
    again = gumbel_noise(sampling_prg(7), 2.0)((200_000,))
    other = gumbel_noise(sampling_prg(8), 2.0)((200_000,))
    np.testing.assert_array_equal(g, again)
    assert not np.array_equal(g, other)
    assert not np.array_equal(
        gumbel_noise(sampling_prg(), 1.0)((8,)), gumbel_noise(sampling_prg(), 1.0)((8,))
    )


@pytest.mark.parametrize(
    ("tau", "k", "vocab", "message"),
    [
        (0.0, None, None, "temperature must be a finite number in"),
        (float("nan"), None, None, "temperature must be a finite number in"),
        (101.0, None, None, r"in \(0, 100\]"),
        (None, 0, None, "top-k must be an integer ≥ 1"),
        (None, 65, 64, r"top-k 65 exceeds the vocabulary \(64 tokens\)"),
    ],
)
def test_bad_sampling_parameters_are_named(tau, k, vocab, message):
    with pytest.raises(ValueError, match=message):
        check_sampling(tau, k, vocab)

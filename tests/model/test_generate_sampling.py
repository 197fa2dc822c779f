"""Sampled private generation (issue 21): temperature and top-k with the client's Gumbel noise
on the 1-layer Mixtral fixture. The server's view is the same whatever the client's seed, a
seed reproduces the text, and each token is the float reference's top-k Gumbel-max choice
with the noise the client drew (checked to have clear margins); the request's top-k is
checked by the server."""

from __future__ import annotations

import numpy as np
import pytest

from secmoe.model.generate import check_generate_request, generation_deadline
from secmoe.model.reference import run
from secmoe.model.secure import RunOptions
from secmoe.model.session import ServerLimits, SessionRefused
from secmoe.ops.sampling import gumbel_noise, sampling_prg
from tests.model.test_generate import _fixture, _generate, _server_steps

K, TAU = 3, 1.5


def _recording(seed: int):
    """The client's noise (τ·Gumbel from the seeded sampling PRG) and the draws it made."""
    draw, drawn = gumbel_noise(sampling_prg(seed), TAU), []

    def noise(shape):
        drawn.append(draw(shape))
        return drawn[-1]

    return noise, drawn


def _reference(w, prompt, drawn) -> tuple[list[int], float]:
    """The float reference's top-k Gumbel-max choices with the drawn slot noise, and the
    smallest margin of the two decisions (the k-th vs the (k+1)-th logit; the noisy winner
    vs the runner-up)."""
    seq, margin = prompt.copy(), np.inf
    for noise in drawn:
        logits = run(w, seq).output[0, -1]
        order = np.argsort(-logits, kind="stable")
        scores = logits[order[:K]] + noise[0]
        ranked = np.sort(scores)
        margin = min(margin, logits[order[K - 1]] - logits[order[K]], ranked[-1] - ranked[-2])
        seq = np.concatenate([seq, [[int(order[scores.argmax()])]]], axis=1)
    return seq[0, prompt.shape[1] :].tolist(), float(margin)


async def test_top_k_sampling_hides_the_seed_from_the_server_and_reproduces():
    w, prompt, _, _ = _fixture("mixtral-lm-fused")
    runs = []
    for seed in (1, 2, 1):
        noise, drawn = _recording(seed)
        events: list = []
        client, _ = await _generate(
            w, prompt, 2, RunOptions("all"), events=events, noise=noise, top_k=K
        )
        runs.append((client.ids[0].tolist(), _server_steps(events), drawn))
    (ids1, view1, drawn1), (_, view2, _), (ids3, view3, _) = runs
    assert view1 == view2 == view3 and "step1" in view1
    assert ids1 == ids3
    want, margin = _reference(w, prompt, drawn1)
    assert margin > 0.05  # clear decisions: fixed point cannot flip them
    assert ids1 == want


def test_the_server_checks_the_requested_top_k():
    w, _, _, _ = _fixture("mixtral-lm-fused")
    cfg, lim = w.config, ServerLimits()
    req = {"kind": "generate", "strategy": "all", "shape": [1, 8], "max_new_tokens": 4}
    plan = check_generate_request({**req, "top_k": K}, cfg, lim)
    assert plan.top_k == K and check_generate_request(req, cfg, lim).top_k is None
    greedy = check_generate_request(req, cfg, lim)
    assert generation_deadline(cfg, plan) > generation_deadline(cfg, greedy)
    for bad, message in ((0, "top-k must be an integer ≥ 1"), (65, "exceeds the vocabulary")):
        with pytest.raises(SessionRefused, match=message):
            check_generate_request({**req, "top_k": bad}, cfg, lim)

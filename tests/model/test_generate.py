"""Private greedy generation (secure_generate): the secret-shared KV cache, the index argmax,
the client-only token, against transformers' generate(do_sample=False) on the tiny decoder
fixtures (tests/fixtures/hf/*/generation_ids.npy, made by scripts/make_hf_fixtures.py), and the
server's view. Few new tokens here (each step costs seconds); benchmarks/generate_tokens.py
compares all 16 and measures the cost per token."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from secmoe.crypto.prg import PRG
from secmoe.model.config import PRESETS
from secmoe.model.generate import (
    check_generation,
    check_length,
    generation_demand,
    generation_shapes,
    secure_generate,
    setup_generation,
)
from secmoe.model.reference import run
from secmoe.model.secure import KVCache, RunOptions, UnsupportedFeature
from secmoe.model.weights import load_weights
from secmoe.net import memory_pair, run_pair
from tests.hf_helpers import FIXTURES


def _fixture(name: str):
    d = FIXTURES / name
    ids = np.load(d / "generation_ids.npy", allow_pickle=False)
    info = json.loads((d / "generation.json").read_text())
    t = info["prompt_tokens"]
    return load_weights(d), ids[:, :t], ids[:, t:], info


async def _generate(
    weights,
    prompt,
    n,
    options=None,
    *,
    use_cache=True,
    eos_id=None,
    events=None,
    noise=None,
    top_k=None,
):
    """Both parties in this process over the in-memory link; ``events``: the server's
    recorded messages; ``noise``: the client's sampling noise; ``top_k``: public."""
    cfg, shape, options = weights.config, prompt.shape, options or RunOptions()
    cch, sch = memory_pair()
    if events is not None:
        sch.session.recorder = lambda ev, payload: events.append(ev)

    async def party(ch, w, x):
        with ch.phase("setup"):
            p = await setup_generation(ch, PRG(), cfg, w, shape, n, options, use_cache=use_cache)
        gen = await secure_generate(
            p,
            cfg,
            w,
            x,
            shape,
            n,
            eos_id=eos_id,
            options=options,
            use_cache=use_cache,
            noise=None if x is None else noise,
            top_k=top_k,
        )
        if w is not None:  # the flooding plan covers what the server's keys returned
            demand = generation_demand(cfg, shape, n, options, use_cache)
            for name, key in p.he.keys.items():
                assert 0 < key.pk.budget.used <= demand[name]
        return gen

    try:
        return await run_pair(party(cch, None, prompt), party(sch, weights, None), timeout=600)
    finally:
        await cch.close()
        await sch.close()


async def test_generation_matches_transformers_with_a_sliding_window_and_gqa():
    # 2 layers, GQA 4/2, RoPE, sliding window 4: the second token attends to a cache that
    # has dropped prompt positions (it holds W − 1 = 3 of the 8) and itself.
    w, prompt, expected, _ = _fixture("mixtral-lm-gqa-swa-untied")
    client, server = await _generate(w, prompt, 2)
    np.testing.assert_array_equal(client.ids, expected[:, :2])
    assert server.ids is None and [s.ids for s in server.steps] == [None] * 2
    assert client.stopped == server.stopped == "max_new_tokens"
    assert client.cache_bytes == server.cache_bytes == 3 * 8 * KVCache.elements_per_token(w.config)
    assert all(s.rounds > 0 and s.bytes_total > 0 for s in client.steps)


def _server_steps(events) -> dict[str, dict[str, list]]:
    """The server's online view per step (and the OT pool's refills, path ``ot``): per path,
    the sequence of (direction, tag, bytes) (concurrent forks may interleave differently)."""
    view: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for ev in events:
        if ev["phase"] == "online":
            path = ev["path"]
            view[path.split("/")[0]][path].append((ev["dir"], ev["tag"], ev["bytes"]))
    return {k: dict(v) for k, v in view.items()}


def _noise(seed: int):
    """Sampling noise as test data (the protocol takes any client noise; Gumbel noise from the
    crypto PRG in use): N(0, 0.5²) plus a bonus of 3 on one random token per step."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        out = rng.normal(0, 0.5, shape)
        out[..., rng.integers(shape[-1])] += 3.0
        return out

    return draw


def _sampled_reference(w, prompt, n, noise) -> tuple[list[int], float]:
    """The float reference's argmax of logits + noise, step by step, and the smallest margin."""
    seq, margin = prompt.copy(), np.inf
    for _ in range(n):
        scores = run(w, seq).output[0, -1] + noise((1, w.config.vocab_size))[0]
        top = np.sort(scores)
        margin = min(margin, top[-1] - top[-2])
        seq = np.concatenate([seq, [[int(scores.argmax())]]], axis=1)
    return seq[0, prompt.shape[1] :].tolist(), float(margin)


async def test_server_view_is_the_same_for_two_prompts_and_the_baseline_agrees():
    # 1 layer (fused experts). Prompt A is the fixture's, greedy (ids checked against
    # transformers); prompt B another of the same length, sampled with the client's noise
    # (checked against the float reference's argmax of logits + noise): the server's view is
    # the same. B again without the cache (the baseline that recomputes the prefix) and the
    # same noise must give the same ids, and stop at the client's EOS id.
    w, prompt, expected, _ = _fixture("mixtral-lm-fused")
    other = (prompt + 17) % w.config.vocab_size
    sampled, margin = _sampled_reference(w, other, 2, _noise(5))
    assert margin > 0.05  # a clear choice: fixed point cannot flip it
    views = []
    for x, noise in ((prompt, None), (other, _noise(5))):
        events: list = []
        client, _ = await _generate(w, x, 2, RunOptions("all"), events=events, noise=noise)
        views.append(_server_steps(events))
        if x is prompt:
            np.testing.assert_array_equal(client.ids, expected[:, :2])
        else:
            assert client.ids.tolist() == [sampled]
    assert [k for k in views[0] if k.startswith("step")] == ["step0", "step1"]
    assert views[0] == views[1]
    # The baseline, told to stop at B's second token (the client's EOS id: the server follows).
    eos = sampled[1]
    stop = sampled.index(eos) + 1
    client, server = await _generate(
        w, other, 3, RunOptions("all"), use_cache=False, eos_id=eos, noise=_noise(5)
    )
    assert client.ids.tolist() == [sampled[:stop]]
    assert client.stopped == server.stopped == "eos" and len(server.steps) == stop
    assert client.cache_bytes == 0


def test_generation_refuses_models_it_would_not_compute_exactly():
    switch = PRESETS["switch-base-8"]
    with pytest.raises(UnsupportedFeature, match="causal attention, an LM head"):
        check_generation(switch)
    mixtral = PRESETS["mixtral-tiny"]
    check_generation(mixtral)
    with pytest.raises(UnsupportedFeature, match="no expert capacity"):
        check_generation(mixtral, RunOptions(capacity=1))
    with pytest.raises(ValueError, match="need 11 positions, the model has 10"):
        check_length(mixtral.replace(seq_len=10), 8, 4)
    with pytest.raises(ValueError, match="max_new_tokens must be ≥ 1"):
        check_length(mixtral, 8, 0)


def test_kv_cache_keeps_the_window_and_setup_covers_every_pass():
    cfg = PRESETS["mixtral-tiny"].replace(sliding_window=3)
    cache = KVCache.empty(cfg, 2)
    rng = np.random.default_rng(0)
    k = rng.integers(0, 2**63, (2, cfg.kv_heads, 5, cfg.d_head), dtype=np.uint64)
    k_all, _ = cache.extend(0, k, k)
    assert k_all.shape[2] == 5 and cache.k[0].shape[2] == 2  # W − 1 kept for the next token
    np.testing.assert_array_equal(cache.k[0], k[:, :, 3:])
    k_all, _ = cache.extend(0, k[:, :, :1], k[:, :, :1])
    assert k_all.shape[2] == 3  # the window: two held and the new one
    assert KVCache.elements_per_token(cfg) == 2 * cfg.n_layers * cfg.kv_heads * cfg.d_head
    assert generation_shapes((1, 8), 4) == [(1, 8), (1, 1)]
    assert generation_shapes((1, 8), 3, use_cache=False) == [(1, 10), (1, 9), (1, 8), (1, 1)]

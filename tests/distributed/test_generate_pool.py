"""Generation served with workers (`secmoe serve --workers N` passes its pool to the generate
session kind as to infer): the reference's tokens, and the workers hold the session's encoded
weights (this process's pool, no Ray; the wire's independence of the workers is checked
product by product in test_linear_pool and per message in test_ray_pool)."""

from __future__ import annotations

import numpy as np

from secmoe.commands.serve import KINDS
from secmoe.distributed import LocalPool
from secmoe.model.generate import generate_session
from secmoe.model.session import serve_session
from secmoe.net import memory_pair, run_pair
from tests.model.test_generate import _fixture


async def test_generation_served_with_workers_gives_the_reference_tokens():
    """Two new tokens of the tiny Mixtral (select, E = 4) from `serve`'s session kinds with 2
    workers: the ids are the reference's (transformers' greedy generation); both workers hold
    selection experts and plain-weight blocks (of the prompt's pass and of the one-token
    steps), and the server's plain-weight and selection replies went out."""
    w, prompt, expected, _ = _fixture("mixtral-lm-gqa-swa-untied")
    pool = LocalPool(2)
    cch, sch = memory_pair()
    tags = []
    sch.session.recorder = lambda ev, payload: tags.append(ev["tag"])
    try:
        got, _server = await run_pair(
            generate_session(cch, prompt, 2),
            serve_session(sch, w, kinds=KINDS, pool=pool),  # as `secmoe serve` does
            timeout=600,
        )
    finally:
        await cch.close()
        await sch.close()
    np.testing.assert_array_equal(got.generation.ids, expected[:, :2])
    assert "he/mm/y" in tags and "he/sel/y" in tags
    assert min(pool.encoded_bytes("select")) > 0 and min(pool.encoded_bytes("linear")) > 0

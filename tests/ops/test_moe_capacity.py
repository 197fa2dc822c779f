"""Every MoE strategy computes the same function under a capacity that drops tokens: the
fixed-point emulation of the layer with that capacity (transformers' Switch rule: each expert
keeps its first C tokens of each sequence, a dropped assignment contributes 0)."""

import numpy as np
import pytest

from secmoe.ops.moe import MoESpec
from tests.ops.moe_helpers import layer, references, secure_moe

B, T, D, D_FF, E = 2, 4, 8, 8, 4


@pytest.mark.parametrize(
    ("strategy", "top_k", "norm_topk"),
    [("select", 2, True), ("all", 1, False), ("dispatch", 2, False), ("reveal", 1, False)],
)
async def test_strategy_drops_what_the_capacity_drops(strategy, top_k, norm_topk):
    w = layer(E, D, D_FF, "swiglu")
    x = np.random.default_rng(11).standard_normal((B, T, D))
    spec = MoESpec(D, D_FF, E, top_k, "swiglu", norm_topk=norm_topk, capacity=1)
    fixed, exact, routing = references(x, w, spec, capacity=1)
    _, uncapped, _ = references(x, w, spec, capacity=False)
    dropped = ~routing.kept
    assert dropped.any()  # the capacity binds ...
    assert np.abs(exact - uncapped).max() > 0.05  # ... and changes the layer's function
    got = await secure_moe(x, w, spec, strategy)
    np.testing.assert_allclose(got, fixed, atol=1e-3)  # protocol error only (±1 ulp terms)
    np.testing.assert_allclose(got, exact, atol=0.05)  # approximation error
    gone = dropped.all(axis=-1)  # tokens with every assignment dropped: MoE output 0
    if gone.any():
        assert np.abs(got[gone]).max() < 1e-3


async def test_the_servers_view_of_the_drop_mask_does_not_depend_on_the_routing():
    w = layer(E, D, D_FF, "relu")
    spec = MoESpec(D, D_FF, E, 1, "relu", capacity=1)
    inputs = [np.random.default_rng(s).standard_normal((1, T, D)) for s in (1, 2)]
    kept = [references(x, w, spec, capacity=1)[2].kept for x in inputs]
    assert not np.array_equal(kept[0], kept[1])  # different tokens dropped
    views = []
    for x in inputs:
        view: list = []
        await secure_moe(x, w, spec, "all", server_view=view)
        by_path: dict = {}  # concurrent forks interleave freely: compare per path, in order
        for direction, path, tag, size in filter(None, view):
            by_path.setdefault(path, []).append((direction, tag, size))
        views.append(by_path)
    assert any(path.startswith("moe/capacity/") for path in views[0])  # the mask ran
    assert views[0] == views[1]

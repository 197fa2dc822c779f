"""Private inference end to end on the bundled model (small batches)."""

from collections import defaultdict

import numpy as np
import pytest

from secmoe.app import reference_capacity
from secmoe.model.fixed import run_fixed
from secmoe.model.reference import routing
from secmoe.model.secure import RunOptions
from secmoe.model.session import SessionRefused, client_session, serve_session
from secmoe.model.weights import load_bundled, load_heldout
from secmoe.net import PartyError, memory_pair, run_pair

WEIGHTS = load_bundled()
X, Y = load_heldout()


async def secure_run(
    x, options, server_view=None, allow_insecure=True, max_batch=64, weights=WEIGHTS
):
    """One session over the in-memory link, both parties in this process (``weights``: the
    server's model, the bundled one by default)."""
    cch, sch = memory_pair()
    if server_view is not None:
        sch.session.recorder = lambda ev, payload: server_view.append(ev)
    try:
        res, _ = await run_pair(
            client_session(cch, x, options=options),
            serve_session(sch, weights, allow_insecure=allow_insecure, max_batch=max_batch),
            timeout=600,
        )
    finally:
        await cch.close()
        await sch.close()
    return res


@pytest.mark.parametrize("strategy", ["select", "all", "dispatch", "reveal"])
async def test_secure_output_matches_the_fixed_point_emulation(strategy):
    options = RunOptions(strategy, capacity=1 if strategy == "dispatch" else None)
    x = X[:1]
    res = await secure_run(x, options)
    fixed = run_fixed(WEIGHTS, x, capacity=reference_capacity(WEIGHTS, options, 8)).output
    assert res.output.shape == (1, 10)
    np.testing.assert_allclose(res.output, fixed, atol=0.01)  # protocol error only
    assert res.output.argmax(-1) == fixed.argmax(-1)


def _two_inputs_routed_differently() -> tuple[np.ndarray, np.ndarray]:
    experts = routing(WEIGHTS, X[:40])[0].experts[..., 0]  # (B, T)
    for i in range(1, 40):
        if not np.array_equal(experts[0], experts[i]):
            return X[:1], X[i : i + 1]
    raise AssertionError("no two held-out inputs route differently")


def _by_path(events):
    """The server's online view: per path, the sequence of (direction, tag, bytes).

    Setup is left out: it happens before the input exists, and the size of the client's
    zstd-compressed relinearization/Galois keys varies with their randomness (by ~0.004%).
    """
    view = defaultdict(list)
    for ev in events:
        if ev["phase"] == "online":
            view[ev["path"]].append((ev["dir"], ev["tag"], ev["bytes"]))
    return dict(view)


@pytest.mark.parametrize(
    ("strategy", "hidden"), [("select", True), ("dispatch", True), ("reveal", False)]
)
async def test_server_view_does_not_depend_on_routing(strategy, hidden):
    a, b = _two_inputs_routed_differently()
    views = []
    for x in (a, b):
        events: list = []
        await secure_run(
            x,
            RunOptions(strategy, capacity=2 if strategy == "dispatch" else None),
            server_view=events,
        )
        views.append(_by_path(events))
    assert (views[0] == views[1]) is hidden


async def test_server_refuses_insecure_strategy_unless_allowed():
    with pytest.raises(PartyError, match="INSECURE"):
        await secure_run(X[:1], RunOptions("reveal"), allow_insecure=False)


async def test_client_input_of_the_wrong_shape_is_refused_before_any_crypto():
    with pytest.raises(PartyError, match="do not fit"):
        await secure_run(np.zeros((1, 8, 5)), RunOptions("all"))


async def test_server_refuses_a_batch_beyond_its_limit_before_any_crypto():
    with pytest.raises(PartyError, match="batch size 3 outside \\[1, 2\\]"):
        await secure_run(X[:3], RunOptions("all"), max_batch=2)


def test_session_refused_is_a_value_error():
    assert issubclass(SessionRefused, ValueError)

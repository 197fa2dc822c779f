"""Encrypted expert selection (protocols.he_select) over the channel: exactness, declared cost,
packing of results, the flooding budget's extreme, refusal without evaluation keys."""

from __future__ import annotations

import numpy as np
import pytest

from secmoe.crypto.he_params import HE_16K
from secmoe.crypto.prg import PRG
from secmoe.net import PartyError, run_local
from secmoe.protocols.he_select import (
    encode_select_weights,
    ideal_select,
    plan_select,
    select_client,
    select_cost,
    select_server,
    setup_select_client,
    setup_select_server,
)
from secmoe.protocols.he_setup import setup_client, setup_server

U64 = np.uint64
SEEDS = {"client": b"\x11" * 16, "server": b"\x22" * 16}


def make_selection(t, e, d, hs, seed=b"selection-case-0", w_bits=16, extreme=False):
    """Shares of a random routing and inputs, and random weights (at ±(2^(w_bits−1) − 1) if
    ``extreme``)."""
    data = PRG(seed)
    r = data.below(e, t).astype(np.int64)
    onehot = np.zeros((t, e), dtype=U64)
    onehot[np.arange(t), r] = 1
    t_c = data.ring((t, e))
    x_c, x_s = data.ring((t, d)), data.ring((t, d))
    x_c[0, :2] = [2**64 - 1, 2**63]
    lim = (1 << (w_bits - 1)) - 1
    ws = []
    for _ in range(e):
        mats = [data.below(2 * lim + 1, (d, h)).astype(np.int64) - lim for h in hs]
        ws.append([np.where(w >= 0, lim, -lim) if extreme else w for w in mats])
    return t_c, onehot - t_c, x_c, x_s, ws, r


async def run_selection(plan, case, skip=False):
    """Both parties of one selection on ``case`` (from :func:`make_selection`): the client's
    shares and bytes of the selection itself, the server's shares."""
    t_c, t_s, x_c, x_s, ws, _ = case

    async def client(ch):
        prg = PRG(SEEDS["client"])
        he = await setup_select_client(ch, prg, plan)
        snap = ch.stats.snapshot()
        out = await select_client(ch, he, t_c, x_c, plan, prg)
        return out, ch.stats.since(snap)

    async def server(ch):
        he = await setup_select_server(ch, plan)
        weights = encode_select_weights(ws, plan, skip_zero_blocks=skip)
        return await select_server(ch, he, t_s, x_s, weights, PRG(SEEDS["server"]))

    (yc, delta), ys = await run_local(client, server, timeout=120)
    return yc, delta, ys


def assert_declared(delta, plan):
    cost = select_cost(plan)
    got = (delta.bytes_c2s, delta.bytes_s2c, delta.rounds, delta.messages)
    assert got == (cost["bytes_c2s"], cost["bytes_s2c"], cost["rounds"], cost["messages"])


async def test_encrypted_selection_is_exact_and_bytes_do_not_grow_with_experts():
    t, e, d, hs = 3, 3, 9, (7, 4)
    case = make_selection(t, e, d, hs)
    t_c, t_s, x_c, x_s, ws, r = case
    plan = plan_select(t, e, d, hs)
    yc, delta, ys = await run_selection(plan, case)
    ideal = ideal_select(t_c, t_s, x_c, x_s, ws)
    x = x_c + x_s
    for m in range(len(hs)):
        assert np.array_equal(yc[m] + ys[m], ideal[m])
        want = np.stack([x[k] @ ws[r[k]][m].astype(U64) for k in range(t)])
        assert np.array_equal(ideal[m], want)
    assert_declared(delta, plan)
    # the wire carries 1 + T·⌈d/d_b⌉ and ⌈T·Σ⌈h/h_b⌉ / 2^P⌉ ciphertexts whatever E is
    for more in (8, 32):
        other = plan_select(t, more, d, hs)
        assert (other.n_x, other.n_out) == (plan.n_x, plan.n_out)
        if other.level == plan.level:
            assert select_cost(other)["bytes_c2s"] == select_cost(plan)["bytes_c2s"]
            assert select_cost(other)["bytes_s2c"] == select_cost(plan)["bytes_s2c"]


async def test_packed_results_are_exact_and_independent_of_the_routing():
    """Several tokens' results merged into few returned ciphertexts (P > 0, several matrices,
    a last group not full): exact, the declared bytes, fewer returned ciphertexts than
    products; another routing of the same shapes sends exactly the same bytes."""
    t, e, d, hs = 5, 3, 16, (40, 9)
    plan = plan_select(t, e, d, hs)
    assert plan.pack >= 2 and plan.n_out < plan.n_prod
    assert plan.n_prod % (1 << plan.pack)  # a partial last group
    sizes = []
    for seed in (b"selection-case-2", b"selection-case-3"):
        case = make_selection(t, e, d, hs, seed=seed)
        yc, delta, ys = await run_selection(plan, case)
        for m, want in enumerate(ideal_select(*case[:4], case[4])):
            assert np.array_equal(yc[m] + ys[m], want)
        assert_declared(delta, plan)
        sizes.append((delta.bytes_c2s, delta.bytes_s2c))
    assert sizes[0] == sizes[1]


async def test_packed_results_with_skipped_zero_blocks_stay_exact():
    """``skip_zero_blocks`` with a matrix zero in every expert: its products are no ciphertext,
    and the packing tree merges around them; the other matrix's outputs stay exact and the
    zero matrix's decrypt to zero."""
    t, e, d, hs = 5, 3, 16, (40, 9)
    case = make_selection(t, e, d, hs, seed=b"selection-case-5")
    for w in case[4]:
        w[1][:] = 0
    plan = plan_select(t, e, d, hs)
    assert plan.pack >= 2
    yc, delta, ys = await run_selection(plan, case, skip=True)
    for m, want in enumerate(ideal_select(*case[:4], case[4])):
        assert np.array_equal(yc[m] + ys[m], want)
    assert not (yc[1] + ys[1]).any() and (yc[0] + ys[0]).any()
    assert_declared(delta, plan)


def test_plans_at_switch_base_dims_pack_tokens_and_cut_bytes():
    """T = 8, d = 768, d_ff = 3072 (both FFN matrices): a few full returned ciphertexts instead
    of one per (token, block), and ≤ 60 MB per MoE layer whatever E."""
    for e in (8, 64):
        total = 0
        for d, h in ((768, 3072), (3072, 768)):
            plan = plan_select(8, e, d, [h], HE_16K, w_bits=24)
            assert plan.n_out <= 2 < plan.n_prod
            cost = select_cost(plan)
            total += cost["bytes_c2s"] + cost["bytes_s2c"]
        assert total <= 60e6


async def test_selection_is_exact_at_the_flooding_budgets_extreme(monkeypatch):
    """Weights at the public bound, every flooded coefficient at −2^β (instead of uniform) and
    results packed: decryption is still exact (the noise analysis, packing included, holds)."""

    def extreme(_prg, b, ps, n):
        return np.stack([np.full(n, (-(1 << b)) % q, dtype=U64) for q in ps])

    monkeypatch.setattr("secmoe.crypto.he.sample_flood_rns", extreme)
    t, e, d, hs = 3, 4, 32, (64,)
    case = make_selection(t, e, d, hs, seed=b"selection-case-4", extreme=True)
    plan = plan_select(t, e, d, hs)
    assert plan.pack >= 1
    yc, delta, ys = await run_selection(plan, case)
    for m, want in enumerate(ideal_select(*case[:4], case[4])):
        assert np.array_equal(yc[m] + ys[m], want)
    assert_declared(delta, plan)


@pytest.mark.parametrize("skip", [False, True])
async def test_selection_with_few_blocks_expands_depth_first_and_stays_exact(skip):
    """Small d (fewer weight blocks than one-hot entries): the depth-first expansion path, with
    T·E not a power of two, an all-zero expert and a matrix zero in every expert, with and
    without ``skip_zero_blocks``: still exact, and the bytes are the declared ones."""
    t, e, d, hs = 3, 7, 5, (3, 2)
    t_c, t_s, x_c, x_s, ws, _r = make_selection(t, e, d, hs, seed=b"selection-case-1")
    ws[2] = [np.zeros_like(w) for w in ws[2]]
    for w in ws:  # matrix 1: zero in every expert
        w[1][:] = 0
    plan = plan_select(t, e, d, hs)
    blocks = plan.nb * sum(plan.nc(m) for m in range(len(hs)))
    assert (e + t) * blocks < t * e  # the fused, depth-first path

    yc, delta, ys = await run_selection(plan, (t_c, t_s, x_c, x_s, ws, _r), skip)
    for m, want in enumerate(ideal_select(t_c, t_s, x_c, x_s, ws)):
        assert np.array_equal(yc[m] + ys[m], want)
    assert_declared(delta, plan)


async def test_selection_without_evaluation_keys_is_refused():
    t_c, t_s, x_c, x_s, ws, _ = make_selection(1, 2, 3, (2,))
    plan = plan_select(1, 2, 3, (2,))

    async def client(ch):
        prg = PRG(SEEDS["client"])
        he = await setup_client(ch, prg, HE_16K)
        return await select_client(ch, he, t_c, x_c, plan, prg)

    async def server(ch):
        he = await setup_server(ch, HE_16K)
        weights = encode_select_weights(ws, plan)
        return await select_server(ch, he, t_s, x_s, weights, PRG(SEEDS["server"]))

    with pytest.raises(PartyError, match="Galois keys"):
        await run_local(client, server, timeout=60)


async def test_selection_without_the_packing_keys_is_refused():
    """Keys for the expansion only (λ levels, setup's packing keys off) while the plan packs
    with P > λ levels."""
    t_c, t_s, x_c, x_s, ws, _ = make_selection(2, 2, 16, (4096,))
    plan = plan_select(2, 2, 16, (4096,))
    assert plan.pack > plan.lam
    galois = [HE_16K.n // (1 << j) + 1 for j in range(plan.lam)]

    async def client(ch):
        prg = PRG(SEEDS["client"])
        he = await setup_client(ch, prg, HE_16K, relin=True, galois=galois, pack=False)
        return await select_client(ch, he, t_c, x_c, plan, prg)

    async def server(ch):
        he = await setup_server(ch, HE_16K, relin=True, galois=galois, pack=False)
        weights = encode_select_weights(ws, plan)
        return await select_server(ch, he, t_s, x_s, weights, PRG(SEEDS["server"]))

    with pytest.raises(PartyError, match="missing Galois key"):
        await run_local(client, server, timeout=60)

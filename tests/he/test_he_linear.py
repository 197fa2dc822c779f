"""Two-party HE linear layers over the channel: exactness, cost, masking, errors."""

from __future__ import annotations

import numpy as np
import pytest

from secmoe.crypto.he import HEError
from secmoe.crypto.he_params import HE_8K, HE_16K
from secmoe.crypto.prg import PRG
from secmoe.crypto.ring import Ring
from secmoe.net import PartyError, run_local, run_pair
from secmoe.net.tcp import connect, listen
from secmoe.protocols.he_linear import (
    encode_weights,
    ideal_matmul,
    matmul_client,
    matmul_cost,
    matmul_server,
    plan_matmul,
)
from secmoe.protocols.he_setup import setup_client, setup_server

U64 = np.uint64
SEEDS = {"client": b"\x11" * 16, "server": b"\x22" * 16}
EDGES = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1], dtype=U64)


def make_case(t, d, hs, w_bits=16, seed=b"case-data-000000"):
    data = PRG(seed)
    x_c, x_s = data.ring((t, d)), data.ring((t, d))
    x_c.flat[: min(x_c.size, len(EDGES))] = EDGES[: x_c.size]
    lim = 1 << (w_bits - 1)
    ws = []
    for h in hs:
        w = data.below(2 * lim - 1, (d, h)).astype(np.int64) - (lim - 1)
        w.flat[:3] = [lim - 1, -(lim - 1), 0][: w.size]
        ws.append(w)
    return x_c, x_s, ws


def two_party(plan, x_c, x_s, ws, *, ring=None, calls=1, params=HE_8K, cache="auto"):
    """Client and server bodies: setup, encode once, ``calls`` products, stats deltas."""
    kw = {} if ring is None else {"ring": ring}

    async def client(ch):
        prg = PRG(SEEDS["client"])
        he = await setup_client(ch, prg, params)
        await ch.recv(tag="test/ready")
        outs, deltas = [], []
        for _ in range(calls):
            snap = ch.stats.snapshot()
            outs.append(await matmul_client(ch, he, x_c, plan, prg, **kw))
            deltas.append(ch.stats.since(snap))
        return outs, deltas

    async def server(ch):
        prg = PRG(SEEDS["server"])
        he = await setup_server(ch, params)
        enc = encode_weights(he.ctx, ws, plan, cache=cache)
        await ch.send(None, tag="test/ready")
        outs = []
        for _ in range(calls):
            outs.append(await matmul_server(ch, he, x_s, enc, prg, **kw))
        return outs

    return client, server


@pytest.mark.parametrize(
    ("t", "d", "hs"),
    [(1, 1, (1,)), (3, 50, (70,)), (5, 33, (129, 17)), (9, 200, (40,)), (2, 700, (3, 1))],
)
async def test_plain_weight_matmul_is_exact(t, d, hs):
    x_c, x_s, ws = make_case(t, d, hs)
    plan = plan_matmul(t, d, hs, HE_8K)
    (outs, deltas), souts = await run_local(*two_party(plan, x_c, x_s, ws), timeout=60)
    ideal = ideal_matmul(x_c, x_s, ws)
    for yc, ys, ref in zip(outs[0], souts[0], ideal, strict=True):
        assert yc.shape == ref.shape
        assert np.array_equal(yc + ys, ref)
    cost = matmul_cost(plan)
    assert (deltas[0].bytes_c2s, deltas[0].bytes_s2c) == (cost["bytes_c2s"], cost["bytes_s2c"])
    assert deltas[0].rounds == cost["rounds"] and deltas[0].messages == cost["messages"]


async def test_blocks_encoded_on_use_give_the_same_result():
    x_c, x_s, ws = make_case(20, 30, (25, 9))
    plan = plan_matmul(20, 30, (25, 9), HE_8K)
    assert plan.nr == 1 or plan.tb < 20
    (outs, _), souts = await run_local(*two_party(plan, x_c, x_s, ws, cache="blocks"), timeout=60)
    for yc, ys, ref in zip(outs[0], souts[0], ideal_matmul(x_c, x_s, ws), strict=True):
        assert np.array_equal(yc + ys, ref)


async def test_weights_encoded_once_serve_many_calls_and_small_rings():
    ring = Ring(37, 12)
    x_c, x_s, ws = make_case(4, 64, (96,), w_bits=12)
    x_c, x_s = ring.reduce(x_c), ring.reduce(x_s)
    plan = plan_matmul(4, 64, (96,), HE_8K, w_bits=12)
    (outs, _), souts = await run_local(
        *two_party(plan, x_c, x_s, ws, ring=ring, calls=2), timeout=60
    )
    ideal = ideal_matmul(x_c, x_s, ws, ring)[0]
    for yc, ys in zip(outs, souts, strict=True):
        assert np.array_equal(ring.reduce(yc[0] + ys[0]), ideal)
        assert yc[0].max() < 2**37
    assert not np.array_equal(outs[0][0], outs[1][0])  # fresh masks each call


async def test_plain_weight_matmul_over_tcp():
    x_c, x_s, ws = make_case(3, 40, (50,))
    plan = plan_matmul(3, 40, (50,), HE_8K)
    client, server = two_party(plan, x_c, x_s, ws)
    lst = await listen("127.0.0.1", 0)

    async def c():
        ch = await connect("127.0.0.1", lst.port)
        try:
            return await client(ch)
        finally:
            await ch.close()

    async def s():
        ch = await lst.accept(10)
        try:
            return await server(ch)
        finally:
            await ch.close()

    try:
        (outs, _), souts = await run_pair(c(), s(), timeout=60)
    finally:
        await lst.close()
    assert np.array_equal(outs[0][0] + souts[0][0], ideal_matmul(x_c, x_s, ws)[0])


async def test_returned_plaintexts_are_uniformly_masked():
    """What the client decrypts is uniform in Z_{2^64}, whatever W is (X = 0 here)."""
    t, d, h = 4, 32, 512
    plan = plan_matmul(t, d, (h,), HE_8K)
    zeros = np.zeros((t, d), dtype=U64)
    seen = []
    for wseed in (b"weights-one-0000", b"weights-two-0000"):
        _, _, ws = make_case(t, d, (h,), seed=wseed)
        (outs, _), _ = await run_local(*two_party(plan, zeros, zeros, ws), timeout=60)
        seen.append(outs[0][0].reshape(-1))
    for vals in seen:
        n = vals.size  # 2048 values: every bit position should be ~Binomial(n, 1/2)
        ones = ((vals[:, None] >> np.arange(64, dtype=U64)) & U64(1)).sum(axis=0)
        assert np.all(np.abs(ones - n / 2) < 6 * np.sqrt(n) / 2)
        top = (vals >> U64(56)).astype(np.int64)  # top byte: χ² with 255 d.o.f.
        chi2 = ((np.bincount(top, minlength=256) - n / 256) ** 2 / (n / 256)).sum()
        assert chi2 < 400
    # same server randomness, different W: the client's decryptions coincide (only R shows)
    assert np.array_equal(seen[0], seen[1])


async def test_parameter_mismatch_is_a_clear_error():
    async def client(ch):
        await setup_client(ch, PRG(SEEDS["client"]), HE_8K)

    async def server(ch):
        await setup_server(ch, HE_16K)

    with pytest.raises(PartyError, match="HE parameters differ"):
        await run_local(client, server, timeout=60)


async def test_plan_mismatch_is_a_clear_error():
    x_c, x_s, ws = make_case(2, 16, (8,), w_bits=12)
    plan_c = plan_matmul(2, 16, (8,), HE_8K, w_bits=16)
    plan_s = plan_matmul(2, 16, (8,), HE_8K, w_bits=12)
    client, _ = two_party(plan_c, x_c, x_s, ws)
    _, server = two_party(plan_s, x_c, x_s, ws)
    with pytest.raises(PartyError, match="plans differ"):
        await run_local(client, server, timeout=60)


def test_weights_beyond_the_public_bound_are_refused():
    from secmoe.crypto.he import HEContext

    plan = plan_matmul(1, 4, (4,), HE_8K, w_bits=8)
    with pytest.raises(ValueError, match="public bound"):
        encode_weights(HEContext(HE_8K), [np.full((4, 4), 128)], plan)
    with pytest.raises(HEError):
        encode_weights(HEContext(HE_16K), [np.zeros((4, 4), dtype=np.int64)], plan)


def test_planner_reaches_the_bert_base_ffn_budget():
    plan = plan_matmul(8, 768, (3072,), HE_8K)
    cost = matmul_cost(plan)
    assert cost["bytes_c2s"] + cost["bytes_s2c"] < 12.1e6
    assert plan.tb * plan.db * plan.hb <= HE_8K.n


# --- protocol 2: secret × secret -------------------------------------------------------------


@pytest.mark.parametrize(("heads", "t", "d", "h"), [(2, 3, 5, 7), (1, 6, 17, 4), (6, 2, 5, 3)])
async def test_secret_secret_matmul_is_exact(heads, t, d, h):
    from secmoe.protocols.he_secret import (
        ideal_secret_matmul,
        plan_secret_matmul,
        secret_matmul_client,
        secret_matmul_cost,
        secret_matmul_server,
    )

    data = PRG(b"secret-secret-00")
    a_c, a_s = data.ring((heads, t, d)), data.ring((heads, t, d))
    b_c, b_s = data.ring((heads, d, h)), data.ring((heads, d, h))
    a_c[0, 0, :2] = [2**64 - 1, 2**63]
    plan = plan_secret_matmul(t, d, h, heads)

    async def client(ch):
        prg = PRG(SEEDS["client"])
        he = await setup_client(ch, prg, HE_16K)
        snap = ch.stats.snapshot()
        out = await secret_matmul_client(ch, he, a_c, b_c, plan, prg)
        return out, ch.stats.since(snap)

    async def server(ch):
        prg = PRG(SEEDS["server"])
        he = await setup_server(ch, HE_16K)
        return await secret_matmul_server(ch, he, a_s, b_s, plan, prg)

    (yc, delta), ys = await run_local(client, server, timeout=60)
    assert np.array_equal(yc + ys, ideal_secret_matmul(a_c, a_s, b_c, b_s))
    cost = secret_matmul_cost(plan)
    assert (delta.bytes_c2s, delta.bytes_s2c, delta.rounds) == (
        cost["bytes_c2s"],
        cost["bytes_s2c"],
        cost["rounds"],
    )


def test_small_heads_are_fused_block_diagonally():
    """At attention's q·kᵀ shape (T = 8, d = 64, K = 12 heads), one block-diagonal product per
    group of heads sends less than half the bytes of one product per head."""
    from secmoe.protocols.he_secret import _diag_zero, plan_secret_matmul

    plan = plan_secret_matmul(8, 64, 8, 12)
    single = plan_secret_matmul(8, 64, 8, 1)
    assert plan.group > 1
    assert plan.ct_bytes() < 0.5 * 12 * single.ct_bytes()
    # the blocks skipped as zero by structure are exactly the zero blocks of diag(1, …, 1)
    from secmoe.protocols.he_linear import layout_w
    from secmoe.protocols.he_secret import _block_diag

    g12 = plan_matmul(8, 12 * 64, (12 * 8,), HE_16K, w_bits=64)
    for side, g in ((plan.left, plan.group), (plan.right, plan.group), (g12, 12)):
        ones = np.ones((g, side.d // g, side.hs[0] // g), dtype=np.int64)
        polys = layout_w(_block_diag(ones), side, 0)
        assert np.array_equal(_diag_zero(side, g), ~polys.any(axis=-1))
    assert _diag_zero(g12, 12).any()


# --- protocol 3: encrypted selection --------------------------------------------------------


def make_selection(t, e, d, hs, seed=b"selection-case-0"):
    data = PRG(seed)
    r = data.below(e, t).astype(np.int64)
    onehot = np.zeros((t, e), dtype=U64)
    onehot[np.arange(t), r] = 1
    t_c = data.ring((t, e))
    x_c, x_s = data.ring((t, d)), data.ring((t, d))
    x_c[0, :2] = [2**64 - 1, 2**63]
    ws = [
        [data.below(2**16 - 1, (d, h)).astype(np.int64) - (2**15 - 1) for h in hs] for _ in range(e)
    ]
    return t_c, onehot - t_c, x_c, x_s, ws, r


async def run_selection(plan, case, skip=False):
    """Both parties of one selection on ``case`` (from :func:`make_selection`): the client's
    shares and bytes of the selection itself, the server's shares."""
    from secmoe.protocols.he_select import (
        encode_select_weights,
        select_client,
        select_server,
        setup_select_client,
        setup_select_server,
    )

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

    (yc, delta), ys = await run_local(client, server, timeout=60)
    return yc, delta, ys


async def test_encrypted_selection_is_exact_and_bytes_do_not_grow_with_experts():
    from secmoe.protocols.he_select import ideal_select, plan_select, select_cost

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
    cost = select_cost(plan)
    assert (delta.bytes_c2s, delta.bytes_s2c, delta.rounds) == (
        cost["bytes_c2s"],
        cost["bytes_s2c"],
        cost["rounds"],
    )
    # the wire carries 1 + T·⌈d/d_b⌉ and T·Σ⌈h/h_b⌉ ciphertexts whatever E is
    for more in (8, 32):
        other = plan_select(t, more, d, hs)
        assert (other.n_x, other.n_out) == (plan.n_x, plan.n_out)
        if other.level == plan.level:
            assert select_cost(other)["bytes_c2s"] == cost["bytes_c2s"]
            assert select_cost(other)["bytes_s2c"] == cost["bytes_s2c"]


@pytest.mark.parametrize("skip", [False, True])
async def test_selection_with_few_blocks_expands_depth_first_and_stays_exact(skip):
    """Small d (fewer weight blocks than one-hot entries): the depth-first expansion path, with
    T·E not a power of two, an all-zero expert and a matrix zero in every expert, with and
    without ``skip_zero_blocks``: still exact, and the bytes are the declared ones."""
    from secmoe.protocols.he_select import ideal_select, plan_select, select_cost

    t, e, d, hs = 3, 7, 5, (3, 2)
    t_c, t_s, x_c, x_s, ws, _r = make_selection(t, e, d, hs, seed=b"selection-case-1")
    ws[2] = [np.zeros_like(w) for w in ws[2]]
    for w in ws:  # matrix 1: zero in every expert
        w[1][:] = 0
    plan = plan_select(t, e, d, hs)
    blocks = plan.token.nb * sum(plan.token.nc(m) for m in range(len(hs)))
    assert (e + t) * blocks < t * e  # the fused, depth-first path

    yc, delta, ys = await run_selection(plan, (t_c, t_s, x_c, x_s, ws, _r), skip)
    for m, want in enumerate(ideal_select(t_c, t_s, x_c, x_s, ws)):
        assert np.array_equal(yc[m] + ys[m], want)
    cost = select_cost(plan)
    assert (delta.bytes_c2s, delta.bytes_s2c) == (cost["bytes_c2s"], cost["bytes_s2c"])


async def test_selection_without_evaluation_keys_is_refused():
    from secmoe.protocols.he_select import (
        encode_select_weights,
        plan_select,
        select_client,
        select_server,
    )

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


# --- several weights, one product (attention's q, k, v) ----------------------------------


async def test_fused_linear_matches_the_spec_and_sends_the_input_once():
    """``linear_fused`` (one product, the client's X sent once) gives the fixed-point result
    of each W_m and moves fewer bytes than one ``linear`` per weight."""
    from secmoe.crypto.ring import DEFAULT_RING as R
    from secmoe.ops import approx
    from secmoe.ops.linear import linear, linear_fused, prepare
    from tests.ops.helpers import run_he_parties
    from tests.protocols.helpers import mine, opened, split

    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 40))
    ws = [rng.normal(size=(40, h)) * 0.5 for h in (24, 24, 12)]
    xs = split(R.encode(x), R)

    async def body(p):
        if p.role == "server":
            prepare(p, ws, 4)
        theirs = ws if p.role == "server" else None
        snap = p.ch.stats.snapshot()
        fused = await linear_fused(p.fork("qkv"), mine(p, xs), theirs, [24, 24, 12])
        one_product = p.ch.stats.since(snap).bytes_total
        snap = p.ch.stats.snapshot()
        for i, h in enumerate((24, 24, 12)):
            await linear(p.fork(f"one{i}"), mine(p, xs), theirs and theirs[i], h)
        return fused, (one_product, p.ch.stats.since(snap).bytes_total)

    (cf, nbytes), (sf, _) = await run_he_parties(body)
    for got, w in zip((opened(pair, R) for pair in zip(cf, sf, strict=True)), ws, strict=True):
        want = approx.trunc(R.reduce(R.encode(x) @ R.encode(w)), R)
        assert set(R.to_signed(R.reduce(got - want)).ravel().tolist()) <= {-1, 0}
    assert nbytes[0] < nbytes[1]

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


def two_party(plan, x_c, x_s, ws, *, ring=None, calls=1, params=HE_8K, cache="auto", skip=False):
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
        enc = encode_weights(he.ctx, ws, plan, cache=cache, skip_zero_blocks=skip)
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


def test_small_batches_pack_their_products_and_large_ones_send_no_more():
    """At T = 8 the returned ciphertexts are packed (far fewer than products, with the Galois
    keys setup sends); at T = 128 the bytes stay below the unpacked optimum (49.23 MB)."""
    from secmoe.protocols.he_setup import packing_galois_elements

    for d, h in ((768, 768), (768, 3072), (3072, 768)):
        plan = plan_matmul(8, d, (h,), HE_8K, w_bits=24)
        assert plan.pack >= 4 and plan.n_out * 16 <= plan.n_leaves
        assert set(plan.galois_elements()) <= set(packing_galois_elements(HE_8K))
        assert sum(plan.ct_bytes()) < 2.7e6
    big = matmul_cost(plan_matmul(128, 768, (3072,), HE_8K))
    assert big["bytes_c2s"] + big["bytes_s2c"] <= 49.23e6


async def test_packed_products_with_zero_and_missing_members_are_exact():
    """Packing with a product that has no terms (its weight blocks skipped as zero) and a
    last group with fewer members than 2^pack: still exact, and the cost as declared."""
    x_c, x_s, ws = make_case(5, 33, (129, 17))
    plan = plan_matmul(5, 33, (129, 17), HE_8K)
    assert plan.pack >= 2 and plan.n_leaves % (1 << plan.pack)
    ws[0][:, plan.hb : 2 * plan.hb] = 0  # the products of column block 1 have no terms
    ws[1][:] = 0
    (outs, deltas), souts = await run_local(*two_party(plan, x_c, x_s, ws, skip=True), timeout=60)
    for yc, ys, ref in zip(outs[0], souts[0], ideal_matmul(x_c, x_s, ws), strict=True):
        assert np.array_equal(yc + ys, ref)
    cost = matmul_cost(plan)
    assert (deltas[0].bytes_c2s, deltas[0].bytes_s2c) == (cost["bytes_c2s"], cost["bytes_s2c"])


async def test_packed_products_decrypt_exactly_at_the_flood_extreme(monkeypatch):
    """Weights at the public bound, every flooded coefficient at −2^β instead of uniform, the
    deepest packing the plan allows: decryption is still exact, so β (which covers the key
    switches' noise, :func:`~secmoe.protocols.he_common.noise_log2_bound`) fits the level."""
    from secmoe.crypto.he_params import plan_noise
    from secmoe.protocols.he_common import noise_log2_bound

    def extreme(_prg, b, ps, n):
        return np.stack([np.full(n, (-(1 << b)) % q, dtype=U64) for q in ps])

    monkeypatch.setattr("secmoe.crypto.he.sample_flood_rns", extreme)
    t, d, h = 4, 256, 256
    x_c, x_s, ws = make_case(t, d, (h,), w_bits=24)
    ws[0][:] = np.where(ws[0] < 0, -(2**23 - 1), 2**23 - 1)
    plan = plan_matmul(t, d, (h,), HE_8K, w_bits=24)
    assert plan.pack >= 3
    bound = noise_log2_bound(plan.nb, plan.db, plan.hb, 24, HE_8K, plan.pack)
    assert bound > noise_log2_bound(plan.nb, plan.db, plan.hb, 24)
    assert plan.beta == plan_noise(HE_8K, bound).beta
    (outs, _), souts = await run_local(*two_party(plan, x_c, x_s, ws), timeout=60)
    assert np.array_equal(outs[0][0] + souts[0][0], ideal_matmul(x_c, x_s, ws)[0])


async def test_packing_without_its_galois_keys_is_a_clear_error():
    x_c, x_s, ws = make_case(4, 64, (96,))
    plan = plan_matmul(4, 64, (96,), HE_8K)
    assert plan.pack > 0

    async def client(ch):
        he = await setup_client(ch, PRG(SEEDS["client"]), HE_8K, pack=False)
        return await matmul_client(ch, he, x_c, plan, PRG(SEEDS["client"]))

    async def server(ch):
        he = await setup_server(ch, HE_8K, pack=False)
        enc = encode_weights(he.ctx, ws, plan)
        return await matmul_server(ch, he, x_s, enc, PRG(SEEDS["server"]))

    with pytest.raises(PartyError, match="packing needs Galois keys"):
        await run_local(client, server, timeout=60)


def test_packed_noise_stays_below_the_bound_the_flood_covers():
    """White box: the phase of a packed ciphertext (before flooding) at every returned
    coefficient is Δ·(X·W) of the product :meth:`MatmulPlan.returned_positions` puts there
    (the 2^pack factor cancelled), plus noise below 2^bound, the bound β is sized from
    (products by weights at the public bound, and 2^pack − 1 key switches)."""
    import math

    from secmoe.crypto.he import HEContext, PublicKey, SecretKey, load_galois_keys
    from secmoe.protocols.he_common import (
        ProductPacker,
        _products,
        noise_log2_bound,
        step_client_encrypt,
        step_server_import,
    )
    from secmoe.protocols.he_setup import ClientHE, ServerHE, packing_galois_elements

    ctx, prg = HEContext(HE_8K), PRG(b"packed-noise-000")
    sk = SecretKey.generate(ctx, prg)
    elements = packing_galois_elements(HE_8K)
    gk = load_galois_keys(ctx, sk.galois_keys_bytes(elements))
    server = ServerHE(ctx, PublicKey.from_wire(ctx, *sk.public_key(prg)), None, gk, elements)
    t, d, h = 4, 256, 256
    x, _, ws = make_case(t, d, (h,), w_bits=24)
    ws[0][:] = np.where(ws[0] < 0, -(2**23 - 1), 2**23 - 1)
    plan = plan_matmul(t, d, (h,), HE_8K, w_bits=24)
    assert plan.pack >= 3
    seed, c0 = step_client_encrypt(ClientHE(ctx, sk), [x], plan, prg)
    (cts,) = step_server_import(server, plan, seed, c0, [None])
    products = _products(server, encode_weights(ctx, ws, plan), cts)
    packed = ProductPacker(server, plan).pack(products)  # the first 2^pack products
    data = ctx.export_ct(packed)
    primes = ctx.primes[: plan.level]
    c1s = sk.c1_times_s(data[1][None])[0]
    phase = np.stack([(data[0, i] + c1s[i]) % U64(p) for i, p in enumerate(primes)])
    q = math.prod(primes)
    y = ideal_matmul(x, np.zeros_like(x), ws)[0]
    size = 1 << plan.pack
    want = np.concatenate(
        [y[r * plan.tb : r * plan.tb + tr, c * plan.hb : c * plan.hb + hc].reshape(-1)
         for _m, r, c, tr, hc in list(plan.outputs())[:size]]
    )  # fmt: skip
    worst = 0
    for pos, m in zip(plan.returned_positions()[0], want, strict=True):
        v = sum(int(phase[i, pos]) * (q // p) * pow(q // p, -1, p) for i, p in enumerate(primes))
        e = (v - (q * int(m) + (1 << 63) >> 64)) % q
        worst = max(worst, min(e, q - e))
    bound = noise_log2_bound(plan.nb, plan.db, plan.hb, 24, HE_8K, plan.pack)
    assert 0 < worst <= 2**bound
    assert noise_log2_bound(plan.nb, plan.db, plan.hb, 24) < bound


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
    from secmoe.protocols.he_secret import block_diagonal_zero, plan_secret_matmul

    plan = plan_secret_matmul(8, 64, 8, 12)
    single = plan_secret_matmul(8, 64, 8, 1)
    assert plan.group > 1
    assert plan.ct_bytes() < 0.5 * 12 * single.ct_bytes()
    # the blocks skipped as zero by structure are exactly the zero blocks of diag(1, …, 1)
    from secmoe.protocols.he_common import layout_w
    from secmoe.protocols.he_secret import _block_diag

    g12 = plan_matmul(8, 12 * 64, (12 * 8,), HE_16K, w_bits=64)
    for side, g in ((plan.left, plan.group), (plan.right, plan.group), (g12, 12)):
        ones = np.ones((g, side.d // g, side.hs[0] // g), dtype=np.int64)
        polys = layout_w(_block_diag(ones), side, 0)
        assert np.array_equal(block_diagonal_zero(side, g), ~polys.any(axis=-1))
    assert block_diagonal_zero(g12, 12).any()


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

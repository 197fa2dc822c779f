"""Plain-weight HE products on server workers (secmoe.distributed, in this process): the units
cover the products in whole subtrees of the packing tree, the reply is the embedded server's
bit for bit with 1, 2 and 3 workers, the ops layer sends the same bytes and rounds with its
weights on workers, a restarted worker gets its share again, and a worker refuses a share past
its budget."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
import pytest

from secmoe.crypto.he import HEContext, PublicKey, SecretKey, load_galois_keys
from secmoe.crypto.he_params import HE_8K
from secmoe.crypto.prg import PRG
from secmoe.crypto.ring import DEFAULT_RING as R
from secmoe.distributed import LocalPool, OverBudget
from secmoe.distributed.worker import ShardWorker
from secmoe.net import run_local
from secmoe.ops import approx
from secmoe.ops.linear import linear, linear_diagonal, prepare, prepare_diagonal, setup_he
from secmoe.protocols.he_common import (
    pack_results,
    server_inputs,
    step_client_decrypt,
    step_client_encrypt,
    step_server_eval,
    step_server_finish,
)
from secmoe.protocols.he_linear import (
    ShardedWeights,
    _joined,
    encode_weights,
    ideal_matmul,
    linear_units,
    plan_matmul,
)
from secmoe.protocols.he_setup import ClientHE, ServerHE, packing_galois_elements
from secmoe.protocols.party import Party
from tests.distributed.test_local_pool import Owner
from tests.he.test_he_linear import make_case
from tests.protocols.helpers import SEEDS, mine, opened, split


@functools.cache
def keys():
    """A client's HE_8K keys and the server's view of them (packing Galois keys included)."""
    ctx, prg = HEContext(HE_8K), PRG(b"linear-pool-keys")
    sk = SecretKey.generate(ctx, prg)
    elements = packing_galois_elements(HE_8K)
    gk = sk.galois_keys_bytes(elements)
    sctx = HEContext(HE_8K)
    pk = PublicKey.from_wire(sctx, *sk.public_key(prg))
    return ClientHE(ctx, sk), ServerHE(sctx, pk, None, load_galois_keys(sctx, gk), elements, gk)


def _cases():
    """(name, plan, weights): a partial last group with products without terms, several
    matrices with several row blocks (nr = 3), an unpacked plan, two returned ciphertexts."""
    base = plan_matmul(5, 33, (129, 17), HE_8K)
    _x, _y, ws = make_case(5, 33, (129, 17), seed=b"linear-pool-zero")
    ws[0][:, base.hb : 2 * base.hb] = 0
    ws[1][:] = 0
    rows = dataclasses.replace(plan_matmul(8, 48, (24, 56), HE_8K), tb=3)
    flat = dataclasses.replace(plan_matmul(8, 48, (24, 56), HE_8K), pack=0)
    two = plan_matmul(48, 16, (300,), HE_8K)
    return [
        ("zero-blocks", base, ws),
        ("row-blocks", rows, make_case(8, 48, (24, 56), seed=b"linear-pool-rows")[2]),
        ("unpacked", flat, make_case(8, 48, (24, 56), seed=b"linear-pool-flat")[2]),
        ("two-groups", two, make_case(48, 16, (300,), seed=b"linear-pool-twog")[2]),
    ]


CASES = _cases()


def test_units_cover_the_products_in_whole_subtrees():
    """Per worker a contiguous range, together every product once, each range starting at a
    multiple of 2^k with k ≤ p (so every unit is a subtree of one returned ciphertext's
    tree); two workers halve a 64-product tree at its root."""
    plans = [plan for _n, plan, _w in CASES] + [plan_matmul(8, 256, (1024,), HE_8K, w_bits=24)]
    for plan in plans:
        for workers in range(1, 6):
            k, ranges = linear_units(plan, workers)
            assert 0 <= k <= plan.pack and len(ranges) == workers
            assert ranges[0][0] == 0 and ranges[-1][1] == plan.n_leaves
            for (lo, hi), (lo2, _hi2) in itertools.pairwise(ranges):
                assert lo <= hi == lo2 and lo % (1 << k) == 0
    big = plans[-1]
    assert (big.n_leaves, big.pack) == (64, 6)
    assert linear_units(big, 2) == (5, [(0, 32), (32, 64)])
    assert linear_units(big, 1) == (6, [(0, 64)])


def _embedded(server, plan, ws, inputs, skip):
    enc = encode_weights(server.ctx, ws, plan, skip_zero_blocks=skip)
    cts = [server.ctx.import_ct(r, ntt=True) for r in inputs]
    return step_server_eval(server, enc, cts, PRG(b"linear-pool-serv"))


@pytest.mark.parametrize(("name", "plan", "ws"), CASES, ids=[c[0] for c in CASES])
def test_workers_reply_bit_for_bit_as_the_embedded_server(name, plan, ws):
    """The returned c1, c0 and the server's shares with 1, 2 and 3 workers equal the
    embedded server's exactly (the same packing tree, the same PRG draws); they decrypt to
    X·W; the coordinator's handle holds no weights and the workers hold the blocks of their
    columns only."""
    client, server = keys()
    x_c, x_s, _ = make_case(plan.t, plan.d, plan.hs, seed=b"linear-pool-xxxx")
    seed, c0 = step_client_encrypt(client, [x_c], plan, PRG(b"linear-pool-clnt"))
    inputs = server_inputs(server, plan, seed, c0, [x_s])
    skips = (False, True) if name == "zero-blocks" else (False,)
    for skip in skips:
        want = _embedded(server, plan, ws, inputs, skip)
        (yc,) = step_client_decrypt(client, plan, *_wire(server, plan, want))
        for m, ref in enumerate(ideal_matmul(x_c, x_s, ws)):
            assert np.array_equal(R.reduce(yc[m] + want[0][m]), ref)
        for workers in (1, 2, 3):
            pool, owner = LocalPool(workers), Owner()  # the session lives while owner does
            handle = pool.session(server, owner).prepare_linear(
                (name,), plan, lambda: ws, skip, None
            )
            assert isinstance(handle, ShardedWeights) and handle.plan == plan
            got = step_server_finish(
                server, plan, _joined(server, handle, inputs), PRG(b"linear-pool-serv")
            )
            for a, b in zip(got[1:], want[1:], strict=True):
                assert a.tobytes() == b.tobytes()
            assert all(np.array_equal(a, b) for a, b in zip(got[0], want[0], strict=True))
            held = pool.encoded_bytes("linear")
            assert pool.encoded_bytes("select") == [0] * workers
            block, cols = plan.level * plan.n * 8, sum(plan.nc(m) for m in range(len(plan.hs)))
            assert sum(held) <= (cols + workers - 1) * plan.nb * block  # a column cut in two
            if workers > 1 and not skip:
                assert max(held) < cols * plan.nb * block


def _wire(server, plan, res):
    return pack_results(server, plan, res[1], res[2])


async def test_ops_products_on_workers_send_the_same_bytes_and_rounds():
    """linear (fused q/k/v-like: two weights) and linear_diagonal (blocks zero by public
    structure) through the ops layer, with the server's weights in this process and on 2
    workers: the same bytes and rounds each way, both exact to the fixed-point spec, and the
    coordinator's cache holds only handles."""
    rng = np.random.default_rng(5)  # public test data
    x = rng.normal(size=(4, 24))
    w = [rng.normal(size=(24, 40)) * 0.5, rng.normal(size=(24, 8)) * 0.5]
    wd = rng.normal(size=(3, 24, 6)) * 0.5
    xs = split(R.encode(x), R)
    xd = split(R.encode(rng.normal(size=(3, 4, 24))), R)

    async def run(workers):
        held = {}

        async def party(ch):
            p = await setup_he(await Party.setup(ch, PRG(SEEDS[ch.role])))
            server = p.role == "server"
            if server and workers:
                p.he.pool = LocalPool(workers).session(list(p.he.keys.values()), p.he)
            if server:
                prepare(p, w[0], 4)
                prepare(p, w[1], 4)
                prepare_diagonal(p, wd, 4)
                held["cache"] = list(p.he.encoded.values())
            snap = ch.stats.snapshot()
            y0 = await linear(p.fork("a"), mine(p, xs), w[0] if server else None, 40)
            y1 = await linear(p.fork("b"), mine(p, xs), w[1] if server else None, 8)
            yd = await linear_diagonal(p.fork("d"), mine(p, xd), wd if server else None, 6)
            d = ch.stats.since(snap)
            return (y0, y1, yd), (d.bytes_c2s, d.bytes_s2c, d.rounds)

        (cy, cost), (sy, _) = await run_local(party, party, timeout=300)
        return [opened((a, b), R) for a, b in zip(cy, sy, strict=True)], cost, held["cache"]

    base, cost0, cache0 = await run(0)
    ys, cost2, cache2 = await run(2)
    assert cost2 == cost0 and cost0[0] > 0
    assert not any(isinstance(c, ShardedWeights) for c in cache0)
    assert len(cache2) == 3 and all(isinstance(c, ShardedWeights) for c in cache2)
    spec = [approx.trunc(R.reduce(R.encode(x) @ R.encode(m)), R) for m in w]
    xd_plain = R.reduce(xd[0] + xd[1])
    diag = [approx.trunc(R.reduce(xd_plain[i] @ R.encode(wd[i])), R) for i in range(3)]
    spec.append(np.stack(diag))
    for got in (base, ys):
        for g, want in zip(got, spec, strict=True):
            assert set(R.to_signed(R.reduce(g - want)).ravel().tolist()) <= {-1, 0}


def test_a_restarted_worker_gets_its_share_again():
    """Worker 1 restarts (a new incarnation, its state lost): the next product sends it the
    session's keys and its weight blocks again, and the reply is still the embedded one."""
    name, plan, ws = CASES[1]
    client, server = keys()
    x_c, x_s, _ = make_case(plan.t, plan.d, plan.hs, seed=b"linear-pool-xxxx")
    seed, c0 = step_client_encrypt(client, [x_c], plan, PRG(b"linear-pool-clnt"))
    inputs = server_inputs(server, plan, seed, c0, [x_s])
    want = _embedded(server, plan, ws, inputs, False)
    pool, owner = LocalPool(2), Owner()
    handle = pool.session(server, owner).prepare_linear((name,), plan, lambda: ws, False, None)
    pool.members[1] = ShardWorker(1)
    assert pool.encoded_bytes("linear")[1] == 0
    groups = _joined(server, handle, inputs)
    got = step_server_finish(server, plan, groups, PRG(b"linear-pool-serv"))
    assert pool.restarts == 1 and pool.encoded_bytes("linear")[1] > 0
    assert got[1].tobytes() == want[1].tobytes() and got[2].tobytes() == want[2].tobytes()


def test_a_worker_refuses_a_linear_share_past_its_budget():
    """A worker's share of a product's blocks counts against --max-encoded-gb: refused by
    name, before encoding, and the pool keeps no recipe of it."""
    _name, plan, ws = CASES[3]
    server = keys()[1]
    pool = LocalPool(2, max_bytes=plan.level * plan.n * 8)  # one block each
    with pytest.raises(OverBudget, match=r"worker 0 refuses shard \w+ \(products 0-\d+\)"):
        pool.session(server, Owner()).prepare_linear(("b",), plan, lambda: ws, False, None)
    assert not pool._recipes

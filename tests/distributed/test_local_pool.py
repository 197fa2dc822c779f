"""Expert-parallel selection (secmoe.distributed) in this process: the workers' summed
accumulators give the embedded server's reply bit for bit, each worker expands only its own
subtree, and the coordinator keeps none of the experts' weights."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest

import secmoe.protocols.he_select as hs
from secmoe.crypto.he import (
    HEContext,
    PublicKey,
    SecretKey,
    expand_a,
    load_galois_keys,
    load_relin_keys,
)
from secmoe.crypto.he_params import HE_16K
from secmoe.crypto.prg import PRG
from secmoe.crypto.ring import DEFAULT_RING
from secmoe.distributed import LocalPool, OverBudget
from secmoe.distributed.pool import expert_groups
from secmoe.distributed.worker import shard_bytes
from secmoe.ops.linear import HEState, prepare_select
from secmoe.protocols.he_select import (
    ShardedSelect,
    encode_select_weights,
    plan_select,
    step_server_eval,
)
from secmoe.protocols.he_setup import ClientHE, ServerHE
from tests.he.test_he_select import make_selection


@functools.cache
def keys(plan):
    """A client's keys and the server's view of them, without a channel (one per plan)."""
    ctx = HEContext(HE_16K)
    sk = SecretKey.generate(ctx, PRG(b"\x01" * 16).derive("sk"))
    seed, pk0 = sk.public_key(PRG(b"\x02" * 16))
    gk = sk.galois_keys_bytes(plan.galois_elements)
    server_ctx = HEContext(HE_16K)
    he = ServerHE(
        server_ctx,
        PublicKey.from_wire(server_ctx, seed, pk0),
        load_relin_keys(server_ctx, sk.relin_keys_bytes()),
        load_galois_keys(server_ctx, gk),
        plan.galois_elements,
        gk,
    )
    return ClientHE(ctx, sk), he


NON_FUSED = (2, 4, 32, (16, 8))  # (E + T)·blocks ≥ T·E: breadth-first expansion
FUSED = (3, 7, 5, (3, 2))  # few blocks: depth first, fed to the selection directly


def counted_children(monkeypatch):
    calls = []
    real = hs._children

    def children(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(hs, "_children", children)
    return calls


@pytest.mark.parametrize("depth_first", [False, True])
def test_a_worker_expands_only_its_own_subtree(monkeypatch, depth_first):
    """Experts strided over W = 2 workers, E = 4, T = 2: worker w's leaves i = k·E + j with
    j ≡ w (mod 2) are exactly those with i ≡ w (mod 2), one subtree of the expansion: T·E/W − 1
    automorphisms plus log2 W on the path to it (the whole tree: T·E − 1), and each leaf is
    the embedded expansion's, bit for bit."""
    t, e, d, h = NON_FUSED
    plan = plan_select(t, e, d, h)
    client, server = keys(plan)
    t_c = make_selection(t, e, d, h)[0]
    ctx = server.ctx

    def root():
        seed, c0 = client.sk.encrypt(
            hs._onehot_poly(t_c, plan),
            PRG(b"\x03" * 16),
            scale_bits=64 + plan.lam,
            level=plan.level,
        )
        a = expand_a(seed, 1, ctx.primes[: plan.level], ctx.n)
        ct = ctx.import_ct(np.concatenate([c0, a]), ntt=True)
        ctx.evaluator.transform_from_ntt_inplace(ct)
        return ct

    def leaves(owned):
        calls = counted_children(monkeypatch)
        if depth_first:
            out = dict(hs._expand_depth_first(ctx, server.galois, root(), plan, owned))
        else:
            out = dict(enumerate(hs._expand(ctx, server.galois, root(), plan, owned)))
        return {i: ctx.export_ct(c) for i, c in out.items() if c is not None}, len(calls)

    whole, n_whole = leaves(np.ones(t * e, dtype=bool))
    assert sorted(whole) == list(range(t * e)) and n_whole == t * e - 1
    for w in range(2):
        owned = encode_select_weights(
            [[np.zeros((d, x), np.int64) for x in h]] * 2, plan, experts=[w, w + 2]
        ).owned
        part, n_part = leaves(owned)
        assert sorted(part) == list(range(w, t * e, 2))
        assert n_part == t * e // 2 - 1 + 1
        for i, c in part.items():
            assert np.array_equal(c, whole[i])


class Owner:
    """Stands for a session's HE state (the pool drops the session's keys with it)."""


def server_reply(server, weights, case, msg):
    _t_c, t_s, _x_c, x_s, _ws, _r = case
    return step_server_eval(server, weights, t_s, x_s, msg, PRG(b"\x04" * 16))


def counted_stream(stream, counts, w, method, *args):
    """A worker's stream, its items counted in ``counts[w]``."""
    for item in stream(w, method, *args):
        counts[w] += 1
        yield item


def test_expert_groups_divide_the_workers_up_to_eight():
    """A = the largest divisor of W at most 8 and E: the coordinator sums at most 8
    accumulators per block; W/A workers split the output blocks."""
    got = {(w, e): expert_groups(w, e) for w, e in ((2, 64), (8, 64), (12, 64), (64, 64))}
    assert got == {(2, 64): 2, (8, 64): 8, (12, 64): 6, (64, 64): 8}
    assert expert_groups(11, 64) == 1 and expert_groups(16, 4) == 4 and expert_groups(3, 7) == 3
    assert LocalPool(16).grid(64) == (8, 2)
    with pytest.raises(ValueError, match="3 expert groups do not divide 4 workers"):
        LocalPool(4, groups=3)


@pytest.mark.parametrize("shape", [NON_FUSED, FUSED])
def test_workers_reply_bit_for_bit_as_the_embedded_server(shape):
    """The reply (returned c1, c0 bytes) and the server's shares with 1, 2 and 3 workers
    (3 does not divide E: the pruning is partial), and with grids of expert groups × output
    block groups (4 workers as 2 × 2; 2 as 1 × 2, each worker all experts of one block; 3 as
    1 × 3, one worker with no block), equal the embedded server's exactly, with an all-zero
    expert; the shares are right, and every (expert, block) is held once."""
    t, e, d, h = shape
    plan = plan_select(t, e, d, h)
    client, server = keys(plan)
    case = make_selection(t, e, d, h, seed=b"pool-case-000001")
    case[4][1] = [np.zeros_like(w) for w in case[4][1]]
    t_c, _t_s, x_c, _x_s, ws, _r = case
    st, ct_, sx, cx = hs.step_client_encrypt(client, t_c, x_c, plan, PRG(b"\x05" * 16))
    msg = {"plan": plan.wire(), "seed_t": st, "c0_t": ct_, "seed_x": sx, "c0_x": cx}
    want = server_reply(server, encode_select_weights(ws, plan), case, msg)
    got_c = hs.step_client_decrypt(client, plan, want[1], want[2])
    for m, ideal in enumerate(hs.ideal_select(*case[:4], ws)):
        assert np.array_equal(got_c[m] + want[0][m], ideal)
    for workers, groups in ((1, None), (2, None), (3, None), (4, 2), (2, 1), (3, 1)):
        pool, owner = LocalPool(workers, groups=groups), Owner()
        handle = pool.session(server, owner).prepare(
            ("case",), plan, lambda ids: [ws[j] for j in ids], False
        )
        assert not hasattr(handle, "polys")
        streamed = [0] * workers
        pool._stream = functools.partial(counted_stream, pool._stream, streamed)
        got = server_reply(server, handle, case, msg)
        assert streamed == [len(pool.outputs(w, plan)) for w in range(workers)]
        assert got[1].tobytes() == want[1].tobytes() and got[2].tobytes() == want[2].tobytes()
        assert all(np.array_equal(a, b) for a, b in zip(got[0], want[0], strict=True))
        sizes = pool.encoded_bytes()
        assert sum(sizes) == encode_select_weights(ws, plan).nbytes
        for w, size in enumerate(sizes):
            assert size == shard_bytes(plan, len(pool.experts(w, e)), len(pool.outputs(w, plan)))
        assert pool.grid(e) == (groups or workers, workers // (groups or workers))


def test_with_a_pool_the_coordinator_keeps_no_expert_weights():
    """prepare_select with HEState.pool: the session's cache holds only handles (plan and the
    pool's products function), the workers hold the experts' layouts in halves, as many bytes
    as the single process would hold; a second session on the same pool sends nothing again."""
    rng = np.random.default_rng(7)  # public test weights
    w1 = (rng.standard_normal((4, 16, 8)) / 4).astype(np.float32)
    server = keys(plan_select(*NON_FUSED))[1]
    alone = HEState({HE_16K.name: server})
    prepare_select(SimpleNamespace(he=alone, ring=DEFAULT_RING), [w1], 2)
    (single,) = alone.selects.values()
    pool = LocalPool(2)
    sent, call = [], pool._call

    def counted(w, method, *args):
        sent.append(method)
        return call(w, method, *args)

    pool._call = counted
    for _ in range(2):  # two sessions
        st = HEState({HE_16K.name: server})
        st.pool = pool.session(server, st)
        prepare_select(SimpleNamespace(he=st, ring=DEFAULT_RING), [w1], 2)
        (handle,) = st.selects.values()
        assert isinstance(handle, ShardedSelect) and handle.plan == single.plan
        assert not any(isinstance(v, np.ndarray | list) for v in vars(handle).values())
    assert sent.count("load_shard") == 2  # once per worker, in the first session only
    assert pool.encoded_bytes() == [single.nbytes // 2] * 2


def test_a_worker_refuses_a_shard_past_its_budget():
    """max_bytes: a worker lays out a shard only if its encoded weights stay within the budget
    (the size is known from the plan: checked before any encoding, equal to what the layout
    takes); past it the worker refuses by name, saying how much, and the pool keeps no recipe
    of the refused shard."""
    t, e, d, h = NON_FUSED
    plan = plan_select(t, e, d, h)
    server = keys(plan)[1]
    ws = make_selection(t, e, d, h, seed=b"pool-budget-0001")[4]
    half = encode_select_weights(ws, plan).nbytes // 2
    assert shard_bytes(plan, e // 2) == half
    for budget, fits in ((half, True), (half - 1, False)):
        pool, owner = LocalPool(2, max_bytes=budget), Owner()
        session = pool.session(server, owner)
        if fits:
            session.prepare(("b",), plan, lambda ids: [ws[j] for j in ids], False)
            assert pool.encoded_bytes() == [half, half]
            continue
        with pytest.raises(OverBudget, match=r"worker 0 refuses shard \w+ \(2 experts\)") as err:
            session.prepare(("b",), plan, lambda ids: [ws[j] for j in ids], False)
        assert f"budget of {budget / 1e9:.3g} GB" in str(err.value)
        assert pool.encoded_bytes() == [0, 0] and not pool._recipes

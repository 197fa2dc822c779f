"""Two-party OT tests: every kind correct, both directions, edge sizes, forks, declared costs."""

import asyncio

import numpy as np
import pytest

from secmoe.crypto.prg import PRG
from secmoe.net import ProtocolError, memory_pair, run_local, run_pair
from secmoe.protocols.ot import base, iknp, kkot
from secmoe.protocols.ot.base import Cost
from secmoe.protocols.ot.pool import OTPool

ROLES = ["client", "server"]
SIZES = [1, 63, 128, 1000, iknp.CHUNK + 77]  # 1, not a multiple of 8/128, > one chunk


def _rng(tag: str) -> PRG:
    return PRG(tag.encode().ljust(16, b"\0")[:16])


def _check_cost(run, declared: Cost, sender_role: str) -> None:
    want = declared.directed(sender_role)
    for d in (run.delta, run.receiver_delta):
        got = {k: getattr(d, k) for k in want}
        assert got == want


# -- base OT and setup (real base OTs) -------------------------------------------------------


@pytest.mark.parametrize("n", [1, 128])
async def test_base_ot(n):
    c = _rng("choices").bits(n)

    async def sender(ch):
        snap = ch.stats.snapshot()
        return await base.send(ch, n, _rng("s"), "x"), ch.stats.since(snap)

    async def receiver(ch):
        return await base.recv(ch, c, _rng("r"), "x")

    ((k0, k1), delta), kc = await run_local(sender, receiver, timeout=30)
    np.testing.assert_array_equal(kc, np.where(c[:, None], k1, k0))
    want = base.cost(n).directed("client")
    assert {k: getattr(delta, k) for k in want} == want


async def test_pool_setup_then_both_directions():
    async def party(ch):
        pool = await OTPool.setup(ch, _rng(ch.role))
        setup = ch.stats.total("setup").as_dict()
        r = _rng("r" + ch.role).bits(500)
        if ch.role == "client":
            q = await pool.cot_send(500)
            t = await pool.cot_recv(r)
        else:
            t = await pool.cot_recv(r)
            q = await pool.cot_send(500)
        return pool.delta, q, r, t, setup

    (dc, qc, rc, tc, setup), (ds, qs, rs, ts, _) = await run_local(party, party, timeout=60)
    np.testing.assert_array_equal(ts, qc ^ (rs[:, None] * dc))
    np.testing.assert_array_equal(tc, qs ^ (rc[:, None] * ds))
    want = OTPool.setup_cost()
    assert {k: setup[k] for k in ("bytes_c2s", "bytes_s2c", "rounds")} == {
        k: want[k] for k in ("bytes_c2s", "bytes_s2c", "rounds")
    }


# -- correlated OT ---------------------------------------------------------------------------


@pytest.mark.parametrize("sender_role", ROLES)
@pytest.mark.parametrize("n", SIZES)
async def test_cot(sender_role, n, run_ot):
    r = _rng(f"cot{n}").bits(n)
    run = await run_ot(sender_role, lambda p: p.cot_send(n), lambda p: p.cot_recv(r))
    q, t = run.sender, run.receiver
    assert q.shape == t.shape == (n, 2) and q.dtype == np.uint64
    np.testing.assert_array_equal(t, q ^ (r[:, None] * run.sender_pool.delta))
    _check_cost(run, run.sender_pool.cost("cot", n), sender_role)


async def test_cot_random_choices_and_zero(run_ot):
    run = await run_ot(
        "server",
        lambda p: p.cot_send(1000, random_choices=True),
        lambda p: p.cot_recv_random(1000),
    )
    r, t = run.receiver
    assert 400 < r.sum() < 600
    np.testing.assert_array_equal(t, run.sender ^ (r[:, None] * run.sender_pool.delta))
    run = await run_ot("client", lambda p: p.cot_send(0), lambda p: p.cot_recv(np.zeros(0, bool)))
    assert run.sender.shape == (0, 2) and run.delta.messages == 0


async def test_cot_large(run_ot):
    n = 1_000_000
    r = _rng("large").bits(n)
    run = await run_ot("client", lambda p: p.cot_send(n), lambda p: p.cot_recv(r))
    np.testing.assert_array_equal(run.receiver, run.sender ^ (r[:, None] * run.sender_pool.delta))
    assert run.delta.bytes_c2s / n < 16.01


# -- random, chosen-message and additive OT ---------------------------------------------------


@pytest.mark.parametrize("sender_role", ROLES)
@pytest.mark.parametrize(("n", "bits", "k"), [(1, 1, None), (300, 7, None), (300, 64, 3)])
async def test_rot(sender_role, n, bits, k, run_ot):
    r = _rng("rot").bits(n)
    run = await run_ot(
        sender_role, lambda p: p.rot_send(n, bits, k), lambda p: p.rot_recv(r, bits, k)
    )
    m0, m1 = run.sender
    shape = (n,) if k is None else (n, k)
    assert m0.shape == m1.shape == run.receiver.shape == shape
    sel = r if k is None else r[:, None]
    np.testing.assert_array_equal(run.receiver, np.where(sel, m1, m0))
    assert int(max(m0.max(), m1.max())) < 2**bits
    if n > 1:
        assert not np.array_equal(m0, m1)
    _check_cost(run, run.sender_pool.cost("rot", n), sender_role)


async def test_rot_random_choices(run_ot):
    run = await run_ot(
        "client",
        lambda p: p.rot_send(777, 20, random_choices=True),
        lambda p: p.rot_recv_random(777, 20),
    )
    (m0, m1), (r, mr) = run.sender, run.receiver
    np.testing.assert_array_equal(mr, np.where(r, m1, m0))


@pytest.mark.parametrize("sender_role", ROLES)
@pytest.mark.parametrize(
    ("n", "bits", "k"), [(1, 1, None), (1000, 1, None), (129, 2, 4), (300, 13, None), (50, 64, 2)]
)
async def test_chosen_ot(sender_role, n, bits, k, run_ot):
    g = _rng(f"ot{bits}")
    shape = (n,) if k is None else (n, k)
    m0, m1 = g.ring(shape, bits), g.ring(shape, bits)
    r = g.bits(n)
    run = await run_ot(
        sender_role, lambda p: p.ot_send(m0, m1, bits), lambda p: p.ot_recv(r, bits, k)
    )
    sel = r if k is None else r[:, None]
    np.testing.assert_array_equal(run.receiver, np.where(sel, m1, m0))
    _check_cost(run, run.sender_pool.cost("ot", n, bits, k), sender_role)


async def test_chosen_ot_multi_chunk(run_ot):
    n, bits = iknp.CHUNK + 5, 3
    g = _rng("otbig")
    m0, m1, r = g.ring(n, bits), g.ring(n, bits), g.bits(n)
    run = await run_ot("server", lambda p: p.ot_send(m0, m1, bits), lambda p: p.ot_recv(r, bits))
    np.testing.assert_array_equal(run.receiver, np.where(r, m1, m0))
    _check_cost(run, run.sender_pool.cost("ot", n, bits), "server")
    assert run.delta.rounds == 2


@pytest.mark.parametrize("sender_role", ROLES)
@pytest.mark.parametrize(("n", "bits", "k"), [(1, 1, None), (500, 32, None), (200, 64, 3)])
async def test_acot(sender_role, n, bits, k, run_ot):
    g = _rng(f"acot{bits}")
    shape = (n,) if k is None else (n, k)
    corr, r = g.ring(shape, bits), g.bits(n)
    run = await run_ot(
        sender_role, lambda p: p.acot_send(corr, bits), lambda p: p.acot_recv(r, bits, k)
    )
    x, y = run.sender, run.receiver
    sel = (r if k is None else r[:, None]).astype(np.uint64)
    mask = np.uint64((1 << bits) - 1) if bits < 64 else ~np.uint64(0)
    np.testing.assert_array_equal(y, (x + sel * corr) & mask)
    _check_cost(run, run.sender_pool.cost("acot", n, bits, k), sender_role)


@pytest.mark.parametrize("sender_role", ROLES)
@pytest.mark.parametrize(("period", "reps"), [(64, 3), (37, 7), (5, iknp.CHUNK // 5 + 1)])
async def test_acot_with_per_ot_widths(sender_role, period, reps, run_ot):
    # OT j is mod 2^widths[j mod L]; the last case crosses a chunk (chunks aligned to L).
    n, bits = period * reps, 64
    widths = np.arange(period, 0, -1) * 64 // period
    g = _rng(f"acotw{period}")
    corr, r = g.ring(n, bits), g.bits(n)
    run = await run_ot(
        sender_role,
        lambda p: p.acot_send(corr, bits, widths),
        lambda p: p.acot_recv(r, bits, None, widths),
    )
    x, y = run.sender, run.receiver
    w = np.tile(widths, reps).astype(np.uint64)
    mask = np.where(w == 64, ~np.uint64(0), (np.uint64(1) << (w % np.uint64(64))) - np.uint64(1))
    np.testing.assert_array_equal(x & mask, x)
    np.testing.assert_array_equal(y, (x + r.astype(np.uint64) * corr) & mask)
    declared = run.sender_pool.cost("acot", n, bits, widths=widths)
    _check_cost(run, declared, sender_role)
    assert declared.sender_bytes < run.sender_pool.cost("acot", n, bits).sender_bytes


# -- 1-out-of-N ------------------------------------------------------------------------------


@pytest.mark.parametrize("sender_role", ROLES)
@pytest.mark.parametrize(
    ("n", "n_choices", "bits"), [(1, 2, 1), (100, 3, 5), (1000, 16, 2), (70, 256, 8)]
)
async def test_kkot(sender_role, n, n_choices, bits, run_ot):
    g = _rng(f"kk{n_choices}")
    msgs = g.ring((n, n_choices), bits)
    x = g.below(n_choices, n)
    run = await run_ot(
        sender_role, lambda p: p.kkot_send(msgs, bits), lambda p: p.kkot_recv(x, n_choices, bits)
    )
    np.testing.assert_array_equal(run.receiver, kkot.ideal(msgs, x))
    _check_cost(run, run.sender_pool.cost("kkot", n, bits, n_choices=n_choices), sender_role)


async def test_kkot_edge_choices_and_multi_chunk(run_ot):
    n, n_choices, bits = iknp.CHUNK // 4 + 3, 16, 2  # 4 COTs per transfer: > one chunk
    g = _rng("kkbig")
    msgs = g.ring((n, n_choices), bits)
    x = g.below(n_choices, n)
    x[:2] = [0, n_choices - 1]
    run = await run_ot(
        "client", lambda p: p.kkot_send(msgs, bits), lambda p: p.kkot_recv(x, n_choices, bits)
    )
    np.testing.assert_array_equal(run.receiver, kkot.ideal(msgs, x))
    _check_cost(run, run.sender_pool.cost("kkot", n, bits, n_choices=n_choices), "client")
    # 8 transfers: 32 COTs (4 bytes per column of u) and 8·16·2 bits of C.
    assert kkot.cost(run.sender_pool.sender, 8, 16, 2) == Cost(
        base.bin_size(32), base.bin_size(128 * 4), 2, 2
    )


# -- forks, concurrency, errors --------------------------------------------------------------


async def test_forks_run_concurrently_in_both_directions(run_ot):
    n = 3000
    g = _rng("forks")
    r = [g.bits(n) for _ in range(4)]
    m0, m1 = g.ring(n, 9), g.ring(n, 9)

    async def party(pool: OTPool):
        forks = [pool.fork(f"f{i}") for i in range(4)]
        client = pool.ch.role == "client"
        return await asyncio.gather(
            forks[0].cot_send(n) if client else forks[0].cot_recv(r[0]),
            forks[1].cot_recv(r[1]) if client else forks[1].cot_send(n),
            forks[2].ot_send(m0, m1, 9) if client else forks[2].ot_recv(r[2], 9),
            forks[3].kkot_recv(r[3].astype(int) * 3, 4, 2)
            if client
            else forks[3].kkot_send(np.tile(np.arange(4, dtype=np.uint64), (n, 1)), 2),
        ), [f.delta for f in forks]

    run = await run_ot("client", party, party)
    (c, dc), (s, ds) = run.sender, run.receiver
    np.testing.assert_array_equal(s[0], c[0] ^ (r[0][:, None] * dc[0]))
    np.testing.assert_array_equal(c[1], s[1] ^ (r[1][:, None] * ds[1]))
    np.testing.assert_array_equal(s[2], np.where(r[2], m1, m0))
    np.testing.assert_array_equal(c[3], r[3].astype(np.uint64) * 3)
    # Forks derive fresh seeds: their COTs differ from the parent's and from each other.
    assert not np.array_equal(c[0][:10], s[1][:10])


async def test_fork_outputs_are_independent_of_parent(run_ot):
    async def sender(p):
        a = await p.cot_send(64)
        b = await p.fork("x").cot_send(64)
        return a, b

    async def receiver(p):
        z = np.zeros(64, bool)
        return await p.cot_recv(z), await p.fork("x").cot_recv(z)

    run = await run_ot("server", sender, receiver)
    (a, b), (ta, tb) = run.sender, run.receiver
    np.testing.assert_array_equal(a, ta)
    np.testing.assert_array_equal(b, tb)
    assert not np.array_equal(a, b)


async def test_concurrent_use_of_one_pool_raises(run_ot):
    async def sender(p):
        with pytest.raises(RuntimeError, match="fork the pool"):
            await asyncio.gather(p.cot_send(10), p.cot_send(10))
        return None

    async def receiver(p):
        return await p.cot_recv(np.zeros(10, bool))

    await run_ot("client", sender, receiver)


async def test_wrong_size_message_raises_protocol_error(make_dealer_pools):
    cch, sch = memory_pair()
    _, server = make_dealer_pools(cch, sch)

    async def bad_receiver():
        await cch.send(b"\0" * 17, tag=iknp.TAG_U)

    async def sender():
        with pytest.raises(ProtocolError, match="IKNP u"):
            await server.cot_send(100)

    try:
        await run_pair(bad_receiver(), sender(), timeout=10)
    finally:
        await cch.close()
        await sch.close()


def test_bad_arguments():
    with pytest.raises(ValueError):
        kkot.index_bits(257)
    with pytest.raises(ValueError):
        iknp.field_width(65)
    with pytest.raises(ValueError):
        iknp.chunk_sizes(10, 3)


async def test_iknp_delta_lsb_one():
    from secmoe.protocols.ot.iknp import IknpReceiver, IknpSender

    async def sender(ch):
        return await IknpSender.setup(ch, _rng("lsb"), "x", delta_lsb_one=True)

    async def receiver(ch):
        return await IknpReceiver.setup(ch, _rng("lsb-r"), "x")

    snd, _ = await run_local(sender, receiver, timeout=30)
    assert int(snd.delta[0]) & 1 == 1

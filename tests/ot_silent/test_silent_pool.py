"""The silent source in the OT pool: one Ferret stream per direction shared by every fork.

Sender-announced allocation under different schedules on the two sides, every derived OT kind
in both directions, declared == measured (draws + stream refills), rounds, bounded buffers,
desynchronization errors, the real setup and the default source, a pinned transcript digest.
Most tests use the insecure TOY parameters with dealer base COTs (many Ferret iterations,
fast); the setup test runs the real B13 setup.
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest

from secmoe.crypto.prg import PRG
from secmoe.net import PartyError, ProtocolError, run_local
from secmoe.protocols.ot import ferret, iknp, kkot, silent
from secmoe.protocols.ot.base import Cost, bin_size
from secmoe.protocols.ot.ferret import TOY, BaseSource, FerretReceiver, FerretSender
from secmoe.protocols.ot.pool import DEFAULT_SOURCE, OTPool, _instance_label
from secmoe.protocols.ot.silent import SilentReceiver, SilentSender, Stream
from secmoe.protocols.party import Party

ROLES = ["client", "server"]
_ONE = np.uint64(1)


def _prg(tag: str) -> PRG:
    return PRG(hashlib.sha256(tag.encode()).digest()[:16])


def _peer(role: str) -> str:
    return "server" if role == "client" else "client"


def _dealer_instances(seed: str, params=TOY) -> dict[str, tuple[FerretSender, FerretReceiver]]:
    """TEST ONLY: for each sender role, a Ferret instance pair whose first reserve comes from a
    trusted dealer (no communication); the rest (GGM, LPN, the wire) is the real thing."""
    out = {}
    for role in ROLES:
        label = _instance_label(role)
        g = _prg(f"{seed}/{role}")
        delta = g.uint64(2)
        delta[0] |= _ONE
        q, r, t = ferret.ideal(delta, params.pre.reserve, g)

        async def fetch_s(ch, n, q=q):
            return q

        async def fetch_r(ch, n, r=r, t=t):
            return r, t

        def free(n: int) -> Cost:
            return Cost(0, 0, 0, 0)

        out[role] = (
            FerretSender(delta, params, BaseSource(fetch_s, free), g.derive("seeds"), label),
            FerretReceiver(params, BaseSource(fetch_r, free), label),
        )
    return out


async def _pool(ch, insts) -> OTPool:
    """This party's silent pool over the dealer instances (streams primed, as in a setup)."""
    me, peer = ch.role, _peer(ch.role)
    sst = Stream(insts[me][0], ch.fork(_instance_label(me)))
    rst = Stream(insts[peer][1], ch.fork(_instance_label(peer)))
    await asyncio.gather(sst.prime(), rst.prime())
    return OTPool(ch, SilentSender(sst), SilentReceiver(rst))


async def _run(client_fn, server_fn, seed="pool", timeout=120, **kw):
    insts = _dealer_instances(seed)

    async def party(ch):
        pool = await _pool(ch, insts)
        return await (client_fn if ch.role == "client" else server_fn)(pool)

    return await run_local(party, party, timeout=timeout, **kw)


def _check(measured, declared: Cost | dict, refills: dict) -> None:
    want = dict(declared) if isinstance(declared, dict) else declared
    got = {k: getattr(measured, k) for k in ("bytes_c2s", "bytes_s2c", "messages", "rounds")}
    want = {k: want[k] + (refills[k] if k != "rounds" else 0) for k in got}
    assert got == want


# -- every kind, both directions, declared == measured ----------------------------------------

G = _prg("inputs")
N, BITS = 1500, 13
R = G.bits(N)
M0, M1 = G.ring((N, 2), BITS), G.ring((N, 2), BITS)
CORR = G.ring(N, 64)
TABLE, X = G.ring((N, 16), 2), G.below(16, N)
BIG = iknp.CHUNK + 77  # two chunks, ~78 TOY iterations

# name: (sender op, receiver op, declared cost of the op on the pool)
KINDS = {
    "cot": (lambda p: p.cot_send(N), lambda p: p.cot_recv(R), lambda o: o.cost("cot", N)),
    "cot_random_big": (
        lambda p: p.cot_send(BIG, random_choices=True),
        lambda p: p.cot_recv_random(BIG),
        lambda o: o.cost("cot", BIG, random_choices=True),
    ),
    "rot": (
        lambda p: p.rot_send(N, BITS, 2),
        lambda p: p.rot_recv(R, BITS, 2),
        lambda o: o.cost("rot", N),
    ),
    "rot_random": (
        lambda p: p.rot_send(N, BITS, random_choices=True),
        lambda p: p.rot_recv_random(N, BITS),
        lambda o: o.cost("rot", N, random_choices=True),
    ),
    "ot": (
        lambda p: p.ot_send(M0, M1, BITS),
        lambda p: p.ot_recv(R, BITS, 2),
        lambda o: o.cost("ot", N, BITS, 2),
    ),
    "acot": (
        lambda p: p.acot_send(CORR, 64),
        lambda p: p.acot_recv(R, 64),
        lambda o: o.cost("acot", N, 64),
    ),
    "kkot": (
        lambda p: p.kkot_send(TABLE, 2),
        lambda p: p.kkot_recv(X, 16, 2),
        lambda o: o.cost("kkot", N, 2, n_choices=16),
    ),
}


def _verify(kind: str, s, r, delta) -> None:
    if kind == "cot":
        np.testing.assert_array_equal(r, s ^ (R[:, None].astype(np.uint64) * delta))
    elif kind == "cot_random_big":
        rr, t = r
        np.testing.assert_array_equal(t, s ^ (rr[:, None].astype(np.uint64) * delta))
        assert 0.49 < rr.mean() < 0.51
    elif kind == "rot":
        np.testing.assert_array_equal(r, np.where(R[:, None], s[1], s[0]))
        assert not np.array_equal(s[0], s[1])
    elif kind == "rot_random":
        rr, mr = r
        np.testing.assert_array_equal(mr, np.where(rr, s[1], s[0]))
    elif kind == "ot":
        np.testing.assert_array_equal(r, np.where(R[:, None], M1, M0))
    elif kind == "acot":
        np.testing.assert_array_equal(r, s + R.astype(np.uint64) * CORR)
    else:
        np.testing.assert_array_equal(r, kkot.ideal(TABLE, X))


@pytest.mark.parametrize("sender_role", ROLES)
async def test_every_kind_both_directions_declared_equals_measured(sender_role):
    async def body(pool: OTPool):
        out = {}
        for kind, (snd, rcv, declare) in KINDS.items():
            snap, mark = pool.ch.stats.snapshot(), pool.mark()
            fork = pool.fork(kind)
            res = await (snd if pool.ch.role == sender_role else rcv)(fork)
            measured = pool.ch.stats.since(snap)
            out[kind] = res, measured, declare(pool), pool.refill_cost(mark)
        delta = pool.delta if pool.ch.role == sender_role else None
        return out, delta, pool.sender.stream, pool.receiver.stream

    c, s = await _run(body, body, seed="kinds" + sender_role)
    (snd, delta, *_), (rcv, *_) = (c, s) if sender_role == "client" else (s, c)
    refilled = 0
    for kind in KINDS:
        _verify(kind, snd[kind][0], rcv[kind][0], delta)
        for res in (snd[kind], rcv[kind]):
            _, measured, declared, refills = res
            _check(measured, declared.directed(sender_role), refills)
            refilled += refills["messages"]
    assert refilled > 2 * 70  # the big draw ran through many Ferret iterations
    # Every row made was handed out: nothing kept (the other direction keeps its primed rows).
    snd_side, rcv_side = (c, s) if sender_role == "client" else (s, c)
    st_s, st_r = snd_side[2], rcv_side[3]
    assert st_s.buffered == st_r.buffered == 0
    assert st_s.made == st_s.allocated == st_r.made


async def test_small_draw_costs_the_announcement_only():
    """After the setup (the ``pre`` iteration made), a small draw sends 18 bytes, 1 flight."""

    async def body(pool: OTPool):
        snap = pool.ch.stats.snapshot()
        if pool.ch.role == "client":
            await pool.cot_send(100, random_choices=True)
        else:
            await pool.cot_recv_random(100)
        return pool.ch.stats.since(snap)

    c, s = await _run(body, body, seed="small")
    assert c == s
    assert (c.bytes_c2s, c.bytes_s2c, c.messages, c.rounds) == (bin_size(16), 0, 1, 1)
    assert silent.draw_cost(100, random_choices=True) == Cost(bin_size(16), 0, 1, 1)


async def test_chosen_message_ot_takes_three_flights():
    async def body(pool: OTPool):
        snap = pool.ch.stats.snapshot()
        if pool.ch.role == "server":
            await pool.ot_send(M0, M1, BITS)
        else:
            await pool.ot_recv(R, BITS, 2)
        return pool.ch.stats.since(snap)

    c, _ = await _run(body, body, seed="flights")
    assert c.rounds == 3  # announcement (S → R), d (R → S), y (S → R)


# -- concurrency: the two sides schedule their forks differently --------------------------------

SIZES = [1, 700, 5000, 3, 20_000, 64, 129, 4096, 3369, 11]


def _fork_ops(i: int, n: int):
    """Fork i's op: (client's coroutine fn, server's) — alternating directions and kinds."""
    g = _prg(f"fork{i}")
    r = g.bits(n)
    m0, m1 = g.ring(n, 9), g.ring(n, 9)
    sender = ROLES[i % 2]
    kind = ["cot", "cot_random", "ot", "acot"][i % 4]
    if kind == "cot":
        ops = (lambda p: p.cot_send(n), lambda p: p.cot_recv(r))
    elif kind == "cot_random":
        ops = (lambda p: p.cot_send(n, random_choices=True), lambda p: p.cot_recv_random(n))
    elif kind == "ot":
        ops = (lambda p: p.ot_send(m0, m1, 9), lambda p: p.ot_recv(r, 9))
    else:
        ops = (lambda p: p.acot_send(m0, 9), lambda p: p.acot_recv(r, 9))
    snd, rcv = ops
    return (snd, rcv) if sender == "client" else (rcv, snd), kind, sender, r, m0, m1


def _verify_fork(i: int, n: int, c_out, s_out, deltas) -> np.ndarray:
    """Check fork i's outputs; return the sender's q (or None) to test uniqueness."""
    _, kind, sender, r, m0, m1 = _fork_ops(i, n)
    snd, rcv = (c_out, s_out) if sender == "client" else (s_out, c_out)
    delta = deltas[sender]
    if kind == "cot":
        np.testing.assert_array_equal(rcv, snd ^ (r[:, None].astype(np.uint64) * delta))
        return snd
    if kind == "cot_random":
        rr, t = rcv
        np.testing.assert_array_equal(t, snd ^ (rr[:, None].astype(np.uint64) * delta))
        return snd
    if kind == "ot":
        np.testing.assert_array_equal(rcv, np.where(r, m1, m0))
    else:
        np.testing.assert_array_equal(rcv, (snd + r.astype(np.uint64) * m0) & np.uint64(511))
    return None


@pytest.mark.parametrize("concurrent_side", ROLES)
async def test_forks_scheduled_differently_on_the_two_sides(concurrent_side):
    """One party runs its forks all at once (in order), the other one by one in reverse order:
    allocations reach the second party in an order unrelated to its own; every fork still
    gets exactly the COTs its peer drew for it, and nothing stays buffered."""
    ops = [_fork_ops(i, n)[0] for i, n in enumerate(SIZES)]

    async def body(pool: OTPool):
        me = 0 if pool.ch.role == "client" else 1
        forks = [pool.fork(f"f{i}") for i in range(len(SIZES))]
        if pool.ch.role == concurrent_side:
            out = await asyncio.gather(*(op[me](f) for op, f in zip(ops, forks, strict=True)))
        else:
            out = [None] * len(SIZES)
            for i in reversed(range(len(SIZES))):
                out[i] = await ops[i][me](forks[i])
        streams = (pool.sender.stream, pool.receiver.stream)
        return list(out), pool.delta, [(st.buffered, st.made) for st in streams]

    (c_out, dc, c_st), (s_out, ds, s_st) = await _run(body, body, seed="sched" + concurrent_side)
    deltas = {"client": dc, "server": ds}
    qs = [_verify_fork(i, n, c_out[i], s_out[i], deltas) for i, n in enumerate(SIZES)]
    for sender in ROLES:  # no COT handed out to two forks
        q = np.concatenate(
            [q for i, q in enumerate(qs) if q is not None and i % 2 == (sender != "client")]
        )
        assert len(np.unique(q, axis=0)) == q.shape[0]
    assert all(b == 0 for b, _ in c_st + s_st)
    assert c_st[0][1] == s_st[1][1] and c_st[1][1] == s_st[0][1]  # both ends made the same rows


async def test_rows_are_freed_as_they_are_taken():
    """Hundreds of draws across many Ferret iterations: nothing accumulates in the streams."""

    async def body(pool: OTPool):
        peak = 0
        for i in range(120):
            f = pool.fork(f"d{i}")
            if pool.ch.role == "client":
                await asyncio.gather(f.fork("a").cot_send(997), f.fork("b").cot_recv(R[:1000]))
            else:
                await asyncio.gather(f.fork("a").cot_recv(R[:997]), f.fork("b").cot_send(1000))
            peak = max(peak, pool.sender.stream.buffered, pool.receiver.stream.buffered)
        return peak, pool.sender.stream.inst.iterations

    (pc, it), (ps, _) = await _run(body, body, seed="freed")
    assert it > 30 and pc == ps == 0


# -- errors ------------------------------------------------------------------------------------


async def test_allocation_of_another_size_raises():
    async def client(pool: OTPool):
        await pool.fork("x").cot_send(100, random_choices=True)

    async def server(pool: OTPool):
        await pool.fork("x").cot_recv_random(99)

    with pytest.raises(PartyError, match=r"'x'.*drew 100 COTs, this receiver expects 99"):
        await _run(client, server, seed="desync")


async def test_taking_rows_twice_raises():
    async def client(pool: OTPool):
        await pool.cot_send(50, random_choices=True)
        return None

    async def server(pool: OTPool):
        await pool.cot_recv_random(50)
        with pytest.raises(ProtocolError, match="handed out already"):
            await pool.receiver.stream.take(pool.ch, 10, 5)
        return True

    assert (await _run(client, server, seed="twice"))[1]


async def test_a_d_of_the_wrong_length_raises():
    """A receiver's d (r ⊕ c) of the wrong length fails the sender's draw, naming it."""

    async def client(pool: OTPool):  # the COT sender, chosen choices
        await pool.fork("x").cot_send(100)

    async def server(pool: OTPool):  # a hostile receiver: 1 byte of d for 100 OTs
        f = pool.fork("x")
        await f.receiver._announced(f.ch, 100)
        await f.ch.send(b"\0", tag=ferret.TAG_D)

    with pytest.raises(PartyError, match=r"silent OT d: expected 13 bytes for 100 OTs"):
        await _run(client, server, seed="bad-d")


def test_views_are_fork_specific():
    with pytest.raises(ValueError):
        SilentSender(Stream(_dealer_instances("v")["client"][1], None))


# -- the real setup, the registry and the default ----------------------------------------------


async def test_real_setup_cost_and_party_sources():
    async def party(ch):
        pool = await OTPool.setup(ch, _prg("setup" + ch.role), source="silent")
        setup = ch.stats.total("setup").as_dict()
        r = _prg("r" + ch.role).bits(4000)
        if ch.role == "client":
            q = await pool.fork("a").cot_send(4000)
            t = await pool.fork("b").cot_recv(r)
        else:
            t = await pool.fork("a").cot_recv(r)
            q = await pool.fork("b").cot_send(4000)
        p_iknp = await Party.setup(ch.fork("other"), _prg("p" + ch.role), ot_source="iknp")
        return pool.delta, q, r, t, setup, pool.source, p_iknp.ot.source

    (dc, qc, rc, tc, setup, src, src2), (ds, qs, rs, ts, _, _, _) = await run_local(
        party, party, timeout=120
    )
    np.testing.assert_array_equal(ts, qc ^ (rs[:, None] * dc))
    np.testing.assert_array_equal(tc, qs ^ (rc[:, None] * ds))
    assert int(dc[0]) & 1 and int(ds[0]) & 1
    want = OTPool.setup_cost("silent")
    assert {k: setup[k] for k in ("bytes_c2s", "bytes_s2c", "rounds")} == {
        k: want[k] for k in ("bytes_c2s", "bytes_s2c", "rounds")
    }
    assert setup["msgs_c2s"] + setup["msgs_s2c"] == want["messages"]
    assert (src, src2) == ("silent", "iknp")
    assert DEFAULT_SOURCE in ("iknp", "silent")


# -- pinned transcript ---------------------------------------------------------------------------

# Update deliberately when the wire changes (announcement, allocation, GGM, derived OTs).
GOLDEN = "6a0e24fe3a8b4d624f2db744efdc9748894e80d833ced565c2d80b7e370b21b8"


async def test_transcript_digest_is_pinned():
    """SHA-256 of every message each party sends (grouped by path) in a deterministic run:
    pins the announcement format, the allocation and the GGM traffic on the stream paths."""
    events: list[tuple[str, str, str, bytes]] = []

    def recorder(event, payload):
        mine = (event["party"] == "client") == (event["dir"] == "c2s")
        if mine:
            events.append((event["party"], event["path"], event["tag"], payload))

    async def body(pool: OTPool):
        if pool.ch.role == "client":
            await pool.fork("a").ot_send(M0, M1, BITS)
            await pool.fork("b").cot_recv(R)
            await pool.fork("c").kkot_send(TABLE, 2)
        else:
            await pool.fork("a").ot_recv(R, BITS, 2)
            await pool.fork("b").cot_send(N)
            await pool.fork("c").kkot_recv(X, 16, 2)

    await _run(body, body, seed="golden", recorder=recorder)
    h = hashlib.sha256()
    for key in sorted({e[:2] for e in events}):
        for e in events:
            if e[:2] == key:
                h.update(f"{e[0]}\0{e[1]}\0{e[2]}\0{len(e[3])}\0".encode() + e[3])
    assert h.hexdigest() == GOLDEN

"""Ferret silent OT: the COT correlation on every output, iterations bootstrapped from the
reserve, both directions, chunking, declared costs, the IKNP-bootstrapped setup, forks, and
OTs derived from a Ferret source."""

import numpy as np
import pytest

from secmoe.crypto.prg import PRG
from secmoe.net import run_local
from secmoe.protocols.ot import ferret, iknp, kkot
from secmoe.protocols.ot.base import Cost
from secmoe.protocols.ot.ferret import TOY, BaseSource, FerretReceiver, FerretSender

ROLES = ["client", "server"]
_ONE = np.uint64(1)


def _prg(tag: str) -> PRG:
    return PRG(tag.encode().ljust(16, b"\0")[:16])


def trusted_dealer_sources(delta: np.ndarray, seed: str) -> tuple[BaseSource, BaseSource]:
    """TEST ONLY: base COTs from a trusted local dealer (no communication, declared free).

    Call i of either side gets its half of the i-th dealt batch, in whichever order the two
    parties ask. Real sessions bootstrap from IKNP (:meth:`FerretSender.setup`).
    """
    g = _prg(seed)
    dealt: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    calls = {"s": 0, "r": 0}

    def deal(side: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i, calls[side] = calls[side], calls[side] + 1
        while len(dealt) <= i:
            dealt.append(ferret.ideal(delta, n, g))
        return dealt[i]

    async def fetch_s(ch, n):
        return deal("s", n)[0]

    async def fetch_r(ch, n):
        _, r, t = deal("r", n)
        return r, t

    def free(n: int) -> Cost:
        return Cost(0, 0, 0, 0)

    return BaseSource(fetch_s, free), BaseSource(fetch_r, free)


def dealer_pair(params=TOY, seed="dealer") -> tuple[FerretSender, FerretReceiver, np.ndarray]:
    """TEST ONLY: a Ferret instance pair whose first reserve comes from the trusted dealer."""
    delta = _prg(seed + "/delta").uint64(2)
    delta[0] |= _ONE
    src_s, src_r = trusted_dealer_sources(delta, seed)
    return (
        FerretSender(delta, params, src_s, _prg(seed + "/seeds"), "test"),
        FerretReceiver(params, src_r, "test"),
        delta,
    )


async def _run(sender_role, sender_fn, receiver_fn, timeout=60):
    """Run ``sender_fn(ch)`` as ``sender_role`` and ``receiver_fn(ch)`` as the other party;
    returns (sender result, receiver result, what the sender measured)."""

    async def snd(ch):
        snap = ch.stats.snapshot()
        out = await sender_fn(ch)
        return out, ch.stats.since(snap)

    if sender_role == "client":
        (s, d), r = await run_local(snd, receiver_fn, timeout=timeout)
    else:
        r, (s, d) = await run_local(receiver_fn, snd, timeout=timeout)
    return s, r, d


def _check_cost(measured, declared: Cost, sender_role: str) -> None:
    want = declared.directed(sender_role)
    assert {k: getattr(measured, k) for k in want} == want


def _check_cot(delta, q, r, t):
    np.testing.assert_array_equal(t, q ^ (r[:, None].astype(np.uint64) * delta))
    assert not (q[:, 0] & _ONE).any()  # the bit-0 convention
    np.testing.assert_array_equal((t[:, 0] & _ONE).astype(bool), r)


SIZES = [1, 1000, 3369, 10_000, 3 * TOY.main.usable + 1]  # across iterations, uneven


@pytest.mark.parametrize("sender_role", ROLES)
async def test_correlation_on_every_output_over_many_iterations(sender_role):
    fs, fr, delta = dealer_pair(seed="many" + sender_role)
    costs = []

    async def sender(ch):
        out = []
        for n in SIZES:
            declared = fs.cost(n, random_choices=True)
            snap = ch.stats.snapshot()
            out.append(await fs.extend(ch, n))
            costs.append((ch.stats.since(snap), declared))
        return out

    async def receiver(ch):
        return [await fr.extend(ch, n) for n in SIZES]

    qs, rts, _ = await _run(sender_role, sender, receiver)
    for q, (r, t) in zip(qs, rts, strict=True):
        _check_cot(delta, q, r, t)
    for measured, declared in costs:
        _check_cost(measured, declared, sender_role)
    q_all = np.concatenate(qs)
    assert len(np.unique(q_all, axis=0)) == q_all.shape[0]  # no COT is handed out twice
    r_all = np.concatenate([r for r, _ in rts])
    assert 0.45 < r_all.mean() < 0.55
    assert fs.iterations == fr.iterations >= 5  # the bootstrap, then iterations from reserves
    assert fs.position == fr.position == sum(SIZES)


async def test_pieces_are_views_that_later_batches_leave_alone():
    """``pieces`` hands out views of the batches' rows (no copy): held until many iterations
    later, every one still holds its COTs."""
    fs, fr, delta = dealer_pair(seed="pieces")
    n = 4 * TOY.main.usable + 7

    async def sender(ch):
        return [q async for q in fs.pieces(ch, n)]

    async def receiver(ch):
        return [t async for t in fr.pieces(ch, n)]

    qs, ts, _ = await _run("client", sender, receiver)
    assert [q.shape for q in qs] == [t.shape for t in ts] and len(qs) >= 4
    assert all(q.base is not None for q in qs)  # views, not copies
    q, t = np.concatenate(qs), np.concatenate(ts)
    _check_cot(delta, q, (t[:, 0] & _ONE).astype(bool), t)
    assert len(np.unique(q, axis=0)) == n
    assert fs.position == fr.position == n and fs.iterations >= 4


@pytest.mark.parametrize("sender_role", ROLES)
async def test_chosen_choices_and_alignment(sender_role):
    fs, fr, delta = dealer_pair(seed="chosen" + sender_role)
    n, align = 3 * 2000, 3
    c = _prg("c").bits(n)
    declared = fs.cost(n, align)

    async def sender(ch):
        return [(j, q) async for j, q in fs.send_iter(ch, n, align=align)]

    async def receiver(ch):
        return [(j, t) async for j, t in fr.recv_iter(ch, c, align=align)]

    qs, ts, measured = await _run(sender_role, sender, receiver)
    assert [j for j, _ in qs] == [j for j, _ in ts]
    q = np.concatenate([x for _, x in qs])
    t = np.concatenate([x for _, x in ts])
    np.testing.assert_array_equal(t, q ^ (c[:, None].astype(np.uint64) * delta))
    _check_cost(measured, declared, sender_role)
    assert measured.bytes_c2s + measured.bytes_s2c < 2 * n  # ~1 bit per OT, plus MPCOTs


async def test_more_than_one_chunk():
    fs, fr, delta = dealer_pair(seed="chunks")
    n = iknp.CHUNK + 77
    declared = fs.cost(n, random_choices=True)

    async def sender(ch):
        return await fs.extend(ch, n)

    async def receiver(ch):
        return await fr.extend(ch, n)

    q, (r, t), measured = await _run("client", sender, receiver)
    _check_cot(delta, q, r, t)
    _check_cost(measured, declared, "client")
    assert len(fs.chunks(n)) == 2 and fs.iterations > 70


@pytest.mark.parametrize("sender_role", ROLES)
async def test_iknp_setup_b13_then_main_batches(sender_role):
    """The real bootstrap (base OTs, IKNP, the first ``pre`` batch) of the 128-bit set; then
    COTs past the ``pre`` iteration, from the first main batches (produced lazily)."""
    params = ferret.B13

    async def sender(ch):
        inst = await FerretSender.setup(ch, _prg("s" + sender_role), "silent", params)
        setup = ch.stats.total()
        return inst, setup, await inst.extend(ch, 400_000)

    async def receiver(ch):
        inst = await FerretReceiver.setup(ch, _prg("r" + sender_role), "silent", params)
        return inst, await inst.extend(ch, 400_000)

    (fs, setup, q), (fr, (r, t)), _ = await _run(sender_role, sender, receiver)
    assert int(fs.delta[0]) & 1
    _check_cot(fs.delta, q, r, t)
    _check_cost(setup, ferret.setup_cost(params), sender_role)
    assert fs.iterations == fr.iterations == 2


async def test_forks_bootstrap_from_forked_iknp():
    async def sender(ch):
        inst = await FerretSender.setup(ch, _prg("fs"), "silent", ferret.B10)
        sub = inst.fork("expert3")
        declared = sub.cost(1000, random_choices=True)
        snap = ch.stats.snapshot()
        q = await sub.extend(ch, 1000)
        return inst, sub, q, ch.stats.since(snap), declared, await inst.extend(ch, 1000)

    async def receiver(ch):
        inst = await FerretReceiver.setup(ch, _prg("fr"), "silent", ferret.B10)
        sub = inst.fork("expert3")
        return await sub.extend(ch, 1000), await inst.extend(ch, 1000)

    (fs, sub, q, measured, declared, q0), ((r, t), (r0, t0)), _ = await _run(
        "server", sender, receiver
    )
    _check_cot(fs.delta, q, r, t)
    _check_cot(fs.delta, q0, r0, t0)
    np.testing.assert_array_equal(sub.delta, fs.delta)
    assert not np.array_equal(q, q0) and sub.domain != fs.domain
    _check_cost(measured, declared, "server")
    assert declared.receiver_bytes > 16 * ferret.B10.pre.reserve  # the fork's IKNP bootstrap


@pytest.mark.parametrize("sender_role", ROLES)
async def test_derived_chosen_message_and_1_of_n_ots(sender_role):
    """OTs derived by hashing (IKNP's Steps 4–5, KK-style 1-of-N) run on a Ferret source."""
    fs, fr, _ = dealer_pair(seed="derived" + sender_role)
    n, bits = 700, 8
    g = _prg("msgs")
    m0, m1 = g.uint64(n) & np.uint64(255), g.uint64(n) & np.uint64(255)
    c = g.bits(n)
    big_n, kbits = 16, 2
    table = g.uint64((n, big_n)) & np.uint64(3)
    x = g.below(big_n, n).astype(np.int64)
    declared = iknp.cost_ot(fs, n, bits)

    async def sender(ch):
        await iknp.ot_send(ch, fs, m0, m1, bits)
        snap = ch.stats.snapshot()
        declared_kk = kkot.cost(fs, n, big_n, kbits)
        await kkot.send(ch, fs, table, kbits)
        return ch.stats.since(snap), declared_kk

    async def receiver(ch):
        got = await iknp.ot_recv(ch, fr, c, bits)
        return got, await kkot.recv(ch, fr, x, big_n, kbits)

    (kk_measured, kk_declared), (got, got_kk), measured = await _run(sender_role, sender, receiver)
    np.testing.assert_array_equal(got, np.where(c, m1, m0))
    np.testing.assert_array_equal(got_kk, kkot.ideal(table, x))
    _check_cost(kk_measured, kk_declared, sender_role)
    total = declared + kk_declared
    assert measured.bytes_c2s + measured.bytes_s2c == total.sender_bytes + total.receiver_bytes


@pytest.mark.parametrize("sender_role", ROLES)
async def test_derived_random_and_additive_ots(sender_role):
    fs, fr, _ = dealer_pair(seed="rot" + sender_role)
    n, bits = 900, 16
    corr = _prg("corr").uint64(n) & np.uint64(0xFFFF)
    declared = iknp.cost_rot(fs, n, random_choices=True)

    async def sender(ch):
        m0, m1 = await iknp.rot_send(ch, fs, n, bits, random_choices=True)
        snap = ch.stats.snapshot()
        declared_ac = iknp.cost_acot(fs, n, bits)
        x = await iknp.acot_send(ch, fs, corr, bits)
        return m0, m1, x, ch.stats.since(snap), declared_ac

    async def receiver(ch):
        r, mr = await iknp.rot_recv_random(ch, fr, n, bits)
        c = _prg("acot-c").bits(n)
        return r, mr, c, await iknp.acot_recv(ch, fr, c, bits)

    (m0, m1, x, ac_measured, ac_declared), (r, mr, c, y), measured = await _run(
        sender_role, sender, receiver
    )
    np.testing.assert_array_equal(mr, np.where(r, m1, m0))
    assert not np.array_equal(m0, m1)
    np.testing.assert_array_equal(y, (x + c * corr) & np.uint64(0xFFFF))
    _check_cost(ac_measured, ac_declared, sender_role)
    assert measured.bytes_c2s + measured.bytes_s2c == (
        declared.sender_bytes
        + declared.receiver_bytes
        + ac_declared.sender_bytes
        + ac_declared.receiver_bytes
    )


def test_parameter_sets():
    b13 = ferret.B13  # emp-ot's current ferret_b13: (t, logk, h) = (1900, 19, 13)
    assert (b13.main.n, b13.main.k, b13.main.t, b13.main.h) == (15_564_800, 1 << 19, 1_900, 13)
    assert b13.main.reserve == 548_988 and b13.main.usable == 15_015_812
    assert b13.pre == ferret.B10.main and b13.pre.reserve == 74_036  # bootstrap through b10
    for p in ferret.PARAMS.values():
        assert p.pre.n >= p.main.reserve and p.main.usable > 0
    assert not TOY.secure and not ferret.B13_2020.secure
    with pytest.raises(ValueError):
        ferret.LpnParams(1000, 100, 10, 7)  # n != t·2^h
    with pytest.raises(ValueError):  # pre too small to refill main's reserve
        ferret.FerretParams("bad", ferret.B13.main, ferret.LpnParams(2048, 100, 8, 8))
    # Bytes per OT of a main iteration (MPCOT messages only): the b13 set's 0.055 B.
    per_ot = b13.main.mpcot_cost().sender_bytes / b13.main.usable
    assert 0.05 < per_ot < 0.06


def test_sender_needs_lsb_of_delta_set():
    src_s, _ = trusted_dealer_sources(np.array([2, 3], np.uint64), "x")
    with pytest.raises(ValueError, match="lsb"):
        FerretSender(np.array([2, 3], np.uint64), TOY, src_s, _prg("x"), "x")


def test_ideal():
    delta = np.array([5, 9], np.uint64)
    q, r, t = ferret.ideal(delta, 100, _prg("ideal"))
    _check_cot(delta, q, r, t)


# Golden digest of a deterministic run (dealer base COTs, fixed seeds): pins the GGM PRG, the
# tree layout, the hash tweaks and the LPN matrix. Update deliberately when any of them change.
GOLDEN = "e065fdfbbcc8e874111a1353c71715a5901a168d332fb38b8e9eca790e885615"


async def test_golden_digest_of_a_deterministic_run():
    import hashlib

    fs, fr, _ = dealer_pair(seed="golden")
    q, (r, t), _ = await _run(
        "client", lambda ch: fs.extend(ch, 5000), lambda ch: fr.extend(ch, 5000)
    )
    digest = hashlib.sha256(q.tobytes() + t.tobytes() + r.tobytes()).hexdigest()
    assert digest == GOLDEN

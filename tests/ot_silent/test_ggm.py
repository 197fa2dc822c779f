"""GGM-tree SPCOT/MPCOT: the punctured trees, the correlation, the wire and its declared cost."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secmoe.crypto.prg import PRG
from secmoe.net import ProtocolError, run_local
from secmoe.protocols.ot import ggm

DOMAIN = 12345


def _prg(tag: str) -> PRG:
    return PRG(tag.encode().ljust(16, b"\0")[:16])


def local_cots(n: int, g: PRG) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TEST ONLY (trusted, local): n random COTs (Δ with lsb 1, q, r, t = q ⊕ r·Δ)."""
    delta = g.uint64(2)
    delta[0] |= np.uint64(1)
    q, r = g.uint64((n, 2)), g.bits(n)
    return delta, q, r, q ^ (r[:, None] * delta)


def _prp(key: bytes, x: np.ndarray) -> np.ndarray:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return np.frombuffer(enc.update(x.astype("<u8").tobytes()), "<u8").astype(np.uint64)


def naive_leaves(seed: np.ndarray, h: int) -> np.ndarray:
    """One tree, node by node: children (π_0(x) ⊕ x, π_1(x) ⊕ x); leaf index bit ℓ = branch ℓ."""
    level = {0: seed}
    for ell in range(h):
        level = {
            p | (b << ell): _prp(ggm.GGM_KEYS[b], x) ^ x for p, x in level.items() for b in (0, 1)
        }
    return np.stack([level[j] for j in range(1 << h)])


def _batched(monkeypatch: pytest.MonkeyPatch, leaves: int) -> None:
    monkeypatch.setattr(ggm, "LEAVES_PER_BATCH", leaves)


@pytest.mark.parametrize(("t", "h", "batch"), [(1, 1, 1 << 19), (3, 4, 1 << 19), (7, 5, 64)])
def test_sender_tree_matches_naive_ggm(monkeypatch, t, h, batch):
    _batched(monkeypatch, batch)
    seeds = _prg(f"seeds{t}{h}").uint64((t, 2))
    for i0, i1 in ggm.batches(t, h):
        leaves, sums = ggm.step_sender_expand(seeds[i0:i1], h, clear_lsb=False)
        for i in range(i1 - i0):
            want = naive_leaves(seeds[i0 + i], h)
            np.testing.assert_array_equal(leaves[i :: i1 - i0], want)
            # K_b^{h−1}: the XOR of the leaves whose last branch is b.
            top = (np.arange(1 << h) >> (h - 1)) & 1
            for b in (0, 1):
                k = np.bitwise_xor.reduce(want[top == b], axis=0)
                np.testing.assert_array_equal(sums[h - 1, b, i], k)


@pytest.mark.parametrize(("t", "h", "batch"), [(1, 1, 1 << 19), (5, 3, 1 << 19), (9, 6, 192)])
def test_steps_give_mpcot_correlation(monkeypatch, t, h, batch):
    # batch = 192 leaves: batches of 3 trees, the last one smaller (9 = 3 + 3 + 3 at h = 6).
    _batched(monkeypatch, batch)
    g = _prg(f"steps{t}{h}{batch}")
    delta, q, r, tb = local_cots(t * h, g)
    seeds = g.uint64((t, 2))
    qq, rr, tt = q.reshape(h, t, 2), r.reshape(h, t), tb.reshape(h, t, 2)
    v, w = np.empty((t << h, 2), np.uint64), np.empty((t << h, 2), np.uint64)
    alpha = np.empty(t, np.int64)
    for i0, i1 in ggm.batches(t, h):
        tw = ggm.tweaks(7, t, h, i0, i1)
        leaves, sums = ggm.step_sender_expand(seeds[i0:i1], h)
        v[i0 << h : i1 << h] = leaves
        msg = ggm.step_sender_message(sums, delta, qq[:, i0:i1], tw, DOMAIN)
        assert len(msg) == ggm.message_bytes(i1 - i0, h)
        ksib, c = ggm.step_receiver_keys(msg, rr[:, i0:i1], tt[:, i0:i1], tw, DOMAIN)
        w[i0 << h : i1 << h], alpha[i0:i1] = ggm.step_receiver_expand(ksib, rr[:, i0:i1], c)
    _check_mpcot(delta, v, w, alpha, r.reshape(h, t), t, h)


def _check_mpcot(delta, v, w, alpha, r, t, h):
    e = np.zeros(t << h, bool)
    e[ggm.leaf_rows(alpha, h)] = True
    assert e.sum() == t  # one noise position per tree
    np.testing.assert_array_equal(w, v ^ (e[:, None] * delta))
    assert not (v[:, 0] & np.uint64(1)).any()  # bit 0 clear on the sender's side…
    np.testing.assert_array_equal((w[:, 0] & np.uint64(1)).astype(bool), e)  # …so lsb(w) = e
    # α's bit ℓ is the complement of the receiver's base choice r_{ℓ,i}.
    bits = (alpha[None, :] >> np.arange(h)[:, None]) & 1
    np.testing.assert_array_equal(bits.astype(bool), ~r)


def test_leaf_rows_are_a_partition_into_t_buckets(monkeypatch):
    _batched(monkeypatch, 64)
    t, h = 11, 4  # batches of 4 trees: 4 + 4 + 3
    rows = np.stack([ggm.leaf_rows(np.full(t, j), h) for j in range(1 << h)])
    assert sorted(rows.reshape(-1).tolist()) == list(range(t << h))


@pytest.mark.parametrize("sender_role", ["client", "server"])
async def test_two_party_mpcot_and_declared_cost(monkeypatch, sender_role):
    _batched(monkeypatch, 256)
    t, h = 10, 5  # batches of 8 and 2 trees: two messages
    g = _prg("2pc" + sender_role)
    delta, q, r, tb = local_cots(t * h, g)

    async def sender(ch):
        snap = ch.stats.snapshot()
        v = await ggm.send(ch, delta, q, t, h, _prg("seeds"), 100, DOMAIN)
        return v, ch.stats.since(snap)

    async def receiver(ch):
        return await ggm.recv(ch, r, tb, t, h, 100, DOMAIN)

    if sender_role == "client":
        (v, cost), (w, alpha) = await run_local(sender, receiver, timeout=30)
    else:
        (w, alpha), (v, cost) = await run_local(receiver, sender, timeout=30)
    _check_mpcot(delta, v, w, alpha, r.reshape(h, t), t, h)
    want = ggm.cost(t, h).directed(sender_role)
    assert {k: getattr(cost, k) for k in want} == want
    assert want["messages"] == 2 and want["rounds"] == 1


async def test_receiver_rejects_a_short_message():
    g = _prg("short")
    _, _, r, tb = local_cots(6, g)

    async def sender(ch):
        await ch.send(b"\0" * (ggm.message_bytes(2, 3) - 16), tag=ggm.TAG_M)

    async def receiver(ch):
        return await ggm.recv(ch, r, tb, 2, 3, 0, DOMAIN)

    with pytest.raises(Exception) as info:
        await run_local(sender, receiver, timeout=10)
    assert isinstance(info.value.__cause__, ProtocolError)


def test_ideal_has_the_same_shape_of_correlation():
    g = _prg("ideal")
    delta, *_ = local_cots(1, g)
    v, w, alpha = ggm.ideal(delta, 6, 4, g)
    e = np.zeros(6 << 4, bool)
    e[ggm.leaf_rows(alpha, 4)] = True
    np.testing.assert_array_equal(w, v ^ (e[:, None] * delta))

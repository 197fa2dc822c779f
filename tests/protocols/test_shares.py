import numpy as np
import pytest

from secmoe.crypto.prg import PRG
from secmoe.crypto.ring import Ring
from secmoe.net import PartyError, run_local
from secmoe.protocols.party import Party
from secmoe.protocols.shares import (
    add_public,
    mul_public,
    reconstruct,
    reveal,
    share,
    share_cost,
)

RINGS = [Ring(64, 18), Ring(37, 12), Ring(8, 0)]


def parties(fn, seed=b"\x01" * 16):
    async def client(ch):
        return await fn(Party(ch, PRG(seed)))

    async def server(ch):
        return await fn(Party(ch, PRG(bytes(reversed(seed)))))

    return client, server


@pytest.mark.parametrize("ring", RINGS)
@pytest.mark.parametrize("owner", ["client", "server"])
async def test_share_then_reveal_roundtrip(ring, owner):
    x = ring.from_signed(np.array([0, 1, -1, 2 ** (ring.bits - 2), -(2 ** (ring.bits - 1)), 7]))

    async def body(p):
        p = p.with_ring(ring)
        s = await share(p, x if p.role == owner else None, owner)
        opened = await reveal(p, s, to="both")
        return s, opened

    (cs, copen), (ss, sopen) = await run_local(*parties(body), timeout=5)
    np.testing.assert_array_equal(reconstruct(cs, ss, ring), x)
    np.testing.assert_array_equal(copen, x)
    np.testing.assert_array_equal(sopen, x)


async def test_share_sends_a_seed_not_the_tensor():
    x = np.arange(10_000, dtype=np.uint64)

    async def body(p):
        await share(p, x if p.role == "client" else None, "client")
        return p.ch.stats.total()

    ctot, _ = await run_local(*parties(body), timeout=5)
    assert ctot.bytes_c2s == share_cost(x.shape)["bytes"] < 40
    assert ctot.rounds == share_cost(x.shape)["rounds"]


async def test_shares_look_uniform_to_the_other_party():
    x = np.zeros(4096, dtype=np.uint64)  # the worst case: a constant secret

    async def body(p):
        return await share(p, x if p.role == "client" else None, "client")

    _, s_share = await run_local(*parties(body), timeout=5)
    bits = np.unpackbits(s_share.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01  # 262144 bits: 0.01 is > 10 standard deviations


async def test_reveal_to_one_party_only():
    async def body(p):
        s = await share(p, np.array([5, 6], np.uint64) if p.role == "server" else None, "server")
        return await reveal(p, s, to="client")

    c, s = await run_local(*parties(body), timeout=5)
    np.testing.assert_array_equal(c, [5, 6])
    assert s is None


async def test_local_operations():
    ring = Ring(64, 18)
    a, b = ring.encode(np.array([1.5, -2.25])), ring.encode(np.array([0.5, 4.0]))

    async def body(p):
        sa = await share(p, a if p.role == "client" else None, "client")
        sb = await share(p, b if p.role == "server" else None, "server")
        total = add_public(p, ring.reduce(sa + sb), ring.encode(1.0))
        return await reveal(p, mul_public(ring, total, -3), to="both")

    c, _ = await run_local(*parties(body), timeout=5)
    np.testing.assert_allclose(ring.decode(c), (np.array([1.5, -2.25]) + [0.5, 4.0] + 1) * -3)


async def test_share_shape_mismatch_is_an_error():
    async def body(p):
        x = np.zeros(3, np.uint64) if p.role == "client" else None
        return await share(p, x, "client", shape=(4,))

    with pytest.raises(PartyError, match="shape mismatch"):
        await run_local(*parties(body), timeout=5)

import asyncio

import numpy as np
import pytest

from secmoe.net import (
    ChannelTimeout,
    NetError,
    PartyError,
    PeerAborted,
    PeerDisconnected,
    TagMismatch,
    memory_pair,
    run_local,
)
from secmoe.net.channel import HELD_OVERHEAD
from secmoe.net.codec import encode


async def test_send_recv_and_stats_equal_encoded_sizes():
    msgs = [np.arange(100, dtype=np.uint64), b"hello", {"k": [1, 2.5]}, np.ones(33, bool)]

    async def client(ch):
        for m in msgs:
            await ch.send(m, tag="m")
        return ch.stats.total()

    async def server(ch):
        got = [await ch.recv(tag="m") for _ in msgs]
        return got, ch.stats.total()

    ctot, (got, stot) = await run_local(client, server, timeout=5)
    np.testing.assert_array_equal(got[0], msgs[0])
    assert got[1:3] == msgs[1:3]
    assert ctot.bytes_c2s == stot.bytes_c2s == sum(len(encode(m)) for m in msgs)
    assert ctot.bytes_s2c == 0 and ctot.msgs_c2s == len(msgs)
    assert ctot == stot


async def test_rounds_count_direction_flips():
    # c→s, c→s (same flight), s→c, c→s: three flights.
    async def client(ch):
        await ch.send(1, tag="a")
        await ch.send(2, tag="b")
        await ch.recv(tag="c")
        await ch.send(3, tag="d")
        return ch.stats.depth

    async def server(ch):
        await ch.recv(tag="a")
        await ch.recv(tag="b")
        await ch.send(0, tag="c")
        await ch.recv(tag="d")
        return ch.stats.depth

    assert await run_local(client, server, timeout=5) == (3, 3)


async def test_concurrent_forks_keep_order_and_count_critical_path():
    n, k = 8, 5

    async def client(ch):
        async def one(i):
            sub = ch.fork(f"f{i}")
            out = []
            for j in range(k):
                await sub.send([i, j], tag=f"x{j}")
                out.append(await sub.recv(tag=f"y{j}"))
            return out

        res = await asyncio.gather(*(one(i) for i in reversed(range(n))))
        await ch.send("done", tag="end")
        return res, ch.stats

    async def server(ch):
        async def one(i):
            sub = ch.fork(f"f{i}")
            for j in range(k):
                a, b = await sub.recv(tag=f"x{j}")
                await asyncio.sleep(0.001 * ((i * 7 + j) % 3))  # shuffle the interleaving
                await sub.send(a * 100 + b, tag=f"y{j}")

        await asyncio.gather(*(one(i) for i in range(n)))
        assert await ch.recv(tag="end") == "done"
        return ch.stats

    (res, cst), sst = await run_local(client, server, timeout=10)
    assert res == [[i * 100 + j for j in range(k)] for i in reversed(range(n))]
    # each fork is 2k flights; the forks run side by side; then one more flight.
    assert cst.depth == sst.depth == 2 * k + 1
    paths = cst.by_path()
    assert set(paths) == {"", *(f"f{i}" for i in range(n))}
    assert all(paths[f"f{i}"].rounds == 2 * k for i in range(n))
    assert cst.summary() == sst.summary()


async def test_tag_mismatch_raises_at_once_naming_both_tags():
    async def client(ch):
        await ch.fork("mul").send(1, tag="mul/e")

    async def server(ch):
        await ch.fork("mul").recv(tag="mul/f")

    with pytest.raises(PartyError) as info:
        await run_local(client, server, timeout=5)
    err = info.value.__cause__
    assert isinstance(err, TagMismatch)
    assert "'mul/f'" in str(err) and "'mul/e'" in str(err) and "'mul'" in str(err)


async def test_phases_are_accounted_apart():
    async def client(ch):
        with ch.phase("setup"):
            await ch.send(b"x" * 100, tag="s")
        await ch.send(b"y" * 10, tag="o")
        return ch.stats.by_phase()

    async def server(ch):
        await ch.recv(tag="s")
        await ch.recv(tag="o")
        return ch.stats.by_phase()

    cph, sph = await run_local(client, server, timeout=5)
    assert cph == sph
    assert cph["setup"].bytes_c2s == len(encode(b"x" * 100))
    assert cph["online"].bytes_c2s == len(encode(b"y" * 10))


async def test_stalled_peer_times_out_with_a_clear_error():
    c, s = memory_pair(timeout=0.2)
    with pytest.raises(ChannelTimeout, match="server sent nothing"):
        await c.recv(tag="never")
    await c.close()
    await s.close()


@pytest.mark.parametrize(
    ("end", "seen", "own"),
    [
        ("close", "^the peer closed the connection$", "the channel is closed"),
        (
            "abort",
            "^the client failed: out of memory while encoding$",
            "this party aborted the session: out of memory while encoding",
        ),
    ],
)
async def test_disconnect_and_abort_wake_every_waiter(end, seen, own):
    c, s = memory_pair()
    waiters = [asyncio.ensure_future(s.fork(f"w{i}").recv(tag="x")) for i in range(3)]
    await asyncio.sleep(0)
    await (c.close() if end == "close" else c.abort("out of memory\nwhile encoding"))
    error = PeerAborted if end == "abort" else PeerDisconnected
    for w in waiters:
        with pytest.raises(error, match=seen):
            await asyncio.wait_for(w, 2)
    with pytest.raises(error, match=seen):  # and later receives fail too
        await s.recv(tag="y")
    with pytest.raises(NetError, match=own):  # the party that ended cannot send either
        await c.send(1, tag="x")
    await s.close()


async def test_one_party_failing_cancels_the_other_and_names_it():
    async def client(ch):
        raise ValueError("bad shape")

    async def server(ch):
        await ch.recv(tag="x")

    with pytest.raises(PartyError, match=r"client: ValueError: bad shape; server: cancelled"):
        await run_local(client, server, timeout=5)


async def test_large_messages_are_chunked_over_memory():
    big = np.arange(300_000, dtype=np.uint64)

    async def client(ch):
        await ch.send(big, tag="big")

    async def server(ch):
        return await ch.recv(tag="big")

    _, got = await run_local(client, server, timeout=10, max_frame=64 * 1024)
    np.testing.assert_array_equal(got, big)


async def test_message_above_the_maximum_fails_the_receiver():
    c, s = memory_pair(max_message=1000)
    await c.send(b"x" * 5000, tag="big")
    with pytest.raises(Exception, match="exceeds the maximum"):
        await s.recv(tag="big", timeout=2)
    await c.close()
    await s.close()


async def test_idle_limit_counts_only_silence_while_a_receive_waits():
    c, s = memory_pair(idle_timeout=0.3)
    await asyncio.sleep(0.5)  # nobody waits: no idle failure
    waiter = asyncio.ensure_future(s.fork("a").recv(tag="late"))
    for i in range(8):  # traffic on another path keeps the session alive past 0.3 s
        await c.fork("b").send(i, tag="tick")
        await asyncio.sleep(0.1)
    await c.fork("a").send("here", tag="late")
    assert await asyncio.wait_for(waiter, 2) == "here"
    with pytest.raises(
        ChannelTimeout,
        match=r"the client sent nothing for 0.3 s while the server "
        r"waited for 'x' on channel 'a'",
    ):
        await s.fork("a").recv(tag="x", timeout=30)
    with pytest.raises(PeerAborted, match="the server failed: the client sent nothing"):
        await c.recv(tag="y", timeout=2)
    await c.close()
    await s.close()


async def test_session_deadline_fires_while_the_party_computes():
    c, s = memory_pair()
    s.session.set_deadline(0.2)
    await asyncio.sleep(0.3)  # the server "computes"; its deadline passes meanwhile
    with pytest.raises(PeerAborted, match="the server failed: the session exceeded its deadline"):
        await c.recv(tag="x", timeout=2)
    with pytest.raises(ChannelTimeout, match=r"exceeded its deadline of 0\.2 s"):
        await s.send(1, tag="late")
    s.session.set_deadline(None)  # a failed session stays failed
    with pytest.raises(ChannelTimeout):
        await s.recv(tag="x")
    await c.close()
    await s.close()


async def test_buffered_bytes_count_held_frames_and_return_to_zero():
    c, s = memory_pair(max_frame=1000)
    await c.send(b"x" * 2500, tag="a")  # 3 frames (the encoded payload is 2503 bytes)
    await c.send(b"", tag="b")
    await asyncio.sleep(0.05)
    _ = s.session._open("a")  # the reader runs once a receive opened a path
    await asyncio.sleep(0.05)
    assert s.session.buffered == len(encode(b"x" * 2500)) + len(encode(b"")) + 4 * HELD_OVERHEAD
    assert await s.recv(tag="a") == b"x" * 2500
    assert await s.recv(tag="b") == b""
    assert s.session.buffered == 0
    assert s.session.largest_message == len(encode(b"x" * 2500))
    await c.close()
    await s.close()

import json
import time

import pytest

from secmoe.net import memory_pair, run_pair
from secmoe.net.codec import encode
from secmoe.net.shaping import PROFILES, NetProfile, ShapedLink, profile
from secmoe.net.transcript import TranscriptWriter, read_transcript, summarize


async def test_shaped_link_adds_latency_and_respects_bandwidth():
    net = NetProfile("test", bandwidth_bps=8e6, rtt_s=0.1)  # 1 MB/s, 50 ms one way
    c, s = memory_pair()
    c.session.link = ShapedLink(c.session.link, net)
    s.session.link = ShapedLink(s.session.link, net)

    async def client():
        t = time.perf_counter()
        await c.send(1, tag="ping")
        await c.recv(tag="pong")
        rtt = time.perf_counter() - t
        t = time.perf_counter()
        await c.send(b"x" * 100_000, tag="bulk")  # 0.1 s on the wire + 50 ms
        await c.recv(tag="ack")
        return rtt, time.perf_counter() - t

    async def server():
        await s.recv(tag="ping")
        await s.send(2, tag="pong")
        await s.recv(tag="bulk")
        await s.send(3, tag="ack")

    (rtt, bulk), _ = await run_pair(client(), server(), timeout=5)
    assert 0.1 <= rtt < 0.3
    assert 0.2 <= bulk < 0.5
    await c.close()
    await s.close()


def test_estimate_formula_and_profiles():
    lan = profile("lan")
    assert lan.bandwidth_bps == 1e9 and lan.rtt_s == 0.5e-3
    assert PROFILES["wan"].estimate(1.0, 50_000_000, 10) == pytest.approx(1.0 + 1.0 + 0.02)
    with pytest.raises(ValueError, match="choose from"):
        profile("dialup")


async def test_transcript_records_every_message_and_summarizes(tmp_path):
    path = tmp_path / "t.jsonl"
    writer = TranscriptWriter(path)
    c, s = memory_pair()
    c.session.recorder = writer

    async def client():
        await c.fork("layer0").send(b"a" * 100, tag="x")
        await c.recv(tag="y")

    async def server():
        await s.fork("layer0").recv(tag="x")
        await s.send(b"b" * 10, tag="y")

    await run_pair(client(), server(), timeout=5)
    writer.close()
    events = read_transcript(path)
    assert [(e["dir"], e["path"], e["tag"], e["round"]) for e in events] == [
        ("c2s", "layer0", "x", 1),
        ("s2c", "", "y", 2),
    ]
    summary = summarize(events)
    assert summary["total"]["bytes_c2s"] == c.stats.total().bytes_c2s
    assert summary["total"]["rounds"] == 2
    assert set(summary["by_path"]) == {"layer0", "(root)"}
    assert set(summary["estimates"]) == {"lan", "wan"}
    await c.close()
    await s.close()


def test_bad_transcript_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"dir": "c2s"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_transcript(p)


async def test_transcript_payloads_only_when_asked(tmp_path):
    for payloads in (False, True):
        path = tmp_path / f"p{payloads}.jsonl"
        writer = TranscriptWriter(path, payloads=payloads)
        c, s = memory_pair()
        c.session.recorder = writer
        await c.send(b"secret-ish", tag="x")
        await s.recv(tag="x")
        writer.close()
        (ev,) = read_transcript(path)
        if payloads:
            assert bytes.fromhex(ev["payload"]) == encode(b"secret-ish")
        else:
            assert "payload" not in ev
        await c.close()
        await s.close()

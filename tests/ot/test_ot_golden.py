"""Pinned transcript digests of every OT protocol (deterministic seeds).

A digest is SHA-256 over (party, path, tag, encoded payload) of every message each party sends,
grouped by fork path (concurrent forks interleave nondeterministically; each path is a FIFO).
A change in the wire format, the hash, the PRG or the chunking shows up here. After a deliberate
change, regenerate and review the diff of the golden file::

    SECMOE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/ot/test_ot_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from secmoe.crypto.prg import PRG
from secmoe.net import Channel, run_local
from secmoe.net.codec import encode
from secmoe.protocols.ot import base
from secmoe.protocols.ot.pool import OTPool

GOLDEN = Path(__file__).with_name("golden_digests.json")
UPDATE = os.environ.get("SECMOE_UPDATE_GOLDEN") == "1"


class Recording:
    """A channel wrapper that logs what this party sends (forks log into the same list)."""

    def __init__(self, ch: Channel, log: list[tuple[str, str, str, bytes]]) -> None:
        self._ch = ch
        self.log = log

    @property
    def role(self) -> str:
        return self._ch.role

    @property
    def path(self) -> str:
        return self._ch.path

    def fork(self, name: str) -> Recording:
        return Recording(self._ch.fork(name), self.log)

    def phase(self, name: str) -> Any:
        return self._ch.phase(name)

    async def send(self, obj: Any, *, tag: str) -> None:
        self.log.append((self.role, self._ch.path, tag, encode(obj)))
        await self._ch.send(obj, tag=tag)

    async def recv(self, *, tag: str, timeout: float | None = None) -> Any:
        return await self._ch.recv(tag=tag, timeout=timeout)


def digest(logs: list[list[tuple[str, str, str, bytes]]]) -> str:
    """Digest of both parties' logs, grouped by (party, path) in sorted order."""
    h = hashlib.sha256()
    entries = [e for log in logs for e in log]
    for key in sorted({(e[0], e[1]) for e in entries}):
        for party, path, tag, payload in entries:
            if (party, path) == key:
                h.update(f"{party}\0{path}\0{tag}\0{len(payload)}\0".encode() + payload)
    return h.hexdigest()


def _seed(name: str) -> PRG:
    return PRG(hashlib.sha256(name.encode()).digest()[:16])


async def _session(ch: Channel) -> tuple[list, dict[str, str]]:
    """One party's side: setup, then one run of each protocol, its log cut per protocol."""
    log: list = []
    rch = Recording(ch, log)
    client = ch.role == "client"
    g = _seed("golden-inputs")  # both parties draw the same public test inputs
    m0, m1, r, corr = g.ring(300, 5), g.ring(300, 5), g.bits(300), g.ring((300, 2), 64)
    msgs, x, r1k = g.ring((200, 16), 2), g.below(16, 200), g.bits(1000)
    cuts: dict[str, list] = {}
    outputs: dict[str, str] = {}

    def cut(name: str) -> None:
        cuts[name] = log[:]
        log.clear()

    if client:
        await base.send(rch.fork("base"), 16, _seed("base-s"), "golden")
    else:
        await base.recv(rch.fork("base"), r[:16], _seed("base-r"), "golden")
    cut("base_ot")
    pool = await OTPool.setup(rch, _seed(ch.role), source="iknp")  # pins IKNP's wire
    cut("setup")
    if client:
        await pool.cot_send(1000)
        cut("cot")
        await pool.cot_send(1000, random_choices=True)
        cut("cot_random")
        m = await pool.rot_send(300, 17, 2)
        values = [v.astype(np.uint64).tobytes() for v in m]  # the values, whatever the dtype
        outputs["rot"] = hashlib.sha256(values[0] + values[1]).hexdigest()
        cut("rot")
        await pool.ot_send(m0, m1, 5)
        cut("ot")
        await pool.acot_send(corr, 64)
        cut("acot")
        await pool.kkot_send(msgs, 2)
        cut("kkot")
        await pool.fork("f").ot_send(m0, m1, 1)
        cut("fork_ot")
    else:
        await pool.cot_recv(r1k)
        cut("cot")
        await pool.cot_recv_random(1000)
        cut("cot_random")
        await pool.rot_recv(r, 17, 2)
        cut("rot")
        await pool.ot_recv(r, 5)
        cut("ot")
        await pool.acot_recv(r, 64, 2)
        cut("acot")
        await pool.kkot_recv(x, 16, 2)
        cut("kkot")
        await pool.fork("f").ot_recv(r, 1)
        cut("fork_ot")
    return cuts, outputs


async def test_transcript_digests_are_pinned():
    (ccuts, couts), (scuts, _) = await run_local(_session, _session, timeout=60)
    got = {name: digest([ccuts[name], scuts[name]]) for name in ccuts}
    got["rot_sender_outputs"] = couts["rot"]
    if UPDATE:
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert GOLDEN.exists(), f"{GOLDEN.name} missing: generate it with SECMOE_UPDATE_GOLDEN=1"
    want = json.loads(GOLDEN.read_text())
    assert got == want, "OT transcript changed: if deliberate, rerun with SECMOE_UPDATE_GOLDEN=1"


async def test_digests_are_deterministic():
    a = await run_local(_session, _session, timeout=60)
    b = await run_local(_session, _session, timeout=60)
    for name in a[0][0]:
        assert digest([a[0][0][name], a[1][0][name]]) == digest([b[0][0][name], b[1][0][name]])

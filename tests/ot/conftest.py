"""Helpers for two-party OT tests: pools from a test-only dealer, and one-call OT runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from secmoe.crypto.bitmatrix import words_to_bits
from secmoe.crypto.prg import PRG
from secmoe.net import Channel, Delta, memory_pair, run_local, run_pair
from secmoe.protocols.ot.iknp import KAPPA, IknpReceiver, IknpSender
from secmoe.protocols.ot.pool import OTPool, _instance_label

PoolFn = Callable[[OTPool], Awaitable[Any]]


def dealer_pools(ch_c: Channel, ch_s: Channel, seed: bytes = b"dealer-seed-0001") -> tuple:
    """TEST ONLY: pools whose base OTs come from a dealer (ideal base OTs), to keep tests fast.

    The extension, hashing and wire are the real ones; only Step 1 (base OTs) is replaced.
    """
    dealer = PRG(seed)
    inst: dict[str, tuple[IknpSender, IknpReceiver]] = {}
    for sender_role in ("client", "server"):
        label = _instance_label(sender_role)
        s = words_to_bits(dealer.uint64(2), KAPPA)
        k0, k1 = dealer.uint64((KAPPA, 2)), dealer.uint64((KAPPA, 2))
        inst[sender_role] = (
            IknpSender(s, np.where(s[:, None], k1, k0), label),
            IknpReceiver(k0, k1, label, dealer.derive(label)),
        )
    client = OTPool(ch_c, inst["client"][0], inst["server"][1])
    server = OTPool(ch_s, inst["server"][0], inst["client"][1])
    return client, server


@dataclass
class Run:
    """Results of one two-party OT run."""

    sender: Any
    receiver: Any
    sender_pool: OTPool
    receiver_pool: OTPool
    delta: Delta  # measured on the sender's side (both parties record every message)
    receiver_delta: Delta


async def _run_ot(
    sender_role: str, sender_fn: PoolFn, receiver_fn: PoolFn, *, real_setup: bool = False
) -> Run:
    """Run ``sender_fn(pool)`` as ``sender_role`` and ``receiver_fn(pool)`` as the other party."""
    pools: dict[str, OTPool] = {}

    async def party(ch: Channel, fn: PoolFn) -> tuple[Any, Delta, OTPool]:
        if real_setup:
            pool = await OTPool.setup(ch, PRG(ch.role.encode().ljust(16, b"\0")))
        else:
            pool = pools[ch.role]
        snap = ch.stats.snapshot()
        out = await fn(pool)
        return out, ch.stats.since(snap), pool

    async def client(ch: Channel) -> Any:
        return await party(ch, sender_fn if sender_role == "client" else receiver_fn)

    async def server(ch: Channel) -> Any:
        return await party(ch, sender_fn if sender_role == "server" else receiver_fn)

    if real_setup:
        c, s = await run_local(client, server, timeout=60)
    else:
        cch, sch = memory_pair()
        pools["client"], pools["server"] = dealer_pools(cch, sch)
        try:
            c, s = await run_pair(client(cch), server(sch), timeout=60)
        finally:
            await cch.close()
            await sch.close()
    snd, rcv = (c, s) if sender_role == "client" else (s, c)
    return Run(snd[0], rcv[0], snd[2], rcv[2], snd[1], rcv[1])


@pytest.fixture
def run_ot() -> Callable[..., Awaitable[Run]]:
    """``await run_ot(sender_role, sender_fn, receiver_fn, real_setup=False)`` → :class:`Run`."""
    return _run_ot


@pytest.fixture
def make_dealer_pools() -> Callable[..., tuple]:
    """``make_dealer_pools(ch_client, ch_server)`` → (client pool, server pool), test-only."""
    return dealer_pools

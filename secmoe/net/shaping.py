"""Network profiles, a shaping link (latency + bandwidth cap) and the analytic time estimate.

Profiles follow the paper's settings: ``lan`` = 1 Gbit/s with 0.5 ms round-trip time, ``wan`` =
400 Mbit/s with 4 ms RTT. A message costs its serialization time (bytes·8/bandwidth, one link
per direction) plus the one-way latency RTT/2.

The estimate of a run's time on a network from a local (unshaped) measurement::

    T ≈ compute + (bytes_c2s + bytes_s2c)·8 / bandwidth + rounds · RTT/2

where ``compute`` is the measured local wall time, bytes include framing, and ``rounds`` are
the flights on the critical path (:mod:`secmoe.net.stats`). Counting both directions' bytes
against one bandwidth is conservative for a full-duplex link.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from .channel import Link


@dataclass(frozen=True)
class NetProfile:
    """A network setting: bandwidth (bit/s) and round-trip time (s)."""

    name: str
    bandwidth_bps: float
    rtt_s: float

    def estimate(self, compute_s: float, total_bytes: int, rounds: int) -> float:
        """Estimated seconds on this network for a run measured locally."""
        return compute_s + total_bytes * 8 / self.bandwidth_bps + rounds * self.rtt_s / 2


PROFILES = {
    "lan": NetProfile("lan", 1e9, 0.5e-3),
    "wan": NetProfile("wan", 400e6, 4e-3),
}


def profile(name: str) -> NetProfile:
    """The named profile. Raises ``ValueError`` naming the choices."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown network profile {name!r}; choose from {sorted(PROFILES)}"
        ) from None


class ShapedLink(Link):
    """Wraps a link so that what it writes arrives after RTT/2 plus its transmission time.

    Writes return at once (the bytes are in flight); a pump task delivers them to the inner
    link in order, each no earlier than its arrival time under the profile.
    """

    def __init__(self, inner: Link, net: NetProfile) -> None:
        self.inner = inner
        self.net = net
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._busy_until = 0.0
        self._pump: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._busy_until = max(now, self._busy_until) + len(data) * 8 / self.net.bandwidth_bps
        self._queue.put_nowait((self._busy_until + self.net.rtt_s / 2, data))
        if self._pump is None:
            self._pump = loop.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await self._queue.get()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.inner.write(data)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc

    async def read(self) -> bytes:
        return await self.inner.read()

    async def close(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError):  # flush what is in flight
                async with asyncio.timeout(5):
                    while not self._queue.empty():
                        await asyncio.sleep(0.001)
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        await self.inner.close()

"""Two parties with an OT pool, in one event loop, with fixed seeds (tests only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from secmoe.crypto.prg import PRG
from secmoe.crypto.ring import DEFAULT_RING, Ring
from secmoe.net import run_local
from secmoe.protocols.party import Party
from secmoe.protocols.shares import reconstruct

SEEDS = {"client": b"\x11" * 16, "server": b"\x22" * 16}
#: The COT source of these tests unless a test asks for another: IKNP sets up in a third of
#: the time of the silent source; tests parametrized over ``SOURCES`` cover both.
DEFAULT_TEST_SOURCE = "iknp"
SOURCES = ["iknp", "silent"]


async def run_parties(
    body: Callable[[Party], Awaitable[Any]],
    ring: Ring = DEFAULT_RING,
    timeout: float = 120,
    source: str = DEFAULT_TEST_SOURCE,
) -> tuple[Any, Any]:
    """Set up both parties (OT pool from ``source`` included) and run ``body(p)`` on each."""

    async def party(ch):
        p = await Party.setup(ch, PRG(SEEDS[ch.role]), ring, ot_source=source)
        return await body(p)

    return await run_local(party, party, timeout=timeout)


def split(x: np.ndarray, ring: Ring, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A test-side sharing of x (tests only: the masks need not be secret here)."""
    r = np.random.default_rng(seed).integers(0, 2**63, size=np.shape(x), dtype=np.uint64) * 2
    r = ring.reduce(r + np.uint64(seed))
    return ring.reduce(np.asarray(x, np.uint64) - r), r


def mine(p: Party, pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """This party's half of a test-side sharing."""
    return pair[0] if p.role == "client" else pair[1]


def opened(results: tuple[Any, Any], ring: Ring) -> np.ndarray:
    """Reconstruct the two parties' arithmetic shares."""
    return reconstruct(results[0], results[1], ring)


def opened_bits(results: tuple[Any, Any]) -> np.ndarray:
    """Reconstruct Boolean shares."""
    return np.logical_xor(results[0], results[1])

"""Two parties with OT and HE set up (tests only)."""

from collections.abc import Awaitable, Callable
from typing import Any

from secmoe.crypto.prg import PRG
from secmoe.net import run_local
from secmoe.ops.linear import setup_he
from secmoe.protocols.party import Party
from tests.protocols.helpers import SEEDS


async def run_he_parties(body: Callable[[Party], Awaitable[Any]], timeout: float = 300):
    """Set up OT and HE on both parties, then run ``body(p)`` on each."""

    async def party(ch):
        p = await setup_he(await Party.setup(ch, PRG(SEEDS[ch.role])))
        return await body(p)

    return await run_local(party, party, timeout=timeout)

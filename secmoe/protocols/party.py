"""A party's context for protocols: its channel, PRG, ring and (when set up) OT and HE state.

Protocols are SPMD coroutines ``async def f(p: Party, …)`` that branch on ``p.role``.
``p.fork(name)`` gives the context for a concurrent sub-protocol: a forked channel and an
independent PRG (and, once the OT pool exists, the pool's fork: its own channel for OTs, and
COTs from independent IKNP instances or, with the silent source, from the session's shared
Ferret streams).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING, Ring
from ..net import Channel
from .ot.pool import DEFAULT_SOURCE, OTPool


def batch_sizes(n: int, size: int) -> list[int]:
    """The sizes of consecutive batches of at most ``size`` of n elements ([0] when n = 0)."""
    return [min(size, n - start) for start in range(0, n, size)] or [0]


@dataclass(frozen=True)
class Party:
    """One party: ``ch`` (its end of the session), ``prg`` (its private randomness), ``ring``.

    ``ot`` and ``he`` hold the session's OT pool and HE context once set up (explicitly, in
    the ``setup`` phase); protocols that need them raise if they are missing.
    """

    ch: Channel
    prg: PRG
    ring: Ring = DEFAULT_RING
    ot: OTPool | None = None
    he: Any = None

    @classmethod
    async def setup(
        cls,
        ch: Channel,
        prg: PRG | None = None,
        ring: Ring = DEFAULT_RING,
        ot_source: str = DEFAULT_SOURCE,
    ) -> Party:
        """A party with its OT pool set up (both directions, in the ``setup`` phase).

        The pool runs on the channel's ``ot`` fork (and each fork's on its own ``…/ot``), so
        OT traffic never shares a FIFO with protocol messages.

        Args:
            ch: this party's end of the session.
            prg: its private randomness (default: seeded from the OS).
            ring: the ring protocols compute on.
            ot_source: the COT source, a key of :data:`secmoe.protocols.ot.pool.SOURCES`
                (``"silent"``: Ferret, one stream per direction shared by every fork;
                ``"iknp"``: IKNP, cheaper to set up, 16 B per COT).
        """
        prg = PRG() if prg is None else prg
        pool = await OTPool.setup(ch.fork("ot"), prg.derive("ot"), source=ot_source)
        return cls(ch, prg, ring, pool)

    @property
    def role(self) -> str:
        return self.ch.role

    def batches(self, n: int, size: int) -> Iterator[tuple[Party, slice]]:
        """Consecutive batches of n elements (:func:`batch_sizes`), each with the party that
        runs it: this one for the first, a fork ``batch{i}`` for the i-th after (its own
        randomness and path). A protocol that runs its batches one after the other holds one
        batch's memory at a time, for a few more rounds."""
        start = 0
        for i, k in enumerate(batch_sizes(n, size)):
            yield (self if i == 0 else self.fork(f"batch{i}")), slice(start, start + k)
            start += k

    def fork(self, name: str) -> Party:
        """The context for a concurrent sub-protocol named ``name``.

        Its OT traffic runs on ``…/name/ot``, inside the fork's own channel tree, so the
        round depths of OT messages follow the protocol and the bytes are attributed to it.
        ``name`` may not contain ``~``: the OT pool labels the k-th repeat of a name
        ``name~k``, so a name with ``~`` could derive the same COTs as another fork.
        """
        if "~" in name:
            raise ValueError(
                f"fork name {name!r} contains '~' (reserved for repeated forks' labels)"
            )
        ch = self.ch.fork(name)
        ot = self.ot.fork(name, ch.fork("ot")) if self.ot is not None else None
        return replace(self, ch=ch, prg=self.prg.derive(name), ot=ot)

    def with_ring(self, ring: Ring) -> Party:
        """The same party computing on another ring (e.g. fewer bits for a comparison)."""
        return replace(self, ring=ring)

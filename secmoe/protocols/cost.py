"""Declared communication costs, in channel terms, and their composition.

A :class:`Cost` is what a protocol run puts on the channel: payload bytes each way, messages
and rounds (message flights on the critical path, :mod:`secmoe.net.stats`). ``a + b`` is
sequential composition (rounds add), ``a | b`` concurrent composition on independent forks
(rounds: the longer). Bytes and messages compose exactly. Rounds of a sequential composition
are an upper bound: when ``b`` starts with a flight in the direction ``a`` ended with, the two
merge into one and the measured rounds are lower (a test of a composite protocol checks
``measured.rounds <= declared.rounds``; of a one-step protocol, equality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..net.codec import encode
from ..net.stats import Delta
from .ot.base import Cost as OTCost


@dataclass(frozen=True)
class Cost:
    """Payload bytes each way, messages and rounds of a protocol run."""

    bytes_c2s: int = 0
    bytes_s2c: int = 0
    messages: int = 0
    rounds: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.bytes_c2s + other.bytes_c2s,
            self.bytes_s2c + other.bytes_s2c,
            self.messages + other.messages,
            self.rounds + other.rounds,
        )

    def __or__(self, other: Cost) -> Cost:
        return Cost(
            self.bytes_c2s + other.bytes_c2s,
            self.bytes_s2c + other.bytes_s2c,
            self.messages + other.messages,
            max(self.rounds, other.rounds),
        )

    def times(self, k: int) -> Cost:
        """k sequential repetitions."""
        return Cost(k * self.bytes_c2s, k * self.bytes_s2c, k * self.messages, k * self.rounds)

    @property
    def bytes_total(self) -> int:
        return self.bytes_c2s + self.bytes_s2c

    @staticmethod
    def of_ot(c: OTCost, sender: str) -> Cost:
        """An OT pool cost, with ``sender`` (client or server) as the OT sender."""
        d = c.directed(sender)
        return Cost(d["bytes_c2s"], d["bytes_s2c"], d["messages"], d["rounds"])

    @staticmethod
    def message(sender: str, obj: Any) -> Cost:
        """One message ``obj`` from ``sender``: one flight."""
        size = len(encode(obj))
        return Cost(size, 0, 1, 1) if sender == "client" else Cost(0, size, 1, 1)

    @staticmethod
    def exchange(obj: Any) -> Cost:
        """Both parties send ``obj``-sized messages at once: one flight."""
        size = len(encode(obj))
        return Cost(size, size, 2, 1)

    def check(self, measured: Delta, exact_rounds: bool) -> None:
        """Raise ``AssertionError`` if ``measured`` differs from this declared cost."""
        got = (measured.bytes_c2s, measured.bytes_s2c, measured.messages)
        want = (self.bytes_c2s, self.bytes_s2c, self.messages)
        if got != want:
            raise AssertionError(f"measured (c2s, s2c, messages) {got} != declared {want}")
        if exact_rounds and measured.rounds != self.rounds:
            raise AssertionError(f"measured {measured.rounds} rounds != declared {self.rounds}")
        if measured.rounds > self.rounds:
            raise AssertionError(f"measured {measured.rounds} rounds > declared {self.rounds}")

"""Communication accounting: bytes, messages and rounds, per fork path and per phase.

Definitions (what every figure secmoe prints means):

- **payload bytes**: the length of each message's msgpack encoding (what the protocol sends);
- **framing bytes**: everything else on the wire (length prefix, path, tag, round stamp);
- directions are named from the roles: ``c2s`` (client to server) and ``s2c``; both parties
  record every message, so their stats are identical;
- **rounds**: the critical path in message *flights*. Each message carries a depth: one more
  than the deepest message its sender had received before sending it (forks inherit their
  parent's depth; a parent continues after its forks' deepest receive). Consecutive messages in
  one direction share a flight; a direction flip starts a new one (the EzPC/SCI definition),
  and concurrent forks add only their longest chain, not the sum. One round costs one one-way
  latency (RTT/2).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, fields
from typing import Any

DIRECTIONS = ("c2s", "s2c")


@dataclass
class Counter:
    """Bytes and messages in each direction, and the span of depths seen."""

    bytes_c2s: int = 0
    bytes_s2c: int = 0
    framing_c2s: int = 0
    framing_s2c: int = 0
    msgs_c2s: int = 0
    msgs_s2c: int = 0
    min_depth: int = 0
    max_depth: int = 0

    def add(self, direction: str, payload: int, framing: int, depth: int) -> None:
        """Record one message."""
        if direction == "c2s":
            self.bytes_c2s += payload
            self.framing_c2s += framing
            self.msgs_c2s += 1
        else:
            self.bytes_s2c += payload
            self.framing_s2c += framing
            self.msgs_s2c += 1
        self.min_depth = depth if self.min_depth == 0 else min(self.min_depth, depth)
        self.max_depth = max(self.max_depth, depth)

    def merge(self, other: Counter) -> None:
        """Add another counter into this one (depth spans are united)."""
        for name in ("bytes_c2s", "bytes_s2c", "framing_c2s", "framing_s2c"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.msgs_c2s += other.msgs_c2s
        self.msgs_s2c += other.msgs_s2c
        if other.min_depth:
            self.min_depth = (
                other.min_depth if self.min_depth == 0 else min(self.min_depth, other.min_depth)
            )
        self.max_depth = max(self.max_depth, other.max_depth)

    @property
    def bytes_total(self) -> int:
        return self.bytes_c2s + self.bytes_s2c

    @property
    def framing_total(self) -> int:
        return self.framing_c2s + self.framing_s2c

    @property
    def messages(self) -> int:
        return self.msgs_c2s + self.msgs_s2c

    @property
    def rounds(self) -> int:
        """Flights spanned by these messages (max depth − min depth + 1, or 0)."""
        return self.max_depth - self.min_depth + 1 if self.max_depth else 0

    def as_dict(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        del out["min_depth"], out["max_depth"]
        out["rounds"] = self.rounds
        return out


@dataclass(eq=False)
class Snapshot:
    """Totals at one instant, for measuring an operation by difference.

    While it is alive, the stats also track the span of depths of the messages recorded after
    it (``window_min``/``window_max``): an operation's rounds are that span, so a first flight
    that merges with the previous operation's last one is still counted.
    """

    bytes_c2s: int
    bytes_s2c: int
    framing_c2s: int
    framing_s2c: int
    messages: int
    depth: int
    window_min: int = 0
    window_max: int = 0


@dataclass(frozen=True)
class Delta:
    """What an operation cost: the difference of two snapshots."""

    bytes_c2s: int
    bytes_s2c: int
    framing_c2s: int
    framing_s2c: int
    messages: int
    rounds: int

    @property
    def bytes_total(self) -> int:
        return self.bytes_c2s + self.bytes_s2c

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Stats:
    """Session-wide accounting, keyed by (phase, path)."""

    cells: dict[tuple[str, str], Counter] = field(default_factory=dict)
    depth: int = 0  # deepest message seen by this party (sent or received)
    _windows: weakref.WeakSet[Snapshot] = field(
        default_factory=weakref.WeakSet, repr=False, compare=False
    )

    def record(
        self, phase: str, path: str, direction: str, payload: int, framing: int, depth: int
    ) -> None:
        """Record one message (called by the channel, on send and on receive)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}")
        cell = self.cells.get((phase, path))
        if cell is None:
            cell = self.cells[(phase, path)] = Counter()
        cell.add(direction, payload, framing, depth)
        self.depth = max(self.depth, depth)
        for snap in self._windows:
            snap.window_min = depth if not snap.window_min else min(snap.window_min, depth)
            snap.window_max = max(snap.window_max, depth)

    def total(self, phase: str | None = None) -> Counter:
        """Everything (or one phase), summed over paths."""
        out = Counter()
        for (ph, _), cell in self.cells.items():
            if phase is None or ph == phase:
                out.merge(cell)
        return out

    def by_path(self, depth: int | None = None, phase: str | None = None) -> dict[str, Counter]:
        """Counters per fork path; with ``depth``, paths cut to that many components."""
        out: dict[str, Counter] = {}
        for (ph, path), cell in self.cells.items():
            if phase is not None and ph != phase:
                continue
            key = "/".join(path.split("/")[:depth]) if depth else path
            out.setdefault(key, Counter()).merge(cell)
        return dict(sorted(out.items()))

    def by_phase(self) -> dict[str, Counter]:
        """Counters per phase (setup, offline, online, …)."""
        out: dict[str, Counter] = {}
        for (ph, _), cell in self.cells.items():
            out.setdefault(ph, Counter()).merge(cell)
        return out

    def snapshot(self) -> Snapshot:
        """The totals now; keep it alive to measure what follows with :meth:`since`."""
        t = self.total()
        snap = Snapshot(
            t.bytes_c2s, t.bytes_s2c, t.framing_c2s, t.framing_s2c, t.messages, self.depth
        )
        self._windows.add(snap)
        return snap

    def since(self, snap: Snapshot) -> Delta:
        """The cost of everything since ``snap`` (rounds on the critical path)."""
        now = self.snapshot()
        return Delta(
            bytes_c2s=now.bytes_c2s - snap.bytes_c2s,
            bytes_s2c=now.bytes_s2c - snap.bytes_s2c,
            framing_c2s=now.framing_c2s - snap.framing_c2s,
            framing_s2c=now.framing_s2c - snap.framing_s2c,
            messages=now.messages - snap.messages,
            rounds=snap.window_max - snap.window_min + 1 if snap.window_max else 0,
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: total, per phase, per path."""
        return {
            "total": self.total().as_dict(),
            "rounds": self.depth,
            "by_phase": {k: v.as_dict() for k, v in self.by_phase().items()},
            "by_path": {k: v.as_dict() for k, v in self.by_path().items()},
        }

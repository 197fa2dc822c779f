"""Transcripts: one JSON line per message, and their summaries.

A line: ``{"seq", "t", "party", "dir", "path", "tag", "bytes", "framing", "round", "phase"}``
(``payload`` in hex too, when asked). Each party writes its own transcript; both list the same
messages (one as sent, the other as received).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

from .shaping import PROFILES


class TranscriptWriter:
    """A session recorder that appends JSON lines to a file.

    With ``payloads=True`` each line also carries the message's encoded bytes in hex (large:
    for debugging and golden transcripts only; payloads are never recorded by default).
    """

    def __init__(self, path: str | Path, payloads: bool = False) -> None:
        self.path = Path(path)
        self.payloads = payloads
        self._fh: IO[str] | None = self.path.open("w", encoding="utf-8")

    def __call__(self, event: dict[str, Any], payload: bytes = b"") -> None:
        if self._fh is not None:
            if self.payloads:
                event = {**event, "payload": payload.hex()}
            self._fh.write(json.dumps(event, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_transcript(path: str | Path) -> list[dict[str, Any]]:
    """Load a transcript. Raises ``ValueError`` naming the first bad line."""
    events = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
                _ = ev["dir"], ev["path"], ev["bytes"], ev["round"], ev["t"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a secmoe transcript line ({exc})") from None
            events.append(ev)
    return events


def summarize(events: list[dict[str, Any]], depth: int = 2) -> dict[str, Any]:
    """Totals, a table by path (cut to ``depth`` components) and LAN/WAN estimates."""
    by_path: dict[str, dict[str, int]] = defaultdict(
        lambda: {"bytes_c2s": 0, "bytes_s2c": 0, "messages": 0, "min_round": 0, "max_round": 0}
    )
    total = {"bytes_c2s": 0, "bytes_s2c": 0, "framing": 0, "messages": 0}
    for ev in events:
        key = "/".join(ev["path"].split("/")[:depth]) or "(root)"
        row = by_path[key]
        row[f"bytes_{ev['dir']}"] += ev["bytes"]
        row["messages"] += 1
        r = ev["round"]
        row["min_round"] = r if not row["min_round"] else min(row["min_round"], r)
        row["max_round"] = max(row["max_round"], r)
        total[f"bytes_{ev['dir']}"] += ev["bytes"]
        total["framing"] += ev.get("framing", 0)
        total["messages"] += 1
    rounds = max((ev["round"] for ev in events), default=0)
    seconds = max((ev["t"] for ev in events), default=0.0)
    wire = total["bytes_c2s"] + total["bytes_s2c"] + total["framing"]
    table = {
        k: {
            "bytes_c2s": v["bytes_c2s"],
            "bytes_s2c": v["bytes_s2c"],
            "messages": v["messages"],
            "rounds": v["max_round"] - v["min_round"] + 1,
        }
        for k, v in sorted(by_path.items())
    }
    return {
        "total": {**total, "rounds": rounds, "seconds": seconds},
        "by_path": table,
        "estimates": {
            name: {
                "seconds": p.estimate(seconds, wire, rounds),
                "bandwidth_bps": p.bandwidth_bps,
                "rtt_s": p.rtt_s,
            }
            for name, p in PROFILES.items()
        },
    }

"""Progress of private-inference sessions, for ``secmoe demo``, ``serve`` and ``infer``.

On a terminal (stderr), each session is one line drawn by ``rich``: its label, a bar of the
layers done of the total, the bytes this party sent and received so far in the session,
the elapsed time and an estimate of the time left. When stderr is not a terminal, the same
events are plain lines (one per layer, with the estimate); with ``--json`` (``quiet``) nothing
is printed.

The secure runner reports each finished layer as ``"layer i/n done"``
(:func:`secmoe.model.secure.secure_forward`'s ``progress``); a session first announces the
plan's work per stage (:func:`secmoe.model.plan_work.announce_work`), so the bar and the time
left follow the stages' costs (an MoE layer is several dense ones), not the count of layers.
Without that event, the pace of the layers done so far is the estimate. The byte counts are
read from the session's channel statistics at each event, in the event loop's thread.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .model.plan_work import WORK_EVENT
from .net.stats import Stats

#: What the secure runner reports after each layer.
LAYER_DONE = re.compile(r"layer (\d+)/(\d+) done")


def fmt_bytes(n: float) -> str:
    """``n`` bytes in B, KB, MB or GB (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


class _Work:
    """Work done of the total, in layers or (once announced) in the plan's stage work."""

    def __init__(self, layers: int | None) -> None:
        self.layers, self.done = layers, 0
        self.stages: list[int] | None = None
        self.t0 = time.perf_counter()

    def event(self, msg: str) -> str | None:
        """Take a progress event: ``"plan"``, ``"layer"`` (a finished layer) or None (other)."""
        plan = WORK_EVENT.fullmatch(msg)
        if plan is not None:
            self.stages = [int(v) for v in plan[1].split(",")]
            self.layers = len(self.stages) - 2
            return "plan"
        done = LAYER_DONE.fullmatch(msg)
        if done is None:
            return None
        self.done, self.layers = int(done[1]), int(done[2])
        return "layer"

    @property
    def total(self) -> float | None:
        return float(sum(self.stages)) if self.stages else self.layers

    @property
    def completed(self) -> float:
        # stage 0 (the embedding) ends with the first layer's event; the head comes after the last
        return float(sum(self.stages[: self.done + 1])) if self.stages else float(self.done)

    def left_seconds(self) -> float | None:
        total, completed = self.total, self.completed
        if not total or not completed:
            return None
        return (time.perf_counter() - self.t0) * (total - completed) / completed

    def layers_text(self) -> str:
        return f"{self.done}/{self.layers if self.layers is not None else '?'} layers"


def _plain_line(msg: str) -> None:
    print(f"  … {msg}", file=sys.stderr, flush=True)


class Reporter:
    """Where a command tells its progress.

    ``quiet`` (``--json``): nothing. Otherwise a live ``rich`` line per session when
    ``console`` is a terminal (default: a console on stderr), else plain lines through
    ``line`` (default: ``"  … msg"`` on stderr).
    """

    def __init__(
        self,
        quiet: bool = False,
        console: Console | None = None,
        line: Callable[[str], None] = _plain_line,
    ) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.quiet = quiet
        self.live = not quiet and self.console.is_terminal
        self._line = line

    def log(self, msg: str) -> None:
        """A plain progress line (nothing when quiet; above the live bars on a terminal)."""
        if self.quiet:
            return
        if self.live:
            self.console.print(f"  … {msg}", highlight=False)
        else:
            self._line(msg)

    @contextmanager
    def session(
        self, label: str, stats: Stats, role: str, layers: int | None = None
    ) -> Iterator[Callable[[str], None]]:
        """Track one session; yields the ``progress`` callback to pass to the session.

        ``stats``: the session's channel statistics (bytes are counted from entry, so a
        channel shared by several sessions shows each one's own); ``role``: ``"client"`` or
        ``"server"`` (which direction is "sent"); ``layers``: the total, if known before the
        first layer ends (a client learns it from the server's config).
        """
        base = stats.total()
        sent_dir, recv_dir = ("c2s", "s2c") if role == "client" else ("s2c", "c2s")

        def traffic() -> str:
            now = stats.total()
            sent = getattr(now, f"bytes_{sent_dir}") - getattr(base, f"bytes_{sent_dir}")
            recv = getattr(now, f"bytes_{recv_dir}") - getattr(base, f"bytes_{recv_dir}")
            return f"sent {fmt_bytes(sent)}, received {fmt_bytes(recv)}"

        work = _Work(layers)
        if not self.live:

            def plain(msg: str) -> None:
                kind = None if self.quiet else work.event(msg)
                if self.quiet or kind == "plan":
                    return
                left = work.left_seconds() if kind == "layer" else None
                eta = "" if left is None else f", about {left:.0f} s left"
                self._line(f"{label}: {msg} ({traffic()}{eta})")

            yield plain
            return

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[layers]}"),
            TextColumn("{task.fields[traffic]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        task = bar.add_task(label, total=work.total, traffic=traffic(), layers=work.layers_text())

        def update(msg: str) -> None:
            if work.event(msg) is None:
                bar.console.print(f"  … {label}: {msg}", highlight=False)
                bar.update(task, traffic=traffic())
                return
            bar.update(
                task,
                completed=work.completed,
                total=work.total,
                traffic=traffic(),
                layers=work.layers_text(),
                refresh=True,
            )

        with bar:
            try:
                yield update
            finally:
                bar.update(task, traffic=traffic(), refresh=True)


__all__ = ["LAYER_DONE", "Reporter", "fmt_bytes"]

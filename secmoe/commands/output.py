"""The one place where a command's result is printed: as one JSON object (``--json``) or as
the command's own text rendering (its module's ``render``). Progress and log lines go to
stderr elsewhere (:mod:`secmoe.progress`, :func:`secmoe.app.log`); results go to stdout here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

#: The version of the JSON objects ``infer --json``, ``demo --json`` and ``bench --json``
#: print (README, "Machine-readable outputs"): a field is never renamed or given another unit
#: without a new version.
SCHEMA = 1

Render = Callable[[dict[str, Any]], Iterable[str]]


def emit(result: dict[str, Any], as_json: bool, render: Render) -> None:
    """Print ``result``: one JSON line with ``"schema"`` (sorted keys), or ``render``'s lines."""
    if as_json:
        print(json.dumps({"schema": SCHEMA, **result}, sort_keys=True))
        return
    for line in render(result):
        print(line)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], first: int = 16) -> list[str]:
    """A plain text table: the first column left-aligned ``first`` wide, the others
    right-aligned to their widest cell."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(header[i]), *(len(r[i]) for r in rows)]) for i in range(1, len(header))]
    first = max([first, len(header[0]), *(len(r[0]) for r in rows)])

    def line(cells: Sequence[str]) -> str:
        rest = " ".join(f"{c:>{w}}" for c, w in zip(cells[1:], widths, strict=True))
        return f"{cells[0]:<{first}} {rest}".rstrip()

    return [line(header), *(line(r) for r in rows)]

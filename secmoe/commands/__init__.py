"""The ``secmoe`` commands, one module each.

A command module defines:

- ``NAME`` (the sub-command), ``HELP`` (one line);
- ``add_arguments(parser)``: its options (shared groups in :mod:`.args`);
- ``check(parser, args)`` (optional): usage errors (``parser.error``) before anything runs;
- ``run(args) -> dict | None``: does the work and returns the result (JSON-able), printing
  nothing but progress/log lines on stderr; errors a user can cause raise ``ValueError``
  (``InputError``, ``SessionRefused``), ``OSError`` or ``NetError``: :mod:`secmoe.cli` turns
  them into one line;
- ``render(result) -> Iterable[str]``: the result as text lines (``--json`` prints the dict).

:mod:`secmoe.cli` builds the parser from :data:`COMMANDS`, dispatches, and prints the result
through :func:`.output.emit` (the one place that prints results). A new command is a new
module plus its name in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: The command modules, in ``secmoe --help`` order.
COMMANDS = ("demo", "serve", "infer", "generate", "bench", "transcript", "model")


def load(name: str) -> ModuleType:
    """The module of command ``name``."""
    return importlib.import_module(f"{__name__}.{name}")

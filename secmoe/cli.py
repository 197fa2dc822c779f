"""The ``secmoe`` command: parses the arguments, dispatches to the command's module
(:mod:`secmoe.commands`) and prints its result (:func:`secmoe.commands.output.emit`).

Errors a user can cause (bad arguments, a peer that is missing, incompatible or misbehaving)
end in one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import PROTOCOL_VERSION, __version__
from .app import run_async
from .commands import COMMANDS, load
from .commands.output import emit
from .net import NetError, PartyError

EXIT_USAGE = 2
EXIT_FAILURE = 1


def no_transparent_huge_pages() -> None:
    """Stop numpy from asking the kernel for transparent huge pages for its large arrays
    (unless ``NUMPY_MADVISE_HUGEPAGE=1`` is set; processes this one starts inherit the choice).

    On a host whose free memory is fragmented, a huge page is assembled by compacting memory
    synchronously when an array is first touched: filling a fresh 160 MB array took 0.41 s
    with the advice and 0.08 s without on this project's machine, and
    ``secmoe bench ot --kind cot --n 10000000 --source silent`` ran at 7.0–7.2 M OT/s with it
    against 10.9–13.8 without (alternating runs, load 2.4). The one table that gains from huge
    pages, Ferret's LPN input, asks for them itself (:func:`secmoe.protocols.ot.lpn.table`).
    """
    if os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0") != "0":
        return
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _set_madvise_hugepage
    _set_madvise_hugepage(False)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (each module adds its own options)."""
    parser = argparse.ArgumentParser(
        prog="secmoe",
        description="Private two-party inference of Mixture-of-Experts transformers.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"secmoe {__version__} (wire protocol {PROTOCOL_VERSION})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = load(name)
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secmoe`` console script."""
    no_transparent_huge_pages()
    parser = build_parser()
    args = parser.parse_args(argv)
    module = load(args.command)
    if hasattr(module, "check"):
        module.check(parser, args)
    try:
        result = module.run(args)
        if result is not None:
            emit(result, getattr(args, "json", False), module.render)
    except KeyboardInterrupt:
        print("secmoe: interrupted", file=sys.stderr)
        return 130
    except (NetError, PartyError, ValueError, OSError) as exc:
        print(f"secmoe: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


__all__ = ["build_parser", "main", "run_async"]

if __name__ == "__main__":
    sys.exit(main())

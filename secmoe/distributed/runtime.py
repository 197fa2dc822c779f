"""The server commands' options for workers (``--workers``, ``--ray-address``) and the pool's
lifetime: started before the command's sessions, stopped (and a Ray runtime this process
started, shut down) when the command ends."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from .pool import DEFAULT_TIMEOUT, RayPool


def add_worker_args(p: argparse.ArgumentParser) -> None:
    """``--workers N`` and ``--ray-address ADDR`` (server side)."""
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="server: N Ray worker actors hold the encoded weights (the experts of the "
        "select strategy's encrypted selection, the blocks of the plain-weight HE products) "
        "and compute the products on them; 0 = this process does (default). Needs the ray "
        "extra: pip install 'secmoe[ray]'",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="server: join this Ray cluster (`ray start --head` on one host, `ray start "
        "--address` on the others) instead of starting a local Ray runtime",
    )
    p.add_argument(
        "--max-encoded-gb",
        type=float,
        metavar="G",
        help="server: each worker holds at most G GB (10^9 bytes) of encoded weights and "
        "refuses, by name, a shard that would pass it (default: no limit)",
    )


def check_worker_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--workers`` ≥ 0; ``--ray-address`` needs workers; the client side has none."""
    if args.workers < 0:
        parser.error(f"--workers must be at least 0, got {args.workers}")
    if args.ray_address and not args.workers:
        parser.error("--ray-address needs --workers N (N ≥ 1)")
    if args.max_encoded_gb is not None and not args.workers:
        parser.error("--max-encoded-gb is a budget per worker: it needs --workers N (N ≥ 1)")
    if args.max_encoded_gb is not None and not args.max_encoded_gb > 0:
        parser.error(f"--max-encoded-gb must be positive, got {args.max_encoded_gb:g}")
    if args.workers and getattr(args, "party", None) == "client":
        parser.error("--workers is a server option (the client has no workers)")


@contextmanager
def server_pool(args: argparse.Namespace) -> Iterator[RayPool | None]:
    """The pool of ``--workers`` for the command's duration (None without workers)."""
    if not getattr(args, "workers", 0) or getattr(args, "party", None) == "client":
        yield None
        return
    gb = getattr(args, "max_encoded_gb", None)
    pool = RayPool(
        args.workers,
        args.ray_address,
        getattr(args, "timeout", DEFAULT_TIMEOUT),
        None if gb is None else int(gb * 1e9),
    )
    try:
        yield pool
    finally:
        pool.close()

"""Argument helpers shared by the command modules (types, groups of options, defaults)."""

from __future__ import annotations

import argparse
import math

from ..model.secure import NORM_PRODUCTS
from ..net.shaping import PROFILES

#: The default limit of tokens B·T per session on a server.
MAX_TOKENS = 8192
#: Sequences per batch, and a server's default limit (memory grows with it).
BATCH = 64
STRATEGIES = ("select", "all", "dispatch", "reveal")


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_count_args(p: argparse.ArgumentParser, samples: int, samples_help: str) -> None:
    """``--samples`` and ``--batch``."""
    p.add_argument("--samples", type=positive_int, default=samples, help=samples_help)
    p.add_argument(
        "--batch",
        type=positive_int,
        default=BATCH,
        help=f"sequences per batch (default {BATCH}; at most the server's --max-batch): one "
        "session's setup serves every batch; memory grows with the batch",
    )


def add_strategy_args(p: argparse.ArgumentParser) -> None:
    """``--strategy``, ``--capacity-factor``, ``--capacity``."""
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="select",
        help="MoE strategy (reveal is INSECURE: for cost comparison only)",
    )
    p.add_argument(
        "--capacity-factor",
        type=float,
        help="capacity C = ceil(cf·k·T/E) per sequence and expert, cf finite > 0 (default: the "
        "model's own capacity; every strategy honours it; one the model does not use is reported)",
    )
    p.add_argument(
        "--capacity",
        type=positive_int,
        help="an explicit capacity C per sequence and expert (overrides --capacity-factor; "
        "C > T means T)",
    )


def add_norm_products_arg(p: argparse.ArgumentParser) -> None:
    """``--norm-products``."""
    p.add_argument(
        "--norm-products",
        choices=NORM_PRODUCTS,
        default="ot",
        help="the norms' Σx² and x·y: by COTs (default, faster) or by HE row products where "
        "that sends fewer bytes (about 2.6x fewer norm bytes at 8 tokens, 3-4x the norm's time)",
    )


def add_tls_args(p: argparse.ArgumentParser) -> None:
    """TLS certificate, key, CA and expected server name."""
    p.add_argument("--tls-cert", help="this party's certificate (PEM)")
    p.add_argument("--tls-key", help="this party's private key (PEM)")
    p.add_argument("--tls-ca", help="CA to verify the peer (server: require client certs)")
    p.add_argument("--tls-server-name", help="client: expected server name (default: host)")


def add_shaping_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``--net lan|wan``."""
    p.add_argument("--net", choices=sorted(PROFILES), help=help)


def add_client_args(p: argparse.ArgumentParser) -> None:
    """A client's connection options (for :func:`secmoe.commands.client.connect_server`):
    ``--transcript``, ``--net``, ``--json``, ``--timeout``, ``--connect-timeout``, TLS."""
    p.add_argument("--transcript", metavar="FILE")
    add_shaping_arg(p, "shape what this side sends")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=600.0, help="per-wait deadline (s)")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    add_tls_args(p)

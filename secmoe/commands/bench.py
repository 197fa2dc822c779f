"""``secmoe bench OP``: a registered benchmark, locally or one party over TCP."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from ..app import run_async
from ..bench import REGISTRY, run_bench
from ..distributed.predict import projected_report
from ..distributed.runtime import check_worker_args, server_pool
from ..net.shaping import PROFILES
from ..progress import fmt_bytes
from .args import add_shaping_arg, add_tls_args
from .output import table

NAME = "bench"
HELP = "run a benchmark (JSON with --json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    ops = p.add_subparsers(dest="op", required=True)
    for op in REGISTRY.values():
        sp = ops.add_parser(op.name, help=op.help, description=op.help)
        op.add_args(sp)
        _add_net_args(sp)


def _add_net_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--local", action="store_true", help="run both parties in this process (the default)"
    )
    where.add_argument(
        "--party",
        choices=("client", "server"),
        help="run one party over TCP (with --listen or --connect)",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="server: address to listen on")
    p.add_argument("--connect", metavar="HOST:PORT", help="client: address of the server")
    add_shaping_arg(p, "shape the link: lan = 1 Gbit/s, 0.5 ms RTT; wan = 400 Mbit/s, 4 ms")
    p.add_argument("--transcript", metavar="FILE", help="write a JSON-lines transcript")
    p.add_argument(
        "--transcript-payloads",
        action="store_true",
        help="also record every message's bytes (hex) in the transcript",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (last line)")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="deadline in seconds for each wait on the peer (default 600)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="client: keep retrying the connection this long (default 30)",
    )
    p.add_argument(
        "--accept-timeout",
        type=float,
        default=3600.0,
        help="server: wait this long for the client (default 3600)",
    )
    add_tls_args(p)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.party == "server" and not args.listen:
        parser.error("--party server needs --listen HOST:PORT")
    if args.party == "client" and not args.connect:
        parser.error("--party client needs --connect HOST:PORT")
    if args.party is None and (args.listen or args.connect):
        parser.error("--listen/--connect need --party server/client")
    if (args.party == "server" and args.connect) or (args.party == "client" and args.listen):
        parser.error("the server --listens; the client --connects")
    if args.timeout <= 0 or args.connect_timeout <= 0 or args.accept_timeout <= 0:
        parser.error("timeouts must be positive")
    if hasattr(args, "workers"):
        check_worker_args(parser, args)
    if getattr(args, "predict", None):
        if args.workers or args.strategy != "select":
            parser.error(
                "--predict projects from a select run with the embedded server: "
                "--strategy select, no --workers"
            )
        if min(args.predict) < 1:
            parser.error(f"--predict: worker counts must be at least 1, got {min(args.predict)}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    op = REGISTRY[args.op]
    op.params(args)  # validate the op's arguments before any connection
    with server_pool(args) as args.pool:  # --workers: Ray actors for the command's duration
        result = run_async(run_bench(op, args))
    if getattr(args, "predict", None):
        try:
            leaves = result.get("select_leaves", 0)
            result["projected"] = projected_report(result, leaves, args.predict)
        except ValueError as exc:  # e.g. no MoE layer ran: the run's figures still count
            result["projected"] = {"note": f"no projection: {exc}"}
    return result


#: Fields :func:`render` shows in its header lines (or, for ``bench model``, in tables).
_SHOWN = {
    "op",
    "params",
    "bytes_c2s",
    "bytes_s2c",
    "framing_bytes",
    "rounds",
    "seconds",
    "setup_bytes",
    "setup_seconds",
    "setup_rounds",
    "net",
    "estimates",
    "messages",
    "projected",
}
#: ``bench model``'s nested figures, rendered as tables (``layers``, ``groups``) or left to
#: ``--json`` (the fork-level ``detail``, the config, …).
_MODEL_TABLES = {
    "layers",
    "groups",
    "per_layer",
    "detail",
    "config",
    "encode_seconds_per_layer",
    "bytes_online_by_party",
    "peak_rss_mb",
    "load_avg",
}


def render(r: dict[str, Any]) -> Iterator[str]:
    yield f"op            {r['op']}  {r['params']}"
    yield (
        f"communication {fmt_bytes(r['bytes_c2s'])} c2s, {fmt_bytes(r['bytes_s2c'])} s2c, "
        f"{fmt_bytes(r['framing_bytes'])} framing, {r['rounds']} rounds"
    )
    shaped = f" (network shaped: {r['net']})" if r.get("net") else ""
    yield f"time          {r['seconds']:.3f} s{shaped}"
    yield f"setup         {fmt_bytes(r['setup_bytes'])}, {r['setup_seconds']:.3f} s"
    for name, secs in r.get("estimates", {}).items():
        yield f"estimate {name:4} {secs:.3f} s"
    model = "layers" in r and "groups" in r
    skip = _SHOWN | (_MODEL_TABLES if model else set())
    for key, value in r.items():
        if key not in skip:
            yield f"{key:13} {f'{value:.4g}' if isinstance(value, float) else value}"
    if model:
        yield from _render_model(r)
    yield from _render_projected(r.get("projected", {}))


def _render_projected(p: dict[str, Any]) -> Iterator[str]:
    """``--predict``: one line per worker count, labelled PROJECTED (or why there is none)."""
    if len(p) == 1:
        yield p["note"]
    for w, m in p.items():
        if w != "note":
            yield (
                f"PROJECTED (cost model, not measured) {w} workers: server "
                f"{m['server_seconds']:.1f} s on {int(w) + 1} idle cores, {m['ratio']:.2f}x "
                f"the embedded {m['embedded_seconds']:.1f} CPU s; each worker "
                f"{m['worker_cpu']:.1f} CPU s, coordinator {m['coordinator_cpu']:.1f}"
            )


def _render_model(r: dict[str, Any]) -> Iterator[str]:
    """``bench model``: peak memory per party, then the per-part and per-group tables."""
    rss = r.get("peak_rss_mb", {})
    if rss:
        yield "peak RSS      " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items())

    def row(name: str, f: dict[str, Any]) -> list[Any]:
        return [
            name,
            fmt_bytes(f["bytes_c2s"]),
            fmt_bytes(f["bytes_s2c"]),
            f["rounds"],
            f"{f['seconds']:.3f}",
            f"{f['client_cpu_seconds']:.2f}",
            f"{f['server_cpu_seconds']:.2f}",
            *(f"{f[n]:.2f}" for n in PROFILES),
        ]

    header = ["c2s", "s2c", "rounds", "wall s", "client CPU s", "server CPU s"]
    header += [f"{n.upper()} s" for n in PROFILES]
    yield ""
    yield from table(["part", *header], [row(x["row"], x) for x in r["layers"]], 24)
    yield ""
    yield from table(["group", *header], [row(k, f) for k, f in r["groups"].items()], 24)

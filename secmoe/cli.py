"""The ``secmoe`` command.

Errors a user can cause (bad arguments, a peer that is missing, incompatible or misbehaving)
end in one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from . import PROTOCOL_VERSION, __version__
from .bench import REGISTRY, run_bench
from .model.session import DEFAULT_SETUP_IDLE
from .net import NetError, PartyError
from .net.shaping import PROFILES
from .net.transcript import read_transcript, summarize
from .ops.linear import DEFAULT_CACHE_BUDGET
from .progress import fmt_bytes as _fmt_bytes

EXIT_USAGE = 2
EXIT_FAILURE = 1
#: The default limit of tokens B·T per session on a server.
MAX_TOKENS = 8192
BATCH = 64  # sequences per session, and a server's default limit (memory grows with it)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional (Linux only)
        return asyncio.run(coro)
    return uvloop.run(coro)


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
    p.add_argument(
        "--net",
        choices=sorted(PROFILES),
        help="shape the link: lan = 1 Gbit/s, 0.5 ms RTT; wan = 400 Mbit/s, 4 ms",
    )
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
    _add_tls_args(p)


def _check_net_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def build_parser() -> argparse.ArgumentParser:
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

    bench = sub.add_parser("bench", help="run a benchmark (JSON with --json)")
    ops = bench.add_subparsers(dest="op", required=True)
    for op in REGISTRY.values():
        p = ops.add_parser(op.name, help=op.help, description=op.help)
        op.add_args(p)
        _add_net_args(p)

    tr = sub.add_parser("transcript", help="summarize a transcript file")
    tr.add_argument("file")
    tr.add_argument("--depth", type=int, default=2, help="path components in the table")
    tr.add_argument("--json", action="store_true")

    model = sub.add_parser("model", help="model files: presets, random initialization")
    msub = model.add_subparsers(dest="model_cmd", required=True)
    init = msub.add_parser("init", help="random weights for a preset, as safetensors + config")
    init.add_argument("preset", help="a preset name (see `secmoe model presets`)")
    init.add_argument("out", help="output path (.safetensors is added if missing)")
    init.add_argument("--seed", type=int, default=0, help="initialization seed (public)")
    msub.add_parser("presets", help="list the presets")

    strategies = ("select", "all", "dispatch", "reveal")
    demo = sub.add_parser("demo", help="private inference on the bundled model, in one process")
    _add_count_args(demo, 8, "held-out images (default 8)")
    demo.add_argument(
        "--strategy",
        choices=strategies,
        default="select",
        help="MoE strategy (reveal is INSECURE: for cost comparison only)",
    )
    _add_capacity_args(demo)
    demo.add_argument("--net", choices=sorted(PROFILES), help="shape the in-memory link")
    demo.add_argument(
        "--transcript",
        metavar="FILE",
        default="secmoe-demo.transcript.jsonl",
        help="transcript file (default secmoe-demo.transcript.jsonl)",
    )
    demo.add_argument("--timeout", type=float, default=1800.0, help="deadline for the run (s)")
    demo.add_argument("--json", action="store_true")

    serve = sub.add_parser("serve", help="the server: answer private-inference sessions")
    serve.add_argument("--model", default="bundled", help="safetensors file/dir or 'bundled'")
    serve.add_argument("--listen", required=True, metavar="HOST:PORT")
    serve.add_argument("--sessions", type=_positive_int, help="exit after this many sessions")
    serve.add_argument(
        "--max-batch",
        type=_positive_int,
        default=BATCH,
        help=f"refuse sessions of more sequences (default {BATCH}): memory grows with the batch",
    )
    serve.add_argument(
        "--allow-insecure-reveal",
        action="store_true",
        help="accept the INSECURE reveal strategy (it leaks the routing)",
    )
    serve.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=MAX_TOKENS,
        help=f"refuse sessions of more tokens B·T (default {MAX_TOKENS}): memory and the "
        "session's HE work grow with them",
    )
    serve.add_argument("--timeout", type=float, default=600.0, help="per-wait deadline (s)")
    serve.add_argument(
        "--setup-timeout",
        type=_positive_float,
        default=DEFAULT_SETUP_IDLE,
        help=f"until the online phase, drop a client silent this long (default "
        f"{DEFAULT_SETUP_IDLE:g} s)",
    )
    serve.add_argument(
        "--session-timeout",
        type=_positive_float,
        help="end any session after this long (default: derived from the request: 10 min + "
        "1 s per token, layer, 64 model dimensions and expert)",
    )
    serve.add_argument(
        "--skip-zero-blocks",
        action="store_true",
        help="skip all-zero weight blocks in HE products: faster on sparse weights, but LEAKS "
        "which blocks are zero to the client through timing",
    )
    serve.add_argument(
        "--weight-cache",
        type=_positive_int,
        default=DEFAULT_CACHE_BUDGET >> 20,
        metavar="MB",
        help=f"memory for a session's encoded weights (default {DEFAULT_CACHE_BUDGET >> 20}; "
        "beyond it weight blocks are encoded when used: slower). SEAL's memory pool keeps it "
        "after the session for the next one, so it bounds the server's resident memory",
    )
    serve.add_argument(
        "--model-id",
        help="a name for the model sent to clients (default: none; no digest of the weights "
        "is ever sent)",
    )
    serve.add_argument("--net", choices=sorted(PROFILES), help="shape what this side sends")
    serve.add_argument(
        "--accept-timeout",
        type=float,
        default=None,
        help="give up waiting for a client after this long (s)",
    )
    _add_tls_args(serve)

    infer = sub.add_parser("infer", help="the client: private inference against a server")
    infer.add_argument("--connect", required=True, metavar="HOST:PORT")
    given = infer.add_mutually_exclusive_group()
    given.add_argument("--input", help="a .npy of inputs (default: held-out bundled samples)")
    given.add_argument("--text", help="a text, tokenized on this side with --tokenizer")
    given.add_argument("--text-file", metavar="FILE", help="as --text, the text of a UTF-8 file")
    infer.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="a Hugging Face tokenizers file (tokenizer.json) for --text/--text-file; its "
        "vocabulary must be the model's",
    )
    infer.add_argument(
        "--save-output",
        metavar="FILE",
        help="save the revealed output as .npy (for a text: (T, width), e.g. an encoder's "
        "per-token hidden states)",
    )
    _add_count_args(infer, 1, "held-out images without --input (default 1)")
    infer.add_argument("--strategy", choices=strategies, default="select")
    _add_capacity_args(infer)
    infer.add_argument("--transcript", metavar="FILE")
    infer.add_argument("--net", choices=sorted(PROFILES), help="shape what this side sends")
    infer.add_argument("--json", action="store_true")
    infer.add_argument("--timeout", type=float, default=600.0, help="per-wait deadline (s)")
    infer.add_argument("--connect-timeout", type=float, default=30.0)
    _add_tls_args(infer)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _add_count_args(p: argparse.ArgumentParser, samples: int, samples_help: str) -> None:
    p.add_argument("--samples", type=_positive_int, default=samples, help=samples_help)
    p.add_argument(
        "--batch",
        type=_positive_int,
        default=BATCH,
        help=f"sequences per session (default {BATCH}; at most the server's --max-batch): "
        "memory grows with the batch, so larger inputs go as several sessions",
    )


def _add_capacity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--capacity-factor",
        type=float,
        help="capacity C = ceil(cf·k·T/E) per sequence and expert, cf finite > 0 (default: the "
        "model's own capacity; every strategy honours it; one the model does not use is reported)",
    )
    p.add_argument(
        "--capacity",
        type=_positive_int,
        help="an explicit capacity C per sequence and expert (overrides --capacity-factor; "
        "C > T means T)",
    )


def _add_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", help="this party's certificate (PEM)")
    p.add_argument("--tls-key", help="this party's private key (PEM)")
    p.add_argument("--tls-ca", help="CA to verify the peer (server: require client certs)")
    p.add_argument("--tls-server-name", help="client: expected server name (default: host)")


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    print(f"op            {result['op']}  {result['params']}")
    print(
        f"communication {_fmt_bytes(result['bytes_c2s'])} c2s, "
        f"{_fmt_bytes(result['bytes_s2c'])} s2c, "
        f"{_fmt_bytes(result['framing_bytes'])} framing, {result['rounds']} rounds"
    )
    print(
        f"time          {result['seconds']:.3f} s"
        + (f" (network shaped: {result['net']})" if result.get("net") else "")
    )
    print(f"setup         {_fmt_bytes(result['setup_bytes'])}, {result['setup_seconds']:.3f} s")
    for name, secs in result.get("estimates", {}).items():
        print(f"estimate {name:4} {secs:.3f} s")
    skip = {
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
    }
    for key, value in result.items():
        if key not in skip:
            print(f"{key:13} {value}")


def _cmd_transcript(args: argparse.Namespace) -> int:
    summary = summarize(read_transcript(args.file), depth=args.depth)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    t = summary["total"]
    print(
        f"total: {_fmt_bytes(t['bytes_c2s'])} c2s, {_fmt_bytes(t['bytes_s2c'])} s2c, "
        f"{_fmt_bytes(t['framing'])} framing, {t['messages']} messages, {t['rounds']} rounds, "
        f"{t['seconds']:.3f} s"
    )
    print(f"{'path':40} {'c2s':>12} {'s2c':>12} {'msgs':>7} {'rounds':>7}")
    for path, row in summary["by_path"].items():
        print(
            f"{path:40} {_fmt_bytes(row['bytes_c2s']):>12} {_fmt_bytes(row['bytes_s2c']):>12} "
            f"{row['messages']:>7} {row['rounds']:>7}"
        )
    for name, est in summary["estimates"].items():
        print(
            f"estimate on {name}: {est['seconds']:.3f} s "
            f"({est['bandwidth_bps'] / 1e6:.0f} Mbit/s, {est['rtt_s'] * 1e3:g} ms RTT)"
        )
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from .model.config import preset_names
    from .model.weights import init_and_save

    if args.model_cmd == "presets":
        print("\n".join(preset_names()))
        return 0
    if args.preset not in preset_names():
        raise ValueError(f"unknown preset {args.preset!r}; choose from {preset_names()}")
    path = init_and_save(args.preset, args.out, args.seed)
    print(f"wrote {path} (and its config JSON)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secmoe`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            _check_net_args(parser, args)
            op = REGISTRY[args.op]
            op.params(args)  # validate the op's arguments before any connection
            _print_result(run_async(run_bench(op, args)), args.json)
        elif args.command == "transcript":
            return _cmd_transcript(args)
        elif args.command == "model":
            return _cmd_model(args)
        elif args.command == "demo":
            from .app import run_demo

            return run_demo(args)
        elif args.command in ("serve", "infer"):
            from .app import run_infer, run_serve
            from .bench.runner import tls_from_args

            tls = tls_from_args(args)
            return run_serve(args, tls) if args.command == "serve" else run_infer(args, tls)
    except KeyboardInterrupt:
        print("secmoe: interrupted", file=sys.stderr)
        return 130
    except (NetError, PartyError, ValueError, OSError) as exc:
        print(f"secmoe: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())

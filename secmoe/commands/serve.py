"""``secmoe serve``: the server. Sessions run side by side up to ``--max-sessions``; more
clients wait in a bounded queue (each told its place), beyond it they are refused with the
reason. A session serves as many batches as its client sends (one setup), within its TTL and
its keys' flooding budget. Any failure, of whatever kind, ends only its own session: logged
with time, peer and reason, the reason sent to the client."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from ..app import APP_PARAMS, load_model, log, mb, peer, release_memory, rss_bytes, run_async
from ..bench.runner import instrument, tls_from_args
from ..distributed.runtime import add_worker_args, check_worker_args, server_pool
from ..model.expert_store import ExpertStore
from ..model.fold import FoldError, fold_norms
from ..model.generate import GENERATE, serve_generate
from ..model.session import (
    DEFAULT_SESSION_TTL,
    DEFAULT_SETUP_IDLE,
    SESSION_KINDS,
    KindHandler,
    MemoryBudget,
    SessionRefused,
    serve_session,
)
from ..model.weights import ModelWeights
from ..net import Channel, NetError
from ..net.tcp import Listener, listen, parse_hostport
from ..ops.linear import DEFAULT_CACHE_BUDGET
from ..progress import Reporter
from .args import BATCH, MAX_TOKENS, add_shaping_arg, add_tls_args, positive_float, positive_int

NAME = "serve"
HELP = "the server: answer private-inference sessions"

#: The session kinds this server serves, by the request's ``kind`` (one line per kind).
KINDS: dict[str, KindHandler] = {**SESSION_KINDS, GENERATE: serve_generate}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="bundled", help="safetensors file/dir or 'bundled'")
    p.add_argument(
        "--no-fold-norms",
        dest="fold_norms",
        action="store_false",
        help="keep the norms' γ on shares (default: fold it into the following weights where "
        "the model allows, secmoe.model.fold: the same function, fewer bytes)",
    )
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--sessions", type=positive_int, help="exit after this many sessions")
    p.add_argument(
        "--max-sessions",
        type=positive_int,
        default=1,
        help="sessions served at the same time (default 1); more clients wait in the queue",
    )
    p.add_argument(
        "--queue",
        type=int,
        default=8,
        metavar="N",
        help="clients that may wait for a session (default 8; each is told its place); more "
        "are refused (server busy)",
    )
    p.add_argument(
        "--max-memory",
        type=positive_int,
        metavar="MB",
        help="memory the sessions may plan to use together: a session whose planned memory "
        "exceeds what is free is refused with the figures (default: no limit)",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=BATCH,
        help=f"refuse batches of more sequences (default {BATCH}): memory grows with the batch",
    )
    p.add_argument(
        "--allow-insecure-reveal",
        action="store_true",
        help="accept the INSECURE reveal strategy (it leaks the routing)",
    )
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=MAX_TOKENS,
        help=f"refuse batches of more tokens B·T (default {MAX_TOKENS}): memory and the "
        "session's HE work grow with them",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="per-wait deadline (s)")
    p.add_argument(
        "--setup-timeout",
        type=positive_float,
        default=DEFAULT_SETUP_IDLE,
        help=f"until the online phase, and between batches, drop a client silent this long "
        f"(default {DEFAULT_SETUP_IDLE:g} s)",
    )
    p.add_argument(
        "--session-timeout",
        type=positive_float,
        help="deadline of a session's setup and first batch, then of each batch (default: "
        "derived from the request: 10 min + 1 s per token, layer, 64 model dimensions and "
        "expert)",
    )
    p.add_argument(
        "--session-ttl",
        type=positive_float,
        default=DEFAULT_SESSION_TTL,
        help=f"start no new batch in a session after this long (default "
        f"{DEFAULT_SESSION_TTL:g} s); the client continues in a new session",
    )
    p.add_argument(
        "--skip-zero-blocks",
        action="store_true",
        help="skip all-zero weight blocks in HE products: faster on sparse weights, but LEAKS "
        "which blocks are zero to the client through timing",
    )
    p.add_argument(
        "--weight-cache",
        type=positive_int,
        default=DEFAULT_CACHE_BUDGET >> 20,
        metavar="MB",
        help=f"memory for a session's encoded weights (default {DEFAULT_CACHE_BUDGET >> 20}; "
        "beyond it weight blocks are encoded when used: slower). SEAL's memory pool keeps it "
        "after the session for the next one, so it bounds the server's resident memory",
    )
    p.add_argument(
        "--model-id",
        help="a name for the model sent to clients (default: none; no digest of the weights "
        "is ever sent)",
    )
    add_worker_args(p)
    p.add_argument(
        "--expert-dir",
        metavar="DIR",
        help="with --workers: keep the experts' float weights in anonymous files in DIR, "
        "mapped, and drop them from memory once the workers hold them (read back for a worker "
        "that restarts); DIR needs the experts' float32 bytes free, on a disk, not a tmpfs "
        "(default: the system's temporary directory)",
    )
    add_shaping_arg(p, "shape what this side sends")
    p.add_argument(
        "--accept-timeout",
        type=float,
        default=None,
        help="give up waiting for a client after this long (s)",
    )
    add_tls_args(p)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.queue < 0:
        parser.error(f"--queue must be at least 0, got {args.queue}")
    check_worker_args(parser, args)
    if args.expert_dir is not None and not args.workers:
        parser.error("--expert-dir is where the coordinator of --workers N keeps the experts")
    if args.expert_dir is not None and not Path(args.expert_dir).is_dir():
        parser.error(f"--expert-dir {args.expert_dir}: not a directory")


def run(args: argparse.Namespace) -> None:
    run_async(_serve(args))


def expert_store(args: argparse.Namespace) -> ExpertStore | None:
    """With ``--workers``, where the coordinator keeps the experts' float weights (it only
    reads them to send them to the workers): files in ``--expert-dir``; else None (memory)."""
    if not args.workers:
        return None
    store = ExpertStore(args.expert_dir)
    if store.in_memory:
        log(
            f"the experts' float weights go to {store.directory}, a file system in memory: "
            "they take memory there (--expert-dir DIR on a disk frees it)"
        )
    return store


def served_weights(args: argparse.Namespace) -> ModelWeights:
    """The model as served: with the norms' γ folded into the following weights unless
    ``--no-fold-norms`` or the model does not allow it (logged with the reason); with
    ``--workers``, its experts in an :class:`~secmoe.model.expert_store.ExpertStore`, not in
    memory."""
    weights = _folded(args, load_model(args.model, expert_store(args)))
    if weights.store is not None:
        weights.store.release()  # what loading and folding read and wrote
    return weights


def _folded(args: argparse.Namespace, weights: ModelWeights) -> ModelWeights:
    if not args.fold_norms:
        return weights
    try:
        folded = fold_norms(weights)
    except FoldError as exc:
        log(f"serving with the norms' γ on shares: {exc}")
        return weights
    log("the norms' γ is folded into the following weights (--no-fold-norms keeps it)")
    return folded


async def _serve(args: argparse.Namespace) -> None:
    weights = served_weights(args)
    with server_pool(args) as args.pool:  # --workers: Ray actors while the server runs
        if args.pool is not None:
            where = f"the Ray cluster at {args.ray_address}" if args.ray_address else "this host"
            log(f"{args.workers} worker(s) on {where} hold the encoded weights")
        await _listen(args, weights)


async def _listen(args: argparse.Namespace, weights: ModelWeights) -> None:
    host, port = parse_hostport(args.listen)
    lst = await listen(
        host,
        port,
        params=APP_PARAMS,
        tls=tls_from_args(args),
        timeout=args.timeout,
        max_sessions=args.max_sessions,
        max_queue=args.queue,
    )
    log(
        f"serving {weights.config.name} on {host}:{lst.port}: {args.max_sessions} session(s) at "
        f"a time, {args.queue} may wait (RSS {mb(rss_bytes())}{_experts_note(weights)})"
    )
    # side by side, sessions log plain lines (one live terminal display at a time)
    console = Console(stderr=True, force_terminal=False) if args.max_sessions > 1 else None
    reporter = Reporter(console=console, line=log)
    memory = MemoryBudget(args.max_memory * 10**6) if args.max_memory else None
    started, running = 0, set()
    try:
        while args.sessions is None or started < args.sessions:
            try:
                ch = await lst.accept(args.accept_timeout)
            except NetError as exc:  # not a session: the budget counts sessions that started
                log(f"rejected a connection: {exc}")
                continue
            started += 1
            task = asyncio.ensure_future(
                _session(args, weights, ch, started, reporter, memory, lst)
            )
            running.add(task)
            task.add_done_callback(running.discard)
        await lst.close()  # no more sessions: waiting clients are told at once
        if running:
            await asyncio.wait(running)
    finally:
        for task in running:
            task.cancel()
        await lst.close()


def _experts_note(weights: ModelWeights) -> str:
    """Where the experts' float weights are, for the log: nothing when in memory."""
    store = weights.store
    if store is None:
        return ""
    resident = store.resident_bytes()
    held = "" if resident is None else f", {mb(resident)} of them resident"
    return f"; the experts' {mb(store.nbytes)} mapped from files in {store.directory}{held}"


async def _session(
    args: argparse.Namespace,
    weights: ModelWeights,
    ch: Channel,
    number: int,
    reporter: Reporter,
    memory: MemoryBudget | None,
    lst: Listener,
) -> None:
    name = f"session {number} from {peer(ch)}"
    before = rss_bytes()
    log(f"{name}: started (RSS {mb(before)})")
    try:
        with reporter.session(name, ch.stats, "server", weights.config.n_layers) as progress:
            outcome = await _serve_one(args, weights, ch, progress, memory)
    except Exception as exc:  # outside the session's own handling: still only this session
        outcome = f"failed: {type(exc).__name__}: {exc}"
    finally:
        lst.release()
    del ch  # nothing of the session stays referenced (its error's traceback holds it)
    release_memory()
    log(
        f"{name}: {outcome} (RSS {mb(before)} before, {mb(rss_bytes())} after"
        f"{_experts_note(weights)})"
    )


async def _serve_one(
    args: argparse.Namespace,
    weights: ModelWeights,
    ch: Channel,
    progress: Any,
    memory: MemoryBudget | None,
) -> str:
    """One session; returns its outcome for the log. Whatever goes wrong ends only this
    session, and the reason is sent to the client."""
    instrument(ch, args.net, None)
    try:
        res = await serve_session(
            ch,
            weights,
            kinds=KINDS,
            progress=progress,
            allow_insecure=args.allow_insecure_reveal,
            max_batch=args.max_batch,
            max_tokens=args.max_tokens,
            setup_idle=args.setup_timeout,
            session_timeout=args.session_timeout,
            session_ttl=args.session_ttl,
            skip_zero_blocks=args.skip_zero_blocks,
            cache_budget=args.weight_cache << 20,
            model_id=args.model_id,
            memory=memory,
            pool=args.pool,
        )
        outcome = (
            f"done in {res.setup_seconds:.2f} s setup + {res.seconds:.2f} s for {res.batches} "
            f"batch(es)" + (f"; ended: {res.ended}" if res.ended else "")
        )
    except SessionRefused as exc:  # the client already has the reason in the answer
        outcome = f"refused: {exc}"
    except NetError as exc:
        outcome = f"ended: {exc}"
        await ch.abort(str(exc))
    except Exception as exc:  # a session must never end the server
        outcome = f"failed: {type(exc).__name__}: {exc}"
        await ch.abort(f"server error: {type(exc).__name__}: {exc}")
    finally:
        await ch.close()
    return f"{outcome}; peak buffered {mb(ch.session.peak_buffered)}"


def render(_: dict[str, Any]) -> Iterator[str]:
    return iter(())

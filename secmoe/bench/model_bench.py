"""``secmoe bench model``: the whole secure forward pass of a model, with a per-layer table.

The model is a preset on seeded random weights (:func:`secmoe.model.lazy_weights.
lazy_random_weights`: the weights are the server's public benchmark model, not secrets) or a
checkpoint (``--model DIR``). The weights are **streamed**: layer i is generated (or taken from
the checkpoint) when the forward pass reaches it, the server encodes that layer's weights for
HE then (and drops the previous layer's encodings), so no party ever holds more than about one
layer's weights and encodings: switch-base-128 runs without its 15 GB of float32.

Both parties run :func:`secmoe.model.secure.secure_forward` unchanged, after the session's
setup (:func:`secmoe.model.session.setup_inference`: base OTs, HE keys with the session's
flooding budget; the server sends the public config first). What is reported:

- ``setup_*``: base OTs, HE keys, the config and the top-level weights' encoding; plus
  ``encode_seconds``: the per-layer weight encoding (server-local, no messages), which runs
  inside the forward pass but is timed apart and **excluded** from ``seconds``;
- ``seconds``, ``estimates``, ``*_cpu_seconds``: the online forward pass without the encoding;
- ``layers``: one row per layer part (embedding; per layer the two norms, attention, the dense
  FFN or the MoE's route / experts / dispatch / combine parts; final norm and output) with bytes
  each way, messages, rounds (flights on the critical path), wall seconds, each party's CPU
  seconds and LAN/WAN estimates; ``groups`` and ``per_layer``: the same summed by kind and by
  layer. Rows add up to the totals (a test checks it). ``server_linear_cpu_seconds`` (each
  row, and the total): the part of the server's CPU seconds in the plain-weight HE products
  (``HEState.linear_seconds``: attention projections, dense FFN, router, the experts of
  ``all`` and ``dispatch``, …; with ``--workers`` the coordinator's share), what the cost
  model (:mod:`secmoe.distributed.predict`) moves to the workers;
- ``peak_rss_mb`` of each party and the load average before and after (times depend on load;
  bytes and rounds do not).
- with ``select``: the server's ``select_*_seconds`` (the selections' steps, wall and CPU,
  summed over the MoE layers: what ``--predict`` projects from), ``select_weights_bytes`` (held
  at the end: the embedded server keeps only the last MoE layer's; with ``--workers N`` each
  worker its shards of every layer) and ``worker_cpu_seconds`` (since the setup: with the
  layout of the streamed layers' shards, which the workers do during the run).

``--workers N`` / ``--ray-address``: the experts of ``select`` on N Ray workers, as in
``secmoe bench moe`` (bytes and rounds unchanged); ``--predict W…``: the cost model's
projection (:mod:`secmoe.distributed.predict`) after a run with the embedded server.

Time attribution: each party's recorder charges the wall and CPU time since its previous
message to the part (fork path) of the message it sends or receives next; the wall column is
the server's (its clock stops while it encodes a layer), the CPU columns are each party's. In
one process (no ``--party``) both parties share a process: both CPU figures are the process's.

``--layers N`` runs the first N blocks only (with the embedding, final norm and head): e.g. 2
= one dense and one MoE block of a Switch model, from which ``benchmarks/paper_table.py``
composes the whole model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..crypto.prg import PRG
from ..distributed.predict import add_predict_arg
from ..distributed.runtime import add_worker_args
from ..model.config import ModelConfig, preset, preset_names
from ..model.expert_store import ExpertStore
from ..model.fixed import run_fixed
from ..model.fold import FoldError, fold_norms
from ..model.lazy_weights import StreamedLayers, lazy_random_weights, materialize
from ..model.plan_work import announce_work
from ..model.secure import NORM_PRODUCTS, RunOptions, moe_spec, secure_forward
from ..model.session import (
    MAX_UNION_BITS,
    flood_demand,
    setup_inference,
    union_bits_for,
    weights_to_prepare,
)
from ..model.weights import Layer, ModelWeights, MoE, load_weights
from ..net import Channel
from ..net.shaping import PROFILES
from ..net.stats import Counter
from ..ops.linear import HEState, prepare, prepare_select
from ..ops.moe import STRATEGIES
from ..progress import Reporter
from ..protocols.party import Party
from .moe_bench import select_figures
from .registry import BenchOp, register
from .runner import swap

#: The MoE fork names that combine the experts' outputs or move tokens to/from buckets.
_COMBINE = {"scale", "combine"}
_DISPATCH = {"dispatch", "gather", "scatter"}


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help=f"a preset ({', '.join(preset_names())})")
    p.add_argument("--model", metavar="DIR", help="a checkpoint (file or directory) instead")
    p.add_argument("--tokens", type=int, default=8, help="tokens in the sequence (default 8)")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="select",
        help="MoE strategy: select (the paper), all, dispatch, reveal (INSECURE)",
    )
    p.add_argument(
        "--capacity-factor",
        type=float,
        help="C = ⌈cf·k·T/E⌉ per expert instead of the model's own capacity (drops tokens the "
        "model keeps when C < T: a different function, labelled in the output)",
    )
    p.add_argument(
        "--norm-products",
        choices=NORM_PRODUCTS,
        default="ot",
        help="the norms' row products: by COTs (default) or by HE where fewer bytes",
    )
    p.add_argument("--layers", type=int, help="run only the first N blocks (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the random weights' public seed")
    p.add_argument(
        "--no-fold-norms",
        dest="fold_norms",
        action="store_false",
        help="keep the norms' γ on shares (default: the server folds it into the following "
        "weights where it can, as `secmoe serve` does: model.fold)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="compare the output with the fixed-point reference (small presets: the client "
        "regenerates the whole model)",
    )
    add_worker_args(p)
    add_predict_arg(p)


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The config the bench runs: the preset's or the checkpoint's, cut to ``--layers``."""
    if (args.preset is None) == (args.model is None):
        raise ValueError("give exactly one of --preset NAME or --model DIR")
    if args.preset is not None:
        cfg = preset(args.preset)
    else:
        if not Path(args.model).exists():
            raise ValueError(f"--model {args.model}: no such file or directory")
        cfg = load_weights(args.model).config
    if args.layers is not None:
        if not 1 <= args.layers <= cfg.n_layers:
            raise ValueError(f"--layers {args.layers} outside [1, {cfg.n_layers}]")
        keep = tuple(i for i in cfg.moe_layers if i < args.layers)
        cfg = cfg.replace(n_layers=args.layers, moe_layers=keep)
    if not 1 <= args.tokens <= cfg.seq_len:
        raise ValueError(f"--tokens {args.tokens} outside [1, {cfg.seq_len}] for {cfg.name}")
    return cfg


def _params(args: argparse.Namespace) -> dict[str, Any]:
    _options(args)  # validates the capacity factor
    if args.check and args.model is not None:
        raise ValueError("--check needs --preset (the client regenerates the random weights)")
    if args.model is None:
        model_config(args)  # validates the preset, --layers and --tokens
    name = args.preset or Path(args.model).name
    return {
        "model": name,
        "tokens": args.tokens,
        "strategy": args.strategy,
        "capacity_factor": args.capacity_factor,
        "layers": args.layers,
        "seed": args.seed,
        "fold_norms": args.fold_norms,
        "norm_products": args.norm_products,
    }


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(args.strategy, args.capacity_factor, norm_products=args.norm_products)


# --------------------------------------------------------------------------------------------
# Where time goes: a recorder charging wall and CPU time to the part of the next message
# --------------------------------------------------------------------------------------------


def part_of(path: str) -> tuple[str, str]:
    """(row, group) of a message's fork path: the model part it belongs to."""
    parts = path.split("/")
    head = parts[0]
    if head in ("input", "embed"):
        return "embed", "embedding"
    if head.startswith("layer") and len(parts) > 1:
        sub = parts[1]
        if sub.endswith("_norm"):
            return f"{head}/{sub}", "norms"
        if sub == "attn":
            return f"{head}/attn", "attention"
        if sub == "ffn":
            return f"{head}/ffn", "dense FFN"
        if sub == "moe" and len(parts) > 2:
            op, inner = parts[2], parts[3] if len(parts) > 3 else ""
            if op in ("route", "capacity"):
                return f"{head}/moe/{op}", "MoE route"
            if op in _COMBINE:
                return f"{head}/moe/{op}", "MoE combine"
            if inner in _DISPATCH:
                return f"{head}/moe/{op}/{inner}", "MoE dispatch"
            if inner in _COMBINE:
                return f"{head}/moe/{op}/{inner}", "MoE combine"
            return f"{head}/moe/{op}", "MoE experts"
    if head == "final_norm":
        return "final_norm", "norms"
    if head in ("mean", "head", "output"):
        return "head", "head/output"
    if head == "ot":  # the OT pool's refills, shared by every part
        return "ot", "OT pool refills"
    return path, "other"


class Clock:
    """A recorder: per row, the wall and CPU seconds since this party's previous message
    (online phase only), with :meth:`paused` intervals (the server's layer encoding) excluded
    and totalled apart; and, given the server's ``HEState.linear_seconds`` (``linear``: its
    ``cpu`` grows in place as each plain-weight HE product ends, before its reply is sent),
    the growth of that CPU since the previous message, charged likewise (the part of the row's
    CPU seconds in plain-weight HE products). Chains to another recorder (a transcript) if
    given."""

    def __init__(self, inner: Any = None, linear: dict[str, float] | None = None) -> None:
        self.inner = inner
        self.he_linear = {} if linear is None else linear
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.linear: dict[str, float] = {}
        self.encode_wall = self.encode_cpu = 0.0
        self.encode_layers: dict[int, float] = {}
        self.start()

    def _now(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), self.he_linear.get("cpu", 0.0)

    def start(self) -> None:
        """Start charging from now."""
        self.last = self._now()

    def __call__(self, event: dict[str, Any], payload: bytes = b"") -> None:
        if self.inner is not None:
            self.inner(event, payload)
        if event.get("phase", "online") != "online":
            return
        now = self._now()
        row, _ = part_of(event["path"])
        for acc, a, b in zip((self.wall, self.cpu, self.linear), self.last, now, strict=True):
            acc[row] = acc.get(row, 0.0) + b - a
        self.last = now

    @contextlib.contextmanager
    def paused(self, layer: int | None = None) -> Iterator[None]:
        """Exclude what runs inside from the rows; total it as layer ``layer``'s encoding
        (None: not an encoding, e.g. the server making a streamed layer's weights, which a
        deployed server has in memory before any session)."""
        w0, c0 = time.perf_counter(), time.process_time()
        yield
        dw, dc = time.perf_counter() - w0, time.process_time() - c0
        self.last = (self.last[0] + dw, self.last[1] + dc, self.last[2])
        if layer is not None:
            self.encode_wall += dw
            self.encode_cpu += dc
            self.encode_layers[layer] = self.encode_layers.get(layer, 0.0) + dw


# --------------------------------------------------------------------------------------------
# The server's streamed weights and their encoding
# --------------------------------------------------------------------------------------------


class LayerEncoder:
    """The server's hook on each layer access: drop the previous layer's weight encodings
    (and give their memory budget back), encode this layer's for the run's batch shape, all
    timed apart on the :class:`Clock`."""

    def __init__(
        self,
        p: Party,
        weights: ModelWeights,
        shape: tuple[int, int],
        options: RunOptions,
        clock: Clock,
    ) -> None:
        self.p, self.weights, self.shape, self.options, self.clock = (
            p,
            weights,
            shape,
            options,
            clock,
        )
        #: With workers, each layer's experts go to files (the coordinator keeps the layers
        #: the workers' recipes refer to, to resend a restarted worker its shards: in memory
        #: they would add up to the whole model's experts).
        self.store = ExpertStore() if self.state.pool is not None else None
        top = dataclasses.replace(weights, layers=[])
        for w, rows in weights_to_prepare(top, shape, options):
            prepare(p, w, rows)
        st = self.state
        self.base = (set(st.encoded), set(st.selects), st.cache_budget)

    @property
    def state(self) -> HEState:
        assert isinstance(self.p.he, HEState)
        return self.p.he

    def _evict(self) -> None:
        st, (enc, sel, budget) = self.state, self.base
        for cache, keep in ((st.encoded, enc), (st.selects, sel)):
            for k in set(cache) - keep:
                del cache[k]
        st.cache_budget = budget

    def __call__(self, i: int, layer: Layer) -> None:
        cfg = self.weights.config
        with self.clock.paused(i):
            self._evict()
            if self.store is not None and isinstance(layer.ffn, MoE):
                _store_experts(layer.ffn, self.store)
            one = cfg.replace(n_layers=1, moe_layers=(0,) if cfg.is_moe(i) else ())
            view = dataclasses.replace(self.weights, config=one, layers=[layer])
            for w, rows in weights_to_prepare(view, self.shape, self.options):
                prepare(self.p, w, rows)
            if self.options.strategy == "select" and cfg.is_moe(i):
                f, rows = layer.ffn, self.shape[0] * self.shape[1]
                prepare_select(self.p, [m for m in (f.w1, f.v) if m is not None], rows)
                prepare_select(self.p, [f.w2], rows)
            if self.store is not None:
                self.store.release()


def _store_experts(ffn: MoE, store: ExpertStore) -> None:
    """Move an MoE layer's expert stacks into ``store`` (the layer is the one the run uses:
    the workers' recipes then refer to the files, not to memory)."""
    for m in ("w1", "v", "w2"):
        if getattr(ffn, m) is not None:
            setattr(ffn, m, store.copy(getattr(ffn, m)))


def _server_weights(args: argparse.Namespace, cfg: ModelConfig) -> ModelWeights:
    if args.model is None:
        return lazy_random_weights(cfg, args.seed)
    full = load_weights(args.model)
    return dataclasses.replace(
        full, config=cfg, layers=StreamedLayers(cfg.n_layers, full.layers.__getitem__)
    )


def folded(weights: ModelWeights) -> tuple[ModelWeights, str | None]:
    """The weights with the norms folded (:func:`~secmoe.model.fold.fold_norms`), else the
    weights as they are and why not. A streamed model folds each layer when read: its first
    layer is read here (once) so that a problem shows before the run, not in it."""
    try:
        out = fold_norms(weights)
        out.layers[0]
    except FoldError as exc:
        return weights, str(exc)
    return out, None


def _client_inputs(cfg: ModelConfig, tokens: int, seed: int) -> np.ndarray:
    """The client's sequence: random token ids or patch features in [0, 1) (public seed: a
    benchmark input)."""
    rng = np.random.default_rng((seed, 1))  # not secret: a reproducible benchmark input
    if cfg.input == "tokens":
        return rng.integers(0, cfg.vocab_size or 1, size=(1, tokens))
    return rng.random((1, tokens, cfg.patch_dim or 1))


# --------------------------------------------------------------------------------------------
# The bench op
# --------------------------------------------------------------------------------------------


async def _setup(ch: Channel, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    options = _options(args)
    weights, refused = None, None
    if ch.role == "server":
        source = model_config(args)
        weights = _server_weights(args, source)
        if args.fold_norms:
            weights, refused = folded(weights)
        cfg = weights.config
        msg = {"config": cfg.to_json(), "source": source.to_json(), "fold_refused": refused}
        await ch.send(msg, tag="bench/model/config")
    else:
        msg = await ch.recv(tag="bench/model/config")
        cfg, refused = ModelConfig.from_json(msg["config"]), msg["fold_refused"]
    shape = (1, args.tokens)
    union_bits = union_bits_for(flood_demand(cfg, shape, options))
    if union_bits > MAX_UNION_BITS:
        raise ValueError(f"{cfg.name}: 2^{union_bits} flooded HE coefficients, too many")
    pool = getattr(args, "pool", None)  # --workers: the experts of select go to the workers
    p = await setup_inference(
        ch, PRG(), cfg, None, shape, options, union_bits=union_bits, pool=pool
    )
    worker_cpu = pool.cpu_seconds() if p.role == "server" and p.he.pool is not None else None
    clock = Clock(linear=p.he.linear_seconds if p.role == "server" else None)
    if p.role == "server":
        encoder = LayerEncoder(p, weights, shape, options, clock)
        source = weights.layers.__getitem__

        def produce(i: int) -> Layer:  # generated or read, and folded: not online work
            with clock.paused():
                return source(i)

        weights.layers = StreamedLayers(cfg.n_layers, produce, encoder)  # type: ignore[assignment]
    inputs = _client_inputs(cfg, args.tokens, args.seed) if p.role == "client" else None
    return {
        "p": p,
        "cfg": cfg,
        "options": options,
        "weights": weights,
        "inputs": inputs,
        "clock": clock,
        "shape": shape,
        "source": msg["source"],
        "fold_refused": refused,
        "setup_seconds": time.perf_counter() - t0,
        "load_start": load_start,
        "worker_cpu": worker_cpu,
    }


async def _run(ch: Channel, args: argparse.Namespace, st: dict[str, Any]) -> np.ndarray | None:
    clock: Clock = st["clock"]
    clock.inner = ch.session.recorder
    ch.session.recorder = clock
    clock.start()
    cfg, shape, options = st["cfg"], st["shape"], st["options"]
    # one bar: this party's over TCP, the client's when both parties run here
    shown = args.party is not None or ch.role == "client"
    reporter = Reporter(quiet=args.json or not shown)
    label = f"{cfg.name} {options.strategy} ({ch.role})"
    try:
        with reporter.session(label, ch.stats, ch.role, cfg.n_layers) as progress:
            announce_work(progress, cfg, options, shape)
            return await secure_forward(
                st["p"], cfg, st["weights"], st["inputs"], shape, options, progress
            )
    finally:
        ch.session.recorder = clock.inner


def _row_figures(
    cell: Counter,
    wall: float,
    cpu_c: float,
    cpu_s: float,
    lin_s: float,
    rounds: int | None = None,
) -> dict[str, Any]:
    wire, rounds = cell.bytes_total + cell.framing_total, cell.rounds if rounds is None else rounds
    return {
        "bytes_c2s": cell.bytes_c2s,
        "bytes_s2c": cell.bytes_s2c,
        "framing_bytes": cell.framing_total,
        "messages": cell.messages,
        "rounds": rounds,
        "seconds": round(wall, 4),
        "client_cpu_seconds": round(cpu_c, 4),
        "server_cpu_seconds": round(cpu_s, 4),
        "server_linear_cpu_seconds": round(lin_s, 4),
        **{n: round(pr.estimate(wall, wire, rounds), 4) for n, pr in PROFILES.items()},
    }


def layer_table(ch: Channel, client: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """The per-part rows, their sums by group and by layer, and the totals, from this party's
    online stats and both parties' clocks (``{"wall", "cpu", "linear"}`` per row)."""
    rows: dict[str, tuple[str, Counter]] = {}
    for (phase, path), cell in ch.stats.cells.items():
        if phase != "online":
            continue
        row, group = part_of(path)
        rows.setdefault(row, (group, Counter()))[1].merge(cell)
    out_rows, groups, per_layer = [], {}, {}
    total = Counter()
    for row, (group, cell) in rows.items():
        wall = server["wall"].get(row, 0.0)
        cpu_c, cpu_s = client["cpu"].get(row, 0.0), server["cpu"].get(row, 0.0)
        lin_s = server["linear"].get(row, 0.0)
        layer = row.split("/")[0]
        figs = _row_figures(cell, wall, cpu_c, cpu_s, lin_s)
        out_rows.append({"row": row, "group": group, **figs})
        for key, table in ((group, groups), (layer, per_layer)):
            acc = table.setdefault(key, [Counter(), 0.0, 0.0, 0.0, 0.0, 0])
            acc[0].merge(cell)
            for i, x in enumerate((wall, cpu_c, cpu_s, lin_s, cell.rounds), 1):
                acc[i] += x
        total.merge(cell)

    def summed(table: dict[str, list[Any]], add_rounds: bool) -> dict[str, Any]:
        return {k: _row_figures(*v[:5], v[5] if add_rounds else None) for k, v in table.items()}

    return {
        "layers": out_rows,
        "detail": detail(ch),
        # a group's rows run one after another (rounds add); a layer's rounds are its span
        "groups": summed(groups, add_rounds=True),
        "per_layer": summed(per_layer, add_rounds=False),
        "rows_bytes_total": total.bytes_total,
    }


def detail(ch: Channel) -> dict[str, dict[str, int]]:
    """Bytes, messages and rounds one fork level below each row (e.g. ``layer0/attn/softmax``),
    for the rows outside the blocks and those of blocks 0 and 1 (the others repeat them)."""
    out: dict[str, Counter] = {}
    for (phase, path), cell in ch.stats.cells.items():
        row, _ = part_of(path)
        top = row.split("/")[0]
        if phase != "online" or (top.startswith("layer") and top not in ("layer0", "layer1")):
            continue
        depth = row.count("/") + 2
        key = "/".join(path.split("/")[:depth]) if path.startswith(row + "/") else row
        out.setdefault(key, Counter()).merge(cell)
    return {
        k: {"bytes": c.bytes_total, "messages": c.messages, "rounds": c.rounds}
        for k, c in sorted(out.items())
    }


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def _check(
    ch: Channel, args: argparse.Namespace, st: dict[str, Any], out: np.ndarray | None
) -> dict[str, Any]:
    clock: Clock = st["clock"]
    mine = {
        "wall": clock.wall,
        "cpu": clock.cpu,
        "linear": clock.linear,
        "encode_wall": clock.encode_wall,
        "encode_cpu": clock.encode_cpu,
        "encode_layers": {str(k): v for k, v in clock.encode_layers.items()},
        "setup_seconds": st["setup_seconds"],
        "peak_rss_mb": _peak_rss_mb(),
        "bytes_total": ch.stats.total("online").bytes_total,
    }
    theirs = await swap(ch, mine, "bench/model/clock")
    client, server = (mine, theirs) if ch.role == "client" else (theirs, mine)
    table = layer_table(ch, client, server)
    online = sum(server["wall"].values())
    totals = ch.stats.total("online")
    wire = totals.bytes_total + totals.framing_total
    extra: dict[str, Any] = {
        **table,
        "config": st["cfg"].to_dict(),
        "norms_folded": st["cfg"].norms_folded,
        "fold_refused": st["fold_refused"],
        "seconds": online,
        "estimates": {
            n: round(pr.estimate(online, wire, totals.rounds), 3) for n, pr in PROFILES.items()
        },
        "client_cpu_seconds": sum(client["cpu"].values()),
        "server_cpu_seconds": sum(server["cpu"].values()),
        "server_linear_cpu_seconds": sum(server["linear"].values()),
        "encode_seconds": server["encode_wall"],
        "encode_cpu_seconds": server["encode_cpu"],
        "encode_seconds_per_layer": server["encode_layers"],
        "setup_seconds": max(client["setup_seconds"], server["setup_seconds"])
        + server["encode_wall"],
        "bytes_online_by_party": {"client": client["bytes_total"], "server": server["bytes_total"]},
        "peak_rss_mb": {"client": client["peak_rss_mb"], "server": server["peak_rss_mb"]},
        "one_process": args.party is None,
        "load_avg": {"start": list(st["load_start"]), "end": list(os.getloadavg())},
        "nproc": os.cpu_count(),
    }
    if args.strategy == "reveal":
        extra["INSECURE"] = True
    if ch.role == "server" and args.strategy == "select" and st["cfg"].moe_layers:
        pool, cfg = getattr(args, "pool", None), st["cfg"]
        extra |= select_figures(st["p"], pool, st["worker_cpu"], args.tokens, cfg.n_experts)
    if args.check and ch.role == "client":
        cfg = st["cfg"]
        cap = moe_spec(cfg, st["options"]).capacity_for(args.tokens)
        model = materialize(lazy_random_weights(ModelConfig.from_json(st["source"]), args.seed))
        if cfg.norms_folded:
            model = fold_norms(model)
        want = run_fixed(model, st["inputs"], capacity=cap).output
        err = np.abs(np.asarray(out, np.float64) - want)
        extra["max_abs_err_vs_fixed"] = float(err.max())
        extra["mean_abs_err_vs_fixed"] = float(err.mean())
    return extra


MODEL = register(
    BenchOp(
        "model",
        "the whole secure forward pass of a model (streamed weights), with a per-layer table",
        _args,
        _params,
        _run,
        _setup,
        _check,
    )
)

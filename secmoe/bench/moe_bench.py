"""``secmoe bench moe``: one secure MoE layer (router, top-k, gates, experts) per strategy.

The server's expert weights are random (a public seed: benchmark weights are not secrets); the
client's tokens are random too. Setup (OT base OTs, HE keys, the server's weight encoding and
the input sharing) is measured apart; the run is :func:`secmoe.ops.moe.moe`; the check reveals
the output to the client and compares it with the fixed-point emulation of the same layer
(:func:`secmoe.model.reference.moe_forward` with :class:`secmoe.model.fixed.FixedOps`), with
the same capacity (every strategy honours it) and gate rule.

Capacity: none by default (C = T, nothing dropped: Mixtral, Qwen3-MoE); ``--capacity`` or
``--capacity-factor`` set one (``select``/``all``/``reveal`` then also pay for the secret drop
mask when C < T). Gates: ``--norm-topk-prob`` true = renormalised over the top-k (Mixtral),
false = softmax over all E at the chosen experts (Switch, Qwen3-MoE's default); the default is
true for k > 1 and false for k = 1. A tiny Qwen3-MoE layer: ``--experts 64 --top-k 8 --ffn
swiglu --norm-topk-prob false``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..crypto.prg import PRG
from ..distributed.pool import ExpertPool
from ..distributed.predict import add_predict_arg
from ..distributed.runtime import add_worker_args
from ..model.config import ModelConfig
from ..model.fixed import FixedOps
from ..model.reference import moe_forward
from ..model.weights import MoE
from ..net import Channel
from ..ops.linear import prepare, prepare_select, select_chunk, setup_he
from ..ops.moe import INSECURE_STRATEGIES, STRATEGIES, ExpertWeights, MoESpec, moe
from ..progress import Reporter
from ..protocols.he_select import SelectWeights
from ..protocols.party import Party
from ..protocols.shares import reveal, share
from .registry import BenchOp, register

FFNS = ("relu", "gelu", "gated-gelu", "swiglu")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="select",
        help="select (the paper), all, dispatch (ours), reveal (INSECURE)",
    )
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--d-ff", type=int, default=3072)
    p.add_argument("--ffn", choices=FFNS, default="relu")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument(
        "--norm-topk-prob",
        choices=("auto", "true", "false"),
        default="auto",
        help="gates renormalised over the top-k (auto: true for k > 1, false for k = 1)",
    )
    p.add_argument(
        "--capacity-factor", type=float, help="C = ceil(cf·k·T/E) (default: no capacity, C = T)"
    )
    p.add_argument("--capacity", type=int, help="explicit C per expert (overrides the factor)")
    p.add_argument("--no-check", action="store_true", help="skip the plaintext comparison")
    add_worker_args(p)
    add_predict_arg(p)


def _norm_topk(args: argparse.Namespace) -> bool:
    return args.top_k > 1 if args.norm_topk_prob == "auto" else args.norm_topk_prob == "true"


def _spec(args: argparse.Namespace) -> MoESpec:
    return MoESpec(
        args.d_model,
        args.d_ff,
        args.experts,
        args.top_k,
        args.ffn,
        norm_topk=_norm_topk(args),
        capacity=args.capacity,
        capacity_factor=args.capacity_factor,
    )


def _params(args: argparse.Namespace) -> dict[str, Any]:
    if min(args.experts, args.tokens, args.d_model, args.d_ff) < 1 or args.experts < 2:
        raise ValueError("--experts ≥ 2; --tokens, --d-model, --d-ff ≥ 1")
    _spec(args)  # validates top-k, FFN kind, capacity
    return {
        k: getattr(args, k)
        for k in (
            "strategy",
            "experts",
            "tokens",
            "d_model",
            "d_ff",
            "ffn",
            "top_k",
            "norm_topk_prob",
            "capacity_factor",
            "capacity",
        )
    } | {"capacity_ran": _spec(args).capacity_for(args.tokens)}


def _weights(args: argparse.Namespace) -> MoE:
    """Random expert weights, N(0, 1/d) (public seed: benchmark weights are not secrets)."""
    rng = np.random.default_rng(12345)  # not secret: a reproducible benchmark model
    e, d, f = args.experts, args.d_model, args.d_ff
    g = args.ffn in ("gated-gelu", "swiglu")

    def mat(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-2])).astype(
            np.float32
        )

    return MoE(mat(d, e), mat(e, d, f), mat(e, f, d), mat(e, d, f) if g else None)


def layer_config(spec: MoESpec, tokens: int) -> ModelConfig:
    """A one-layer config whose MoE is ``spec`` (for the plaintext references of the layer)."""
    return ModelConfig(
        name="bench-moe",
        arch="mixtral" if spec.top_k > 1 else "switch",
        d_model=spec.d_model,
        n_heads=1,
        n_layers=1,
        d_ff=spec.d_ff,
        n_experts=spec.n_experts,
        top_k=spec.top_k,
        moe_layers=(0,),
        ffn=spec.ffn,
        norm="layernorm",
        seq_len=tokens,
        input="patches",
        patch_dim=spec.d_model,
        position="none",
        norm_topk_prob=spec.norm_topk,
    )


async def _setup(ch: Channel, args: argparse.Namespace) -> dict[str, Any]:
    spec, t = _spec(args), args.tokens
    select = args.strategy == "select"
    items = select_chunk(t, args.experts) * args.experts if select else 0
    p = await setup_he(await Party.setup(ch, PRG()), select_items=items)
    pool = getattr(args, "pool", None)
    if p.role == "server" and pool is not None:  # the encoded weights go to the workers
        p.he.pool = pool.session(list(p.he.keys.values()), p.he)
    w = None
    x_plain = None
    if p.role == "server":
        m = _weights(args)
        w = ExpertWeights(m.router, m.w1, m.w2, m.v)
        prepare(p, w.router, t)
        rows = {"all": t, "dispatch": spec.capacity_for(t)}.get(args.strategy)
        for e in range(args.experts) if rows else ():
            for mat in (w.w1, w.v, w.w2):
                if mat is not None:
                    prepare(p, mat[e], rows)
        if select:
            prepare_select(p, [m for m in (w.w1, w.v) if m is not None], t)
            prepare_select(p, [w.w2], t)
    else:
        x_plain = np.asarray(
            PRG(b"secmoe-bench-moe").uint64((t, args.d_model)) % np.uint64(1 << 19), np.int64
        )
        x_plain = p.ring.from_signed(x_plain - (1 << 18))  # uniform in [−1, 1)
    x = await share(p.fork("input"), x_plain, "client", (t, args.d_model))
    cpu = pool.cpu_seconds() if p.he.pool is not None else None  # the workers' CPU so far
    return {"p": p, "w": w, "x": x, "x_plain": x_plain, "worker_cpu": cpu}


async def _run(ch: Channel, args: argparse.Namespace, st: dict[str, Any]) -> np.ndarray:
    # one bar (a layer of one): this party's over TCP, the client's when both run here
    shown = args.party is not None or ch.role == "client"
    reporter = Reporter(quiet=args.json or not shown)
    label = f"MoE layer E={args.experts} {args.strategy} ({ch.role})"
    with reporter.session(label, ch.stats, ch.role, 1) as progress:
        out = await moe(st["p"].fork("moe"), st["x"], st["w"], _spec(args), args.strategy)
        progress("layer 1/1 done")
    return out


async def _check(
    ch: Channel, args: argparse.Namespace, st: dict[str, Any], out: np.ndarray
) -> dict[str, Any]:
    p: Party = st["p"]
    extra = {"INSECURE": True} if args.strategy in INSECURE_STRATEGIES else {}
    if p.role == "server":  # every strategy: the plain-weight products' and workers' figures
        pool = getattr(args, "pool", None)
        extra |= select_figures(p, pool, st["worker_cpu"], args.tokens, args.experts)
    if args.no_check:
        return extra
    got = await reveal(p.fork("check"), out, to="client")
    if p.role != "client":
        return extra
    cfg, ring = layer_config(_spec(args), args.tokens), p.ring
    x = st["x_plain"][None]
    cap = _spec(args).capacity_for(args.tokens)
    want, _ = moe_forward(FixedOps(ring), x, _weights(args), cfg, 0, cap)
    err = np.abs(ring.decode(got) - ring.decode(want[0]))
    return {
        **extra,
        "max_abs_err_vs_fixed": float(err.max()),
        "mean_abs_err_vs_fixed": float(err.mean()),
    }


def select_figures(
    p: Party, pool: ExpertPool | None, cpu_before: list[float] | None, tokens: int, experts: int
) -> dict[str, Any]:
    """Server (every strategy): the encoded selection weights held now (bytes in this process,
    or per worker), the server's seconds in the selections' steps and its CPU seconds in the
    plain-weight HE products (``linear_cpu_seconds``: the coordinator's share with workers),
    the one-hot entries of one selection (``tokens`` chunked as the selections are, times
    ``experts``: for the cost model) and the workers' CPU seconds since the setup (the run and
    its check; they do nothing else)."""
    steps = {f"select_{k}_seconds": round(v, 3) for k, v in p.he.select_seconds.items()}
    steps["select_leaves"] = select_chunk(tokens, experts) * experts
    steps["linear_cpu_seconds"] = round(p.he.linear_seconds.get("cpu", 0.0), 3)
    if pool is None or cpu_before is None:
        local = sum(w.nbytes for w in p.he.selects.values() if isinstance(w, SelectWeights))
        return {"workers": 0, "select_weights_bytes": [local], **steps}
    cpu = [round(b - a, 3) for a, b in zip(cpu_before, pool.cpu_seconds(), strict=True)]
    return {
        "workers": pool.workers,
        "select_weights_bytes": pool.encoded_bytes("select"),
        "linear_weights_bytes": pool.encoded_bytes("linear"),
        "worker_cpu_seconds": cpu,
        **steps,
    }


MOE = register(
    BenchOp(
        "moe",
        "one secure MoE layer (router, top-k, gates, experts)",
        _args,
        _params,
        _run,
        _setup,
        _check,
    )
)

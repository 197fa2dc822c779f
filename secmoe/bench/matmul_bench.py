"""``secmoe bench matmul --shape TxDxH --mode {plain-weight,secret-secret,select}``: HE linear.

- ``plain-weight``: shared X (T×D) times the server's W (D×H) (:mod:`secmoe.protocols.he_linear`);
- ``secret-secret``: shared A (T×D) times shared B (D×H), ``--heads`` of them at once;
- ``select``: each of T tokens times its own expert's W (D×H), chosen by a shared one-hot among
  ``--experts`` (:mod:`secmoe.protocols.he_select`).

Setup (HE keys; the server's weight encoding) is measured apart. The check reveals the result
to the client and compares it with numpy mod 2^64 (``exact``). Inputs and weights come from a
public seed (benchmark data is not secret); weights are 16-bit signed integers.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..crypto.he_params import HE_8K, HE_16K
from ..crypto.prg import PRG
from ..net import Channel
from ..ops.linear import setup_he
from ..protocols.he_linear import encode_weights, matmul_client, matmul_server, plan_matmul
from ..protocols.he_secret import plan_secret_matmul, secret_matmul_client, secret_matmul_server
from ..protocols.he_select import encode_select_weights, plan_select, select_client, select_server
from ..protocols.party import Party
from ..protocols.shares import reveal
from .registry import BenchOp, register

MODES = ("plain-weight", "secret-secret", "select")
W_BITS = 16


def _shape(text: str) -> tuple[int, int, int]:
    try:
        t, d, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape must be TxDxH (e.g. 8x768x3072), got {text!r}") from None
    if min(t, d, h) < 1:
        raise ValueError("--shape dimensions must be positive")
    return t, d, h


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="8x768x3072", help="T x D x H")
    p.add_argument("--mode", choices=MODES, default="plain-weight")
    p.add_argument("--experts", type=int, default=8, help="select: experts")
    p.add_argument("--heads", type=int, default=1, help="secret-secret: products at once")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    t, d, h = _shape(args.shape)
    if args.experts < 1 or args.heads < 1:
        raise ValueError("--experts and --heads must be positive")
    return {"shape": [t, d, h], "mode": args.mode, "experts": args.experts, "heads": args.heads}


def _data(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Public benchmark data: shares of the inputs for both parties, and the weights."""
    t, d, h = _shape(args.shape)
    g = PRG(b"secmoe-bench-mm!")
    k = args.heads
    lim = (1 << (W_BITS - 1)) - 1  # the public bound is |W| < 2^(W_BITS−1)
    w = g.below(2 * lim + 1, (args.experts, d, h)).astype(np.int64) - lim
    onehot = np.zeros((t, args.experts), np.uint64)
    onehot[np.arange(t), g.below(args.experts, t).astype(int)] = 1
    r = g.ring((t, args.experts))
    return {"x": g.uint64((k, t, d)), "y": g.uint64((k, d, h)), "w": w, "onehot": (onehot - r, r)}


async def _setup(ch: Channel, args: argparse.Namespace) -> dict[str, Any]:
    t, d, h = _shape(args.shape)
    items = t * args.experts if args.mode == "select" else 0
    p = await setup_he(await Party.setup(ch, PRG()), select_items=items)
    st: dict[str, Any] = {"p": p, "data": _data(args)}
    if args.mode == "plain-weight":
        st["plan"] = plan_matmul(t, d, [h], HE_8K, w_bits=W_BITS)
        if p.role == "server":
            st["enc"] = encode_weights(p.he.server(HE_8K).ctx, [st["data"]["w"][0]], st["plan"])
    elif args.mode == "secret-secret":
        st["plan"] = plan_secret_matmul(t, d, h, args.heads, HE_16K)
    else:
        st["plan"] = plan_select(t, args.experts, d, [h], HE_16K, w_bits=W_BITS)
        if p.role == "server":
            st["enc"] = encode_select_weights([[w] for w in st["data"]["w"]], st["plan"])
    return st


def _mine(role: str, x: np.ndarray) -> np.ndarray:
    """A party's share of public benchmark data: the client holds x, the server zero."""
    return x if role == "client" else np.zeros_like(x)


async def _run(ch: Channel, args: argparse.Namespace, st: dict[str, Any]) -> np.ndarray:
    p: Party = st["p"]
    data, plan, role = st["data"], st["plan"], ch.role
    x = _mine(role, data["x"])
    if args.mode == "plain-weight":
        if role == "client":
            return (await matmul_client(ch, p.he.client(HE_8K), x[0], plan, p.prg))[0]
        return (await matmul_server(ch, p.he.server(HE_8K), x[0], st["enc"], p.prg))[0]
    if args.mode == "secret-secret":
        y = _mine(role, data["y"])
        if role == "client":
            return await secret_matmul_client(ch, p.he.client(HE_16K), x, y, plan, p.prg)
        return await secret_matmul_server(ch, p.he.server(HE_16K), x, y, plan, p.prg)
    t_sh = data["onehot"][0 if role == "client" else 1]
    if role == "client":
        return (await select_client(ch, p.he.client(HE_16K), t_sh, x[0], plan, p.prg))[0]
    return (await select_server(ch, p.he.server(HE_16K), t_sh, x[0], st["enc"], p.prg))[0]


def _ideal(args: argparse.Namespace, data: dict[str, np.ndarray]) -> np.ndarray:
    x, w = data["x"], data["w"].astype(np.uint64)
    if args.mode == "plain-weight":
        return x[0] @ w[0]
    if args.mode == "secret-secret":
        return np.matmul(x, data["y"])
    experts = (data["onehot"][0] + data["onehot"][1]).argmax(1)
    return np.stack([x[0][i] @ w[e] for i, e in enumerate(experts)])


async def _check(
    ch: Channel, args: argparse.Namespace, st: dict[str, Any], out: np.ndarray
) -> dict[str, Any]:
    got = await reveal(st["p"].fork("check"), out, to="client")
    if got is None:
        return {}
    want = _ideal(args, st["data"])
    return {"exact": bool(np.array_equal(got, want))}


MATMUL = register(
    BenchOp(
        "matmul",
        "HE matrix products: plain-weight, secret-secret, select",
        _args,
        _params,
        _run,
        _setup,
        _check,
    )
)

"""``secmoe bench {gelu,silu,softmax,layernorm,rmsnorm}``: the secure operators.

The client draws its input from its PRG and shares it in the ``setup`` phase (with the OT
pool's base OTs); the server draws the norms' weights from its PRG. The measured run is the
operator alone. The check reveals the output to the client (and the weights, for the
reference) and reports the error against the float reference (exact erf GeLU, SiLU, softmax,
norms) and against the fixed-point specification (:mod:`secmoe.ops.approx`).

``--method`` (gelu, silu) picks how the piecewise polynomial is evaluated: ``stc``
(select-then-compute, default; ``--select`` mux or onehot) or ``ctc`` (compute-then-select).
For ``gelu``, ``ctc`` is PUMA's GeLU (degree 3 and 6, :data:`approx.GELU_PUMA`): the baseline;
for ``silu`` it evaluates the same table by CTC. Softmax and the norms use STC for their
reciprocal / rsqrt guesses (degree 1: the two methods cost the same there).

Inputs (public distributions, private values): GeLU/SiLU x ~ U(−8, 8); softmax logits
~ N(0, 3²); norm inputs ~ N(0.5, 3²), γ ~ U(0.5, 1.5), β ~ N(0, 0.1²).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from ..crypto.he_params import HE_8K
from ..crypto.prg import PRG
from ..crypto.ring import Ring
from ..net import Channel
from ..ops import activations, approx, norm, piecewise, softmax
from ..ops.linear import setup_he
from ..protocols.ot.pool import DEFAULT_SOURCE, SOURCES
from ..protocols.party import Party
from ..protocols.shares import reveal, share
from .registry import BenchOp, register

RING = Ring(64, 18)
DEFAULT_SHAPES = {
    "gelu": "128x3072",
    "silu": "128x3072",
    "softmax": "12x128x128",
    "layernorm": "128x768",
    "rmsnorm": "128x768",
}
HELP = {
    "gelu": "GeLU: STC on the paper's 6 segments, or PUMA's GeLU by CTC (--method ctc)",
    "silu": "SiLU by STC on 7 segments (--method ctc: the same table, compute-then-select)",
    "softmax": "softmax along the last axis (max, exp, reciprocal)",
    "layernorm": "LayerNorm with the server's γ, β (rsqrt by STC guess + Newton)",
    "rmsnorm": "RMSNorm with the server's γ (rsqrt by STC guess + Newton)",
}


def parse_shape(text: str) -> tuple[int, ...]:
    """``AxB[xC]`` → (A, B[, C])."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape must look like 128x3072, got {text!r}") from None
    if not 1 <= len(shape) <= 4 or min(shape) < 1:
        raise ValueError(f"--shape must have 1 to 4 positive dimensions, got {text!r}")
    return shape


def _uniform(prg: PRG, shape: tuple[int, ...]) -> np.ndarray:
    return (prg.uint64(shape) >> np.uint64(11)).astype(np.float64) / 2.0**53


def _normal(prg: PRG, shape: tuple[int, ...]) -> np.ndarray:
    u1, u2 = 1.0 - _uniform(prg, shape), _uniform(prg, shape)  # Box–Muller
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * math.pi * u2)


def _make(name: str) -> BenchOp:
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--shape", default=DEFAULT_SHAPES[name], help="tensor shape AxB[xC]")
        p.add_argument("--method", choices=piecewise.METHODS, default="stc")
        p.add_argument(
            "--select",
            choices=piecewise.SELECTS,
            default="mux",
            help="STC selection: MUX of segment values, or the paper's one-hot coefficients",
        )
        p.add_argument("--bits", type=int, default=32, help="comparison width (input range)")
        p.add_argument("--var-range", default="-6,8", help="norms: log2 range of the variance")
        p.add_argument(
            "--folded",
            action="store_true",
            help="norms: γ folded into the next linear layer (secmoe.model.fold): no γ product",
        )
        p.add_argument(
            "--products",
            choices=("he", "ot"),
            default="ot",
            help="norms: all products by COTs (what the model runs), or Σx² and x·y by HE "
            "where that declares fewer bytes (HE_8K keys set up first; fewer bytes, more "
            "server time)",
        )
        p.add_argument(
            "--source", choices=sorted(SOURCES), default=DEFAULT_SOURCE, help="the COT source"
        )

    def params(args: argparse.Namespace) -> dict[str, Any]:
        shape = parse_shape(args.shape)
        if not 22 <= args.bits <= 62:
            raise ValueError("--bits must be in [22, 62]")
        lo, hi = (int(v) for v in args.var_range.split(","))
        if not lo < hi:
            raise ValueError("--var-range must be lo,hi with lo < hi")
        return {
            "shape": list(shape),
            "method": args.method,
            "select": args.select,
            "bits": args.bits,
            "var_range": [lo, hi],
            "source": args.source,
            "folded": args.folded,
            "products": args.products,
        }

    async def setup(ch: Channel, args: argparse.Namespace) -> dict[str, Any]:
        pr = params(args)
        p = await Party.setup(ch, PRG(), RING, ot_source=args.source)
        if name in ("layernorm", "rmsnorm") and pr["products"] == "he":
            p = await setup_he(p, (HE_8K,))
        shape = tuple(pr["shape"])
        plain = None
        if p.role == "client":
            if name in ("gelu", "silu"):
                xf = 16.0 * _uniform(p.prg, shape) - 8.0
            else:
                xf = 3.0 * _normal(p.prg, shape) + (0.5 if name != "softmax" else 0.0)
            plain = RING.encode(xf)
        weights = None
        if p.role == "server" and name in ("layernorm", "rmsnorm"):
            d = shape[-1]
            gamma = np.ones(d) if pr["folded"] else 0.5 + _uniform(p.prg, (d,))
            weights = (gamma, 0.1 * _normal(p.prg, (d,)))
        x = await share(p.fork("in"), plain, "client", shape)
        return {"p": p, "plain": plain, "x": x, "weights": weights, "params": pr}

    async def run(ch: Channel, args: argparse.Namespace, st: dict[str, Any]) -> np.ndarray:
        p: Party = st["p"].fork("op")
        pr, x = st["params"], st["x"]
        bits, method, select = pr["bits"], pr["method"], pr["select"]
        if name == "gelu":
            if method == "ctc":
                return await activations.gelu_ctc(p, x, bits)
            return await activations.gelu(p, x, bits, select)
        if name == "silu":
            return await piecewise.evaluate(p, approx.SILU, x, method, bits, select)
        if name == "softmax":
            return await softmax.softmax(p, x, None, bits)
        w, g = st["weights"], not pr["folded"]
        lo, hi = pr["var_range"]
        gamma, he = (w[0] if w and g else None), pr["products"] == "he"
        if name == "layernorm":
            bias = w and w[1]
            return await norm.layernorm(p, x, gamma, bias, 1e-5, (lo, hi), weighted=g, he=he)
        return await norm.rmsnorm(p, x, gamma, 1e-5, (lo, hi), weighted=g, he=he)

    async def check(
        ch: Channel, args: argparse.Namespace, st: dict[str, Any], out: np.ndarray
    ) -> dict[str, Any]:
        p: Party = st["p"].fork("check")
        got = await reveal(p.fork("out"), out, to="client")
        w = st["weights"]
        if name in ("layernorm", "rmsnorm"):
            if p.role == "server":
                await p.ch.send([w[0], w[1]], tag="bench/weights")
            else:
                w = await p.ch.recv(tag="bench/weights")
        if p.role != "client":
            return {}
        x = st["plain"]
        spec, ref = _reference(name, st["params"], x, w)
        y = RING.decode(got)
        e_ref, e_spec = np.abs(y - ref), np.abs(y - RING.decode(spec))
        return {
            "max_abs_err": float(e_ref.max()),
            "mean_abs_err": float(e_ref.mean()),
            "max_abs_err_spec": float(e_spec.max()),
            "mean_abs_err_spec": float(e_spec.mean()),
            "max_err_ulp_spec": int(np.abs(RING.to_signed(RING.reduce(got - spec))).max()),
        }

    return BenchOp(name, HELP[name], add_args, params, run, setup, check)


def _reference(
    name: str, pr: dict[str, Any], x: np.ndarray, w: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(fixed-point spec, float reference) of the op on encoded x."""
    xf = RING.decode(x)
    lo, hi = pr["var_range"]
    if name == "gelu":
        kind = "gelu_ctc" if pr["method"] == "ctc" else "gelu"
        return activations.ideal(kind, x, RING), approx.gelu_exact(xf)
    if name == "silu":
        return activations.ideal("silu", x, RING), approx.silu_exact(xf)
    if name == "softmax":
        e = np.exp(xf - xf.max(axis=-1, keepdims=True))
        return softmax.ideal(x, RING), e / e.sum(axis=-1, keepdims=True)
    g, b = np.asarray(w[0], np.float64), np.asarray(w[1], np.float64)
    if name == "layernorm":
        c = xf - xf.mean(axis=-1, keepdims=True)
        ref = c / np.sqrt((c * c).mean(axis=-1, keepdims=True) + 1e-5) * g + b
        return norm.ideal_layernorm(x, RING, g, b, 1e-5, (lo, hi)), ref
    ref = xf / np.sqrt((xf * xf).mean(axis=-1, keepdims=True) + 1e-5) * g
    return norm.ideal_rmsnorm(x, RING, g, 1e-5, (lo, hi)), ref


OPS = [register(_make(name)) for name in DEFAULT_SHAPES]

"""Secure activations on shares: GeLU and SiLU by Select-Then-Compute, ReLU, and the PUMA GeLU.

Each computes, on arithmetic shares of encoded x, shares of the fixed-point specification in
:mod:`secmoe.ops.approx` (``ideal_*``); nobody learns anything. The tables are public.

============  ===================================  =======================================
op            specification                        method
============  ===================================  =======================================
``gelu``      :data:`~approx.GELU` (SecMoE, 6 seg) STC: 5 comparisons, x², 5 MUXes, trunc
``silu``      :data:`~approx.SILU` (ours, 7 seg)   STC: 6 comparisons, x², 6 MUXes, trunc
``relu``      :data:`~approx.RELU` (exact)         1 comparison, 1 MUX (no truncation)
``gelu_ctc``  :data:`~approx.GELU_PUMA`            CTC: 3 comparisons, x²…x⁶, 3 MUXes
============  ===================================  =======================================

Range: comparisons run on ``bits`` bits (default 32): |x| + 8 < 2^(bits−1−f) (f = 18: |x| < 8184
at 32 bits; ReLU and GeLU outside that range are still right in sign only if x fits). The
squares additionally need |x| < 2^13 (the truncation's range), which 32 bits matches.

Measured on 128 × 3072 (``secmoe bench gelu --method {stc,ctc} --source {silent,iknp}``):
GeLU by STC 153 MB with the silent COT source (939 MB with IKNP); PUMA's GeLU by CTC on the
same protocols (narrow products included) 770 MB (2660 MB): 0.20× (0.35×).

REF: SecMoE (arXiv 2601.06790) for GeLU by STC; PUMA (eprint 2023/1327) for the baseline.
"""

from __future__ import annotations

import numpy as np

from ..crypto.ring import Ring
from ..protocols.cost import Cost
from ..protocols.ot.pool import OTPool
from ..protocols.party import Party
from . import approx
from .piecewise import DEFAULT_CMP_BITS, ctc, ctc_cost, stc, stc_cost

TABLES = {"gelu": approx.GELU, "silu": approx.SILU, "relu": approx.RELU}


async def gelu(
    p: Party, x: np.ndarray, bits: int = DEFAULT_CMP_BITS, select: str = "mux"
) -> np.ndarray:
    """Shares of GeLU(x) by STC on the paper's six segments (:data:`approx.GELU`).

    Max error vs the erf GeLU 1.2e-2 (approximation) + ≤ 2 ulps (protocol).
    Cost: :func:`gelu_cost`.
    """
    return await stc(p, approx.GELU, x, bits, select)


async def silu(
    p: Party, x: np.ndarray, bits: int = DEFAULT_CMP_BITS, select: str = "mux"
) -> np.ndarray:
    """Shares of SiLU(x) by STC on seven segments (:data:`approx.SILU`); max error 4.8e-3."""
    return await stc(p, approx.SILU, x, bits, select)


async def relu(p: Party, x: np.ndarray, bits: int = DEFAULT_CMP_BITS) -> np.ndarray:
    """Shares of max(x, 0), exactly: c = 1{x > 0} (MSB on ``bits`` bits), then c·x (a MUX).

    The integer table (0 | x) needs no truncation. Range: |x| < 2^(bits−1) in ring units.
    """
    return await stc(p, approx.RELU, x, bits)


async def gelu_ctc(p: Party, x: np.ndarray, bits: int = DEFAULT_CMP_BITS) -> np.ndarray:
    """Shares of PUMA's GeLU (:data:`approx.GELU_PUMA`) by compute-then-select: the baseline."""
    return await ctc(p, approx.GELU_PUMA, x, bits)


async def activation(
    p: Party, x: np.ndarray, kind: str, bits: int = DEFAULT_CMP_BITS, select: str = "mux"
) -> np.ndarray:
    """Dispatch by name: ``relu``, ``gelu``, ``silu`` (STC) or ``gelu_ctc`` (the baseline)."""
    if kind == "gelu_ctc":
        return await gelu_ctc(p, x, bits)
    if kind not in TABLES:
        raise ValueError(f"unknown activation {kind!r}; known: {sorted(TABLES)} and gelu_ctc")
    return await stc(p, TABLES[kind], x, bits, select)


def activation_cost(
    pool: OTPool,
    name: str,
    n: int,
    ring: Ring,
    bits: int = DEFAULT_CMP_BITS,
    select: str = "mux",
) -> Cost:
    """Declared cost of ``gelu``, ``silu``, ``relu`` or ``gelu_ctc`` on n elements."""
    if name == "gelu_ctc":
        return ctc_cost(pool, approx.GELU_PUMA, n, ring, bits)
    return stc_cost(pool, TABLES[name], n, ring, bits, select)


def gelu_cost(pool: OTPool, n: int, ring: Ring, bits: int = DEFAULT_CMP_BITS) -> Cost:
    """Declared cost of :func:`gelu` (select ``mux``)."""
    return activation_cost(pool, "gelu", n, ring, bits)


def ideal(name: str, x: np.ndarray, ring: Ring) -> np.ndarray:
    """The fixed-point specification of ``name`` on encoded x."""
    pp = approx.GELU_PUMA if name == "gelu_ctc" else TABLES[name]
    return pp.evaluate_fixed(ring.reduce(np.asarray(x, dtype=np.uint64)), ring)


def reference(name: str, x: np.ndarray) -> np.ndarray:
    """The exact float function (erf GeLU, SiLU, ReLU) for error reports."""
    if name in ("gelu", "gelu_ctc"):
        return approx.gelu_exact(x)
    if name == "silu":
        return approx.silu_exact(x)
    if name == "relu":
        return np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    raise ValueError(f"unknown activation {name!r}")


__all__ = [
    "activation",
    "activation_cost",
    "gelu",
    "gelu_cost",
    "gelu_ctc",
    "ideal",
    "reference",
    "relu",
    "silu",
]

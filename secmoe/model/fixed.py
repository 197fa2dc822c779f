"""Fixed-point emulation of the forward pass: what the secure runner computes, in the clear.

:class:`FixedOps` is the backend of :func:`secmoe.model.reference.run` that works on ring
elements (``uint64``, ℓ and f from a :class:`~secmoe.crypto.ring.Ring`, default ℓ = 64, f = 18)
and applies exactly the approximations of the secure operators (:mod:`secmoe.ops.approx`):

* client inputs and all weights are encoded round(v·2^f); embeddings are encoded rows;
* ``linear``: x·W accumulated exactly in the ring, truncated once (floor shift by f), + enc(b);
* elementwise and matrix products of two activations: one truncation per output element;
* products with public constants (attention scale): one truncation; rotary embeddings
  (public tables, :func:`~secmoe.model.reference.rope_tables`): x·enc(cos) +
  swap_halves(x)·enc(sin) accumulated exactly, then one truncation;
* ReLU/GeLU/SiLU: :data:`~secmoe.ops.approx.RELU`, :data:`~secmoe.ops.approx.GELU`,
  :data:`~secmoe.ops.approx.SILU` by select-then-compute (``evaluate_fixed``);
* softmax: exact max, :func:`~secmoe.ops.approx.exp_neg_fixed`,
  :func:`~secmoe.ops.approx.reciprocal_fixed` with K = ⌈log2(row length)⌉;
* norms: :func:`~secmoe.ops.approx.layernorm_fixed` / ``rmsnorm_fixed`` with the config's
  ``norm_range``; means divide by the public length (floor);
* routing: top-k by exact comparison of the fixed-point logits (ties → lower index).

Truncation here is exact floor; a secure probabilistic truncation adds at most ±1 ulp per
truncation, which is the protocol error that this emulation lets one isolate.
"""

from __future__ import annotations

import numpy as np

from secmoe.crypto.ring import DEFAULT_RING, Ring
from secmoe.model.backend import Ops, swap_halves
from secmoe.model.config import ModelConfig
from secmoe.model.reference import Output, run
from secmoe.model.weights import ModelWeights, Norm
from secmoe.ops import approx

__all__ = ["FixedOps", "run_fixed"]


class FixedOps(Ops):
    """Ring arithmetic with the secure operators' approximations (see the module docstring)."""

    def __init__(
        self,
        ring: Ring = DEFAULT_RING,
        gelu: approx.PiecewisePolynomial = approx.GELU,
        n_iter: int = 2,
    ) -> None:
        self.ring = ring
        self.n_iter = n_iter
        self._pp = {"relu": approx.RELU, "gelu": gelu, "silu": approx.SILU}

    def _enc(self, w: np.ndarray) -> np.ndarray:
        """Encode a weight array (per use: encoding costs less than the product it feeds)."""
        return self.ring.encode(w)

    def _trunc(self, x: np.ndarray) -> np.ndarray:
        return approx.trunc(self.ring.reduce(x), self.ring)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.ring.encode(x)

    def decode(self, x: np.ndarray) -> np.ndarray:
        return self.ring.decode(x)

    def embed(self, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        return self.ring.encode(table[ids])

    def linear(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        y = self._trunc(x @ self._enc(w))
        return y if b is None else self.ring.reduce(y + self._enc(b))

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.ring.reduce(a + b)

    def add_public(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        return self.ring.reduce(x + self.ring.encode(c))

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return approx.mul_fixed(a, b, self.ring)

    def mul_public(self, x: np.ndarray, c: np.ndarray | float) -> np.ndarray:
        return approx.mul_fixed(x, self.ring.encode(c), self.ring)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._trunc(np.matmul(a, b))

    def activation(self, x: np.ndarray, kind: str) -> np.ndarray:
        return self._pp[kind].evaluate_fixed(x, self.ring)

    def softmax(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return approx.softmax_fixed(x, self.ring, mask, self.n_iter)

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        return self._trunc(x * self._enc(cos) + swap_halves(x) * self._enc(sin))

    def norm(self, x: np.ndarray, p: Norm, cfg: ModelConfig, kind: str | None = None) -> np.ndarray:
        if (kind or cfg.norm) == "layernorm":
            return approx.layernorm_fixed(
                x, self.ring, p.weight, p.bias, cfg.norm_eps, cfg.norm_range, self.n_iter
            )
        return approx.rmsnorm_fixed(
            x, self.ring, p.weight, cfg.norm_eps, cfg.norm_range, self.n_iter
        )

    def mean(self, x: np.ndarray, axis: int) -> np.ndarray:
        s = self.ring.reduce(np.sum(x, axis=axis, dtype=np.uint64))
        return approx.div_public(s, x.shape[axis], self.ring)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=np.uint64)

    def sortable(self, x: np.ndarray) -> np.ndarray:
        return self.ring.to_signed(x)


def run_fixed(
    weights: ModelWeights,
    inputs: np.ndarray,
    ring: Ring = DEFAULT_RING,
    capacity: bool | int | None = None,
    gelu: approx.PiecewisePolynomial = approx.GELU,
) -> Output:
    """Fixed-point emulation of :func:`~secmoe.model.reference.run` (decoded output, routing)."""
    return run(weights, inputs, FixedOps(ring, gelu), capacity)

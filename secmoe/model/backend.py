"""Arithmetic backends of the model structure in :mod:`secmoe.model.reference`.

:class:`Ops` is the interface (one method per operator kind the model uses); :class:`FloatOps`
is float64 arithmetic, exact or with the float forms of the secure approximations. The
fixed-point backend is :class:`secmoe.model.fixed.FixedOps`; a secure runner can mirror the same
calls operator by operator.
"""

from __future__ import annotations

import numpy as np

from secmoe.model.config import ModelConfig
from secmoe.model.weights import Norm
from secmoe.ops import approx

__all__ = ["FloatOps", "Ops", "swap_halves"]


def swap_halves(x: np.ndarray) -> np.ndarray:
    """The last axis with its two halves exchanged (rotate-half without the sign): a public
    permutation, so it applies to each party's shares locally."""
    half = x.shape[-1] // 2
    return np.concatenate([x[..., half:], x[..., :half]], axis=-1)


class Ops:
    """Arithmetic backend interface. Values are numpy arrays in the backend's representation;
    shape operations (reshape, transpose, indexing) are representation-agnostic."""

    def encode(self, x: np.ndarray) -> np.ndarray:
        """The client's input, from float."""
        raise NotImplementedError

    def decode(self, x: np.ndarray) -> np.ndarray:
        """To float64."""
        raise NotImplementedError

    def embed(self, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Rows ``table[ids]``."""
        raise NotImplementedError

    def linear(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        """x · w (+ b), w a float weight matrix (in, out)."""
        raise NotImplementedError

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a + b (broadcasting)."""
        raise NotImplementedError

    def add_public(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        """x + c for a float constant or weight c."""
        raise NotImplementedError

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Elementwise a · b (broadcasting)."""
        raise NotImplementedError

    def mul_public(self, x: np.ndarray, c: np.ndarray | float) -> np.ndarray:
        """Elementwise x · c for a float constant c."""
        raise NotImplementedError

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Batched a @ b of two activations."""
        raise NotImplementedError

    def activation(self, x: np.ndarray, kind: str) -> np.ndarray:
        """relu, gelu or silu."""
        raise NotImplementedError

    def softmax(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Softmax over the last axis; entries where ``mask`` is False get 0."""
        raise NotImplementedError

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """Rotary embedding of x (…, T, d_head) with the public tables of
        :func:`secmoe.model.reference.rope_tables`:
        x·cos + swap_halves(x)·sin (the sign of rotate-half is folded into ``sin``)."""
        raise NotImplementedError

    def norm(self, x: np.ndarray, p: Norm, cfg: ModelConfig, kind: str | None = None) -> np.ndarray:
        """``kind`` (default ``cfg.norm``) over the last axis with parameters p, ε =
        ``cfg.norm_eps`` and the fixed-point rsqrt range ``cfg.norm_range``."""
        raise NotImplementedError

    def mean(self, x: np.ndarray, axis: int) -> np.ndarray:
        """Mean over ``axis``."""
        raise NotImplementedError

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        """Zeros."""
        raise NotImplementedError

    def sortable(self, x: np.ndarray) -> np.ndarray:
        """Numbers ordered like the values (for top-k)."""
        raise NotImplementedError

    def topk(self, x: np.ndarray, k: int) -> np.ndarray:
        """Indices of the k largest entries of the last axis, largest first, ties → lower
        index. (Plaintext here: the emulations reveal routing, the secure runner does not.)"""
        key = self.sortable(x)
        return np.argsort(-key, axis=-1, kind="stable")[..., :k]


class FloatOps(Ops):
    """float64 arithmetic; exact functions, or with ``approximate=True`` the float forms of the
    secure approximations (piecewise GeLU/SiLU, exp/reciprocal softmax, rsqrt norms)."""

    def __init__(
        self,
        approximate: bool = False,
        gelu: approx.PiecewisePolynomial = approx.GELU,
        n_iter: int = 2,
    ) -> None:
        self.approx = approximate
        self.n_iter = n_iter
        self._pp = {"relu": approx.RELU, "gelu": gelu, "silu": approx.SILU}

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def decode(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def embed(self, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        return table[ids].astype(np.float64)

    def linear(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        y = x @ w.astype(np.float64)
        return y if b is None else y + b

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def add_public(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        return x + np.asarray(c, np.float64)

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b

    def mul_public(self, x: np.ndarray, c: np.ndarray | float) -> np.ndarray:
        return x * np.asarray(c, np.float64)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b

    def activation(self, x: np.ndarray, kind: str) -> np.ndarray:
        if self.approx:
            return self._pp[kind](x)
        if kind == "relu":
            return np.maximum(x, 0.0)
        return approx.gelu_exact(x) if kind == "gelu" else approx.silu_exact(x)

    def softmax(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if self.approx:
            return approx.softmax(x, mask, self.n_iter)
        keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
        z = np.where(keep, x, -np.inf)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        return x * cos + swap_halves(x) * sin

    def norm(self, x: np.ndarray, p: Norm, cfg: ModelConfig, kind: str | None = None) -> np.ndarray:
        kind = kind or cfg.norm
        if self.approx:
            if kind == "layernorm":
                return approx.layernorm(x, p.weight, p.bias, cfg.norm_eps, cfg.norm_range)
            return approx.rmsnorm(x, p.weight, cfg.norm_eps, cfg.norm_range)
        if kind == "layernorm":
            x = x - x.mean(axis=-1, keepdims=True)
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps) * p.weight
        return y if p.bias is None else y + p.bias

    def mean(self, x: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(x, axis=axis)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)

    def sortable(self, x: np.ndarray) -> np.ndarray:
        return x

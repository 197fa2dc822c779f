"""Streamed model weights: one layer at a time, so a model larger than memory can run.

:func:`lazy_random_weights` is :func:`~secmoe.model.weights.init_random`'s initialization, done
layer by layer: layer i is generated from a seed derived from (seed, i) when it is accessed and
is not kept, so switch-base-128 (~15 GB of float32) never holds more than one layer (~2.4 GB
for an MoE layer at E = 128). :class:`StreamedLayers` wraps any source of layers (a generator,
or a loaded checkpoint's list) and calls a hook on each access (the bench encodes the layer's
weights there). The same seed always gives the same weights; they differ from
``init_random(config, seed)``, which draws the whole model from one generator.

The weights are the server's plaintext model, not 2PC secrets: seeded numpy generators are fine
(secrets only ever come from :mod:`secmoe.crypto.prg`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

import numpy as np

from .config import ModelConfig
from .weights import Layer, ModelWeights, init_random

#: Called as ``hook(i, layer)`` when layer i is accessed (before it is returned).
LayerHook = Callable[[int, Layer], None]


class StreamedLayers(Sequence[Layer]):
    """A sequence of ``n`` layers produced by ``source(i)`` on each access (nothing cached),
    with ``hook(i, layer)`` called on each access."""

    def __init__(self, n: int, source: Callable[[int], Layer], hook: LayerHook | None = None):
        self.n, self.source, self.hook = n, source, hook

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> Layer: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Layer]: ...
    def __getitem__(self, i: int | slice) -> Layer | Sequence[Layer]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(f"layer {i} out of range for {self.n} layers")
        i %= self.n
        layer = self.source(i)
        if self.hook is not None:
            self.hook(i, layer)
        return layer


def _one_layer(cfg: ModelConfig, i: int) -> ModelConfig:
    """A one-block config with block ``i``'s kind (dense or MoE) and a one-word vocabulary
    (the top-level tensors of this config are not used)."""
    small = {"vocab_size": 1} if cfg.vocab_size else {}
    return cfg.replace(n_layers=1, moe_layers=(0,) if cfg.is_moe(i) else (), **small)


def layer_seed(seed: int, i: int) -> int:
    """The public seed of layer ``i`` of a model seeded with ``seed``."""
    return int(np.random.SeedSequence((seed, i)).generate_state(1, np.uint64)[0])  # not secret


def lazy_random_weights(cfg: ModelConfig, seed: int = 0) -> ModelWeights:
    """Random weights for ``cfg`` (:func:`init_random`'s distribution) whose ``layers`` are a
    :class:`StreamedLayers`: layer i is generated on access from :func:`layer_seed`. The
    top-level tensors (embedding, positions, final norm, head) are generated now."""
    top = init_random(cfg.replace(n_layers=1, moe_layers=()), seed)
    top.layers = StreamedLayers(  # type: ignore[assignment]
        cfg.n_layers, lambda i: init_random(_one_layer(cfg, i), layer_seed(seed, i)).layers[0]
    )
    top.config = cfg
    return top


def materialize(weights: ModelWeights) -> ModelWeights:
    """The same weights with every layer in memory (for plaintext references of small models)."""
    return ModelWeights(
        **{**weights.__dict__, "layers": [weights.layers[i] for i in range(len(weights.layers))]}
    )


__all__ = ["LayerHook", "StreamedLayers", "layer_seed", "lazy_random_weights", "materialize"]

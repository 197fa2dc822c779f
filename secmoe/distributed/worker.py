"""A server worker: one shard of the experts' selection weights and the products on them.

:class:`ShardWorker` is plain Python (no Ray): :class:`~secmoe.distributed.pool.LocalPool`
calls it in-process, :class:`~secmoe.distributed.pool.RayPool` runs one per Ray actor. It holds

- a SEAL context per HE parameter set (public; built from the parameters' name),
- the Galois keys of each open session (loaded from the client's serialized keys, the bytes
  the coordinator received in setup; SEAL objects never leave the process),
- its shard of each selection layer's experts (:class:`~secmoe.protocols.he_select.
  SelectWeights` with ``experts`` set), laid out here from the integer weights it is sent.

``products`` is :func:`~secmoe.protocols.he_select.shard_products_arrays`: the expansion of
the one-hot ciphertext restricted to its experts' subtrees, the selection and the tensor
product, one output block at a time (a generator: Ray streams each block to the coordinator
as it is done). Nothing here sees a secret: ciphertexts and the server's own weights only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

import numpy as np
import tenseal.sealapi as sealapi

from ..crypto.he import HEContext, load_galois_keys
from ..crypto.he_params import params_for
from ..protocols.he_select import SelectPlan, SelectWeights, encode_select_weights
from ..protocols.he_select import shard_products_arrays as _products

__all__ = ["OverBudget", "ShardWorker", "shard_bytes"]


class OverBudget(ValueError):
    """A shard that would take a worker past its encoded-weight budget (refused)."""


def shard_bytes(plan: SelectPlan, experts: int) -> int:
    """Bytes of ``experts`` experts laid out for ``plan`` (int64 polynomials (nb, nc, N) per
    matrix, as :func:`~secmoe.protocols.he_select.encode_select_weights` makes them)."""
    return experts * sum(plan.nb * plan.nc(m) * plan.n * 8 for m in range(len(plan.hs)))


class ShardWorker:
    """Worker ``index`` of a pool: keys per session, expert shards per selection layer; with
    ``max_bytes``, at most that many bytes of encoded weights (``--max-encoded-gb``)."""

    def __init__(self, index: int, max_bytes: int | None = None) -> None:
        self.index, self.max_bytes = index, max_bytes
        #: A new value each time the worker starts (a restarted Ray actor has lost its state:
        #: the coordinator sees the change and sends keys and shards again).
        self.incarnation = os.urandom(8).hex()
        self._contexts: dict[str, HEContext] = {}
        self._keys: dict[str, tuple[HEContext, sealapi.GaloisKeys]] = {}
        self._shards: dict[str, SelectWeights] = {}

    def hello(self) -> str:
        """This worker's incarnation."""
        return self.incarnation

    def _context(self, params: str) -> HEContext:
        ctx = self._contexts.get(params)
        if ctx is None:
            ctx = self._contexts[params] = HEContext(params_for(params))
        return ctx

    def load_keys(self, session: str, params: str, galois: bytes) -> None:
        """The Galois keys of ``session`` (SEAL's serialization, as the client sent them)."""
        ctx = self._context(params)
        self._keys[session] = (ctx, load_galois_keys(ctx, galois))

    def drop_keys(self, session: str) -> None:
        self._keys.pop(session, None)

    def sessions(self) -> list[str]:
        return sorted(self._keys)

    def load_shard(
        self,
        shard: str,
        plan: SelectPlan,
        experts: Sequence[int],
        weights: Sequence[Sequence[np.ndarray]],
        skip_zero_blocks: bool,
    ) -> int:
        """Lay out the integer weights of ``experts`` (``weights[i][m]``, d×h_m) for ``plan``;
        returns the bytes they take. Refused (:class:`OverBudget`, before any encoding) if
        they would take this worker past ``max_bytes``."""
        need, held = shard_bytes(plan, len(experts)), self.encoded_bytes()
        if self.max_bytes is not None and held + need > self.max_bytes:
            raise OverBudget(
                f"worker {self.index} refuses shard {shard[:8]} ({len(experts)} experts): it "
                f"needs {need / 1e9:.3g} GB of encoded weights, with the {held / 1e9:.3g} GB "
                f"it holds over its budget of {self.max_bytes / 1e9:.3g} GB (--max-encoded-gb)"
            )
        enc = encode_select_weights(
            weights, plan, skip_zero_blocks=skip_zero_blocks, experts=experts
        )
        self._shards[shard] = enc
        return enc.nbytes

    def shards(self) -> list[str]:
        return sorted(self._shards)

    def cpu_seconds(self) -> float:
        """CPU time of this worker's process so far."""
        return time.process_time()

    def encoded_bytes(self) -> int:
        """Memory of all the shards this worker holds."""
        return sum(w.nbytes for w in self._shards.values())

    def products(
        self, session: str, shard: str, root: np.ndarray, x0: np.ndarray, x1: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This shard's accumulators per output block (see :func:`shard_products_arrays`)."""
        if session not in self._keys or shard not in self._shards:
            raise KeyError(f"worker {self.index}: session or shard not loaded")
        ctx, galois = self._keys[session]
        yield from _products(ctx, galois, root, x0, x1, self._shards[shard])

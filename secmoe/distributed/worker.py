"""A server worker: its shard of the server's encoded weights and the HE products on them.

:class:`ShardWorker` is plain Python (no Ray): :class:`~secmoe.distributed.pool.LocalPool`
calls it in-process, :class:`~secmoe.distributed.pool.RayPool` runs one per Ray actor. It holds

- a SEAL context per HE parameter set (public; built from the parameters' name),
- the Galois keys of each open session, per parameter set (loaded from the client's
  serialized keys, the bytes the coordinator received in setup; SEAL objects never leave the
  process),
- its shard of each selection layer's experts (:class:`~secmoe.protocols.he_select.
  SelectWeights` with ``experts`` set), laid out here from the integer weights it is sent,
- its share of each plain-weight product's weight blocks (the columns of its products,
  :func:`~secmoe.protocols.he_linear.encode_shard`), encoded here as NTT plaintexts.

``products`` is :func:`~secmoe.protocols.he_select.shard_products_arrays`: the expansion of
the one-hot ciphertext restricted to its experts' subtrees, the selection and the tensor
product, one output block at a time (a generator: Ray streams each block to the coordinator
as it is done). ``linear`` computes its products of a plain-weight product and packs them into
its units (:func:`~secmoe.protocols.he_common.pack_products`). Ciphertexts cross as residue
arrays (:meth:`~secmoe.crypto.he.HEContext.export_ct`, read in place, not serialized). Nothing
here sees a secret: ciphertexts and the server's own weights only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

import numpy as np

from ..crypto.he import HEContext, load_galois_keys
from ..crypto.he_params import params_for
from ..protocols.he_common import EncodedWeights, MatmulPlan, pack_products
from ..protocols.he_linear import encode_shard
from ..protocols.he_select import SelectPlan, SelectWeights, encode_select_weights
from ..protocols.he_select import shard_products_arrays as _products
from ..protocols.he_setup import ServerHE

__all__ = ["OverBudget", "ShardWorker", "linear_shard_bytes", "shard_bytes"]


class OverBudget(ValueError):
    """A shard that would take a worker past its encoded-weight budget (refused)."""


def shard_bytes(plan: SelectPlan, experts: int, outputs: int | None = None) -> int:
    """Bytes of ``experts`` experts laid out for ``plan``, for ``outputs`` of its output blocks
    (None: all; int64 polynomials (nb, N) per block, as
    :func:`~secmoe.protocols.he_select.encode_select_weights` makes them)."""
    blocks = len(plan.outputs) if outputs is None else outputs
    return experts * blocks * plan.nb * plan.n * 8


def linear_shard_bytes(plan: MatmulPlan, lo: int, hi: int) -> int:
    """Bytes of the NTT plaintexts of the weight blocks that products [lo, hi) of ``plan``
    use (every row block of their columns, :func:`~secmoe.protocols.he_linear.encode_shard`;
    an upper bound when zero blocks are skipped)."""
    cols = {(m, c) for m, _r, c, _tr, _hc in list(plan.outputs())[lo:hi]}
    return len(cols) * plan.nb * plan.level * plan.n * 8


def _plain_bytes(enc: EncodedWeights) -> int:
    """Memory of an encoded product's NTT plaintexts."""
    held = sum(pt is not None for rows in enc.plains or () for row in rows for pt in row)
    return held * enc.plan.level * enc.plan.n * 8


class ShardWorker:
    """Worker ``index`` of a pool: keys per session, expert shards per selection layer; with
    ``max_bytes``, at most that many bytes of encoded weights (``--max-encoded-gb``)."""

    def __init__(self, index: int, max_bytes: int | None = None) -> None:
        self.index, self.max_bytes = index, max_bytes
        #: A new value each time the worker starts (a restarted Ray actor has lost its state:
        #: the coordinator sees the change and sends keys and shards again).
        self.incarnation = os.urandom(8).hex()
        self._contexts: dict[str, HEContext] = {}
        #: (session, parameter set) → the session's keys there, as a server state for packing
        self._keys: dict[tuple[str, str], ServerHE] = {}
        self._shards: dict[str, SelectWeights] = {}
        #: a plain-weight product's share: its weight blocks, units' height, products [lo, hi)
        self._linears: dict[str, tuple[EncodedWeights, int, int, int]] = {}

    def hello(self) -> str:
        """This worker's incarnation."""
        return self.incarnation

    def _context(self, params: str) -> HEContext:
        ctx = self._contexts.get(params)
        if ctx is None:
            ctx = self._contexts[params] = HEContext(params_for(params))
        return ctx

    def load_keys(self, session: str, params: str, galois: bytes, elements: Sequence[int]) -> None:
        """The Galois keys of ``session`` for parameter set ``params`` (SEAL's serialization,
        as the client sent them, for the Galois ``elements``). No public key: the coordinator
        masks and floods."""
        ctx = self._context(params)
        keys = load_galois_keys(ctx, galois)
        self._keys[(session, params)] = ServerHE(ctx, None, None, keys, tuple(elements))  # type: ignore[arg-type]

    def drop_keys(self, session: str) -> None:
        for key in [k for k in self._keys if k[0] == session]:
            del self._keys[key]

    def sessions(self) -> list[str]:
        return sorted({s for s, _params in self._keys})

    def _session(self, session: str, params: str) -> ServerHE:
        he = self._keys.get((session, params))
        if he is None:
            raise KeyError(f"worker {self.index}: session not loaded")
        return he

    def _check_budget(self, shard: str, what: str, need: int) -> None:
        """Refuse (:class:`OverBudget`) a shard of ``need`` bytes past ``max_bytes``."""
        held = self.encoded_bytes()
        if self.max_bytes is not None and held + need > self.max_bytes:
            raise OverBudget(
                f"worker {self.index} refuses shard {shard[:8]} ({what}): it needs "
                f"{need / 1e9:.3g} GB of encoded weights, with the {held / 1e9:.3g} GB it "
                f"holds over its budget of {self.max_bytes / 1e9:.3g} GB (--max-encoded-gb)"
            )

    def load_shard(
        self,
        shard: str,
        plan: SelectPlan,
        experts: Sequence[int],
        outputs: Sequence[int],
        weights: Sequence[Sequence[np.ndarray]],
        skip_zero_blocks: bool,
    ) -> int:
        """Lay out the integer weights of ``experts`` (``weights[i][m]``, d×h_m) for ``plan``'s
        output blocks ``outputs`` (indices into ``plan.outputs``); returns the bytes they
        take. Refused (:class:`OverBudget`, before any encoding) if they would take this
        worker past ``max_bytes``."""
        need = shard_bytes(plan, len(experts), len(outputs))
        self._check_budget(shard, f"{len(experts)} experts", need)
        enc = encode_select_weights(
            weights, plan, skip_zero_blocks=skip_zero_blocks, experts=experts, outputs=outputs
        )
        self._shards[shard] = enc
        return enc.nbytes

    def load_linear(
        self,
        shard: str,
        plan: MatmulPlan,
        height: int,
        lo: int,
        hi: int,
        weights: Sequence[np.ndarray],
        skip_zero_blocks: bool,
        public_zero: Sequence[np.ndarray] | None,
    ) -> int:
        """Encode the weight blocks that products [lo, hi) of ``plan`` use (``weights``: the
        signed integer matrices) and keep them with the units' ``height``; returns their
        bytes. Refused (:class:`OverBudget`, before any encoding) past ``max_bytes``."""
        self._check_budget(shard, f"products {lo}-{hi - 1}", linear_shard_bytes(plan, lo, hi))
        enc = encode_shard(
            self._context(plan.params),
            weights,
            plan,
            lo,
            hi,
            skip_zero_blocks=skip_zero_blocks,
            public_zero=public_zero,
        )
        self._linears[shard] = (enc, height, lo, hi)
        return _plain_bytes(enc)

    def shards(self) -> list[str]:
        return sorted([*self._shards, *self._linears])

    def cpu_seconds(self) -> float:
        """CPU time of this worker's process so far."""
        return time.process_time()

    def encoded_bytes(self, kind: str | None = None) -> int:
        """Memory of the shards this worker holds: the selections' (``kind`` "select"), the
        plain-weight products' ("linear") or all of them (None)."""
        select = sum(w.nbytes for w in self._shards.values()) if kind != "linear" else 0
        linear = sum(_plain_bytes(e) for e, *_ in self._linears.values()) if kind != "select" else 0
        return select + linear

    def products(
        self, session: str, shard: str, root: np.ndarray, x0: np.ndarray, x1: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This shard's accumulators per output block (see :func:`shard_products_arrays`)."""
        if shard not in self._shards:
            raise KeyError(f"worker {self.index}: shard not loaded")
        weights = self._shards[shard]
        he = self._session(session, weights.plan.params)
        yield from _products(he.ctx, he.galois, root, x0, x1, weights)

    def linear(self, session: str, shard: str, inputs: np.ndarray) -> list[np.ndarray | None]:
        """This worker's units of a plain-weight product: its products of the input
        ciphertexts (residues (n_in, 2, L, N), NTT form, the server's share added), each unit
        packed (:func:`~secmoe.protocols.he_common.pack_products`) and returned as residues
        (None: zero)."""
        if shard not in self._linears:
            raise KeyError(f"worker {self.index}: shard not loaded")
        enc, height, lo, hi = self._linears[shard]
        he = self._session(session, enc.plan.params)
        cts = [he.ctx.import_ct(r, ntt=True) for r in inputs]
        units = pack_products(he, enc, cts, lo, hi, height)
        return [None if ct is None else he.ctx.export_ct(ct) for ct in units]

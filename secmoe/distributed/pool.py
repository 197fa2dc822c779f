"""Server workers: W workers hold the server's encoded weights — the experts' selection
weights and the plain-weight products' weight blocks — and compute the HE products on them;
the coordinator (the process that talks to the client) combines their results.

**Selection** (:mod:`secmoe.protocols.he_select`). The workers form a grid of A expert
groups × B = W/A output-block groups (:func:`expert_groups`: A = W up to 8 workers, then the
largest divisor of W up to :data:`MAX_EXPERT_GROUPS`): worker w holds the experts
S_w = {j : j ≡ w (mod A)} of the output blocks o ≡ ⌊w/A⌋ (mod B) (every (expert, block) once,
so each worker holds 1/W of the layout). The coordinator adds its shares to the client's
ciphertexts (step 2a/2b), sends every worker the one-hot ciphertext [[t]] (coefficient form)
and the inputs' c0, c1 (NTT form) as numpy arrays, and each worker w returns, per output
block (m, c) it holds as it is done, its accumulators
Σ_b (Σ_{j∈S_w} [[t_kj]]·Ŵ_j,m[b, c]) ⊗ (x0, x1)[k, b]. The tensor product is bilinear, so
the coordinator's sum over the block's A workers is exactly the embedded server's
accumulator (bit for bit: every step is exact arithmetic mod q); the coordinator then
switches, relinearizes, packs, re-randomizes and floods as the embedded server does. It
receives and sums A accumulators per block whatever W: past 8 workers, more workers split the
blocks instead of adding streams to its sums. Experts are strided: the expansion splits on
the low bits of the leaf index i = k·E + j first, so when A divides E a worker expands only
its expert group's subtree (T·E/A − 1 automorphisms plus log2 A on the path to it) instead of
anyone expanding all T·E leaves; for other A the pruning still skips every node with no leaf
of the worker's.

**Plain-weight products** (:mod:`secmoe.protocols.he_linear`: the dense layers, the router,
the experts of ``all`` and ``dispatch``). Worker w holds the weight blocks of a contiguous
range of the product's products, whole subtrees of its packing tree
(:func:`~secmoe.protocols.he_linear.linear_units`); the coordinator sends every worker the
client's ciphertexts with its share added (once per call, NTT residues), each worker returns
its products packed per subtree, and the coordinator joins the subtrees of each returned
ciphertext, then masks, floods and switches as the embedded server does: the same reply, bit
for bit. The coordinator's masking and flooding randomness comes from its PRG in the same
order as without workers.

Ciphertexts cross between the coordinator and its workers as uncompressed residue arrays
(:meth:`~secmoe.crypto.he.HEContext.export_ct` reads them in place), shared once per call
(``ray.put``) when every worker needs them. Bytes and rounds to the client are unchanged.

**State.** Each worker holds its shard of every prepared layer (laid out from the integer
weights it is sent once: the coordinator keeps no encoded weights, only the recipe — a
reference to the float weights the caller holds — to send a shard again to a worker that
restarted; ``secmoe serve`` and ``bench model`` hold the experts' float weights in a
:class:`~secmoe.model.expert_store.ExpertStore`, files mapped but not resident), one SEAL
context per parameter set, and the Galois keys of each open session for each parameter set (the
client's serialized keys, sent once per session). With a budget (``max_bytes``,
``--max-encoded-gb``) a worker refuses, before laying it out, a shard that would take its
encoded weights past it (:class:`~secmoe.distributed.worker.OverBudget`, naming the worker and
the gigabytes; the layer is then not prepared). Pickle only carries numpy arrays, bytes and
plans between the coordinator and its own workers (Ray's transport), never to the client.

**Faults.** Every wait on a worker has a deadline (``timeout``); a worker that dies or does not
answer fails the call with :class:`WorkerLost` ("server worker lost: …"), which the session
sends to the client as its error. Ray restarts the actor; the next call sees its new
incarnation and sends it the keys and shards again.

:class:`LocalPool` runs the same workers in this process, one after the other (tests, the cost
model); :class:`RayPool` runs one Ray actor per worker, on this host or a cluster.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..crypto.he_params import params_for
from ..protocols.he_common import MatmulPlan
from ..protocols.he_linear import ShardedWeights, linear_units
from ..protocols.he_select import SelectPlan, ShardedSelect
from ..protocols.he_setup import ServerHE
from .worker import OverBudget, ShardWorker

__all__ = ["DEFAULT_TIMEOUT", "ExpertPool", "LocalPool", "PoolSession", "RayPool", "WorkerLost"]

#: Seconds the coordinator waits for any one answer of a worker.
DEFAULT_TIMEOUT = 600.0
#: The most expert groups of a selection (:func:`expert_groups`): past it, more workers split
#: the output blocks instead, so the coordinator sums at most this many accumulators per block.
MAX_EXPERT_GROUPS = 8

IntsOf = Callable[[Sequence[int]], list[list[np.ndarray]]]


class WorkerLost(ConnectionError):
    """A worker died or did not answer in time; the session that needed it fails."""


def expert_groups(workers: int, experts: int) -> int:
    """A, the expert groups of a selection over ``experts`` experts on ``workers`` workers:
    the largest divisor of W that is at most :data:`MAX_EXPERT_GROUPS` and E. The workers
    form an A × (W/A) grid: worker w holds the experts j ≡ w (mod A) of the output blocks
    o ≡ ⌊w/A⌋ (mod W/A) (:meth:`ExpertPool.experts`, :meth:`ExpertPool.outputs`)."""
    return max(
        a for a in range(1, min(workers, experts, MAX_EXPERT_GROUPS) + 1) if workers % a == 0
    )


@dataclass
class _SelectShard:
    """Recipe of a selection layer: worker w gets the integer weights of its experts, for its
    output blocks (none: no call)."""

    plan: SelectPlan
    ints_of: IntsOf
    skip: bool

    def load_call(self, pool: ExpertPool, w: int, shared: dict) -> tuple[str, tuple] | None:
        outputs = pool.outputs(w, self.plan)
        if not outputs:
            return None
        ids = pool.experts(w, self.plan.e)
        return "load_shard", (self.plan, ids, outputs, self.ints_of(ids), self.skip)


@dataclass
class _LinearShard:
    """Recipe of a plain-weight product: worker w gets the integer matrices and its range of
    products (none: no call). Range i of :func:`linear_units` goes to worker (first + i) mod W
    (``first`` turns with each product: a product of fewer units than workers does not always
    land on the same ones)."""

    plan: MatmulPlan
    ints: Callable[[], list[np.ndarray]]
    skip: bool
    public_zero: list[np.ndarray] | None
    first: int

    def holders(self, workers: int) -> list[tuple[int, int, int]]:
        """(worker, lo, hi) of every nonempty range, in the products' order."""
        _height, ranges = linear_units(self.plan, workers)
        return [
            ((self.first + i) % workers, lo, hi) for i, (lo, hi) in enumerate(ranges) if hi > lo
        ]

    def load_call(self, pool: ExpertPool, w: int, shared: dict) -> tuple[str, tuple] | None:
        height, _ranges = linear_units(self.plan, pool.workers)
        mine = [(lo, hi) for v, lo, hi in self.holders(pool.workers) if v == w]
        if not mine:
            return None
        ((lo, hi),) = mine
        if id(self) not in shared:  # the matrices are put in Ray's object store once
            shared[id(self)] = pool._share(self.ints())
        args = (self.plan, height, lo, hi, shared[id(self)], self.skip, self.public_zero)
        return "load_linear", args


class ExpertPool:
    """W workers, each holding its experts and output blocks of every prepared selection
    layer (:meth:`grid`) and its range of products of every prepared plain-weight product.

    Subclasses provide the transport: :meth:`_call` (a method call with a deadline),
    :meth:`_stream` (a generator method's items, each with a deadline), and where they can do
    better than one call after the other, :meth:`_call_all` (calls side by side), :meth:`_tell`
    (a call not waited for), :meth:`_share` (an argument sent to every worker once) and
    :meth:`close`.
    """

    def __init__(
        self,
        workers: int,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int | None = None,
        groups: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {workers}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"a worker's encoded-weight budget must be positive, got {max_bytes}")
        if groups is not None and (groups < 1 or workers % groups):
            raise ValueError(f"{groups} expert groups do not divide {workers} workers")
        #: A, the expert groups of every selection (None: :func:`expert_groups`' choice).
        self.groups = groups
        self.workers, self.timeout = workers, timeout
        #: Each worker's budget of encoded weights in bytes (None: no limit).
        self.max_bytes = max_bytes
        self._recipes: dict[str, _SelectShard | _LinearShard] = {}
        #: session → its keys per parameter set: (params, Galois keys' bytes, elements)
        self._sessions: dict[str, list[tuple[str, bytes, tuple[int, ...]]]] = {}
        self._seen: list[str | None] = [None] * workers
        self._has: list[tuple[set[str], set[str]]] = [(set(), set()) for _ in range(workers)]
        self._turn = 0  # the worker that holds the first range of the next product
        #: Restarts noticed (a worker's incarnation changed), for logs and tests.
        self.restarts = 0
        self._lock = threading.RLock()  # sessions side by side use the pool from threads

    # --- transport (subclasses) ------------------------------------------------------------
    def _call(self, w: int, method: str, *args: Any) -> Any:
        raise NotImplementedError

    def _stream(self, w: int, method: str, *args: Any) -> Generator[Any, None, None]:
        raise NotImplementedError

    def _tell(self, w: int, method: str, *args: Any) -> None:
        """A call whose answer nobody waits for."""
        self._call(w, method, *args)

    def _call_all(self, calls: list[tuple[int, str, tuple]]) -> list[Any]:
        """Several calls (worker, method, args), the answers in order."""
        return [self._call(w, method, *args) for w, method, args in calls]

    def _share(self, value: Any) -> Any:
        return value

    def close(self) -> None:
        """Stop the workers."""

    # --- sessions and shards ---------------------------------------------------------------
    def grid(self, e: int) -> tuple[int, int]:
        """(A, B): a selection over E experts has A expert groups × B = W/A output-block
        groups (:func:`expert_groups`, or the pool's ``groups``)."""
        a = self.groups or expert_groups(self.workers, e)
        return a, self.workers // a

    def experts(self, w: int, e: int) -> list[int]:
        """Worker w's experts among E (strided: its expert group's, j ≡ w (mod A))."""
        a = self.grid(e)[0]
        return list(range(w % a, e, a))

    def outputs(self, w: int, plan: SelectPlan) -> list[int]:
        """Worker w's output blocks of a selection (indices into ``plan.outputs``: its block
        group's, o ≡ ⌊w/A⌋ (mod B))."""
        a, b = self.grid(plan.e)
        return list(range(w // a, len(plan.outputs), b))

    def session(self, he: ServerHE | Sequence[ServerHE], owner: object) -> PoolSession:
        """Open a session on the workers with the client's Galois keys of each parameter set
        (sent now, once); it is closed when ``owner`` (the session's HE state) is freed."""
        hes = [he] if isinstance(he, ServerHE) else list(he)
        keys = [(h.params.name, h.galois_bytes, tuple(h.galois_elements)) for h in hes]
        if not keys or not all(k[1] for k in keys):
            raise ValueError("the session has no Galois keys for the workers")
        sid = os.urandom(8).hex()  # a name, not a secret
        with self._lock:
            self._sessions[sid] = keys
            self._sync_locked()
        weakref.finalize(owner, self.drop_session, sid)
        return PoolSession(self, sid)

    def drop_session(self, sid: str) -> None:
        """Forget a session's keys (here and on the workers, best effort)."""
        with self._lock:
            if self._sessions.pop(sid, None) is None:
                return
            for w in range(self.workers):
                with contextlib.suppress(Exception):  # a lost worker has forgotten it already
                    self._tell(w, "drop_keys", sid)
                self._has[w][0].discard(sid)

    def _sync(self) -> None:
        """Load what each worker lacks: after a restart (a new incarnation), everything."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        incs = self._call_all([(w, "hello", ()) for w in range(self.workers)])
        calls, done, shared = [], [], {}
        for w, inc in enumerate(incs):
            if inc != self._seen[w]:
                self.restarts += self._seen[w] is not None
                self._seen[w], self._has[w] = inc, (set(), set())
            sessions, shards = self._has[w]
            for sid in self._sessions.keys() - sessions:
                for params, galois, elements in self._sessions[sid]:
                    if (sid, params) not in shared:
                        shared[(sid, params)] = self._share(galois)
                    calls.append((w, "load_keys", (sid, params, shared[(sid, params)], elements)))
                done.append((sessions, sid))
            for shard in self._recipes.keys() - shards:
                call = self._recipes[shard].load_call(self, w, shared)
                if call is not None:
                    calls.append((w, call[0], (shard, *call[1])))
                done.append((shards, shard))
        self._call_all(calls)  # the workers lay out their shards side by side
        for have, name in done:
            have.add(name)

    def load(self, key: tuple, plan: SelectPlan, ints_of: IntsOf, skip: bool) -> str:
        """Send each worker its experts' integer weights (``ints_of(experts)``: per expert, its
        d×h_m matrices) laid out for ``plan`` and its output blocks, unless it has them;
        returns the shard's id."""
        if self.grid(plan.e)[0] > plan.e:
            raise ValueError(f"{self.grid(plan.e)[0]} expert groups for {plan.e} experts")
        return self._load(("select", key, plan.wire(), skip), _SelectShard(plan, ints_of, skip))

    def _load(self, name: tuple, recipe: _SelectShard | _LinearShard) -> str:
        shard = hashlib.sha256(repr(name).encode()).hexdigest()[:24]
        with self._lock:
            if shard not in self._recipes:
                self._recipes[shard] = recipe
                try:
                    self._sync_locked()
                except BaseException:  # e.g. a worker over its budget: not retried later
                    del self._recipes[shard]
                    raise
        return shard

    def products(
        self, sid: str, shard: str, root: np.ndarray, x0: np.ndarray, x1: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per output block, the accumulators of the workers that hold it (its block group's
        A workers) summed: ``(present (T,), acc)`` (``acc`` is valid until the next block is
        asked for: its buffer is reused)."""
        plan = self._recipes[shard].plan
        self._sync()
        args = (sid, shard, self._share(root), self._share(x0), self._share(x1))
        groups, blocks = self.grid(plan.e)
        holders = [w for w in range(self.workers) if self.outputs(w, plan)]
        streams = {w: self._stream(w, "products", *args) for w in holders}
        q = np.array(params_for(plan.params).primes[: plan.level], dtype=np.uint64)[:, None]
        total = diff = None  # buffers for every block's sum (fresh ones cost page faults)
        try:
            for o in range(len(plan.outputs)):
                group = [streams[g + groups * (o % blocks)] for g in range(groups)]
                present, acc = next(group[0])
                for s in group[1:]:
                    p, a = next(s)
                    present = present | p  # a worker's accumulator is zero where absent
                    if total is None:
                        total, diff = np.empty_like(acc), np.empty_like(acc)
                    acc = np.add(acc, a, out=total)  # < 2q < 2^64
                    # reduced mod q: acc − q wraps around above acc unless acc ≥ q
                    np.minimum(acc, np.subtract(acc, q, out=diff), out=acc)
                yield present, acc
        finally:  # on failure too: the other workers' streams are cancelled, not left running
            for s in streams.values():
                s.close()

    def linear_parts(self, sid: str, shard: str, inputs: np.ndarray) -> Iterator[np.ndarray | None]:
        """A plain-weight product's units, in order: each worker's (side by side) for the
        input ciphertexts ``inputs`` (sent once to all)."""
        recipe = self._recipes[shard]
        assert isinstance(recipe, _LinearShard)
        self._sync()
        ref = self._share(inputs)
        calls = [(w, "linear", (sid, shard, ref)) for w, _lo, _hi in recipe.holders(self.workers)]
        for part in self._call_all(calls):
            yield from part

    def encoded_bytes(self, kind: str | None = None) -> list[int]:
        """Memory of the encoded weights on each worker: the selections' experts (``kind``
        "select"), the plain-weight products' blocks ("linear") or all (None)."""
        calls = [(w, "encoded_bytes", (kind,)) for w in range(self.workers)]
        return [int(b) for b in self._call_all(calls)]

    def cpu_seconds(self) -> list[float]:
        """CPU time of each worker's process so far."""
        calls = [(w, "cpu_seconds", ()) for w in range(self.workers)]
        return [float(c) for c in self._call_all(calls)]


class PoolSession:
    """One session's view of a pool (``HEState.pool``, what ``prepare_select`` and
    ``prepare`` call)."""

    def __init__(self, pool: ExpertPool, sid: str) -> None:
        self.pool, self.sid = pool, sid

    def prepare(self, key: tuple, plan: SelectPlan, ints_of: IntsOf, skip: bool) -> ShardedSelect:
        """The experts laid out on the workers (:meth:`ExpertPool.load`) and the handle with
        which the selection computes on them under this session's keys."""
        shard = self.pool.load(key, plan, ints_of, skip)
        return ShardedSelect(plan, functools.partial(self.pool.products, self.sid, shard), skip)

    def prepare_linear(
        self,
        key: tuple,
        plan: MatmulPlan,
        ints: Callable[[], list[np.ndarray]],
        skip: bool,
        public_zero: list[np.ndarray] | None,
    ) -> ShardedWeights:
        """Send each worker the integer matrices of a plain-weight product (``ints()``) to
        encode the weight blocks of its range of products, unless it has them, and return the
        handle with which the product computes on them under this session's keys."""
        pool = self.pool
        with pool._lock:
            recipe = _LinearShard(plan, ints, skip, public_zero, pool._turn % pool.workers)
            shard = pool._load(("linear", key, plan.wire(), skip), recipe)
            pool._turn += pool._recipes[shard] is recipe  # a new product: the next begins after
        height, _ranges = linear_units(plan, pool.workers)
        return ShardedWeights(plan, height, functools.partial(pool.linear_parts, self.sid, shard))


class LocalPool(ExpertPool):
    """The workers in this process, one after the other (no parallelism: for tests and for
    measuring each shard's work alone)."""

    def __init__(
        self,
        workers: int,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int | None = None,
        groups: int | None = None,
    ) -> None:
        super().__init__(workers, timeout, max_bytes, groups)
        self.members = [ShardWorker(w, max_bytes) for w in range(workers)]

    def _call(self, w: int, method: str, *args: Any) -> Any:
        return getattr(self.members[w], method)(*args)

    def _stream(self, w: int, method: str, *args: Any) -> Generator[Any, None, None]:
        return getattr(self.members[w], method)(*args)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError("server workers need Ray: pip install 'secmoe[ray]'") from None
    return ray


class RayPool(ExpertPool):
    """One Ray actor per worker (restarted by Ray if it dies), on the Ray runtime this process
    is connected to; with none, a local one is started (``num_cpus`` = max(W, 2), no
    dashboard) and shut down by :meth:`close`, or the cluster at ``address`` is joined."""

    #: A worker's stream runs at most this many items ahead of the coordinator: a selection's
    #: workers then pause for the coordinator's finish instead of taking its CPU where they
    #: share cores with it, and hold at most this many accumulators each in the object store.
    AHEAD = 2

    def __init__(
        self,
        workers: int,
        address: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int | None = None,
        groups: int | None = None,
    ) -> None:
        super().__init__(workers, timeout, max_bytes, groups)
        ray = self.ray = _ray()
        self.owns_runtime = not ray.is_initialized()
        if self.owns_runtime:
            # Ray starts its workers at niceness 15 by default: they would yield the CPU to
            # every other process of the host, the coordinator included (unless set already).
            os.environ.setdefault("RAY_worker_niceness", "0")
            opts: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR"}
            if address:
                ray.init(address=address, **opts)
            else:
                ray.init(num_cpus=max(workers, 2), **opts)
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(ShardWorker)
        self.members = [
            actor.options(scheduling_strategy="SPREAD").remote(w, max_bytes) for w in range(workers)
        ]

    def _lost(self, w: int, exc: BaseException) -> WorkerLost:
        return WorkerLost(f"server worker lost: worker {w}: {type(exc).__name__}: {exc}")

    def _get(self, w: int, ref: Any) -> Any:
        ray = self.ray
        try:
            return ray.get(ref, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            raise WorkerLost(
                f"server worker lost: worker {w} did not answer within {self.timeout:g} s"
            ) from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise self._lost(w, exc) from None
        except ray.exceptions.RayTaskError as exc:  # an error in the worker's own code
            if isinstance(exc.cause, OverBudget):  # a user error: said as is, by the worker
                raise OverBudget(f"server {exc.cause}") from None
            raise RuntimeError(f"server worker {w} failed: {exc.cause!r}") from None

    def _call(self, w: int, method: str, *args: Any) -> Any:
        return self._get(w, getattr(self.members[w], method).remote(*args))

    def _call_all(self, calls: list[tuple[int, str, tuple]]) -> list[Any]:
        refs = [(w, getattr(self.members[w], m).remote(*args)) for w, m, args in calls]
        return [self._get(w, ref) for w, ref in refs]  # each wait has the deadline

    def _stream(self, w: int, method: str, *args: Any) -> Generator[Any, None, None]:
        opts = {"num_returns": "streaming", "_generator_backpressure_num_objects": self.AHEAD}
        gen = getattr(self.members[w], method).options(**opts).remote(*args)
        return self._items(w, gen)  # submitted now: the workers run side by side

    def _items(self, w: int, gen: Any) -> Generator[Any, None, None]:
        try:
            while True:
                t0 = time.monotonic()
                ready, _ = self.ray.wait([gen], timeout=self.timeout)
                if not ready:
                    raise WorkerLost(
                        f"server worker lost: worker {w} sent nothing for "
                        f"{time.monotonic() - t0:.0f} s"
                    )
                try:
                    ref = next(gen)
                except StopIteration:
                    return
                yield self._get(w, ref)
        finally:
            with contextlib.suppress(Exception):
                self.ray.cancel(gen)

    def _tell(self, w: int, method: str, *args: Any) -> None:
        getattr(self.members[w], method).remote(*args)

    def _share(self, value: Any) -> Any:
        return self.ray.put(value)

    def close(self) -> None:
        for m in self.members:
            with contextlib.suppress(Exception):
                self.ray.kill(m, no_restart=True)
        self.members = []
        if self.owns_runtime:
            self.ray.shutdown()

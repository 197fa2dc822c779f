"""Expert-parallel server: W workers hold the experts' selection weights and compute the
selection's products; the coordinator (the process that talks to the client) sums them.

**What runs where.** For each encrypted selection (:mod:`secmoe.protocols.he_select`) the
coordinator adds its shares to the client's ciphertexts (step 2a/2b), sends every worker the
one-hot ciphertext [[t]] (coefficient form) and the inputs' c0, c1 (NTT form) as numpy arrays,
and each worker w returns, per output block (m, c) as it is done, its accumulators
Σ_b (Σ_{j∈S_w} [[t_kj]]·Ŵ_j,m[b, c]) ⊗ (x0, x1)[k, b]. The tensor product is bilinear, so
the coordinator's sum over workers is exactly the embedded server's accumulator (bit for bit:
every step is exact arithmetic mod q); the coordinator then switches, relinearizes, packs,
re-randomizes and floods as the embedded server does. The bytes and rounds to the client are
unchanged. Experts are strided, S_w = {j : j ≡ w (mod W)}: the expansion splits on the low bits
of the leaf index i = k·E + j first, so when W divides E a worker expands only its own subtree
(T·E/W − 1 automorphisms plus log2 W on the path to it) instead of anyone expanding all T·E
leaves; for other W the pruning still skips every node with no leaf of the worker's.

**State.** Each worker holds its shard of every prepared selection layer (laid out from the
integer weights it is sent once: the coordinator keeps no encoded expert weights, only the
recipe — a reference to the float weights the caller holds — to send a shard again to a worker
that restarted), one SEAL context per parameter set, and the Galois keys of each open session
(the client's serialized keys, sent once per session). With a budget (``max_bytes``,
``--max-encoded-gb``) a worker refuses, before laying it out, a shard that would take its
encoded weights past it (:class:`~secmoe.distributed.worker.OverBudget`, naming the worker and
the gigabytes; the layer is then not prepared). Pickle only carries numpy arrays, bytes
and plans between the coordinator and its own workers (Ray's transport), never to the client.

**Faults.** Every wait on a worker has a deadline (``timeout``); a worker that dies or does not
answer fails the selection with :class:`WorkerLost` ("server worker lost: …"), which the
session sends to the client as its error. Ray restarts the actor; the next selection sees its
new incarnation and sends it the keys and shards again.

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
from typing import Any

import numpy as np

from ..crypto.he_params import params_for
from ..protocols.he_select import SelectPlan, ShardedSelect
from ..protocols.he_setup import ServerHE
from .worker import OverBudget, ShardWorker

__all__ = ["DEFAULT_TIMEOUT", "ExpertPool", "LocalPool", "PoolSession", "RayPool", "WorkerLost"]

#: Seconds the coordinator waits for any one answer of a worker.
DEFAULT_TIMEOUT = 600.0

IntsOf = Callable[[Sequence[int]], list[list[np.ndarray]]]


class WorkerLost(ConnectionError):
    """A worker died or did not answer in time; the session that needed it fails."""


class ExpertPool:
    """W workers, each holding the experts j ≡ w (mod W) of every prepared selection layer.

    Subclasses provide the transport: :meth:`_call` (a method call with a deadline),
    :meth:`_stream` (a generator method's items, each with a deadline), and where they can do
    better than one call after the other, :meth:`_call_all` (calls side by side), :meth:`_tell`
    (a call not waited for), :meth:`_share` (an argument sent to every worker once) and
    :meth:`close`.
    """

    def __init__(
        self, workers: int, timeout: float = DEFAULT_TIMEOUT, max_bytes: int | None = None
    ) -> None:
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {workers}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"a worker's encoded-weight budget must be positive, got {max_bytes}")
        self.workers, self.timeout = workers, timeout
        #: Each worker's budget of encoded weights in bytes (None: no limit).
        self.max_bytes = max_bytes
        self._recipes: dict[str, tuple[SelectPlan, IntsOf, bool]] = {}
        self._sessions: dict[str, tuple[str, bytes]] = {}
        self._seen: list[str | None] = [None] * workers
        self._has: list[tuple[set[str], set[str]]] = [(set(), set()) for _ in range(workers)]
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
    def experts(self, w: int, e: int) -> list[int]:
        """Worker w's experts among E (strided)."""
        return list(range(w, e, self.workers))

    def session(self, he: ServerHE, owner: object) -> PoolSession:
        """Open a session on the workers with the client's Galois keys (sent now, once); it is
        closed when ``owner`` (the session's HE state) is freed."""
        if not he.galois_bytes:
            raise ValueError("the session has no Galois keys for the workers")
        sid = os.urandom(8).hex()  # a name, not a secret
        with self._lock:
            self._sessions[sid] = (he.params.name, he.galois_bytes)
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
                params, galois = self._sessions[sid]
                if sid not in shared:
                    shared[sid] = self._share(galois)
                calls.append((w, "load_keys", (sid, params, shared[sid])))
                done.append((sessions, sid))
            for shard in self._recipes.keys() - shards:
                plan, ints_of, skip = self._recipes[shard]
                ids = self.experts(w, plan.e)
                calls.append((w, "load_shard", (shard, plan, ids, ints_of(ids), skip)))
                done.append((shards, shard))
        self._call_all(calls)  # the workers lay out their shards side by side
        for have, name in done:
            have.add(name)

    def load(self, key: tuple, plan: SelectPlan, ints_of: IntsOf, skip: bool) -> str:
        """Send each worker its experts' integer weights (``ints_of(experts)``: per expert, its
        d×h_m matrices) laid out for ``plan``, unless it has them; returns the shard's id."""
        if plan.e < self.workers:
            raise ValueError(f"{self.workers} workers for {plan.e} experts: use at most E")
        shard = hashlib.sha256(repr((key, plan.wire(), skip)).encode()).hexdigest()[:24]
        with self._lock:
            if shard not in self._recipes:
                self._recipes[shard] = (plan, ints_of, skip)
                try:
                    self._sync_locked()
                except BaseException:  # e.g. a worker over its budget: not retried later
                    del self._recipes[shard]
                    raise
        return shard

    def products(
        self, sid: str, shard: str, root: np.ndarray, x0: np.ndarray, x1: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per output block, the workers' accumulators summed: ``(present (T,), acc)``."""
        plan = self._recipes[shard][0]
        self._sync()
        args = (sid, shard, self._share(root), self._share(x0), self._share(x1))
        streams = [self._stream(w, "products", *args) for w in range(self.workers)]
        q = np.array(params_for(plan.params).primes[: plan.level], dtype=np.uint64)[:, None]
        try:
            for _ in plan.outputs:
                present, acc = next(streams[0])
                for i, s in enumerate(streams[1:]):
                    p, a = next(s)
                    present = present | p  # a worker's accumulator is zero where absent
                    acc = acc + a if i == 0 else np.add(acc, a, out=acc)  # < 2q < 2^64
                    np.subtract(acc, q, out=acc, where=acc >= q)
                yield present, acc
        finally:  # on failure too: the other workers' streams are cancelled, not left running
            for s in streams:
                s.close()

    def encoded_bytes(self) -> list[int]:
        """Memory of the encoded expert weights on each worker."""
        calls = [(w, "encoded_bytes", ()) for w in range(self.workers)]
        return [int(b) for b in self._call_all(calls)]

    def cpu_seconds(self) -> list[float]:
        """CPU time of each worker's process so far."""
        calls = [(w, "cpu_seconds", ()) for w in range(self.workers)]
        return [float(c) for c in self._call_all(calls)]


class PoolSession:
    """One session's view of a pool (``HEState.pool``, what ``prepare_select`` calls)."""

    def __init__(self, pool: ExpertPool, sid: str) -> None:
        self.pool, self.sid = pool, sid

    def prepare(self, key: tuple, plan: SelectPlan, ints_of: IntsOf, skip: bool) -> ShardedSelect:
        """The experts laid out on the workers (:meth:`ExpertPool.load`) and the handle with
        which the selection computes on them under this session's keys."""
        shard = self.pool.load(key, plan, ints_of, skip)
        return ShardedSelect(plan, functools.partial(self.pool.products, self.sid, shard), skip)


class LocalPool(ExpertPool):
    """The workers in this process, one after the other (no parallelism: for tests and for
    measuring each shard's work alone)."""

    def __init__(
        self, workers: int, timeout: float = DEFAULT_TIMEOUT, max_bytes: int | None = None
    ) -> None:
        super().__init__(workers, timeout, max_bytes)
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

    def __init__(
        self,
        workers: int,
        address: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int | None = None,
    ) -> None:
        super().__init__(workers, timeout, max_bytes)
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
        gen = getattr(self.members[w], method).options(num_returns="streaming").remote(*args)
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

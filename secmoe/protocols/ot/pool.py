"""The per-session OT pool: every OT a protocol needs, in either direction.

An :class:`OTPool` holds the two COT instances of a session (SCI's straight and reversed): one
in which this party is the COT sender, one in which it is the receiver. They are set up once,
in :meth:`OTPool.setup`, under the channel phase ``"setup"``; nothing is set up lazily.
:meth:`OTPool.fork` gives a pool on a forked channel (no communication) for concurrent
sub-protocols. One pool serves one operation at a time: running two operations concurrently
on the same pool raises (fork instead).

API (SPMD callers know their role; the sender's and the receiver's calls pair up)::

    pool = await OTPool.setup(ch, prg)          # both parties; both directions, in parallel
    sub = pool.fork("expert3")                   # both parties, same name: independent pool

    # correlated OT with a global Δ (raw COT): t = q ⊕ r·Δ
    q = await pool.cot_send(n)                   # (n, 2) uint64 blocks; pool.delta: (2,) uint64
    t = await pool.cot_recv(r)                   # r: (n,) bool
    r, t = await pool.cot_recv_random(n)         # sender: pool.cot_send(n, random_choices=True)

    # random OT with ℓ-bit messages (k values per message: shape (n, k); k=None: shape (n,))
    m0, m1 = await pool.rot_send(n, bits, k)     # add random_choices=True to pair with ↓
    mr = await pool.rot_recv(r, bits, k)        # or: r, mr = await pool.rot_recv_random(n, bits, k)

    # chosen-message OT (bits = 1 for bit messages)
    await pool.ot_send(m0, m1, bits)
    mr = await pool.ot_recv(r, bits, k)

    # additive correlated OT over Z_{2^ℓ} (ALSZ13 C-OT): receiver gets x + r·c mod 2^ℓ
    x = await pool.acot_send(c, bits)
    y = await pool.acot_recv(r, bits, k)

    # 1-out-of-N OT, N ≤ 256, short messages
    await pool.kkot_send(M, bits)                # M: (n, N)
    mx = await pool.kkot_recv(x, N, bits)        # x: (n,) in [0, N)

Every method has a declared cost, :meth:`OTPool.cost`, checked against the channel's
measured bytes and rounds in ``tests/ot/test_ot.py`` and ``tests/ot_silent``. Messages are
uint64 arrays whose values are taken mod 2^bits (1 ≤ bits ≤ 64).

**COT sources.** ``SOURCES`` maps a name to the pair of classes (sender, receiver) that
implement :class:`~secmoe.protocols.ot.base.CotSender` / ``CotReceiver`` with an async
``setup(ch, prg, label)`` classmethod; every derived OT above runs on either unchanged.

- ``"iknp"`` (:mod:`.iknp`): 128 base OTs per direction (8.3 KB for the session), then 16 B per
  COT (the receiver's u). A fork derives fresh IKNP instances (no communication).
- ``"silent"`` (:mod:`.silent` over :mod:`.ferret`, B13 parameters): per direction, base OTs,
  74,036 IKNP COTs and the whole ``pre`` iteration in the setup (2,948,776 B for the session,
  4 rounds), then one Ferret stream per direction that every fork draws from (sender-announced
  allocation: 18 B per draw; with chosen choice bits 1 bit per COT; GGM batches: 27,653 B per
  2^19 rows, 0.055 B per COT). A random-choice draw is one flight like IKNP's; a chosen-choice
  draw is two (the receiver learns its range before sending d), so chosen-message, additive
  and 1-of-N OTs take 3 flights instead of 2. The batches are declared per stretch of work by
  :meth:`OTPool.refill_cost`, not per operation (see :mod:`.silent` for why).

**The default is ``"silent"``, by measurement** (``secmoe bench OP … --source S --json``, both
parties in one process on this 2-core machine, shared with other jobs; 2026-11; min of 3
alternating runs; bytes are exact, times noisy):

=====================================  ================  =================  ============
operation (2^16 elements, 64 bits)     IKNP B/elt        silent B/elt       time IKNP/silent
=====================================  ================  =================  ============
COTs, n = 10^7                         16.00 B/COT       0.055 B/COT        1.2 s / 2.5 s
comparison (x < y) *                   1,558             68.5               3.6 s / 3.0 s
ReLU *                                 1,606             85.2               4.4 s / 2.9 s
multiplication *                       2,568             544                1.1 s / 3.1 s
truncation, B2A                        24                8.1                0.03 s / 0.02 s
MUX                                    48                16.3               0.06 s / 0.04 s
argmax of 8 (4,096 rows) *             12,396            996                3.7 s / 4.1 s
=====================================  ================  =================  ============

Rows marked * were remeasured 2026-12 after issue 18 (comparison leaves of 3 bits with silent
OT, gt-only lowest leaf, correlated AND triples; Gilboa COTs of ℓ − i bits), single runs at
load 4–9 on the shared machine: their times are not comparable with the other rows
(multiplication: 2^15 elements).

Silent sends 3–23× fewer bytes per operation; its setup costs 2.94 MB more (and ~0.3 s), which
IKNP's 16 B per COT repays after ≈ 9.2·10^4 COTs per direction (≈ 1.8·10^5 if one direction
only): ~1,900 ReLUs, ~1,500 64-bit products or ~260 argmax rows. Its Ferret compute (GGM
expansion, LPN encoding) costs ~2.5× IKNP's CPU per COT (10^7 COTs, both parties, compiled
kernels of :mod:`secmoe.crypto.kernels` on either side since issue 18: 1.4–2.1 s against
0.63–1.1 s at load 17–19, each ~1.7–2× less CPU than before), so with both parties sharing 2
cores a large COT-heavy operation runs up to 2× slower before the network is counted (IKNP's
extra bytes cost more than that below ~0.4–0.6 Gbit/s for ReLU and products at 2^16). Small
operations are the other way round: a silent fork is free and a small draw is served from rows
already made (an 18-byte announcement), while an IKNP fork derives 128–256 seeds and PRGs and
each draw expands all 128 columns: 200 sequential ReLUs of 64 elements take 18.7 s with IKNP,
1.5 s silent. A whole private inference, full of small operations, is faster too: the
bundled digits model, one sample (``secmoe demo --samples 1``), IKNP / silent: 16.0 s / 9.1 s
online, 40.9 MB / 33.7 MB online (plus 2.9 MB more setup), 471 / 659 rounds (the extra flight
of each chosen-choice draw: +0.4 s at 4 ms RTT). Choose ``source="iknp"`` for sessions below
the crossover or when rounds dominate (long RTT, few elements per layer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from secmoe.crypto import kernels
from secmoe.crypto.prg import PRG
from secmoe.net import Channel
from secmoe.protocols.ot import base, ferret, iknp, kkot, silent
from secmoe.protocols.ot.base import Cost, CotReceiver, CotSender

SOURCES: dict[str, tuple[Any, Any]] = {
    "iknp": (iknp.IknpSender, iknp.IknpReceiver),
    "silent": (silent.SilentSender, silent.SilentReceiver),
}
#: The default COT source (see the module docstring for the measurement behind it).
DEFAULT_SOURCE = "silent"


def _instance_label(sender_role: str) -> str:
    return f"ot-{sender_role}-sends"


class OTPool:
    """One party's OT state for a session (or a fork of it). Build with :meth:`setup`."""

    def __init__(self, ch: Channel, sender: CotSender, receiver: CotReceiver) -> None:
        self.ch = ch
        self.sender = sender
        self.receiver = receiver
        self._busy = False
        self._forked: dict[str, int] = {}

    @classmethod
    async def setup(
        cls,
        ch: Channel,
        prg: PRG,
        *,
        source: str = DEFAULT_SOURCE,
        phase: str | None = "setup",
    ) -> OTPool:
        """Set up both COT instances concurrently (on two forks of ``ch``): IKNP's base OTs,
        or Ferret's (base OTs, IKNP bootstrap, the whole ``pre`` iteration); first, the OT
        kernels are loaded (:func:`secmoe.crypto.kernels.warm`).

        Args:
            ch: this party's channel; the pool's operations run on it.
            prg: this party's PRG (two children are derived from it).
            source: the COT source (a key of ``SOURCES``).
            phase: the channel phase to record the setup under (``None``: the current one).
        """
        if source not in SOURCES:
            raise ValueError(f"unknown COT source {source!r}; known: {sorted(SOURCES)}")
        sender_cls, receiver_cls = SOURCES[source]
        me, peer = ch.role, ("server" if ch.role == "client" else "client")
        send_label, recv_label = _instance_label(me), _instance_label(peer)
        send_prg, recv_prg = prg.derive(send_label), prg.derive(recv_label)
        ctx = ch.phase(phase) if phase is not None else contextlib.nullcontext()
        with ctx:
            await asyncio.to_thread(kernels.warm)  # no timed operation loads the kernels
            sender, receiver = await asyncio.gather(
                sender_cls.setup(ch.fork(send_label), send_prg, send_label),
                receiver_cls.setup(ch.fork(recv_label), recv_prg, recv_label),
            )
        return cls(ch, sender, receiver)

    @staticmethod
    def setup_cost(source: str = DEFAULT_SOURCE) -> dict[str, int]:
        """Declared cost of :meth:`setup` (both instances: bytes each way, messages, rounds)."""
        if source == "iknp":
            one = base.cost(iknp.KAPPA)
            rounds = 2
        elif source == "silent":
            one = silent.setup_cost(ferret.B13)
            rounds = one.rounds
        else:
            raise ValueError(f"no setup cost declared for {source!r}")
        # Each party is the sender of one instance and the receiver of the other.
        total = one.sender_bytes + one.receiver_bytes
        return {
            "bytes_c2s": total,
            "bytes_s2c": total,
            "messages": 2 * one.messages,
            "rounds": rounds,
        }

    @property
    def source(self) -> str:
        """The name of this pool's COT source (a key of ``SOURCES``)."""
        for name, (sender_cls, _) in SOURCES.items():
            if isinstance(self.sender, sender_cls):
                return name
        return type(self.sender).__name__

    def fork(self, name: str, ch: Channel | None = None) -> OTPool:
        """An independent pool with derived COT instances, on ``ch`` (default
        ``self.ch.fork(name)``).

        Forking the same name twice from one pool never yields the same COTs: the k-th repeat
        derives its instances under ``name~k`` (both parties fork in the same program order).
        """
        k = self._forked.get(name, 0)
        self._forked[name] = k + 1
        label = name if k == 0 else f"{name}~{k}"
        return OTPool(
            self.ch.fork(name) if ch is None else ch,
            self.sender.fork(label),
            self.receiver.fork(label),
        )

    @property
    def delta(self) -> np.ndarray:
        """Δ of the instance in which this party is the COT sender: ``(2,)`` uint64."""
        return self.sender.delta

    @contextlib.contextmanager
    def _use(self) -> Iterator[None]:
        if self._busy:
            raise RuntimeError(
                f"OTPool on {self.ch.path or '(root)'!r} used by two operations at once: "
                "fork the pool for concurrent work"
            )
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    # -- correlated OT with global Δ --------------------------------------------------------
    async def cot_send(self, n: int, *, random_choices: bool = False) -> np.ndarray:
        """n COTs as sender: q, ``(n, 2)`` uint64; the receiver gets q ⊕ r·Δ."""
        with self._use():
            return await _collect(
                self.sender.send_iter(self.ch, n, random_choices=random_choices), n
            )

    async def cot_recv(self, choices: np.ndarray) -> np.ndarray:
        """COTs as receiver with chosen bits: t = q ⊕ r·Δ, ``(n, 2)`` uint64."""
        r = np.asarray(choices, dtype=bool).reshape(-1)
        with self._use():
            return await _collect(self.receiver.recv_iter(self.ch, r), r.size)

    async def cot_recv_random(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """COTs as receiver with random bits: ``(r, t)``."""
        r, t = np.empty(n, dtype=bool), np.empty((n, 2), dtype=np.uint64)
        off = 0
        with self._use():
            async for _, rc, tc in self.receiver.recv_random_iter(self.ch, n):
                r[off : off + rc.size] = rc
                await asyncio.to_thread(np.copyto, t[off : off + rc.size], tc)  # off the loop
                off += rc.size
        return r, t

    # -- random, chosen-message and additive OT ---------------------------------------------
    async def rot_send(
        self, n: int, bits: int, k: int | None = None, *, random_choices: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random OT as sender: ``(m0, m1)``, shape (n,) or (n, k), values < 2^bits."""
        with self._use():
            return await iknp.rot_send(
                self.ch, self.sender, n, bits, k, random_choices=random_choices
            )

    async def rot_recv(self, choices: np.ndarray, bits: int, k: int | None = None) -> np.ndarray:
        """Random OT as receiver with chosen bits: m_r."""
        with self._use():
            return await iknp.rot_recv(self.ch, self.receiver, choices, bits, k)

    async def rot_recv_random(
        self, n: int, bits: int, k: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random OT as receiver with random bits: ``(r, m_r)``."""
        with self._use():
            return await iknp.rot_recv_random(self.ch, self.receiver, n, bits, k)

    async def ot_send(self, m0: np.ndarray, m1: np.ndarray, bits: int) -> None:
        """Chosen-message OT as sender."""
        with self._use():
            await iknp.ot_send(self.ch, self.sender, m0, m1, bits)

    async def ot_recv(self, choices: np.ndarray, bits: int, k: int | None = None) -> np.ndarray:
        """Chosen-message OT as receiver: m_r."""
        with self._use():
            return await iknp.ot_recv(self.ch, self.receiver, choices, bits, k)

    async def acot_send(
        self, corr: np.ndarray, bits: int, widths: np.ndarray | None = None
    ) -> np.ndarray:
        """Additive correlated OT as sender: returns x; the receiver gets x + r·corr mod 2^bits
        (with ``widths``, period L: mod 2^widths[j mod L] for OT j, and only those bits sent)."""
        with self._use():
            return await iknp.acot_send(self.ch, self.sender, corr, bits, widths)

    async def acot_recv(
        self,
        choices: np.ndarray,
        bits: int,
        k: int | None = None,
        widths: np.ndarray | None = None,
    ) -> np.ndarray:
        """Additive correlated OT as receiver: x + r·corr mod 2^bits (or 2^widths[j mod L])."""
        with self._use():
            return await iknp.acot_recv(self.ch, self.receiver, choices, bits, k, widths)

    # -- 1-out-of-N --------------------------------------------------------------------------
    async def kkot_send(self, msgs: np.ndarray, bits: int) -> None:
        """1-out-of-N OT as sender: ``msgs`` is (n, N)."""
        with self._use():
            await kkot.send(self.ch, self.sender, msgs, bits)

    async def kkot_recv(self, choices: np.ndarray, n_choices: int, bits: int) -> np.ndarray:
        """1-out-of-N OT as receiver: M[x], shape (n,)."""
        with self._use():
            return await kkot.recv(self.ch, self.receiver, choices, n_choices, bits)

    # -- declared costs ----------------------------------------------------------------------
    def cost(
        self,
        kind: str,
        n: int,
        bits: int = 1,
        k: int | None = None,
        n_choices: int = 2,
        *,
        random_choices: bool = False,
        widths: np.ndarray | None = None,
    ) -> Cost:
        """Declared cost of one operation: kind ∈ {cot, rot, ot, acot, kkot}.

        ``random_choices`` (cot, rot): the receiver takes random choice bits
        (``cot_recv_random``, ``rot_recv_random``); with the silent source that saves the
        receiver's d message. Computed from this party's sender instance; both instances of a
        source cost the same; ``widths``: an additive COT's per-OT widths (:meth:`acot_send`).
        Use ``.directed(sender_role)`` for channel terms (``bytes_c2s``,
        ``bytes_s2c``, …). With the silent source, the shared streams' GGM batches are not in
        it: see :meth:`refill_cost`.
        """
        src = self.sender
        if kind in ("cot", "rot"):
            return src.cost(n, random_choices=random_choices)
        if kind == "ot":
            return iknp.cost_ot(src, n, bits, k)
        if kind == "acot":
            return iknp.cost_acot(src, n, bits, k, widths)
        if kind == "kkot":
            return kkot.cost(src, n, n_choices, bits)
        raise ValueError(f"unknown OT kind {kind!r}")

    def _streams(self) -> list[silent.Stream]:
        out = []
        for inst in (self.sender, self.receiver):
            if isinstance(inst, silent.SilentSender | silent.SilentReceiver):
                out.append(inst.stream)
        return out

    def mark(self) -> PoolMark:
        """The state of the session's COT streams now, for :meth:`refill_cost` (taken between
        operations; keep it short-lived)."""
        return PoolMark(tuple(s.mark() for s in self._streams()))

    def refill_cost(self, since: PoolMark) -> dict[str, int]:
        """Declared cost of the streams' own traffic since ``since``, in channel terms
        (``bytes_c2s``, ``bytes_s2c``, ``messages``, ``rounds`` = 0).

        With the silent source: the GGM batches both directions' streams sent since the mark,
        a function of how far each stream advanced (exact; see :mod:`.silent`). Add it to the
        declared costs of the operations run since the mark to get the channel's figures.
        IKNP has none (every u message belongs to its draw): all zeros.
        """
        out = {"bytes_c2s": 0, "bytes_s2c": 0, "messages": 0, "rounds": 0}
        for st, m in zip(self._streams(), since.streams, strict=True):
            sender_role = self.ch.role if st.is_sender else _peer(self.ch.role)
            d = st.refill_cost(m).directed(sender_role)
            for key in ("bytes_c2s", "bytes_s2c", "messages"):
                out[key] += d[key]
        return out


@dataclass(frozen=True)
class PoolMark:
    """The state of a pool's COT streams at one instant (:meth:`OTPool.mark`)."""

    streams: tuple[silent.StreamMark, ...]


def _peer(role: str) -> str:
    return "server" if role == "client" else "client"


async def _collect(chunks: AsyncIterator[tuple[int, np.ndarray]], n: int) -> np.ndarray:
    out = np.empty((n, 2), dtype=np.uint64)
    off = 0
    async for _, blocks in chunks:
        # in a thread: a chunk's copy (and the output's page faults) off the event loop, which
        # serves both parties in a local run
        await asyncio.to_thread(np.copyto, out[off : off + blocks.shape[0]], blocks)
        off += blocks.shape[0]
    return out


# -- benchmark operations (the CLI measures them; benchmarks never verify) -------------------

BENCH_KINDS = ("cot", "rot", "ot", "acot", "kkot")
OTOperation = Callable[[], Awaitable[Any]]


def bench_operation(
    pool: OTPool,
    role: str,
    kind: str,
    n: int,
    bits: int = 1,
    *,
    n_choices: int = 16,
    sender: str = "client",
) -> OTOperation:
    """One OT operation for ``secmoe bench ot``, with its inputs drawn now (not timed).

    Args:
        kind: ``cot`` (raw COT, random choices), ``rot`` (random OT, chosen choices), ``ot``
            (chosen messages), ``acot`` (additive correlated OT), ``kkot`` (1-out-of-N).
        n: number of OTs (transfers, for kkot).
        bits: message bits (ignored by cot).
        n_choices: N for kkot.
        sender: the role that acts as OT sender.

    The inputs come from a fixed public PRG: benchmark inputs are not secrets.
    """
    if kind not in BENCH_KINDS:
        raise ValueError(f"kind must be one of {BENCH_KINDS}, got {kind!r}")
    g = PRG(b"secmoe-bench-in\0")
    is_sender = role == sender
    if kind == "cot":
        if is_sender:
            return lambda: pool.cot_send(n, random_choices=True)
        return lambda: pool.cot_recv_random(n)
    if kind == "rot":
        r = g.bits(n)
        return (lambda: pool.rot_send(n, bits)) if is_sender else (lambda: pool.rot_recv(r, bits))
    if kind == "ot":
        m0, m1, r = g.ring(n, bits), g.ring(n, bits), g.bits(n)
        if is_sender:
            return lambda: pool.ot_send(m0, m1, bits)
        return lambda: pool.ot_recv(r, bits)
    if kind == "acot":
        c, r = g.ring(n, bits), g.bits(n)
        if is_sender:
            return lambda: pool.acot_send(c, bits)
        return lambda: pool.acot_recv(r, bits)
    msgs, x = g.ring((n, n_choices), bits), g.below(n_choices, n)
    if is_sender:
        return lambda: pool.kkot_send(msgs, bits)
    return lambda: pool.kkot_recv(x, n_choices, bits)

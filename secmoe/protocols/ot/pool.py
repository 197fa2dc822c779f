"""The per-session OT pool: every OT a protocol needs, in either direction.

An :class:`OTPool` holds the two COT instances of a session (SCI's straight and reversed): one
in which this party is the COT sender, one in which it is the receiver. The base OTs run once,
in :meth:`OTPool.setup`, under the channel phase ``"setup"``; nothing is set up lazily.
:meth:`OTPool.fork` gives an independent pool on a forked channel (derived seeds, no
communication) for concurrent sub-protocols. One pool serves one operation at a time: running
two operations concurrently on the same pool raises (fork instead).

API (SPMD callers know their role; the sender's and the receiver's calls pair up)::

    pool = await OTPool.setup(ch, prg)          # both parties; base OTs both ways, in parallel
    sub = pool.fork("expert3")                   # both parties, same name: independent pool

    # correlated OT with a global Δ (raw COT, 16 B/OT with IKNP): t = q ⊕ r·Δ
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
measured bytes and rounds in ``tests/ot/test_ot.py``. Messages are uint64 arrays whose values
are taken mod 2^bits (1 ≤ bits ≤ 64).

COT sources: ``SOURCES`` maps a name to the pair of classes (sender, receiver) that
implement :class:`~secmoe.protocols.ot.base.CotSender` / ``CotReceiver`` with an async
``setup(ch, prg, label)`` classmethod. ``"iknp"`` is the only one now; a silent-OT source
(Ferret, issue 4) registers here and every derived OT above works on it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import numpy as np

from secmoe.crypto.prg import PRG
from secmoe.net import Channel
from secmoe.protocols.ot import base, iknp, kkot
from secmoe.protocols.ot.base import Cost, CotReceiver, CotSender

SOURCES: dict[str, tuple[Any, Any]] = {"iknp": (iknp.IknpSender, iknp.IknpReceiver)}


def _instance_label(sender_role: str) -> str:
    return f"ot-{sender_role}-sends"


class OTPool:
    """One party's OT state for a session (or a fork of it). Build with :meth:`setup`."""

    def __init__(self, ch: Channel, sender: CotSender, receiver: CotReceiver) -> None:
        self.ch = ch
        self.sender = sender
        self.receiver = receiver
        self._busy = False

    @classmethod
    async def setup(
        cls, ch: Channel, prg: PRG, *, source: str = "iknp", phase: str | None = "setup"
    ) -> OTPool:
        """Run the base OTs of both instances concurrently (on two forks of ``ch``).

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
            sender, receiver = await asyncio.gather(
                sender_cls.setup(ch.fork(send_label), send_prg, send_label),
                receiver_cls.setup(ch.fork(recv_label), recv_prg, recv_label),
            )
        return cls(ch, sender, receiver)

    @staticmethod
    def setup_cost(source: str = "iknp") -> dict[str, int]:
        """Declared cost of :meth:`setup` (both instances: bytes each way, messages, rounds)."""
        if source != "iknp":
            raise ValueError(f"no setup cost declared for {source!r}")
        one = base.cost(iknp.KAPPA)
        total = one.sender_bytes + one.receiver_bytes
        return {"bytes_c2s": total, "bytes_s2c": total, "messages": 2 * one.messages, "rounds": 2}

    def fork(self, name: str) -> OTPool:
        """An independent pool on ``ch.fork(name)`` with derived COT instances."""
        return OTPool(self.ch.fork(name), self.sender.fork(name), self.receiver.fork(name))

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
                r[off : off + rc.size], t[off : off + rc.size] = rc, tc
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

    async def acot_send(self, corr: np.ndarray, bits: int) -> np.ndarray:
        """Additive correlated OT as sender: returns x; the receiver gets x + r·corr mod 2^bits."""
        with self._use():
            return await iknp.acot_send(self.ch, self.sender, corr, bits)

    async def acot_recv(self, choices: np.ndarray, bits: int, k: int | None = None) -> np.ndarray:
        """Additive correlated OT as receiver: x + r·corr mod 2^bits."""
        with self._use():
            return await iknp.acot_recv(self.ch, self.receiver, choices, bits, k)

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
        self, kind: str, n: int, bits: int = 1, k: int | None = None, n_choices: int = 2
    ) -> Cost:
        """Declared cost of one operation: kind ∈ {cot, rot, ot, acot, kkot}.

        Computed from this party's sender instance; both instances of a source cost the same.
        Use ``.directed(sender_role)`` for channel terms (``bytes_c2s``, ``bytes_s2c``, …).
        """
        src = self.sender
        if kind in ("cot", "rot"):
            return src.cost(n)
        if kind == "ot":
            return iknp.cost_ot(src, n, bits, k)
        if kind == "acot":
            return iknp.cost_acot(src, n, bits, k)
        if kind == "kkot":
            return kkot.cost(src, n, n_choices, bits)
        raise ValueError(f"unknown OT kind {kind!r}")


async def _collect(chunks: AsyncIterator[tuple[int, np.ndarray]], n: int) -> np.ndarray:
    out = np.empty((n, 2), dtype=np.uint64)
    off = 0
    async for _, blocks in chunks:
        out[off : off + blocks.shape[0]] = blocks
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

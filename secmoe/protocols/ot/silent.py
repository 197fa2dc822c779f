"""The silent COT source of the OT pool: one Ferret stream per direction, shared by every fork.

A Ferret instance (:mod:`secmoe.protocols.ot.ferret`) is a sequential stream: its outputs are
made GGM batch by GGM batch, and a fresh instance costs ~1.47 MB to start (base OTs, the
74,036 IKNP COTs of its first reserve, the ``pre`` iteration: :func:`setup_cost`). Forking one
per :meth:`OTPool.fork` would pay that for
every AND level, MUX direction and comparison leaf of a protocol. So a session holds **one
Ferret instance per direction** (set up once, in the ``setup`` phase), and every fork of the
pool draws its COTs from it: :class:`SilentSender` / :class:`SilentReceiver` are the
fork-level views (:class:`~secmoe.protocols.ot.base.CotSender` / ``CotReceiver``), and
:class:`Stream` is one party's end of the shared instance.

**Allocation, announced by the sender.** Forks run concurrently and the two parties' tasks
interleave differently, so "first come, first served" would hand the sender's COT j and the
receiver's COT j to different forks. Ferret is sender-driven (the GGM messages go
sender → receiver, nothing comes back), so the COT sender allocates: its draws take
consecutive ranges of the stream (:meth:`Stream.allocate`, synchronous, so the order is the
sender's) and it tells the receiver which range a draw got, on the drawing fork's own channel
(both parties fork the same paths, so the path names the draw)::

    sender fork F (path p)                                 receiver fork F (path p)
    Step 1: [s, s + n) = the stream's next n COTs
            ── "ot/silent/alloc" (s, n): 16 B, on p ──▶
    Step 2: make rows up to s + n (GGM batches,           Step 2: rows [s, s + n): read the
            on the stream's channel, in stream order)             stream's GGM batches in order
            ── GGM batches, on the stream's path ──▶              as far as needed
    (chosen choices)                    ◀── d = r ⊕ c per chunk, on p ──
    Step 3: q ⊕= d·Δ

The announcement travels on the fork's channel rather than through a dispatcher reading the
stream's channel: the receiving fork then waits on its own FIFO (a tag mismatch or a wrong n
raises at once, naming the path), the depth stamps follow the fork, and no background task
outlives a session. The GGM batches stay on the stream's channel, in stream order: a fork
that needs rows up to s + n reads them, under the stream's lock, as far as needed. The sender
sends them right after the announcement (chosen choices) or as its own caller takes the rows
(random choices), never waiting for the receiver, so the reading fork cannot wait forever.

Each party's end keeps the rows made but not yet handed out (:class:`Stream`), so a draw
smaller than a batch is served from rows already made (it costs the 18-byte announcement
only), and a fork whose rows were made by another fork's draw finds them there. Rows are
freed when handed out: a stream holds only rows allocated to draws still in progress (plus
Ferret's current batch), whatever the session's length. A chunk whose rows lie in one Ferret
batch is handed out as a view of that batch (no copy; the batch's memory goes when its last
view does), one that straddles two batches as a copy. The derived OTs (random,
chosen-message, additive, 1-out-of-N: :mod:`.iknp`, :mod:`.kkot`) run unchanged on each fork's
channel; their hash tweaks are the stream positions, unique within the stream's domain.

Rounds: a random-choice draw is one flight (announcement and batches), like IKNP's one ``u``
flight. With chosen choices the receiver must learn its range before it can send d: two
flights (IKNP: one), so a chosen-message or additive OT takes 3 flights (IKNP: 2). The GGM
batches go in the flight of the draw that needs them: the sender sends them through a view of
the stream's channel parented by the drawing fork's channel, and the receiver reads them
likewise, so the depth stamps (:mod:`secmoe.net.stats`) follow the real dependencies.

Memory: a chosen-choice draw holds its n rows (16 B per COT) from the first flight until the
d's arrive (IKNP holds one 2^18 chunk): e.g. 1 GiB for the comparison leaves of 2^20 ReLUs,
beside the leaves' own 2 GiB of tables. A random-choice draw makes rows chunk by chunk.

Costs: :meth:`SilentSender.cost` declares a draw's own messages exactly (announcement; with
chosen choices, one ⌈c/8⌉-byte d per chunk): they do not depend on the stream's state. The GGM
batches do: a batch (16·b·(2h + 1) + 5 bytes for b trees: 27,653 B per 2^19 rows with B13,
0.055 B per COT handed out) is
sent by whichever draw first needs its rows, so which draw pays it depends on the sender's
scheduling, and no per-draw figure can be both exact and composable. Over a stretch of work
the batches are exact, as a function of how far each stream advanced: :meth:`Stream.mark` and
:meth:`Stream.refill_cost` (:meth:`OTPool.refill_cost` for both directions).

Who learns what: as in Ferret; the announcement (s, n) is public bookkeeping (both parties
know every fork's n), and d = r ⊕ c is uniform since r is pseudorandom and used once.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from secmoe.crypto.prg import PRG
from secmoe.net import Channel, ProtocolError
from secmoe.protocols.ot import ferret, ggm
from secmoe.protocols.ot.base import Cost, bin_size
from secmoe.protocols.ot.ferret import (
    B13,
    TAG_D,
    FerretParams,
    FerretReceiver,
    FerretSender,
    apply_d,
    derandomize,
)
from secmoe.protocols.ot.iknp import chunk_sizes

TAG_ALLOC = "ot/silent/alloc"
#: Raw bytes of one announcement: start and count, two little-endian uint64.
ALLOC_BYTES = 16
_LSB = np.uint64(1)


def setup_cost(params: FerretParams = B13) -> Cost:
    """Declared cost of setting up one stream (:meth:`SilentSender.setup`): Ferret's setup
    (:func:`ferret.setup_cost`: base OTs, IKNP, the first ``pre`` batch) and the rest of the
    ``pre`` iteration (:meth:`Stream.prime`), whose batches follow in the same flight."""
    c = ferret.setup_cost(params)
    rest = ggm.batches(params.pre.t, params.pre.h)[1:]
    extra = sum(bin_size(ggm.message_bytes(i1 - i0, params.pre.h)) for i0, i1 in rest)
    return Cost(c.sender_bytes + extra, c.receiver_bytes, c.messages + len(rest), c.rounds)


def alloc_cost() -> Cost:
    """Declared cost of one announcement (sender → receiver, one message, one flight)."""
    return Cost(bin_size(ALLOC_BYTES), 0, 1, 1)


def draw_cost(n: int, align: int = 1, random_choices: bool = False) -> Cost:
    """Declared cost of one draw of n COTs (its own messages; GGM batches: see the module)."""
    if n == 0:
        return Cost(0, 0, 0, 0)
    if random_choices:
        return alloc_cost()
    sizes = chunk_sizes(n, align)
    d = Cost(0, sum(bin_size(-(-c // 8)) for c in sizes), len(sizes), 1)
    return alloc_cost() + d


def view(stream_ch: Channel, via: Channel) -> Channel:
    """The stream's channel as seen by the fork ``via``: same path (same FIFO), but messages
    sent carry ``via``'s depth and messages received raise it (and its parents')."""
    return Channel(via.session, stream_ch.path, parent=via)


@dataclass
class _Segment:
    """Rows [start, start + len(rows)) of a stream, and which of them are not handed out."""

    start: int
    rows: np.ndarray
    free: np.ndarray = field(init=False)
    left: int = field(init=False)

    def __post_init__(self) -> None:
        self.free = np.ones(self.rows.shape[0], dtype=bool)
        self.left = self.rows.shape[0]

    @property
    def end(self) -> int:
        return self.start + self.rows.shape[0]


@dataclass(frozen=True)
class StreamMark:
    """A stream's state at one instant (for :meth:`Stream.refill_cost`). Keep it short-lived:
    it holds the instance's arrays of that instant."""

    position: int
    state: FerretSender | FerretReceiver


class Stream:
    """One party's end of a session's Ferret instance in one direction, shared by all forks.

    ``allocate(n)`` (sender only) reserves the next n COTs; ``take(via, start, c)`` returns
    rows [start, start + c) (the sender's q, or the receiver's t with lsb(t) = r), making
    rows up to there first if needed (on behalf of the fork channel ``via``). Each row is
    handed out once; taking a row twice or one never made by the peer raises.
    """

    def __init__(self, inst: FerretSender | FerretReceiver, ch: Channel) -> None:
        self.inst = inst
        self.ch = ch
        self.label = inst.label
        self.domain = inst.domain
        self._lock = asyncio.Lock()
        self._cursor = 0  # sender: COTs allocated so far
        self._segments: list[_Segment] = []

    @property
    def is_sender(self) -> bool:
        return self.inst.is_sender

    @property
    def made(self) -> int:
        """Rows made so far (the instance's position)."""
        return self.inst.position

    @property
    def allocated(self) -> int:
        """COTs allocated so far (sender)."""
        return self._cursor

    @property
    def buffered(self) -> int:
        """Rows made and kept for draws that have not taken them yet."""
        return sum(s.left for s in self._segments)

    async def prime(self) -> None:
        """Make the rest of the ``pre`` iteration's outputs now (in the setup phase, on the
        stream's channel), so that no draw pays for the bootstrap: the first
        ``pre.n − main.reserve`` COTs (321,412 with B13) are then ready, and the first GGM
        batch of an online draw is a ``main`` one. Call once, right after the setup."""
        if self.made or self._segments:
            raise RuntimeError("prime a stream right after its setup only")
        p = self.inst.params
        await self._make(self.ch, p.pre.n - p.main.reserve)

    def allocate(self, n: int) -> int:
        """Step 1 (sender): reserve the next n COTs; returns the start of the range."""
        if not self.is_sender:
            raise RuntimeError("only the COT sender allocates")
        start, self._cursor = self._cursor, self._cursor + n
        return start

    async def take(self, via: Channel, start: int, c: int) -> np.ndarray:
        """Step 2: rows [start, start + c) as a ``(c, 2)`` uint64 array (this caller's: a
        view of the rows made when they lie in one piece, else a copy)."""
        if c == 0:
            return np.empty((0, 2), np.uint64)
        await self.make_upto(via, start + c)
        return self._claim(start, c)

    async def make_upto(self, via: Channel, end: int) -> None:
        """Make rows up to ``end`` (on behalf of the fork channel ``via``) if not made yet."""
        if end <= self.made:  # made already (by another draw): no need to wait
            return
        async with self._lock:
            if end > self.made:
                await self._make(view(self.ch, via), end - self.made)

    async def _make(self, ch: Channel, m: int) -> None:
        pos = self.made
        async for rows in self.inst.pieces(ch, m):
            self._segments.append(_Segment(pos, rows))
            pos += rows.shape[0]

    def _claim(self, start: int, c: int) -> np.ndarray:
        end = start + c
        segs = [s for s in self._segments if s.start < end and s.end > start]
        if len(segs) == 1 and segs[0].start <= start and end <= segs[0].end:
            s, a = segs[0], start - segs[0].start  # the common case: rows of one piece
            if s.free[a : a + c].all():
                s.free[a : a + c] = False
                s.left -= c
                if not s.left:
                    self._segments.remove(s)
                return s.rows[a : a + c]
        out = np.empty((c, 2), np.uint64)
        got = 0
        for s in segs:
            a, b = max(start, s.start), min(end, s.end)
            if not s.free[a - s.start : b - s.start].all():
                break
            got += b - a
        if got != c:
            raise ProtocolError(
                f"silent OT stream {self.label!r}: COTs [{start}, {end}) were handed out "
                "already (the parties' allocations differ)"
            )
        for s in segs:
            a, b = max(start, s.start), min(end, s.end)
            out[a - start : b - start] = s.rows[a - s.start : b - s.start]
            s.free[a - s.start : b - s.start] = False
            s.left -= b - a
        self._segments = [s for s in self._segments if s.left]
        return out

    # -- the stream's GGM batches, declared -----------------------------------------------------
    def mark(self) -> StreamMark:
        """The state now, for :meth:`refill_cost` (no communication)."""
        return StreamMark(self.made, copy.copy(self.inst))

    def refill_cost(self, since: StreamMark) -> Cost:
        """Declared cost of the GGM batches this stream sent/received since ``since``: a
        function of how far it advanced only (which draws triggered them does not matter).
        Rounds are 0: each batch rides in the flight of the draw that needed it."""
        c = since.state.cost(self.made - since.position, random_choices=True)
        return Cost(c.sender_bytes, c.receiver_bytes, c.messages, 0)


def _header(start: int, n: int) -> bytes:
    return np.array([start, n], dtype="<u8").tobytes()


class SilentSender:
    """A fork's COT-sender end of the silent source (a :class:`~.base.CotSender`): draws from
    the session's :class:`Stream` in which this party is the Ferret sender."""

    chosen_choices = True

    def __init__(self, stream: Stream) -> None:
        if not stream.is_sender:
            raise ValueError("SilentSender needs the sender's end of a stream")
        self.stream = stream
        self.domain = stream.domain
        self.position = 0  # COTs this fork has drawn

    @classmethod
    async def setup(
        cls, ch: Channel, prg: PRG, label: str, params: FerretParams = B13
    ) -> SilentSender:
        """Set up the stream on ``ch``, which it keeps for its GGM batches:
        :meth:`FerretSender.setup` (base OTs, IKNP, the bootstrap), then :meth:`Stream.prime`.
        Cost: :func:`setup_cost`."""
        st = Stream(await FerretSender.setup(ch, prg, label, params), ch)
        await st.prime()
        return cls(st)

    @property
    def delta(self) -> np.ndarray:
        """Δ of the stream (lsb 1)."""
        return self.stream.inst.delta

    def fork(self, name: str) -> SilentSender:
        """Another fork's view of the same stream (no communication)."""
        return SilentSender(self.stream)

    def chunks(self, n: int, align: int = 1) -> list[int]:
        return chunk_sizes(n, align)

    def cost(self, n: int, align: int = 1, random_choices: bool = False) -> Cost:
        """Declared cost of one draw (see :func:`draw_cost`)."""
        return draw_cost(n, align, random_choices)

    async def send_iter(
        self, ch: Channel, n: int, *, align: int = 1, random_choices: bool = False
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """Yield ``(index0, q)`` per chunk (index0: the stream position, the hash tweak).

        With random choices, rows are made chunk by chunk as the caller consumes them (so the
        caller must not wait for the peer between chunks: the peer's forks may be waiting for
        these rows; every pool operation complies); with chosen choices, all of them first
        (every GGM batch in the first flight), then one d per chunk is received and q ⊕= d·Δ.
        """
        sizes = chunk_sizes(n, align)
        if not sizes:
            return
        st = self.stream
        # Step 1: the range, announced on this fork's channel.
        start = st.allocate(n)
        await ch.send(_header(start, n), tag=TAG_ALLOC)
        self.position += n
        if not random_choices:  # Step 2 at once: every GGM batch in the first flight
            await st.make_upto(ch, start + n)
        off = 0
        for c in sizes:
            q = await st.take(ch, start + off, c)  # Step 2 (lazily with random choices)
            if not random_choices:
                # Step 3: q ⊕= d·Δ, so that t = q ⊕ c·Δ.
                apply_d(q, await ch.recv(tag=TAG_D), self.delta, "silent OT")
            yield start + off, q
            off += c


class SilentReceiver:
    """A fork's COT-receiver end of the silent source (a :class:`~.base.CotReceiver`)."""

    def __init__(self, stream: Stream) -> None:
        if stream.is_sender:
            raise ValueError("SilentReceiver needs the receiver's end of a stream")
        self.stream = stream
        self.domain = stream.domain
        self.position = 0

    @classmethod
    async def setup(
        cls, ch: Channel, prg: PRG, label: str, params: FerretParams = B13
    ) -> SilentReceiver:
        """Set up the stream on ``ch`` (:meth:`FerretReceiver.setup`, :meth:`Stream.prime`)."""
        st = Stream(await FerretReceiver.setup(ch, prg, label, params), ch)
        await st.prime()
        return cls(st)

    def fork(self, name: str) -> SilentReceiver:
        """Another fork's view of the same stream (no communication)."""
        return SilentReceiver(self.stream)

    def chunks(self, n: int, align: int = 1) -> list[int]:
        return chunk_sizes(n, align)

    def cost(self, n: int, align: int = 1, random_choices: bool = False) -> Cost:
        return draw_cost(n, align, random_choices)

    async def _announced(self, ch: Channel, n: int) -> int:
        raw = await ch.recv(tag=TAG_ALLOC)
        if not isinstance(raw, bytes) or len(raw) != ALLOC_BYTES:
            raise ProtocolError(f"silent OT allocation on {ch.path!r}: expected 16 bytes")
        start, got = (int(v) for v in np.frombuffer(raw, dtype="<u8"))
        if got != n:
            raise ProtocolError(
                f"silent OT allocation on {ch.path!r}: the sender drew {got} COTs, "
                f"this receiver expects {n}"
            )
        self.position += n
        return start

    async def recv_random_iter(
        self, ch: Channel, n: int, *, align: int = 1
    ) -> AsyncIterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(index0, r, t)`` per chunk: r pseudorandom, lsb(t) = r."""
        sizes = chunk_sizes(n, align)
        if not sizes:
            return
        start = await self._announced(ch, n)  # Step 1
        off = 0
        for c in sizes:
            t = await self.stream.take(ch, start + off, c)  # Step 2
            yield start + off, (t[:, 0] & _LSB).astype(bool), t
            off += c

    async def recv_iter(
        self, ch: Channel, choices: np.ndarray, *, align: int = 1
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """Yield ``(index0, t)`` per chunk for the chosen bits c: sends d = r ⊕ c per chunk."""
        cb = np.asarray(choices, dtype=bool).reshape(-1)
        async for item in derandomize(ch, self.recv_random_iter(ch, cb.size, align=align), cb):
            yield item

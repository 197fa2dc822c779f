"""Ferret silent OT (semi-honest): correlated OT with a global Δ at a fraction of a bit per OT.

Computes a stream of COTs exactly like IKNP's (:mod:`secmoe.protocols.ot.iknp`): the sender
holds Δ and gets blocks q_j, the receiver gets uniformly random choice bits r_j and
t_j = q_j ⊕ r_j·Δ. Chosen choice bits cost one more bit per OT (r ⊕ c, sent by the receiver).

Who learns what (semi-honest): the sender learns nothing of r (the MPCOT hides the noise
positions and the LPN output's choice bits are pseudorandom under primal LPN with regular
noise); the receiver learns nothing of Δ (its view is that of the base COTs and of MPCOTs).

REF: K. Yang, C. Weng, X. Lan, J. Zhang, X. Wang, "Ferret: Fast Extension for coRRElated oT
with small communication", CCS 2020, eprint 2020/924: Fig. 7 (Π_COT, primal LPN, iterated
with a reserve of outputs that bootstraps the next iteration), semi-honest variant.

One iteration with LPN parameters (n, k, t, h), n = t·2^h, from M = t·h + k reserved COTs,
run batch by batch (a batch = the trees of :func:`ggm.batches`, 2^19 output rows) and only as
far as the COTs drawn require::

    sender (Δ)                                          receiver
    Step 1: MPCOT (:mod:`ggm`) of the batch's trees on their reserved COTs (reserve[ℓ·t + i]):
            v, and w = v ⊕ e·Δ, e with one 1 per tree
                    ── 16·b·(2h + 1) bytes per batch of b trees ──▶
    Step 2: LPN (:mod:`lpn`), local: the batch's rows of y = v ⊕ A·reserve[t·h, M)
            (the receiver: w ⊕ A·(its reserve))
    Step 3: rows [0, M) of y refill the reserve for the next iteration; the others are output

The first reserve (the ``pre`` set's: 74,036 COTs for every current set) comes from a base COT
source: IKNP in a session (:meth:`FerretSender.setup`), a trusted local helper in tests; the
``pre`` iteration's first rows are the ``main`` reserve. Bit 0 convention (emp-ot's): lsb(Δ) = 1
and every sender block has bit 0 clear, so the receiver's choice bit is bit 0 of its block.

Parameters (primal LPN with regular noise, d = 10; :data:`PARAMS`): emp-ot's current sets
(``emp-ot/tuning.h``: t, k = 2^logk, h), chosen there for ~128-bit security against the
published regular-LPN attacks including the 2025 algebraic ones (AGB 2.0, eprint 2025/1476),
which made the Ferret paper's 2020 sets (n = 10,485,760 = 1,280·2^13, k = 452,000, t = 1,280
in emp-ot's former ``ferret_b13``; :data:`B13_2020`, kept for comparison, not secure) fall
short. :data:`B13` is the default: the fewest bytes per OT (t·(2h + 1)·16 B per iteration,
0.055 B/OT) and, streamed batch by batch, no more work than the OTs drawn. Every set
bootstraps through ``b10`` (74,036 base COTs from IKNP, then 870,400 outputs), as emp-ot does.
Since k is a power of two, the code's indices are exactly uniform.

Cost: see :meth:`FerretCOT.cost` (exact, state-dependent: iterations run when the buffer of
ready outputs runs dry) and :func:`setup_cost`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from secmoe.crypto.bitmatrix import words_to_bits
from secmoe.crypto.prg import PRG
from secmoe.net import Channel, ProtocolError
from secmoe.protocols.ot import base, ggm, iknp, lpn
from secmoe.protocols.ot.base import Cost, bin_size
from secmoe.protocols.ot.iknp import KAPPA, IknpReceiver, IknpSender, chunk_sizes, domain_of
from secmoe.protocols.ot.lpn import D, LocalCode

TAG_D = "ot/ferret/d"
_LSB = np.uint64(1)


@dataclass(frozen=True)
class LpnParams:
    """One iteration's LPN parameters: n outputs, k-long secret, t trees of depth h."""

    n: int
    k: int
    t: int
    h: int

    def __post_init__(self) -> None:
        if self.h < 1 or self.t < 1 or self.k < D or self.n != self.t << self.h:
            raise ValueError(f"bad LPN parameters {self} (need n = t·2^h, h ≥ 1, k ≥ {D})")

    @property
    def reserve(self) -> int:
        """COTs one iteration consumes: t·h (MPCOT) + k (LPN secret)."""
        return self.t * self.h + self.k

    @property
    def usable(self) -> int:
        """COTs one iteration adds beyond the reserve for the next one."""
        return self.n - self.reserve

    def mpcot_cost(self) -> Cost:
        return ggm.cost(self.t, self.h)


@dataclass(frozen=True)
class FerretParams:
    """A Ferret parameter set: ``main`` iterations, bootstrapped by one ``pre`` iteration."""

    name: str
    main: LpnParams
    pre: LpnParams
    secure: bool = True  # estimated at 128 bits against the attacks known today

    def __post_init__(self) -> None:
        if self.pre.n < self.main.reserve or self.main.usable < 1:
            raise ValueError(f"{self.name}: pre.n must cover main's reserve; main must produce")


#: emp-ot's current bootstrap set (``ferret_b10``): 870,400 outputs, 74,036 consumed.
_B10 = LpnParams(870_400, 65_536, 850, 10)

#: The default: emp-ot's current ``ferret_b13`` (t = 1,900, k = 2^19, h = 13), bootstrapped by
#: ``b10``: 15,015,812 OTs per iteration at 0.055 B/OT.
B13 = FerretParams("b13", LpnParams(15_564_800, 524_288, 1_900, 13), _B10)
#: emp-ot's current ``ferret_b12``: 5,945,536 OTs per iteration at 0.10 B/OT.
B12 = FerretParams("b12", LpnParams(6_225_920, 262_144, 1_520, 12), _B10)
#: emp-ot's current ``ferret_b11``: 2,252,218 OTs per iteration at 0.19 B/OT; its LPN input
#: (2 MiB) about fits in the L2 cache.
B11 = FerretParams("b11", LpnParams(2_396_160, 131_072, 1_170, 11), _B10)
#: ``b10`` alone, iterated: 796,364 OTs per iteration at 0.36 B/OT, for short sessions.
B10 = FerretParams("b10", _B10, _B10)
#: The 2020 sets (emp-ot's former ``ferret/constants.h``: ``ferret_b13`` with its bootstrap
#: set). Estimated at 128 bits before the 2025 algebraic attacks on regular-noise LPN; emp-ot
#: has replaced them. For comparison with the paper's figures only.
B13_2020 = FerretParams(
    "b13-2020",
    LpnParams(10_485_760, 452_000, 1_280, 13),
    LpnParams(470_016, 32_768, 918, 9),
    secure=False,
)
#: TESTS ONLY, NOT SECURE: tiny iterations (3,368 OTs) so that tests run many of them.
TOY = FerretParams(
    "toy-insecure", LpnParams(4096, 600, 16, 8), LpnParams(1024, 200, 8, 7), secure=False
)

PARAMS: dict[str, FerretParams] = {p.name: p for p in (B13, B12, B11, B10, B13_2020, TOY)}


@dataclass(frozen=True)
class BaseSource:
    """Where an instance's first reserve comes from: n COTs with random choices under Δ.

    ``fetch(ch, n)`` returns the sender's q ``(n, 2)`` or the receiver's ``(r, t)``; ``cost(n)``
    declares its communication; ``fork(name)`` gives an independent source (or ``None``).
    """

    fetch: Callable[[Channel, int], Awaitable[Any]]
    cost: Callable[[int], Cost]
    fork: Callable[[str], BaseSource] | None = None


def iknp_source(inst: IknpSender | IknpReceiver) -> BaseSource:
    """A :class:`BaseSource` over an IKNP instance (random choices). The sender's Δ must have
    lsb 1 (see :func:`setup_cost`; :meth:`FerretSender.setup` arranges it)."""

    async def fetch(ch: Channel, n: int) -> Any:
        if isinstance(inst, IknpSender):
            parts = [q async for _, q in inst.send_iter(ch, n, random_choices=True)]
            return np.concatenate(parts) if parts else np.empty((0, 2), np.uint64)
        got = [(r, t) async for _, r, t in inst.recv_random_iter(ch, n)]
        return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])

    return BaseSource(fetch, iknp.cost, lambda name: iknp_source(inst.fork(name)))


def setup_cost(params: FerretParams = B13) -> Cost:
    """Declared cost of :meth:`FerretSender.setup`: 128 base OTs (for the IKNP instance, roles
    reversed), IKNP for the ``pre`` reserve, the first ``pre`` MPCOT batch."""
    ot = base.cost(KAPPA)  # the Ferret receiver is the base-OT sender
    boot = iknp.cost(params.pre.reserve)
    i0, i1 = ggm.batches(params.pre.t, params.pre.h)[0]
    mp = bin_size(ggm.message_bytes(i1 - i0, params.pre.h))
    # Flights: A (R→S), B (S→R), IKNP's u (R→S), the MPCOT batch (S→R).
    msgs = ot.messages + boot.messages + 1
    return Cost(ot.receiver_bytes + mp, ot.sender_bytes + boot.receiver_bytes, msgs, 4)


def batch_plan(lp: LpnParams, reserve: int) -> list[tuple[int, int, int, int]]:
    """The output batches of one iteration: ``(i0, i1, row0, ready0)`` per batch of trees
    [i0, i1), whose output rows are [row0, i1·2^h); rows below ``reserve`` (the next
    iteration's reserve) are kept, so the batch's ready rows start at ``ready0``."""
    out = []
    for i0, i1 in ggm.batches(lp.t, lp.h):
        row0, row1 = i0 << lp.h, i1 << lp.h
        out.append((i0, i1, row0, min(max(reserve, row0), row1)))
    return out


async def derandomize(
    ch: Channel, random_iter: AsyncIterator[tuple[int, np.ndarray, np.ndarray]], cb: np.ndarray
) -> AsyncIterator[tuple[int, np.ndarray]]:
    """Chosen-choice COTs from random ones: per chunk, send d = r ⊕ c (1 bit per OT) and yield
    ``(index0, t)``; the sender fixes q ⊕= d·Δ."""
    off = 0
    async for index0, r, t in random_iter:
        d = r ^ cb[off : off + r.size]
        await ch.send(np.packbits(d, bitorder="little").tobytes(), tag=TAG_D)
        off += r.size
        yield index0, t


def apply_d(q: np.ndarray, d: Any, delta: np.ndarray, what: str) -> None:
    """The sender's side of :func:`derandomize`, in place: q ⊕= d·Δ for one chunk's packed
    d = r ⊕ c (``what`` names the source in the error raised for a d of the wrong length)."""
    c = q.shape[0]
    if not isinstance(d, bytes) or len(d) != -(-c // 8):
        raise ProtocolError(f"{what} d: expected {-(-c // 8)} bytes for {c} OTs")
    mask = np.unpackbits(np.frombuffer(d, np.uint8), count=c, bitorder="little").astype(np.uint64)
    np.negative(mask, out=mask)  # all ones where d = 1
    q[:, 0] ^= mask & delta[0]  # column by column: 5x faster than a broadcast (c, 2) product
    q[:, 1] ^= mask & delta[1]


class FerretCOT:
    """One party's end of a Ferret instance (the shared machinery of both sides).

    Output is produced lazily, one GGM batch at a time (:data:`ggm.LEAVES_PER_BATCH` rows:
    MPCOT message, tree expansion, LPN rows), so memory stays small whatever n is. State,
    identical on both sides (so both run the same steps at the same points): whether the
    bootstrap ran, the current iteration and its next batch, and the ready rows [pos, end)
    of the last batch. The reserve for the next iteration fills from each iteration's first
    rows; the previous reserve stays the LPN input until the iteration's last batch.

    Usage (each call pairs with the peer's mirror call on the same channel)::

        s = await FerretSender.setup(ch, prg, label)      # base OTs, IKNP, first pre batch
        r = await FerretReceiver.setup(ch, prg, label)    # (the peer)
        q = await s.extend(ch, n)                         # (n, 2) uint64; s.delta, lsb 1
        bits, t = await r.extend(ch, n)                   # t = q ⊕ bits·Δ
        # A pool COT source (CotSender / CotReceiver): send_iter, recv_iter (chosen bits:
        # +1 bit per OT), recv_random_iter, fork, chunks, cost, domain, position, delta.
    """

    is_sender = False

    def __init__(self, params: FerretParams, source: BaseSource, label: str) -> None:
        self.params = params
        self.source = source
        self.label = label
        self.domain = domain_of(label)  # the tweak domain of OTs derived from the outputs
        self._ggm_domain = domain_of(f"{label}/ggm")
        self.position = 0  # COTs handed out so far (their hash-tweak indices)
        self.iterations = 0  # iterations started
        self._tweak = 0  # base COTs consumed by MPCOTs so far (their hash-tweak indices)
        self._booted = False
        self._lp: LpnParams | None = None  # the current iteration
        self._plan: list[tuple[int, int, int, int]] = []
        self._next = 0  # its next batch
        self._index0 = 0  # its first base COT's tweak index
        self._res: np.ndarray | None = None  # its input reserve (bit-0 convention)
        self._res_next: np.ndarray | None = None  # the next iteration's reserve, filling up
        self._full: np.ndarray | None = None  # a full reserve, waiting for the next iteration
        self._rows: np.ndarray | None = None  # the last batch's output rows
        self._pos = self._end = 0
        self._codes: dict[LpnParams, LocalCode] = {}
        self._scratch: dict[LpnParams, ggm.Scratch] = {}
        #: The IKNP instance the bootstrap drew from (set by ``setup``; same Δ). A pool may
        #: fork it (``iknp.fork(name)``) for sub-protocols too small to amortize a Ferret fork.
        self.iknp: Any = None

    def _code(self, lp: LpnParams) -> LocalCode:
        if lp not in self._codes:
            self._codes[lp] = LocalCode(lp.n, lp.k)
        return self._codes[lp]

    def _sc(self, lp: LpnParams) -> ggm.Scratch:
        if lp not in self._scratch:  # kept: faulting fresh pages in is slow
            self._scratch[lp] = ggm.Scratch(ggm.batches(lp.t, lp.h)[0][1], lp.h)
        return self._scratch[lp]

    # -- the iteration, batch by batch ----------------------------------------------------------
    def _start(self, lp: LpnParams, res: np.ndarray) -> None:
        """Start an iteration from the reserve ``res`` (lp.reserve COTs, bit-0 convention)."""
        self._lp, self._plan, self._next, self._res = lp, batch_plan(lp, self._m()), 0, res
        self._index0, self._tweak = self._tweak, self._tweak + lp.t * lp.h
        if self._res_next is None:
            self._res_next = lpn.table(self._m())
        self.iterations += 1
        self._begin(lp)

    def _m(self) -> int:
        return self.params.main.reserve

    def _begin(self, lp: LpnParams) -> None:
        """Side-specific set-up of a new iteration (the sender draws its root seeds)."""

    async def _leaves(
        self, ch: Channel, lp: LpnParams, i0: int, i1: int, q: np.ndarray, tw: np.ndarray
    ) -> np.ndarray:
        raise NotImplementedError

    async def _batch(self, ch: Channel) -> None:
        """The next batch of the current iteration: MPCOT (Step 1), LPN rows (Step 2), and
        the split between the next reserve and the ready rows (Step 3)."""
        lp, res = self._lp, self._res
        assert lp is not None and res is not None and self._res_next is not None
        i0, i1, row0, ready0 = self._plan[self._next]
        th = lp.t * lp.h
        # Step 1: the MPCOT of trees [i0, i1), on their base COTs res[ℓ·t + i].
        q = res[:th].reshape(lp.h, lp.t, 2)[:, i0:i1]
        tw = ggm.tweaks(self._index0, lp.t, lp.h, i0, i1)
        y = await self._leaves(ch, lp, i0, i1, q, tw)
        self._sc(lp).detach()  # y is handed out as views: the next batch writes elsewhere
        # Step 2: y ⊕= A·u for these rows, u = the last k reserved COTs.
        await asyncio.to_thread(self._code(lp).encode, y, res[th:], row0)
        # Step 3: rows below M refill the reserve; the rest are ready.
        m = self._m()
        if row0 < m:
            self._res_next[row0 : min(m, row0 + y.shape[0])] = y[: m - row0]
        self._rows, self._pos, self._end = y, ready0 - row0, y.shape[0]
        self._next += 1
        if self._next == len(self._plan):  # the iteration is over: the next reserve is full
            self._full, self._res = self._res_next, None
            self._res_next = res if res.shape[0] == m else None  # recycled as the next buffer

    async def bootstrap(self, ch: Channel) -> None:
        """Fetch the ``pre`` reserve from the base source, start the ``pre`` iteration and run
        its first batch (for every preset, the whole ``pre`` iteration)."""
        if self._booted:
            return
        pre = self.params.pre
        res = self._normalize(await self.source.fetch(ch, pre.reserve))
        self._booted = True
        self._start(pre, res)
        await self._batch(ch)

    def _normalize(self, got: Any) -> np.ndarray:
        raise NotImplementedError

    async def _advance(self, ch: Channel) -> None:
        """Make ready rows: the next batch, or a new iteration (the first: the bootstrap)."""
        if self._lp is not None and self._next < len(self._plan):
            await self._batch(ch)
        elif not self._booted:
            await self.bootstrap(ch)
        else:
            assert self._full is not None
            res, self._full = self._full, None
            self._start(self.params.main, res)

    async def _take(self, ch: Channel, c: int) -> np.ndarray:
        """The next c ready COT blocks, producing batches as needed: a view of the batch's
        rows when they lie in one batch (each row is handed out once, so the caller owns
        it), else a copy."""
        if c and self._pos == self._end:
            await self._advance(ch)
        if c <= self._end - self._pos:
            assert self._rows is not None
            self._pos += c
            return self._rows[self._pos - c : self._pos]
        out = np.empty((c, 2), np.uint64)
        off = 0
        while off < c:
            if self._pos == self._end:
                await self._advance(ch)
                continue
            assert self._rows is not None
            m = min(c - off, self._end - self._pos)
            out[off : off + m] = self._rows[self._pos : self._pos + m]
            self._pos += m
            off += m
        return out

    async def pieces(self, ch: Channel, n: int) -> AsyncIterator[np.ndarray]:
        """The next n COT blocks (random choices) in the largest pieces at hand: views of
        whole batches' rows, as they are made. Same steps and messages as a random-choice
        :meth:`send_iter` / :meth:`recv_random_iter` of n."""
        left = n
        while left:
            if self._pos == self._end:
                await self._advance(ch)
                continue
            rows = await self._take(ch, min(left, self._end - self._pos))
            self.position += rows.shape[0]
            left -= rows.shape[0]
            yield rows

    # -- declared cost ------------------------------------------------------------------------
    def chunks(self, n: int, align: int = 1) -> list[int]:
        """The chunk sizes in which n COTs are handed out (IKNP's chunking)."""
        return chunk_sizes(n, align)

    def cost(self, n: int, align: int = 1, random_choices: bool = False) -> Cost:
        """Declared cost of the next n COTs from the current state (exact).

        Replays :meth:`_take`'s steps: the bootstrap if it has not run (the base source's cost,
        then the ``pre`` MPCOT), one MPCOT message per batch of trees that the ready rows
        need, and with chosen choices one ``r ⊕ c`` message (⌈c/8⌉ bytes) per chunk. Rounds
        are the direction flips of that sequence, plus one.
        """
        booted, lp, plan, nxt = self._booted, self._lp, self._plan, self._next
        pos, end = self._pos, self._end
        s_bytes = r_bytes = msgs = 0
        dirs: list[str] = []

        def add(c: Cost) -> None:  # one step: receiver-only, sender-only or empty
            nonlocal s_bytes, r_bytes, msgs
            s_bytes, r_bytes = s_bytes + c.sender_bytes, r_bytes + c.receiver_bytes
            msgs += c.messages
            dirs.extend(["r"] if c.receiver_bytes else [])
            dirs.extend(["s"] if c.sender_bytes else [])

        for c in self.chunks(n, align):
            need = c
            while need:
                if pos < end:
                    m = min(need, end - pos)
                    pos, need = pos + m, need - m
                elif lp is not None and nxt < len(plan):
                    i0, i1, row0, ready0 = plan[nxt]
                    add(Cost(bin_size(ggm.message_bytes(i1 - i0, lp.h)), 0, 1, 1))
                    pos, end, nxt = ready0 - row0, (i1 - i0) << lp.h, nxt + 1
                else:  # a new iteration (the first: the bootstrap's base COTs, then ``pre``)
                    if not booted:
                        add(self.source.cost(self.params.pre.reserve))
                    lp = self.params.pre if not booted else self.params.main
                    booted, plan, nxt = True, batch_plan(lp, self._m()), 0
            if not random_choices:
                add(Cost(0, bin_size(-(-c // 8)), 1, 1))
        rounds = sum(1 for i, d in enumerate(dirs) if i == 0 or d != dirs[i - 1])
        return Cost(s_bytes, r_bytes, msgs, rounds)


class FerretSender(FerretCOT):
    """The COT sender of a Ferret instance: holds Δ (lsb 1); gets q.

    Build with :meth:`setup` in a session (IKNP bootstrap), or directly from a
    :class:`BaseSource` (tests); the peer builds a :class:`FerretReceiver` alike.
    """

    is_sender = True
    chosen_choices = True

    def __init__(
        self, delta: np.ndarray, params: FerretParams, source: BaseSource, prg: PRG, label: str
    ) -> None:
        super().__init__(params, source, label)
        self._delta = np.asarray(delta, np.uint64).reshape(2).copy()
        if not int(self._delta[0]) & 1:
            raise ValueError("Ferret needs lsb(Δ) = 1 (the receiver's choice bit is bit 0)")
        self.prg = prg

    @property
    def delta(self) -> np.ndarray:
        """Δ, a ``(2,)`` uint64 block (bit 0 set)."""
        return self._delta

    @classmethod
    async def setup(
        cls, ch: Channel, prg: PRG, label: str, params: FerretParams = B13
    ) -> FerretSender:
        """Base OTs for an IKNP instance with lsb(Δ) = 1, then the bootstrap (eagerly)."""
        s = words_to_bits(prg.uint64(2), KAPPA)
        s[0] = True  # lsb(Δ) = 1: 127 secret bits, as in emp-ot
        seeds = await base.recv(ch, s, prg, label)
        inst = IknpSender(s, seeds, f"{label}/iknp")
        out = cls(inst.delta, params, iknp_source(inst), prg.derive(f"ferret:{label}"), label)
        out.iknp = inst
        await out.bootstrap(ch)
        return out

    def fork(self, name: str) -> FerretSender:
        """An independent instance (same Δ; bootstraps from the forked base source when first
        used: its :meth:`cost` then includes the bootstrap)."""
        if self.source.fork is None:
            raise ValueError("this instance's base source cannot fork")
        label = f"{self.label}/{name}"
        return FerretSender(
            self._delta, self.params, self.source.fork(name), self.prg.derive(name), label
        )

    def _normalize(self, got: Any) -> np.ndarray:
        q = np.array(got, dtype=np.uint64).reshape(-1, 2)
        q[:, 0] &= ~_LSB  # bit-0 convention: t keeps lsb = r since lsb(Δ) = 1
        return q

    def _begin(self, lp: LpnParams) -> None:
        self._seeds = self.prg.uint64((lp.t, 2))  # the iteration's GGM root seeds

    async def _leaves(
        self, ch: Channel, lp: LpnParams, i0: int, i1: int, q: np.ndarray, tw: np.ndarray
    ) -> np.ndarray:
        seeds = self._seeds[i0:i1]
        dom, sc = self._ggm_domain, self._sc(lp)
        return await ggm.send_batch(ch, self._delta, q, seeds, tw, dom, sc)

    async def send_iter(
        self, ch: Channel, n: int, *, align: int = 1, random_choices: bool = False
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """Yield ``(index0, q)`` per chunk. Unless ``random_choices``, the receiver sends
        d = r ⊕ c per chunk and q becomes q ⊕ d·Δ, so that t = q ⊕ c·Δ."""
        for c in self.chunks(n, align):
            q = await self._take(ch, c)
            if not random_choices:
                apply_d(q, await ch.recv(tag=TAG_D), self._delta, "Ferret")
            index0, self.position = self.position, self.position + c
            yield index0, q

    async def extend(self, ch: Channel, n: int) -> np.ndarray:
        """The next n COTs (random choices): q, ``(n, 2)`` uint64."""
        out = np.empty((n, 2), np.uint64)
        off = 0
        async for _, q in self.send_iter(ch, n, random_choices=True):
            out[off : off + q.shape[0]] = q
            off += q.shape[0]
        return out


class FerretReceiver(FerretCOT):
    """The COT receiver of a Ferret instance: gets random r and t = q ⊕ r·Δ (lsb(t) = r)."""

    @classmethod
    async def setup(
        cls, ch: Channel, prg: PRG, label: str, params: FerretParams = B13
    ) -> FerretReceiver:
        """Base OTs (as their sender) for the IKNP instance, then the bootstrap (eagerly)."""
        k0, k1 = await base.send(ch, KAPPA, prg, label)
        inst = IknpReceiver(k0, k1, f"{label}/iknp", prg.derive(f"iknp-choices:{label}"))
        out = cls(params, iknp_source(inst), label)
        out.iknp = inst
        await out.bootstrap(ch)
        return out

    def fork(self, name: str) -> FerretReceiver:
        """An independent instance (see :meth:`FerretSender.fork`)."""
        if self.source.fork is None:
            raise ValueError("this instance's base source cannot fork")
        return FerretReceiver(self.params, self.source.fork(name), f"{self.label}/{name}")

    def _normalize(self, got: Any) -> np.ndarray:
        r, t = got
        t = np.array(t, dtype=np.uint64).reshape(-1, 2)
        t[:, 0] = (t[:, 0] & ~_LSB) | np.asarray(r, dtype=bool).astype(np.uint64)
        return t

    async def _leaves(
        self, ch: Channel, lp: LpnParams, i0: int, i1: int, q: np.ndarray, tw: np.ndarray
    ) -> np.ndarray:
        r = (q[:, :, 0] & _LSB).astype(bool)  # bit-0 convention: the base COTs' choices
        w, _ = await ggm.recv_batch(ch, r, q, tw, self._ggm_domain, self._sc(lp))
        return w

    async def recv_random_iter(
        self, ch: Channel, n: int, *, align: int = 1
    ) -> AsyncIterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(index0, r, t)`` per chunk: uniformly random (pseudorandom) r."""
        for c in self.chunks(n, align):
            t = await self._take(ch, c)
            index0, self.position = self.position, self.position + c
            yield index0, (t[:, 0] & _LSB).astype(bool), t

    async def recv_iter(
        self, ch: Channel, choices: np.ndarray, *, align: int = 1
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """Yield ``(index0, t)`` per chunk for the chosen bits c: sends d = r ⊕ c (1 bit/OT)."""
        cb = np.asarray(choices, dtype=bool).reshape(-1)
        async for item in derandomize(ch, self.recv_random_iter(ch, cb.size, align=align), cb):
            yield item

    async def extend(self, ch: Channel, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next n COTs: ``(r, t)``, r ``(n,)`` bool, t ``(n, 2)`` uint64."""
        r, t = np.empty(n, bool), np.empty((n, 2), np.uint64)
        off = 0
        async for _, rc, tc in self.recv_random_iter(ch, n):
            r[off : off + rc.size], t[off : off + rc.size] = rc, tc
            off += rc.size
        return r, t


def ideal(delta: np.ndarray, n: int, prg: PRG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plaintext functionality: (q, r, t) with lsb(q) = 0, random r, t = q ⊕ r·Δ."""
    q = prg.uint64((n, 2))
    q[:, 0] &= ~_LSB
    r = prg.bits(n)
    return q, r, q ^ (r[:, None] * np.asarray(delta, np.uint64))

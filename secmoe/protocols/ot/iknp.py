"""IKNP OT extension (semi-honest): correlated OT with a global Δ, streamed in chunks.

Computes n correlated OTs (COTs) from κ = 128 base OTs: the sender outputs blocks q_j and holds
a global Δ ∈ {0,1}^128; the receiver, with choice bits r_j, outputs t_j = q_j ⊕ r_j·Δ.
Random, chosen-message and additive-correlated OTs are derived from COTs by hashing: IKNP's
Steps 4–5, written here over any COT source (:class:`~secmoe.protocols.ot.base.CotSender`), so
a silent-OT source gets them for free. Users call them through
:class:`secmoe.protocols.ot.pool.OTPool`.

Who learns what: the sender sees u^i = G(k_i^0) ⊕ G(k_i^1) ⊕ r, which is pseudorandom, so it
learns nothing about r; the receiver never learns Δ = s (the base-OT choices), so q_j ⊕ Δ,
i.e. the other message after hashing, stays hidden (correlation robustness).

REF: Y. Ishai, J. Kilian, K. Nissim, E. Petrank, "Extending Oblivious Transfers Efficiently",
CRYPTO 2003 (IKNP03), in the form of Asharov–Lindell–Schneider–Zohner, eprint 2013/552
(ALSZ13): base OTs on PRG seeds, the receiver's G(k_i^0) used as T itself (one κ-bit column
per OT on the wire), and the correlated (C-OT) and random (R-OT) variants. Steps are numbered
as in the diagrams below.

Message flow (one ``u`` message per chunk of at most :data:`CHUNK` OTs)::

    sender S (s = Δ; seeds k_i^{s_i})                 receiver R (r; seeds k_i^0, k_i^1)
    Step 1 (setup): 128 base OTs, roles reversed: R is the base-OT sender, S chooses s
                                                     Step 2: t^i = G(k_i^0)
                                                             u^i = t^i ⊕ G(k_i^1) ⊕ r
                          ◀── u (128 × ⌈c/8⌉ B per chunk) ──
    Step 3: q^i = G(k_i^{s_i}) ⊕ s_i·u^i
    rows: q_j = t_j ⊕ r_j·s  (a bit-matrix transpose on each side)

Cost per run of n COTs (chunks of c OTs): receiver → sender Σ_chunks (128·⌈c/8⌉ + 5) bytes
≈ 16·n B; sender → receiver 0; 1 round. Derived OTs add, sender → receiver, in one more round:
chosen-message OT 2·k·ℓ bits per OT, additive COT k·ℓ bits per OT; random OT adds nothing.
Base OTs (setup): see :mod:`secmoe.protocols.ot.base`.

Each party's work per chunk (AES-CTR column expansion into place, xor, transpose: the sender's
Step 3 fused with its transpose in one compiled pass, :func:`secmoe.crypto.kernels.transpose_xor`)
runs in a worker thread (OpenSSL, numpy and the kernel release the GIL), so in local mode the
two parties overlap. The receiver's u goes to the channel from its own buffer (no copy).

Both parties of a session hold two instances (SCI's straight and reversed): one in which the
client is the COT sender and one in which the server is. Forks derive fresh seeds from the base
keys and a label (no communication); all forks of an instance share Δ.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import numpy as np

from secmoe.crypto.aes_hash import hash_to_uint, xor_block
from secmoe.crypto.bitmatrix import (
    bits_to_words,
    fields_size,
    pack_bits,
    pack_fields,
    packed_size,
    transpose,
    transpose_masked,
    unpack_bits,
    unpack_fields,
    words_to_bits,
)
from secmoe.crypto.prg import PRG
from secmoe.net import Channel, ProtocolError
from secmoe.protocols.ot import base
from secmoe.protocols.ot.base import Cost, CotReceiver, CotSender, bin_size

KAPPA = 128
#: OTs per ``u`` message (4 MiB): large enough to amortize per-chunk work, small enough to
#: keep both parties' working sets in cache-sized slabs and memory bounded.
CHUNK = 1 << 18
TAG_U = "ot/iknp/u"


def domain_of(label: str) -> int:
    """The 48-bit hash-tweak domain of the instance with this label."""
    return int.from_bytes(hashlib.sha256(b"secmoe/ot/domain\x00" + label.encode()).digest()[:6])


def _fork_seeds(seeds: np.ndarray, label: str) -> np.ndarray:
    out = [
        hashlib.sha256(b"secmoe/ot/iknp/fork\x00" + label.encode() + b"\x00" + s.tobytes()).digest()
        for s in np.ascontiguousarray(seeds, dtype="<u8")
    ]
    return (
        np.frombuffer(b"".join(d[:16] for d in out), dtype="<u8").astype(np.uint64).reshape(-1, 2)
    )


def _prgs(seeds: np.ndarray) -> list[PRG]:
    return [PRG(s.astype("<u8").tobytes()) for s in seeds]


def _expand(prgs: list[PRG], words: int) -> np.ndarray:
    """G(k_i) for every column i: ``(128, words)`` uint64 (the next 64·words bits)."""
    g = np.empty((len(prgs), words), dtype=np.uint64)
    for i, prg in enumerate(prgs):
        prg.fill(g[i])
    return g


def chunk_sizes(n: int, align: int = 1) -> list[int]:
    """How a run of n COTs is cut into chunks (multiples of ``align``, at most ~:data:`CHUNK`)."""
    if n < 0 or align < 1 or n % align:
        raise ValueError(f"n = {n} must be a non-negative multiple of align = {align}")
    step = max(align, CHUNK // align * align)
    return [min(step, n - off) for off in range(0, n, step)]


def cost(n: int, align: int = 1) -> Cost:
    """Declared cost of one IKNP run of n COTs (chosen or random choices: the same wire)."""
    sizes = chunk_sizes(n, align)
    return Cost(0, sum(bin_size(KAPPA * -(-c // 8)) for c in sizes), len(sizes), min(1, n))


def ideal(delta: np.ndarray, choices: np.ndarray, prg: PRG) -> tuple[np.ndarray, np.ndarray]:
    """Plaintext COT: random q and t = q ⊕ r·Δ."""
    r = np.asarray(choices, dtype=bool)
    q = prg.uint64((r.size, 2))
    return q, q ^ (r[:, None] * np.asarray(delta, dtype=np.uint64))


def step_receiver(
    g0: np.ndarray, g1: np.ndarray, r_words: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: u = G(k^0) ⊕ G(k^1) ⊕ r per column; t = rows of G(k^0). Returns (u, t)."""
    u = g0 ^ g1
    u ^= r_words[None, :]
    return u, transpose(g0)


def step_sender(g: np.ndarray, u: np.ndarray, s_mask: np.ndarray) -> np.ndarray:
    """Step 3: q^i = G(k_i^{s_i}) ⊕ s_i·u^i per column; returns the rows q_j (one pass)."""
    return transpose_masked(g, u, s_mask)


class IknpSender:
    """The COT sender of one IKNP instance (the base-OT receiver; it holds Δ = s).

    Build with :meth:`setup` (runs the base OTs) or :meth:`fork` (derives a new instance).
    """

    chosen_choices = True

    def __init__(self, s: np.ndarray, seeds: np.ndarray, label: str) -> None:
        self.s = np.asarray(s, dtype=bool).reshape(KAPPA)
        self.seeds = seeds
        self.label = label
        self.domain = domain_of(label)
        self.position = 0
        self._mask = np.where(self.s, ~np.uint64(0), np.uint64(0))
        self._prgs = _prgs(seeds)

    @property
    def delta(self) -> np.ndarray:
        """Δ as a block: ``(2,)`` uint64 (bit i = s_i)."""
        return bits_to_words(self.s)

    @classmethod
    async def setup(
        cls, ch: Channel, prg: PRG, label: str, *, delta_lsb_one: bool = False
    ) -> IknpSender:
        """Step 1: 128 base OTs as their receiver, with random choices s.

        ``delta_lsb_one`` fixes bit 0 of Δ to 1 (a 127-bit Δ, as emp-ot does for Ferret and
        garbling, where lsb(Δ) = 1 lets the choice bit ride in the receiver's block).
        """
        s = words_to_bits(prg.uint64(2), KAPPA)
        if delta_lsb_one:
            s[0] = True
        seeds = await base.recv(ch, s, prg, label)
        return cls(s, seeds, label)

    def fork(self, name: str) -> IknpSender:
        """An independent instance (fresh seeds, same Δ); the peer forks the same name."""
        label = f"{self.label}/{name}"
        return IknpSender(self.s, _fork_seeds(self.seeds, label), label)

    def chunks(self, n: int, align: int = 1) -> list[int]:
        return chunk_sizes(n, align)

    def cost(self, n: int, align: int = 1, random_choices: bool = False) -> Cost:
        return cost(n, align)

    async def send_iter(
        self, ch: Channel, n: int, *, align: int = 1, random_choices: bool = False
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """Yield ``(index0, q)`` per chunk: q is ``(c, 2)`` uint64, COT indices index0 + [0, c)."""
        for c in chunk_sizes(n, align):
            words, nb = -(-c // 64), -(-c // 8)
            raw = await ch.recv(tag=TAG_U)
            if not isinstance(raw, bytes) or len(raw) != KAPPA * nb:
                raise ProtocolError(f"IKNP u: expected {KAPPA * nb} bytes for {c} OTs")
            u = np.frombuffer(raw, dtype=np.uint8).reshape(KAPPA, nb)
            if nb != 8 * words:  # pad the rows to whole words (read-only: no copy otherwise)
                u = np.concatenate([u, np.zeros((KAPPA, 8 * words - nb), np.uint8)], axis=1)

            def work(u: np.ndarray = u, words: int = words) -> np.ndarray:
                # Step 3: q^i = G(k_i^{s_i}) ⊕ s_i·u^i, then rows.
                g = _expand(self._prgs, words)
                return step_sender(g, u.view(np.uint64), self._mask)

            q = await asyncio.to_thread(work)
            index0, self.position = self.position, self.position + c
            yield index0, q[:c]


class IknpReceiver:
    """The COT receiver of one IKNP instance (the base-OT sender; it holds both seeds)."""

    def __init__(self, seeds0: np.ndarray, seeds1: np.ndarray, label: str, prg: PRG) -> None:
        self.seeds0, self.seeds1 = seeds0, seeds1
        self.label = label
        self.domain = domain_of(label)
        self.position = 0
        self.prg = prg
        self._prgs0, self._prgs1 = _prgs(seeds0), _prgs(seeds1)

    @classmethod
    async def setup(cls, ch: Channel, prg: PRG, label: str) -> IknpReceiver:
        """Step 1: 128 base OTs as their sender (random seeds k_i^0, k_i^1)."""
        k0, k1 = await base.send(ch, KAPPA, prg, label)
        return cls(k0, k1, label, prg.derive(f"iknp-choices:{label}"))

    def fork(self, name: str) -> IknpReceiver:
        """An independent instance (fresh seeds); the peer forks the same name."""
        label = f"{self.label}/{name}"
        return IknpReceiver(
            _fork_seeds(self.seeds0, label),
            _fork_seeds(self.seeds1, label),
            label,
            self.prg.derive(f"fork:{name}"),
        )

    def chunks(self, n: int, align: int = 1) -> list[int]:
        return chunk_sizes(n, align)

    def cost(self, n: int, align: int = 1, random_choices: bool = False) -> Cost:
        return cost(n, align)

    async def _extend(self, ch: Channel, r_words: np.ndarray, c: int) -> np.ndarray:
        words, nb = r_words.size, -(-c // 8)

        def work() -> tuple[bytes | memoryview, np.ndarray]:
            # Step 2: t^i = G(k_i^0), u^i = t^i ⊕ G(k_i^1) ⊕ r; t's rows are the outputs.
            g0, g1 = _expand(self._prgs0, words), _expand(self._prgs1, words)
            u, t = step_receiver(g0, g1, r_words)
            ub = u.view(np.uint8)
            # Whole words: u's own buffer is the message (the codec packs it as bytes).
            return (memoryview(ub.reshape(-1)) if nb == ub.shape[1] else ub[:, :nb].tobytes()), t

        u, t = await asyncio.to_thread(work)
        await ch.send(u, tag=TAG_U)
        return t[:c]

    async def recv_iter(
        self, ch: Channel, choices: np.ndarray, *, align: int = 1
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """Yield ``(index0, t)`` per chunk, t_j = q_j ⊕ r_j·Δ for the chosen bits r."""
        r = np.asarray(choices, dtype=bool).reshape(-1)
        off = 0
        for c in chunk_sizes(r.size, align):
            t = await self._extend(ch, bits_to_words(r[off : off + c]), c)
            off += c
            index0, self.position = self.position, self.position + c
            yield index0, t

    async def recv_random_iter(
        self, ch: Channel, n: int, *, align: int = 1
    ) -> AsyncIterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(index0, r, t)`` per chunk for uniformly random choice bits r."""
        for c in chunk_sizes(n, align):
            r_words = self.prg.uint64(-(-c // 64))
            if c % 64:  # the bits past c are not choices: zero, as bits_to_words pads
                r_words[-1] &= np.uint64((1 << (c % 64)) - 1)
            r = words_to_bits(r_words, c)
            t = await self._extend(ch, r_words, c)
            index0, self.position = self.position, self.position + c
            yield index0, r, t


# --- Steps 4–5: OTs derived from COTs by hashing (any COT source) -----------------------------
#
# With H the tweakable hash of :mod:`secmoe.crypto.aes_hash` and j the COT's index:
#   random OT        m0_j = H(j, q_j),  m1_j = H(j, q_j ⊕ Δ);  the receiver gets H(j, t_j) = m_{r_j}
#   chosen-message   S → R: y_j^b = m_j^b ⊕ H(j, q_j ⊕ b·Δ);   R: m_j^{r_j} = y_j^{r_j} ⊕ H(j, t_j)
#   additive COT     S: x_j = H(j, q_j); S → R: y_j = x_j + c_j − H(j, q_j ⊕ Δ)  (mod 2^ℓ)
#   (ALSZ13 C-OT)    R: H(j, t_j) + r_j·y_j = x_j + r_j·c_j
# Each message is a vector of k elements of ``bits`` ≤ 64 bits (uint64 arrays, shape (n,) or
# (n, k)); the wire carries exactly k·bits bits per message, packed. An additive COT may instead
# give each OT its own width (``widths``, periodic: OT j is mod 2^widths[j mod L]; Gilboa
# products need only ℓ − i bits for bit i), and then carries those bits, ⌈Σ widths / 8⌉ bytes
# per period.

TAG_Y = "ot/y"


def field_width(bits: int) -> int:
    """The hash-field width used for ``bits``-bit values: the next power of two."""
    if not 1 <= bits <= 64:
        raise ValueError(f"message bits must be in [1, 64], got {bits}")
    return 1 << (bits - 1).bit_length()


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def pad_dtype(bits: int) -> np.dtype:
    """The dtype of :func:`pads` (and of random OTs' messages): the smallest unsigned type
    that holds a field of :func:`field_width` bits (uint8 for bit OTs: 8× less memory to move
    than uint64)."""
    return np.dtype(f"u{max(1, field_width(bits) // 8)}")


def pads(x: np.ndarray, index0: int, domain: int, k: int, bits: int) -> np.ndarray:
    """H(j, x_j) cut into k values of ``bits`` bits: ``(c, k)`` of :func:`pad_dtype`,
    j = index0 + [0, c)."""
    idx = np.arange(index0, index0 + x.shape[0], dtype=np.uint64)
    h = hash_to_uint(x, idx, domain, k, field_width(bits))
    h &= h.dtype.type((1 << bits) - 1)
    return h


def _width(k: int | None) -> int:
    return 1 if k is None else int(k)


def _shape(n: int, k: int | None) -> tuple[int, ...]:
    return (n,) if k is None else (n, int(k))


def cost_rot(src: CotSender | CotReceiver, n: int, random_choices: bool = False) -> Cost:
    """Random OT: just the COTs."""
    return src.cost(n, random_choices=random_choices)


def cost_ot(src: CotSender | CotReceiver, n: int, bits: int, k: int | None = None) -> Cost:
    """Chosen-message OT: the COTs, then one ``y`` message per chunk (2·k·bits bits per OT)."""
    sizes = src.chunks(n)
    y = sum(bin_size(2 * packed_size(c * _width(k), bits)) for c in sizes)
    return src.cost(n) + Cost(y, 0, len(sizes), min(1, n))


def cost_acot(
    src: CotSender | CotReceiver,
    n: int,
    bits: int,
    k: int | None = None,
    widths: np.ndarray | None = None,
) -> Cost:
    """Additive correlated OT: the COTs, then one ``y`` message per chunk (k·bits per OT, or
    with ``widths`` ⌈Σ widths / 8⌉ bytes per L OTs, chunks aligned to L)."""
    if widths is None:
        sizes = src.chunks(n)
        y = sum(bin_size(packed_size(c * _width(k), bits)) for c in sizes)
        return src.cost(n) + Cost(y, 0, len(sizes), min(1, n))
    period, _ = _periodic(widths, n, _width(k), bits)
    sizes = src.chunks(n, period)
    y = sum(bin_size(fields_size(c // period, widths)) for c in sizes)
    return src.cost(n, period) + Cost(y, 0, len(sizes), min(1, n))


def _periodic(widths: np.ndarray, n: int, kk: int, bits: int) -> tuple[int, np.ndarray]:
    """Checks per-OT widths (period L) and returns (L, their masks as ``(L,)`` uint64)."""
    w = np.asarray(widths, dtype=np.int64).reshape(-1)
    if kk != 1 or w.size == 0 or n % w.size or w.min() < 1 or w.max() > bits:
        raise ValueError(
            f"per-OT widths need one value per OT, n = {n} a multiple of their period "
            f"{w.size} and widths in [1, {bits}]"
        )
    masks = np.array([(1 << int(v)) - 1 for v in w], dtype=np.uint64)
    return w.size, masks


async def rot_send(
    ch: Channel,
    src: CotSender,
    n: int,
    bits: int,
    k: int | None = None,
    *,
    random_choices: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Random OT, sender: returns ``(m0, m1)`` of shape (n,) or (n, k), values < 2^bits
    (dtype :func:`pad_dtype`)."""
    kk = _width(k)
    m0, m1 = np.empty((n, kk), pad_dtype(bits)), np.empty((n, kk), pad_dtype(bits))
    off = 0
    async for j0, q in src.send_iter(ch, n, random_choices=random_choices):
        c = q.shape[0]

        def work(q: np.ndarray = q, j0: int = j0, off: int = off, c: int = c) -> None:
            # Step 4 (no message): m_j^b = H(j, q_j ⊕ b·Δ).
            m0[off : off + c] = pads(q, j0, src.domain, kk, bits)
            m1[off : off + c] = pads(xor_block(q, src.delta), j0, src.domain, kk, bits)

        await asyncio.to_thread(work)
        off += c
    return m0.reshape(_shape(n, k)), m1.reshape(_shape(n, k))


async def rot_recv(
    ch: Channel, src: CotReceiver, choices: np.ndarray, bits: int, k: int | None = None
) -> np.ndarray:
    """Random OT, receiver with chosen bits: returns m_{r_j}, shape (n,) or (n, k) (dtype
    :func:`pad_dtype`)."""
    r = np.asarray(choices, dtype=bool).reshape(-1)
    out = np.empty((r.size, _width(k)), pad_dtype(bits))
    off = 0
    async for j0, t in src.recv_iter(ch, r):
        # Step 5: m_j^{r_j} = H(j, t_j).
        out[off : off + t.shape[0]] = await asyncio.to_thread(
            pads, t, j0, src.domain, _width(k), bits
        )
        off += t.shape[0]
    return out.reshape(_shape(r.size, k))


async def rot_recv_random(
    ch: Channel, src: CotReceiver, n: int, bits: int, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Random OT, receiver with random bits: returns ``(r, m_r)`` (m_r of :func:`pad_dtype`)."""
    r = np.empty(n, dtype=bool)
    out = np.empty((n, _width(k)), pad_dtype(bits))
    off = 0
    async for j0, rc, t in src.recv_random_iter(ch, n):
        c = t.shape[0]
        r[off : off + c] = rc
        out[off : off + c] = await asyncio.to_thread(pads, t, j0, src.domain, _width(k), bits)
        off += c
    return r, out.reshape(_shape(n, k))


def _check_msgs(m: np.ndarray, bits: int) -> np.ndarray:
    m = np.asarray(m)
    if m.dtype.kind not in "ub" or m.ndim not in (1, 2):
        raise ValueError(f"messages must be unsigned arrays of shape (n,) or (n, k), got {m.dtype}")
    return m.astype(np.uint64).reshape(m.shape[0], -1) & _mask(bits)


async def ot_send(ch: Channel, src: CotSender, m0: np.ndarray, m1: np.ndarray, bits: int) -> None:
    """Chosen-message OT, sender: messages ``m0``, ``m1`` (uint arrays (n,) or (n, k))."""
    if np.shape(m0) != np.shape(m1):
        raise ValueError("m0 and m1 must have the same shape")
    a0, a1 = _check_msgs(m0, bits), _check_msgs(m1, bits)
    n, kk = a0.shape
    ys: list[bytes] = []
    off = 0
    async for j0, q in src.send_iter(ch, n):
        c = q.shape[0]

        def work(q: np.ndarray = q, j0: int = j0, off: int = off, c: int = c) -> bytes:
            # Step 4: y_j^b = m_j^b ⊕ H(j, q_j ⊕ b·Δ).
            y0 = a0[off : off + c] ^ pads(q, j0, src.domain, kk, bits)
            y1 = a1[off : off + c] ^ pads(xor_block(q, src.delta), j0, src.domain, kk, bits)
            return pack_bits(y0, bits).tobytes() + pack_bits(y1, bits).tobytes()

        ys.append(await asyncio.to_thread(work))
        off += c
    for y in ys:  # after the last u: the y's form one flight
        await ch.send(y, tag=TAG_Y)


async def _recv_pads(
    ch: Channel, src: CotReceiver, r: np.ndarray, kk: int, bits: int, align: int = 1
) -> list[tuple[int, np.ndarray]]:
    """The receiver's COTs for choices r, hashed to pads H(j, t_j): (chunk size, pads) each."""
    chunks: list[tuple[int, np.ndarray]] = []
    async for j0, t in src.recv_iter(ch, r, align=align):
        chunks.append((t.shape[0], await asyncio.to_thread(pads, t, j0, src.domain, kk, bits)))
    return chunks


async def ot_recv(
    ch: Channel, src: CotReceiver, choices: np.ndarray, bits: int, k: int | None = None
) -> np.ndarray:
    """Chosen-message OT, receiver: returns m_{r_j}, shape (n,) or (n, k)."""
    r = np.asarray(choices, dtype=bool).reshape(-1)
    kk = _width(k)
    chunks = await _recv_pads(ch, src, r, kk, bits)
    out = np.empty((r.size, kk), np.uint64)
    off = 0
    for c, h in chunks:
        size = packed_size(c * kk, bits)
        y = _expect(await ch.recv(tag=TAG_Y), 2 * size, "OT y")
        y0 = unpack_bits(np.frombuffer(y[:size], np.uint8), c * kk, bits).reshape(c, kk)
        y1 = unpack_bits(np.frombuffer(y[size:], np.uint8), c * kk, bits).reshape(c, kk)
        # Step 5: m_j^{r_j} = y_j^{r_j} ⊕ H(j, t_j).
        out[off : off + c] = np.where(r[off : off + c, None], y1, y0) ^ h
        off += c
    return out.reshape(_shape(r.size, k))


async def acot_send(
    ch: Channel, src: CotSender, corr: np.ndarray, bits: int, widths: np.ndarray | None = None
) -> np.ndarray:
    """Additive correlated OT, sender: input c (n,) or (n, k); returns x (the receiver gets
    x + r·c mod 2^bits, or with ``widths`` (c of shape (n,)) mod 2^widths[j mod L] for OT j)."""
    a = _check_msgs(corr, bits)
    n, kk = a.shape
    period, masks = (
        (1, np.array([_mask(bits)])) if widths is None else _periodic(widths, n, kk, bits)
    )
    x = np.empty((n, kk), np.uint64)
    ys: list[bytes] = []
    off = 0
    async for j0, q in src.send_iter(ch, n, align=period):
        c = q.shape[0]

        def work(q: np.ndarray = q, j0: int = j0, off: int = off, c: int = c) -> bytes:
            # Step 4 (C-OT): x_j = H(j, q_j); y_j = x_j + c_j − H(j, q_j ⊕ Δ).
            x[off : off + c] = pads(q, j0, src.domain, kk, bits)
            h1 = pads(xor_block(q, src.delta), j0, src.domain, kk, bits)
            y = x[off : off + c] + a[off : off + c] - h1
            if widths is None:
                return pack_bits(y & _mask(bits), bits).tobytes()
            x[off : off + c] &= np.tile(masks, c // period)[:, None]
            return pack_fields(y.reshape(-1, period), widths).tobytes()

        ys.append(await asyncio.to_thread(work))
        off += c
    for y in ys:
        await ch.send(y, tag=TAG_Y)
    return x.reshape(np.shape(corr))


async def acot_recv(
    ch: Channel,
    src: CotReceiver,
    choices: np.ndarray,
    bits: int,
    k: int | None = None,
    widths: np.ndarray | None = None,
) -> np.ndarray:
    """Additive correlated OT, receiver: returns x + r·c mod 2^bits (or mod 2^widths[j mod L]
    for OT j), shape (n,) or (n, k)."""
    r = np.asarray(choices, dtype=bool).reshape(-1)
    kk = _width(k)
    period = 1 if widths is None else _periodic(widths, r.size, kk, bits)[0]
    chunks = await _recv_pads(ch, src, r, kk, bits, period)
    out = np.empty((r.size, kk), np.uint64)
    off = 0
    for c, h in chunks:
        raw = await ch.recv(tag=TAG_Y)
        if widths is None:
            y = _expect(raw, packed_size(c * kk, bits), "C-OT y")
            y = unpack_bits(np.frombuffer(y, np.uint8), c * kk, bits).reshape(c, kk)
            mask: np.ndarray | np.uint64 = _mask(bits)
        else:
            y = _expect(raw, fields_size(c // period, widths), "C-OT y")
            y = unpack_fields(np.frombuffer(y, np.uint8), c // period, widths).reshape(c, 1)
            mask = np.tile(_periodic(widths, c, kk, bits)[1], c // period)[:, None]
        # Step 5 (C-OT): H(j, t_j) + r_j·y_j.
        out[off : off + c] = (h + r[off : off + c, None] * y) & mask
        off += c
    return out.reshape(_shape(r.size, k))


def _expect(obj: object, size: int, what: str) -> bytes:
    if not isinstance(obj, bytes) or len(obj) != size:
        raise ProtocolError(f"{what}: expected {size} bytes, got {type(obj).__name__}")
    return obj

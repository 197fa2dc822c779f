"""Base OT: Chou–Orlandi "simplest OT" over ristretto255 (random-OT form), and OT cost records.

Computes n random 1-out-of-2 OTs of 128-bit keys: the sender outputs ``(k0_i, k1_i)``, the
receiver, with choice bits ``c_i``, outputs ``k_{c_i}``. The keys seed the IKNP extension.

Who learns what (semi-honest): the sender learns nothing about c (B_i is a uniform group element
whatever c_i is); the receiver learns nothing about k_{1−c_i} (computing it is CDH).

REF: T. Chou, C. Orlandi, "The Simplest Protocol for Oblivious Transfer", eprint 2015/267.
We use it in the semi-honest setting only (its known gaps under malicious parties in the UC
model do not apply). Keys are hashed with the transcript (A, B_i) and the index i, as in the
paper's random-oracle key derivation.

Message flow::

    sender                                          receiver (c ∈ {0,1}^n)
    Step 1: a ← Z_ℓ, A = a·G      ── A (32 B) ──▶
                                                    Step 2: b_i ← Z_ℓ, B_i = c_i·A + b_i·G
                                  ◀── B (32n B) ──          k_i = H(i, A, B_i, b_i·A)
    Step 3: k0_i = H(i, A, B_i, a·B_i)
            k1_i = H(i, A, B_i, a·B_i − a·A)

Cost: sender → receiver 32 B, receiver → sender 32·n B (each one msgpack ``bin``), 2 rounds.
Compute: the sender n + 1 variable-base scalar multiplications (~1 ms each); the receiver 2n
comb multiplications (~0.15 ms each) and one comb table for A.

This module also holds what every OT module shares: :class:`Cost`, the declared-cost record;
:func:`bin_size`, the exact payload size of a ``bytes`` message (every OT message is ``bytes``,
so declared costs are exact: see ``tests/ot/test_ot.py``); and the interface of a *COT source*
(:class:`CotSender`, :class:`CotReceiver`), which IKNP implements and a silent-OT source
(Ferret, issue 4) will implement too.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from secmoe.crypto import group
from secmoe.crypto.prg import PRG
from secmoe.net import Channel, ProtocolError

TAG_A = "ot/base/A"
TAG_B = "ot/base/B"


def bin_size(nbytes: int) -> int:
    """Payload bytes of one message carrying ``nbytes`` raw bytes (a msgpack ``bin``)."""
    if nbytes < 1 << 8:
        return nbytes + 2
    if nbytes < 1 << 16:
        return nbytes + 3
    return nbytes + 5


@dataclass(frozen=True)
class Cost:
    """Declared communication of one OT protocol run (payload bytes; framing not included).

    Attributes:
        sender_bytes: bytes the OT sender sends.
        receiver_bytes: bytes the OT receiver sends.
        messages: messages in both directions.
        rounds: message flights on the critical path (direction flips + 1).
    """

    sender_bytes: int
    receiver_bytes: int
    messages: int
    rounds: int

    def __add__(self, other: Cost) -> Cost:
        """Sequential composition (rounds add up)."""
        return Cost(
            self.sender_bytes + other.sender_bytes,
            self.receiver_bytes + other.receiver_bytes,
            self.messages + other.messages,
            self.rounds + other.rounds,
        )

    def directed(self, sender_role: str) -> dict[str, int]:
        """The cost in channel terms: ``bytes_c2s``, ``bytes_s2c``, ``messages``, ``rounds``."""
        if sender_role not in ("client", "server"):
            raise ValueError(f"bad role {sender_role!r}")
        c2s, s2c = (
            (self.sender_bytes, self.receiver_bytes)
            if sender_role == "client"
            else (self.receiver_bytes, self.sender_bytes)
        )
        return {
            "bytes_c2s": c2s,
            "bytes_s2c": s2c,
            "messages": self.messages,
            "rounds": self.rounds,
        }


class CotSender(Protocol):
    """The sender's end of a source of correlated OTs with a global Δ.

    Every COT j of the instance gives the sender a block q_j and the receiver (r_j, t_j) with
    t_j = q_j ⊕ r_j·Δ. COTs are numbered by ``position`` (the tweak index of the hash) and the
    instance is named by ``domain`` (48-bit tweak domain), so derived OTs never reuse a tweak.
    """

    domain: int
    position: int

    @property
    def delta(self) -> np.ndarray:
        """Δ, a ``(2,)`` uint64 block."""
        ...

    def fork(self, name: str) -> CotSender:
        """An independent instance (no communication); the peer forks the same name."""
        ...

    def chunks(self, n: int, align: int = 1) -> list[int]:
        """The chunk sizes in which n COTs are produced (each a multiple of ``align``)."""
        ...

    def cost(self, n: int, align: int = 1, random_choices: bool = False) -> Cost:
        """Declared cost of producing n COTs."""
        ...

    def send_iter(
        self, ch: Channel, n: int, *, align: int = 1, random_choices: bool = False
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """Produce n COTs: yields ``(index0, q)`` per chunk (q: ``(c, 2)`` uint64).

        ``random_choices`` tells the sender the receiver runs :meth:`CotReceiver.recv_random_iter`.
        """
        ...


class CotReceiver(Protocol):
    """The receiver's end of a COT source (see :class:`CotSender`)."""

    domain: int
    position: int

    def fork(self, name: str) -> CotReceiver: ...

    def chunks(self, n: int, align: int = 1) -> list[int]: ...

    def cost(self, n: int, align: int = 1, random_choices: bool = False) -> Cost: ...

    def recv_iter(
        self, ch: Channel, choices: np.ndarray, *, align: int = 1
    ) -> AsyncIterator[tuple[int, np.ndarray]]:
        """COTs with chosen bits: yields ``(index0, t)`` per chunk."""
        ...

    def recv_random_iter(
        self, ch: Channel, n: int, *, align: int = 1
    ) -> AsyncIterator[tuple[int, np.ndarray, np.ndarray]]:
        """COTs with uniformly random bits: yields ``(index0, r, t)`` per chunk."""
        ...


def cost(n: int) -> Cost:
    """Declared cost of :func:`send`/:func:`recv` for n OTs."""
    return Cost(bin_size(group.ENCODED_BYTES), bin_size(group.ENCODED_BYTES * n), 2, 2)


def ideal(choices: np.ndarray, prg: PRG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plaintext functionality: random keys ``(k0, k1)`` and the receiver's ``k_c``."""
    c = np.asarray(choices, dtype=bool)
    k0, k1 = prg.uint64((c.size, 2)), prg.uint64((c.size, 2))
    return k0, k1, np.where(c[:, None], k1, k0)


def _kdf(label: str, i: int, a_enc: bytes, b_enc: bytes, point: group.Point) -> bytes:
    h = hashlib.sha256()
    h.update(b"secmoe/base-ot/chou-orlandi/v1\x00" + label.encode() + b"\x00")
    h.update(i.to_bytes(8, "little") + a_enc + b_enc + group.encode(point))
    return h.digest()[:16]


def _blocks(keys: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(keys), dtype="<u8").astype(np.uint64).reshape(len(keys), 2)


def step_sender_setup(prg: PRG) -> tuple[int, bytes]:
    """Step 1: the sender's secret a and the encoding of A = a·G."""
    a = group.random_scalar(prg)
    return a, group.encode(group.base_mul(a))


def step_receiver_choose(
    a_enc: bytes, choices: np.ndarray, prg: PRG, label: str
) -> tuple[bytes, np.ndarray]:
    """Step 2: B_i = c_i·A + b_i·G for each i; returns (B encodings, k_{c_i} blocks)."""
    big_a = group.decode(a_enc)
    table_a = group.FixedBase(big_a)
    b_out, keys = [], []
    for i, c in enumerate(np.asarray(choices, dtype=bool).tolist()):
        b = group.random_scalar(prg)
        big_b = group.base_mul(b)
        if c:
            big_b = group.add(big_b, big_a)
        b_enc = group.encode(big_b)
        b_out.append(b_enc)
        keys.append(_kdf(label, i, a_enc, b_enc, table_a.mul(b)))
    return b"".join(b_out), _blocks(keys)


def step_sender_keys(
    a: int, a_enc: bytes, b_all: bytes, n: int, label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: k0_i = H(a·B_i), k1_i = H(a·B_i − a·A) for each i."""
    a_a = group.mul(a, group.decode(a_enc))  # a·A
    k0, k1 = [], []
    for i in range(n):
        b_enc = b_all[32 * i : 32 * (i + 1)]
        a_b = group.mul(a, group.decode(b_enc))
        k0.append(_kdf(label, i, a_enc, b_enc, a_b))
        k1.append(_kdf(label, i, a_enc, b_enc, group.sub(a_b, a_a)))
    return _blocks(k0), _blocks(k1)


def _expect_bytes(obj: object, size: int, what: str) -> bytes:
    if not isinstance(obj, bytes) or len(obj) != size:
        got = f"{type(obj).__name__} of {len(obj)} bytes" if isinstance(obj, bytes) else type(obj)
        raise ProtocolError(f"{what}: expected {size} bytes, got {got}")
    return obj


async def send(ch: Channel, n: int, prg: PRG, label: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Base-OT sender: returns ``(k0, k1)``, two ``(n, 2)`` uint64 block arrays.

    ``label`` separates independent runs in one session (both parties pass the same one).
    """
    # Step 1.
    a, a_enc = step_sender_setup(prg)
    await ch.send(a_enc, tag=TAG_A)
    b_all = _expect_bytes(await ch.recv(tag=TAG_B), 32 * n, "base OT B")
    # Step 3.
    return await asyncio.to_thread(step_sender_keys, a, a_enc, b_all, n, label)


async def recv(ch: Channel, choices: np.ndarray, prg: PRG, label: str = "") -> np.ndarray:
    """Base-OT receiver: returns k_c, an ``(n, 2)`` uint64 block array."""
    a_enc = _expect_bytes(await ch.recv(tag=TAG_A), 32, "base OT A")
    # Step 2.
    b_all, keys = await asyncio.to_thread(step_receiver_choose, a_enc, choices, prg, label)
    await ch.send(b_all, tag=TAG_B)
    return keys

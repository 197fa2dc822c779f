"""HE setup: the client's keys, and what the server receives of them.

::

    client                                              server
      s ← PRG (ternary); pk = (−a·s + e, a), a from a seed
      [relinearization / Galois keys from SEAL if asked]
      ── he/setup/keys: params, pk seed, pk0, [rk], [gk] ──▶  check params, load keys
      ◀── he/setup/ack: ok | error ───────────────────────

Cost (``setup`` phase, one round trip): the public key is N·Σbytes(q_i) + 16 bytes (c1 is a
seed); relinearization and Galois keys are SEAL's seeded serialization (about half their
in-memory size). By default the client also sends the Galois keys with which the server packs
the products it returns (:func:`packing_galois_elements`: 10 keys, 1.06 MB each at ``HE_8K``
= 10.6 MB; 6.65 MB each at ``HE_16K`` = 66.5 MB, shared with encrypted selection's expansion
keys, the same automorphisms). A parameter mismatch raises
:class:`~secmoe.crypto.he.HEError` on both sides, naming both parameter sets.

Who learns what: the server learns the public key and evaluation keys (RLWE samples under the
client's secret, 128-bit secure by the HE standard); the client learns nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..crypto.he import (
    HEContext,
    HEError,
    PublicKey,
    SecretKey,
    load_galois_keys,
    load_relin_keys,
    pack_fresh,
    unpack_fresh,
)
from ..crypto.he_params import HE_8K, HEParams
from ..crypto.prg import PRG
from ..net import Channel

__all__ = [
    "ClientHE",
    "ServerHE",
    "expansion_galois_elements",
    "packing_galois_elements",
    "setup_client",
    "setup_server",
]


@dataclass
class ClientHE:
    """The client's HE state for one parameter set: context and secret key."""

    ctx: HEContext
    sk: SecretKey

    @property
    def params(self) -> HEParams:
        return self.ctx.params


@dataclass
class ServerHE:
    """The server's HE state: context, the client's public key and evaluation keys."""

    ctx: HEContext
    pk: PublicKey
    relin: object | None = None
    galois: object | None = None
    galois_elements: tuple[int, ...] = field(default=())
    #: The Galois keys as the client sent them (SEAL's serialization), for the server's
    #: workers (:mod:`secmoe.distributed`), which load them into their own contexts.
    galois_bytes: bytes = b""

    @property
    def params(self) -> HEParams:
        return self.ctx.params


def expansion_galois_elements(n: int, items: int) -> tuple[int, ...]:
    """Galois elements N/2^j + 1 (j < ⌈log2 items⌉) for expanding ``items`` packed values."""
    levels = max(1, (items - 1).bit_length())
    return tuple(n // (1 << j) + 1 for j in range(levels))


def packing_galois_elements(params: HEParams) -> tuple[int, ...]:
    """Galois elements 2N/S + 1 (S = 2, 4, …, 2^pack_log) with which the server packs the
    products it returns (:class:`~secmoe.protocols.he_common.ProductPacker`); the same family
    as :func:`expansion_galois_elements`, so keys for one serve the other."""
    return tuple(params.n // (1 << j) + 1 for j in range(params.pack_log))


def _elements(params: HEParams, galois: Sequence[int], pack: bool) -> list[int]:
    return sorted({int(g) for g in galois} | set(packing_galois_elements(params) if pack else ()))


def _describe(params: HEParams, relin: bool, galois: Sequence[int]) -> dict:
    return {"params": params.describe(), "relin": bool(relin), "galois": [int(g) for g in galois]}


async def setup_client(
    ch: Channel,
    prg: PRG,
    params: HEParams = HE_8K,
    *,
    relin: bool = False,
    galois: Sequence[int] = (),
    pack: bool = True,
) -> ClientHE:
    """Client side of HE setup (``setup`` phase): generate keys, send the public material.

    Args:
        ch: the channel.
        prg: the client's PRG (the secret key and the public key's randomness come from it).
        params: the parameter set; the server must use the same.
        relin: also send relinearization keys (encrypted selection needs them).
        galois: Galois elements to send keys for (see :func:`expansion_galois_elements`).
        pack: also send the keys of :func:`packing_galois_elements` (the server packs the
            products it returns; plans assume them).
    """
    galois = _elements(params, galois, pack)
    with ch.phase("setup"):

        def work() -> tuple[ClientHE, dict]:
            ctx = HEContext(params)
            sk = SecretKey.generate(ctx, prg.derive("he/secret-key"))
            seed, pk0 = sk.public_key(prg.derive("he/public-key"))
            msg = _describe(params, relin, galois)
            msg["pk_seed"] = seed
            msg["pk0"] = pack_fresh(ctx, pk0)
            msg["rk"] = sk.relin_keys_bytes() if relin else b""
            msg["gk"] = sk.galois_keys_bytes(galois) if galois else b""
            return ClientHE(ctx, sk), msg

        state, msg = await asyncio.to_thread(work)
        await ch.send(msg, tag="he/setup/keys")
        ack = await ch.recv(tag="he/setup/ack")
        if not ack.get("ok"):
            raise HEError(f"HE setup rejected by the server: {ack.get('error')}")
        return state


async def setup_server(
    ch: Channel,
    params: HEParams = HE_8K,
    *,
    relin: bool = False,
    galois: Sequence[int] = (),
    pack: bool = True,
) -> ServerHE:
    """Server side of HE setup: check the client's parameters, load its public material."""
    galois = _elements(params, galois, pack)
    with ch.phase("setup"):
        msg = await ch.recv(tag="he/setup/keys")
        want = _describe(params, relin, galois)
        got = {k: msg.get(k) for k in want}
        if got != want:
            error = f"HE parameters differ: server has {want}, client sent {got}"
            await ch.send({"ok": False, "error": error}, tag="he/setup/ack")
            raise HEError(error)

        def work() -> ServerHE:
            ctx = HEContext(params)
            pk0 = unpack_fresh(ctx, np.asarray(msg["pk0"]), 1)
            pk = PublicKey.from_wire(ctx, bytes(msg["pk_seed"]), pk0)
            rk = load_relin_keys(ctx, bytes(msg["rk"])) if relin else None
            gk_bytes = bytes(msg["gk"]) if galois else b""
            gk = load_galois_keys(ctx, gk_bytes) if galois else None
            return ServerHE(ctx, pk, rk, gk, tuple(int(g) for g in galois), gk_bytes)

        try:
            state = await asyncio.to_thread(work)
        except Exception as exc:
            await ch.send({"ok": False, "error": f"bad key material: {exc}"}, tag="he/setup/ack")
            raise
        await ch.send({"ok": True, "error": ""}, tag="he/setup/ack")
        return state

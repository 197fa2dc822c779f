"""One secure MoE layer between two parties in one process, and its plaintext references
(tests only: weights and inputs come from seeded numpy generators, they are not secrets)."""

from __future__ import annotations

import numpy as np

from secmoe.bench.moe_bench import layer_config
from secmoe.crypto.prg import PRG
from secmoe.crypto.ring import DEFAULT_RING as R
from secmoe.model.backend import FloatOps
from secmoe.model.fixed import FixedOps
from secmoe.model.reference import Routing, moe_forward
from secmoe.model.weights import MoE
from secmoe.net import run_local
from secmoe.ops.linear import prepare_select, select_chunk, setup_he
from secmoe.ops.moe import ExpertWeights, MoESpec, moe
from secmoe.protocols.party import Party
from secmoe.protocols.shares import reveal, share
from tests.protocols.helpers import SEEDS


def layer(n_e: int, d: int, d_ff: int, ffn: str, seed: int = 5) -> MoE:
    """Random expert weights N(0, 1/fan-in); a router scaled up so routing is decisive."""
    rng = np.random.default_rng(seed)
    gated = ffn in ("gated-gelu", "swiglu")

    def mat(*shape: int, scale: float = 1.0) -> np.ndarray:
        return rng.standard_normal(shape) * scale / np.sqrt(shape[-2])

    return MoE(
        mat(d, n_e, scale=3.0),
        mat(n_e, d, d_ff),
        mat(n_e, d_ff, d),
        mat(n_e, d, d_ff) if gated else None,
    )


def references(
    x: np.ndarray, w: MoE, spec: MoESpec, capacity: bool | int
) -> tuple[np.ndarray, np.ndarray, Routing]:
    """Fixed-point emulation and float reference (B, T, d) of the layer on x (B, T, d), and the
    float routing."""
    cfg = layer_config(spec, x.shape[1])
    fixed, _ = moe_forward(FixedOps(R), R.encode(x), w, cfg, 0, capacity)
    exact, routing = moe_forward(FloatOps(), x, w, cfg, 0, capacity)
    return R.decode(fixed), exact, routing


async def secure_moe(
    x: np.ndarray, w: MoE, spec: MoESpec, strategy: str, server_view: list | None = None
) -> np.ndarray:
    """The secure layer's output (B, T, d) on the client's x (B, T, d): sequences are groups.
    ``server_view``: receives the server's online messages as (direction, path, tag, bytes)."""
    b, t, d = x.shape

    async def party(ch):
        if server_view is not None and ch.role == "server":
            ch.session.recorder = lambda ev, _: server_view.append(
                (ev["dir"], ev["path"], ev["tag"], ev["bytes"]) if ev["phase"] == "online" else None
            )
        items = select_chunk(b * t, spec.n_experts) * spec.n_experts if strategy == "select" else 0
        with ch.phase("setup"):  # HE keys: their compressed size varies with their randomness
            p = await setup_he(await Party.setup(ch, PRG(SEEDS[ch.role])), select_items=items)
        plain = R.encode(x.reshape(b * t, d)) if p.role == "client" else None
        xs = await share(p.fork("input"), plain, "client", (b * t, d))
        ew = ExpertWeights(w.router, w.w1, w.w2, w.v) if p.role == "server" else None
        if ew is not None and strategy == "select":  # the selection's weights, encoded in setup
            prepare_select(p, [m for m in (w.w1, w.v) if m is not None], b * t)
            prepare_select(p, [w.w2], b * t)
        out = await moe(p.fork("moe"), xs, ew, spec, strategy, groups=b)
        return await reveal(p.fork("output"), out, to="client")

    got, _ = await run_local(party, party, timeout=300)
    return R.decode(got).reshape(b, t, d)

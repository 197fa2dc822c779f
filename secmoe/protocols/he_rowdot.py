"""Row-wise products of the client's and the server's private values, by HE.

**What it computes.** Three products, each row r of R on its own (the norms' row products,
:mod:`secmoe.ops.norm`); the server's operand holds integers 0 ≤ v < 2^(w_bits−1), the
client's arbitrary ring elements; both parties end with fresh additive shares over Z_{2^ℓ},
exactly (mod 2^ℓ):

- ``"dot"``: the client's A (R×d), the server's V (R×d): s_r = Σ_j A[r, j]·V[r, j] (R,);
- ``"scale_c"``: the client's A (R×d), the server's v (R,): A[r, j]·v_r (R×d);
- ``"scale_s"``: the client's a (R,), the server's V (R×d): a_r·V[r, j] (R×d).

**How.** The rows go in groups of g (the last group may be smaller); each group is one
plain-weight product X·W of :mod:`secmoe.protocols.he_linear` (the client's X encrypted, the
server's W as "weights", its share of X zero): ``dot``: X = A_G (g×d), W = V_Gᵀ (d×g), the
diagonal of X·W; ``scale_c``: X = A_Gᵀ (d×g), W = diag(v_G), the transpose of X·W;
``scale_s``: X = diag(a_G) (g×g), W = V_G (g×d). Products outside the wanted ones (the
off-diagonal inner products of ``dot``) are computed in the same ciphertexts and discarded by
both parties. g is a public function of (kind, R, d, w_bits) (:func:`plan_rows`: the fewest
bytes), so the coefficients a call returns are known before the keys' κ is chosen.

**Who learns what.** As in :mod:`secmoe.protocols.he_linear`: the server sees only
ciphertexts under the client's key; the client decrypts uniformly masked, noise-flooded
results and learns nothing about the server's operand beyond the public bound w_bits. Public:
the kind, R, d, w_bits.

**Message flow.** Per group, concurrently (each on its fork ``g{i}``), one round trip::

    client ── he/mm/x: Enc(X) ──▶ server
    client ◀── he/mm/y: Enc(X·W + M) ── server          shares: (X·W + M, −M), then the
                                                          diagonal / transpose / as is

**Fewer bits back.** With ``out_bits`` b < ℓ (the caller wants the shares mod 2^b only: the
norm's products live on rings of 44 and 62 bits) the plan scales the input by 2^(ℓ−b)
(:class:`~secmoe.protocols.he_common.MatmulPlan`'s ``out_bits``): the result's lowest wanted
bit then sits at q/2^b, decryption tolerates 2^(ℓ−b) times the noise, and every returned
coefficient carries about ℓ − b bits fewer.

**Cost.** Σ over groups of :func:`~secmoe.protocols.he_linear.matmul_cost` (exact):
:func:`rows_cost`. At R = 8, d = 768 (``HE_8K``, one group): ``dot`` (w_bits = 31, b = 62)
180 KB up, 75 KB down; ``scale_c`` and ``scale_s`` (b = 44) 180 KB up, 92 KB down each
(128 KB at b = 64) — against 1.07 MB and 1.28 MB for the same products by COTs.

REF: Cheetah (eprint 2022/207) §3.1 (products by coefficient encoding); BumbleBee (eprint
2023/1678) for the returned-coefficient packing.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np

from ..crypto.he_params import FLOOD_UNION_BITS, HE_8K
from ..crypto.prg import PRG
from ..crypto.ring import DEFAULT_RING, Ring
from ..net import Channel
from .cost import Cost
from .he_linear import (
    MatmulPlan,
    encode_weights,
    matmul_client,
    matmul_cost,
    matmul_server,
    plan_matmul,
)
from .he_setup import ClientHE, ServerHE

__all__ = ["KINDS", "ideal_rows", "plan_rows", "row_product", "rows_cost"]

KINDS = ("dot", "scale_c", "scale_s")


def _groups(rows: int, g: int) -> list[int]:
    return [min(g, rows - s) for s in range(0, rows, g)]


def _plan(kind: str, g: int, d: int, w_bits: int, union_bits: int, out_bits: int) -> MatmulPlan:
    t, inner, h = {"dot": (g, d, g), "scale_c": (d, g, g), "scale_s": (g, g, d)}[kind]
    return plan_matmul(
        t, inner, [h], HE_8K, w_bits=w_bits, union_bits=union_bits, out_bits=out_bits
    )


def _group_cost(kind: str, g: int, d: int, w_bits: int, union_bits: int, out_bits: int) -> Cost:
    c = matmul_cost(_plan(kind, g, d, w_bits, union_bits, out_bits))
    return Cost(c["bytes_c2s"], c["bytes_s2c"], c["messages"], c["rounds"])


#: Weight of one plaintext product in :func:`plan_rows`'s objective, in bytes: the server's
#: operand is fresh, so each product also encodes its weight block online (about 2 ms on a
#: loaded 2-core machine, what 1 Gbit/s carries in 250 KB; charged lower, as bytes are the
#: target). A larger g sends fewer input ciphertexts but multiplies many more (mostly zero)
#: blocks: at 128×768 ``dot`` with g = 128 sends 2.4 MB instead of 4.1 but takes 1536
#: products instead of 128 (3 s against 0.3).
PRODUCT_WEIGHT = 20_000


@functools.lru_cache(maxsize=256)
def plan_rows(kind: str, rows: int, d: int, w_bits: int) -> int:
    """The group size g (a power of two, or R) with the fewest bytes plus
    :data:`PRODUCT_WEIGHT` per plaintext product (ties: the smaller g), at the default κ and
    with results mod 2^ℓ: a function of the shapes only.

    Raises:
        ValueError: for an unknown kind, or if no group size has a plan that holds the noise
            (:func:`~secmoe.protocols.he_linear.plan_matmul`; e.g. ``dot`` at d = 4096).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown row product {kind!r}; expected one of {KINDS}")
    if rows < 1 or d < 1:
        raise ValueError("row product shapes must be positive")
    best: tuple[int, int] | None = None
    for g in sorted({min(rows, 1 << i) for i in range(rows.bit_length() + 1)} | {rows}):
        try:
            total = sum(
                _group_cost(kind, s, d, w_bits, FLOOD_UNION_BITS, 64).bytes_total
                + PRODUCT_WEIGHT * _plan(kind, s, d, w_bits, FLOOD_UNION_BITS, 64).products
                for s in _groups(rows, g)
            )
        except ValueError:  # no packing holds the noise (d too large for w_bits)
            continue
        best = min(best or (total, g), (total, g))
    if best is None:
        raise ValueError(f"row product {kind}: no HE plan fits {rows}x{d} at w_bits={w_bits}")
    return best[1]


def rows_cost(
    kind: str, rows: int, d: int, w_bits: int, union_bits: int, out_bits: int = 64
) -> Cost:
    """Declared cost of :func:`row_product` (either side) on R = ``rows`` rows of d."""
    g = plan_rows(kind, rows, d, w_bits)
    out = Cost()
    for s in _groups(rows, g):
        out = out | _group_cost(kind, s, d, w_bits, union_bits, out_bits)
    return out


def _client_x(kind: str, a: np.ndarray) -> np.ndarray:
    if kind == "dot":
        return a
    return a.T if kind == "scale_c" else np.diag(a)


def _server_w(kind: str, v: np.ndarray) -> np.ndarray:
    if kind == "dot":
        return v.T
    return np.diag(v) if kind == "scale_c" else v


def _result(kind: str, y: np.ndarray) -> np.ndarray:
    if kind == "dot":
        return np.diagonal(y)
    return y.T if kind == "scale_c" else y


async def row_product(
    ch: Channel,
    he: ClientHE | ServerHE,
    kind: str,
    mine: np.ndarray,
    d: int,
    w_bits: int,
    prg: PRG,
    *,
    union_bits: int,
    out_bits: int = 64,
    ring: Ring = DEFAULT_RING,
) -> np.ndarray:
    """This party's shares of the row product ``kind`` ((R,) for ``dot``, else R×d), mod
    2^out_bits (:class:`~secmoe.protocols.he_linear.MatmulPlan`'s ``out_bits``: fewer bits
    returned).

    Args:
        ch, he, prg: the party's channel, its HE keys (the client's :class:`ClientHE` or the
            server's :class:`ServerHE`, ``HE_8K``) and its PRG.
        kind: ``"dot"``, ``"scale_c"`` or ``"scale_s"`` (module docstring).
        mine: the client's operand (R×d; (R,) for ``scale_s``), arbitrary ring elements; or
            the server's (R×d; (R,) for ``scale_c``), entries in [0, 2^(w_bits−1)).
        d, w_bits, union_bits: public: the row length, the server's bound, the keys' κ.
        out_bits: public: the shares are wanted mod 2^out_bits only (≤ ℓ).

    Raises:
        ValueError: on the server, if an entry of its operand is outside [0, 2^(w_bits−1)).

    Cost: :func:`rows_cost`.
    """
    server = isinstance(he, ServerHE)
    data = np.asarray(mine, dtype=np.uint64)
    if server and data.size and int(data.max()) >= 1 << (w_bits - 1):
        raise ValueError(f"row product: the server's entries exceed 2^{w_bits - 1}")
    data = data if server else ring.reduce(data)

    async def one(i: int, sl: slice, plan: MatmulPlan) -> np.ndarray:
        c, q = ch.fork(f"g{i}"), prg.derive(f"g{i}")
        if not server:
            (y,) = await matmul_client(c, he, _client_x(kind, data[sl]), plan, q, ring=ring)
            return _result(kind, y)
        w = _server_w(kind, data[sl]).astype(np.int64)
        enc = await asyncio.to_thread(encode_weights, he.ctx, [w], plan)
        zero = np.zeros((plan.t, plan.d), np.uint64)
        (y,) = await matmul_server(c, he, zero, enc, q, ring=ring)
        return _result(kind, y)

    g = plan_rows(kind, data.shape[0], d, w_bits)
    sizes = _groups(data.shape[0], g)
    parts = await asyncio.gather(
        *(
            one(i, slice(i * g, i * g + s), _plan(kind, s, d, w_bits, union_bits, out_bits))
            for i, s in enumerate(sizes)
        )
    )
    return np.concatenate(parts, axis=0)


def ideal_rows(kind: str, a: np.ndarray, v: np.ndarray, ring: Ring = DEFAULT_RING) -> np.ndarray:
    """Plaintext reference of the row product ``kind`` (mod 2^ℓ)."""
    a, v = np.asarray(a, np.uint64), np.asarray(v, np.uint64)
    if kind == "dot":
        return ring.reduce((a * v).sum(axis=-1, dtype=np.uint64))
    return ring.reduce(a * v[:, None] if kind == "scale_c" else a[:, None] * v)

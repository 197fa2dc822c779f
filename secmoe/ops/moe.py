"""The secure MoE layer, with interchangeable strategies behind one interface.

Input: shares of the normed hidden states x (T, d). Output: shares of the MoE FFN output
(T, d) (before the residual). The server passes its weights; the client passes ``None`` for
each (it knows only the public dimensions in :class:`MoESpec`).

Routing, common to every strategy (nothing revealed):

1. router logits ⟨l⟩ = ⟨x⟩·W_r (HE linear);
2. top-k: shares of the k best logits and of their one-hots O (T, k, E), ties to the lower
   index (:func:`secmoe.protocols.select.topk`);
3. gates, by :attr:`MoESpec.norm_topk` (the config's ``norm_topk_prob``): False (Switch,
   Qwen3-MoE's default) g_j = softmax(l) at the j-th expert = ⟨O_j, softmax(l)⟩ (a MUX per
   entry: O is 0/1); True (Mixtral) g = softmax over the k best logits (= the top-k
   probabilities renormalised to sum 1). Any k ≤ E (Qwen3-MoE: k = 8).
4. capacity (:meth:`MoESpec.capacity_for`: C per sequence and expert, public, in [1, T]): when
   C < T, each expert keeps the first C of its tokens of each sequence in token order and a
   dropped assignment's gate is 0, so its MoE output is 0 and the residual carries the token
   (transformers' Switch: ``token_priority = cumsum(one_hot) ≤ expert_capacity`` per sequence,
   dropped tokens' expert output set to zero). ``dispatch`` drops by construction (a bucket has
   C rows); ``select``, ``all`` and ``reveal`` multiply the gates by the secret drop mask from the
   same oblivious in-expert positions (:func:`secmoe.ops.dispatch.kept`), computed concurrently
   with the experts. When C = T nothing can drop and the mask is skipped (C and T are public,
   so this leaks nothing).

Strategies (the expert outputs y (T, k, d) = FFN_{e(t, j)}(x_t)):

- ``select`` — the paper's Select-Then-Compute: for each routing slot, the server forms the
  selected expert's weights homomorphically, [[W_r]] = Σ_e O_e·W_e, and the FFN runs once
  on them (:func:`secmoe.ops.linear.select_linear`). Communication does not grow with E;
  the server's HE work does (it touches every expert's weights for every token).
- ``all`` — every expert on every token with plaintext-weight HE linears, then the one-hot
  combination y = O·Y_all (secret × secret, exact: T·k·E·d MUXes or an HE product, whichever
  declares fewer bytes, :func:`secmoe.ops.linear.matmul_01`): the naive secure baseline (how
  Iron/BumbleBee would run an MoE). On a decoding step (one token per sequence) the E
  products of W1 (and V) are one fused HE product and those of W2 one block-diagonal product,
  each when that costs fewer bytes (:func:`prepare_all_step` encodes them in setup).
- ``dispatch`` — secmoe's oblivious capacity dispatch (:mod:`secmoe.ops.dispatch`): tokens
  go into per-expert buckets of a public capacity C per sequence, every bucket is computed
  full, and the server's work is E·C rows whatever E is. Tokens beyond an expert's capacity
  are dropped from the MoE output (the residual carries them), as in Switch. For a model
  without a capacity (Mixtral, Qwen3-MoE) C = T: the buckets hold every token, E·T rows.
- ``reveal`` — INSECURE: the routing is revealed to both parties and only the chosen experts
  run. A reference point for cost only; it leaks which expert every token uses.

Then out = Σ_j g_j·y_j (secret × secret, truncated).

What each party learns: with ``select``, ``all`` and ``dispatch``, nothing but the output of
the model (the client) and nothing at all (the server); the public values are T, d, d_ff, E, k,
the gate rule, C and the FFN kind. With ``reveal``, both learn every token's expert(s).

Cost of routing beyond the router's HE linear: k argmax tournaments over E (top-k), a softmax
over E (norm_topk False, plus T·k·E MUXes) or over k (True), and, when the capacity binds
outside ``dispatch``, the drop mask: T·k·E MUXes for the positions, T·k comparisons on 16 bits
and T·k MUXes.

REF: Shen et al., "SecMoE: Communication-Efficient Secure MoE Inference via
Select-Then-Compute", arXiv 2601.06790 (the select strategy; gates and top-k > 1 are ours).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import numpy as np

from ..net.errors import quoted
from ..protocols import arith
from ..protocols.boolean import bits_of_01, mux
from ..protocols.party import Party
from ..protocols.select import topk
from ..protocols.shares import reveal
from .activations import activation
from .dispatch import dispatch_tensor, gather_buckets, kept, scatter_outputs
from .linear import (
    diagonal_is_cheaper,
    fused_is_cheaper,
    linear,
    linear_batched,
    linear_diagonal,
    linear_fused,
    matmul_01,
    prepare,
    prepare_diagonal,
    select_linear,
)
from .softmax import softmax

STRATEGIES = ("select", "all", "dispatch", "reveal")
INSECURE_STRATEGIES = frozenset({"reveal"})
_ACT = {"relu": "relu", "gelu": "gelu", "gated-gelu": "gelu", "swiglu": "silu"}
#: Router logits are compared on this many bits: |l| < 2^(ROUTER_BITS − 3 − f) = 2^11 at f = 18
#: (top-k masks by 2^(w−2), :func:`secmoe.protocols.select.topk`).
ROUTER_BITS = 32


@dataclass(frozen=True)
class MoESpec:
    """Public shape of an MoE layer (both parties know it)."""

    d_model: int
    d_ff: int
    n_experts: int
    top_k: int
    ffn: str  # relu | gelu | gated-gelu | swiglu
    norm_topk: bool = False  # gates: softmax over the k chosen logits (True) or over all E
    capacity: int | None = None  # C per sequence and expert (None: the factor, else no drop)
    capacity_factor: float | None = None  # C = ⌈cf·k·T/E⌉ when no capacity is given

    def capacity_for(self, tokens: int) -> int:
        """The public capacity C in [1, T] for a sequence of T = ``tokens`` tokens: the explicit
        capacity, else ⌈cf·k·T/E⌉, else T (nothing dropped). C ≥ T means C = T: an expert
        receives at most T assignments of a sequence (a token picks an expert once)."""
        if self.capacity is not None:
            return min(self.capacity, tokens)
        cf = self.capacity_factor
        if cf is None or cf * self.top_k >= self.n_experts:  # ⌈cf·k·T/E⌉ ≥ T
            return tokens
        return max(1, math.ceil(cf * self.top_k * tokens / self.n_experts))

    def __post_init__(self) -> None:
        if self.ffn not in _ACT:
            raise ValueError(f"unknown FFN kind {self.ffn!r}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be in [1, {self.n_experts}]")
        check_capacity(self.capacity, self.capacity_factor)

    @property
    def gated(self) -> bool:
        return self.ffn in ("gated-gelu", "swiglu")


@dataclass
class ExpertWeights:
    """The server's MoE weights (float): router (d, E), w1/v (E, d, d_ff), w2 (E, d_ff, d)."""

    router: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    v: np.ndarray | None = None


def _get(w: ExpertWeights | None, name: str) -> np.ndarray | None:
    """The server's weight ``name`` (None on the client)."""
    return None if w is None else getattr(w, name)


def check_strategy(strategy: str) -> None:
    """Raise ``ValueError`` for an unknown strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown MoE strategy {strategy!r}; choose from {STRATEGIES}")


def check_capacity(capacity: object, factor: object) -> None:
    """Raise ``ValueError`` unless ``capacity`` is None or an integer ≥ 1 and ``factor`` is None
    or a finite number > 0 (values beyond T are fine: they mean C = T)."""
    if capacity is not None and (
        isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1
    ):
        raise ValueError(f"capacity must be an integer ≥ 1, got {quoted(capacity)}")
    if factor is not None and (
        isinstance(factor, bool)
        or not isinstance(factor, int | float | np.integer | np.floating)
        or (isinstance(factor, float | np.floating) and not math.isfinite(factor))
        or factor <= 0
    ):
        raise ValueError(f"capacity factor must be a finite number > 0, got {quoted(factor)}")


async def route(
    p: Party, x: np.ndarray, w: ExpertWeights | None, spec: MoESpec
) -> tuple[np.ndarray, np.ndarray]:
    """Shares of the gates (T, k) and routing one-hots (T, k, E) (steps 1–3 above)."""
    logits = await linear(p.fork("router"), x, _get(w, "router"), spec.n_experts)
    best, hots = await topk(p.fork("topk"), logits, spec.top_k, ROUTER_BITS)
    if spec.norm_topk:
        gates = await softmax(p.fork("gates"), best)
    else:
        probs = await softmax(p.fork("gates"), logits)  # (T, E)
        wide = np.broadcast_to(probs[:, None, :], hots.shape)
        picked = await mux(p.fork("pick"), bits_of_01(hots), wide)  # O is 0/1: a MUX suffices
        gates = p.ring.reduce(picked.sum(axis=-1, dtype=np.uint64))
    return gates, hots


async def drop_overflow(
    p: Party, gates: np.ndarray, hots: np.ndarray, capacity: int, groups: int = 1
) -> np.ndarray:
    """Shares of the gates (T, k) with a 0 for every assignment beyond its expert's capacity
    (step 4 above): the first C assignments of each expert in each of the ``groups`` sequences
    keep their gate. Who learns what: nothing. Cost: :func:`secmoe.ops.dispatch.kept` on T·k
    assignments, then T·k MUXes."""
    n_tok, k, n_e = hots.shape
    onehot = hots.reshape(groups, n_tok // groups * k, n_e)  # assignments in token order
    keep = await kept(p.fork("kept"), onehot, capacity)
    return await mux(p.fork("drop"), keep.reshape(n_tok, k), gates)


async def _ffn_selected(
    p: Party, x: np.ndarray, onehot: np.ndarray, w: ExpertWeights | None, spec: MoESpec
) -> np.ndarray:
    """FFN of each token's selected expert: (T, d) → (T, d) with [[W_r]] = Σ_e O_e·W_e.

    W1 (and V, for a gated FFN) are selected in one call; W2 in a second (its input differs).
    """
    names = ["w1", "v"] if spec.gated else ["w1"]
    firsts = None if w is None else [getattr(w, n) for n in names]
    ys = await select_linear(p.fork("w1"), x, onehot, firsts, [spec.d_ff] * len(names))
    h = await activation(p.fork("act"), ys[0], _ACT[spec.ffn])
    if spec.gated:
        h = await arith.mul_fixed(p.fork("glu"), h, ys[1])
    second = None if w is None else [w.w2]
    (y,) = await select_linear(p.fork("w2"), h, onehot, second, [spec.d_model])
    return y


def _step_products(p: Party, spec: MoESpec, rows: int) -> tuple[bool, bool]:
    """Whether ``all`` on a decoding step of ``rows`` tokens (one per sequence) runs W1 (and
    V) of every expert as one fused product, and W2 as one block-diagonal product: each when
    it declares fewer bytes than one product per expert (public shapes)."""
    n, d, d_ff = spec.n_experts, spec.d_model, spec.d_ff
    firsts = [d_ff] * (n * (2 if spec.gated else 1))
    return fused_is_cheaper(p, rows, d, firsts), diagonal_is_cheaper(p, n, rows, d_ff, d)


def prepare_all_step(p: Party, w: ExpertWeights, spec: MoESpec, rows: int) -> None:
    """Server, setup: encode the products ``all`` takes on a decoding step of ``rows`` tokens
    (:func:`_step_products`; the per-expert ones are :func:`secmoe.ops.linear.prepare`'s)."""
    fused, diagonal = _step_products(p, spec, rows)
    names = ["w1", "v"] if spec.gated else ["w1"]
    if fused:
        prepare(p, [getattr(w, m)[e] for m in names for e in range(spec.n_experts)], rows)
    if diagonal:
        prepare_diagonal(p, w.w2, rows)


async def _ffn_batched(
    p: Party,
    xs: np.ndarray,
    w: ExpertWeights | None,
    spec: MoESpec,
    experts: list[int],
    step: bool = False,
) -> np.ndarray:
    """Each listed expert's FFN on its own rows: xs (len(experts), R, d) → (…, R, d).

    ``step``: every expert in order (``experts`` = 0 … E − 1), on the same rows (``all`` on a
    decoding step, one token per sequence), where one product per expert would send mostly
    empty ciphertexts: the products :func:`_step_products` picks are fused (the prompt's pass
    is unchanged).
    """
    n = len(experts)
    fused, diagonal = _step_products(p, spec, xs.shape[1]) if step else (False, False)
    if fused:
        names = ["w1", "v"] if spec.gated else ["w1"]
        ws = None if w is None else [getattr(w, m)[e] for m in names for e in experts]
        ys = await linear_fused(p.fork("w1"), xs[0], ws, [spec.d_ff] * len(names) * n)
        h = await activation(p.fork("act"), np.stack(ys[:n]), _ACT[spec.ffn])
        if spec.gated:
            h = await arith.mul_fixed(p.fork("glu"), h, np.stack(ys[n:]))
    else:
        h = await linear_batched(p.fork("w1"), xs, _get(w, "w1"), experts, spec.d_ff)
        h = await activation(p.fork("act"), h, _ACT[spec.ffn])
        if spec.gated:
            g = await linear_batched(p.fork("v"), xs, _get(w, "v"), experts, spec.d_ff)
            h = await arith.mul_fixed(p.fork("glu"), h, g)
    if diagonal:
        return await linear_diagonal(p.fork("w2"), h, _get(w, "w2"), spec.d_model)
    return await linear_batched(p.fork("w2"), h, _get(w, "w2"), experts, spec.d_model)


async def _experts_select(
    p: Party, x: np.ndarray, hots: np.ndarray, w: ExpertWeights | None, spec: MoESpec
) -> np.ndarray:
    slots = await asyncio.gather(
        *(_ffn_selected(p.fork(f"slot{j}"), x, hots[:, j, :], w, spec) for j in range(spec.top_k))
    )
    return np.stack(slots, axis=1)  # (T, k, d)


async def _experts_all(
    p: Party,
    x: np.ndarray,
    hots: np.ndarray,
    w: ExpertWeights | None,
    spec: MoESpec,
    groups: int = 1,
) -> np.ndarray:
    n_e = spec.n_experts
    xs = np.broadcast_to(x, (n_e, *x.shape))
    step = x.shape[0] == groups  # one token per sequence: a decoding step
    y_all = await _ffn_batched(p.fork("ffn"), xs, w, spec, list(range(n_e)), step)  # (E, T, d)
    # y[t, j] = Σ_e O[t, j, e]·Y[e, t]: a (k × E)·(E × d) product per token.
    return await matmul_01(p.fork("combine"), hots, y_all.transpose(1, 0, 2))


async def _experts_dispatch(
    p: Party,
    x: np.ndarray,
    hots: np.ndarray,
    w: ExpertWeights | None,
    spec: MoESpec,
    groups: int = 1,
) -> np.ndarray:
    n_tok, k, n_e = hots.shape
    t = n_tok // groups
    cap = spec.capacity_for(t)  # C = T when nothing can drop: every token has a slot
    onehot = hots.reshape(groups, t * k, n_e)  # assignments (t, j) in token order, per sequence
    xa = np.repeat(x, k, axis=0).reshape(groups, t * k, -1)
    d = await dispatch_tensor(p.fork("dispatch"), onehot, cap)  # (B, A, E, C)
    xb = await gather_buckets(p.fork("gather"), d, xa)  # (B, E, C, d)
    per_expert = xb.transpose(1, 0, 2, 3).reshape(n_e, groups * cap, -1)
    yb = await _ffn_batched(p.fork("ffn"), per_expert, w, spec, list(range(n_e)))
    yb = yb.reshape(n_e, groups, cap, -1).transpose(1, 0, 2, 3)
    y = await scatter_outputs(p.fork("scatter"), d, yb)  # (B, A, d)
    return y.reshape(n_tok, k, -1)


async def _experts_reveal(
    p: Party, x: np.ndarray, hots: np.ndarray, w: ExpertWeights | None, spec: MoESpec
) -> np.ndarray:
    t, k = hots.shape[:2]
    idx_share = p.ring.reduce((hots * np.arange(spec.n_experts, dtype=np.uint64)).sum(-1))
    idx = (await reveal(p.fork("INSECURE_reveal_routing"), idx_share, to="both")).astype(int)
    out = np.zeros((t, k, spec.d_model), dtype=np.uint64)
    for e in np.unique(idx):
        rows, slots = np.nonzero(idx == e)
        y = await _ffn_batched(p.fork(f"expert{e}"), x[rows][None], w, spec, [int(e)])
        out[rows, slots] = y[0]
    return out


_EXPERTS = {
    "select": _experts_select,
    "all": _experts_all,
    "dispatch": _experts_dispatch,
    "reveal": _experts_reveal,
}


async def moe(
    p: Party,
    x: np.ndarray,
    w: ExpertWeights | None,
    spec: MoESpec,
    strategy: str = "select",
    groups: int = 1,
) -> np.ndarray:
    """Shares of the MoE FFN output (T, d) for shares of x (T, d). See the module docstring.

    ``groups``: the tokens are that many sequences of equal length, in order (capacity is per
    sequence, as in the plaintext reference). Every strategy computes the same function:
    with C = ``spec.capacity_for(T)`` < T, overflow assignments are dropped (step 4 above).
    """
    check_strategy(strategy)
    if (w is None) == (p.role == "server"):
        raise ValueError("the server passes the MoE weights; the client passes None")
    if x.shape[0] % groups:
        raise ValueError(f"{x.shape[0]} tokens do not split into {groups} sequences")
    gates, hots = await route(p.fork("route"), x, w, spec)
    t = x.shape[0] // groups
    cap = spec.capacity_for(t)
    run = _EXPERTS[strategy]
    extra = {"groups": groups} if strategy in ("dispatch", "all") else {}
    experts = run(p.fork(strategy), x, hots, w, spec, **extra)  # (T, k, d)
    if strategy != "dispatch" and cap < t:  # public: dispatch's buckets drop by themselves
        # the drop mask runs beside the experts (it needs only the routing): no extra rounds
        gates, y = await asyncio.gather(
            drop_overflow(p.fork("capacity"), gates, hots, cap, groups), experts
        )
    else:
        y = await experts
    scaled = await arith.mul_fixed(p.fork("scale"), y, np.broadcast_to(gates[..., None], y.shape))
    return p.ring.reduce(scaled.sum(axis=1, dtype=np.uint64))

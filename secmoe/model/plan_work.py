"""How a secure forward pass's work splits over its stages, from the public plan: for progress
bars' estimates of the time left.

The unit is one multiply-accumulate of a product with a secret operand (x·W for a weight
matrix W, q·kᵀ and p·v in attention, and, for ``select`` and ``all``, every expert's W for
every token). The secure runner's time is dominated by these products (HE, server side), so
a stage's share of the multiply-accumulates predicts its share of the time far better than
counting layers: on Switch-Base-8 at T = 8 (``benchmarks/results/paper_table.jsonl``, whole
run, ``select``) an MoE layer takes 4–10× a dense one, and the measured seconds per million
multiply-accumulates are 0.42 (dense layer), 0.66 (MoE layer) and 0.60 (embedding). Larger
E runs faster per multiply-accumulate (0.19 at E = 64), so the estimate is pessimistic there;
the progress bar's pace corrects it as stages finish.

Nonlinear layers (norms, softmax, activations, routing) are not counted: each costs little
time beside the products of its layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .config import ModelConfig
from .secure import RunOptions, moe_spec


def _attention(cfg: ModelConfig, b: int, t: int) -> int:
    d, dh = cfg.d_model, cfg.d_head
    q, kv = cfg.n_heads * dh, cfg.kv_heads * dh
    projections = b * t * d * (q + 2 * kv) + b * t * q * d
    return projections + 2 * b * cfg.n_heads * t * t * dh


def _ffn(d: int, d_ff: int, rows: int, gated: bool) -> int:
    return rows * d * d_ff * (3 if gated else 2)


def _moe(cfg: ModelConfig, options: RunOptions, b: int, t: int) -> int:
    router = b * t * cfg.d_model * cfg.n_experts
    rows = {
        "select": b * t * cfg.n_experts,
        "all": b * t * cfg.n_experts,
        "dispatch": b * cfg.n_experts * moe_spec(cfg, options).capacity_for(t),
        "reveal": b * t * cfg.top_k,
    }[options.strategy]
    return router + _ffn(cfg.d_model, cfg.d_ff, rows, cfg.gated)


def stage_work(cfg: ModelConfig, options: RunOptions, shape: tuple[int, int]) -> list[int]:
    """Multiply-accumulates of each stage, in the order the runner finishes them:
    ``[embedding, layer 0, …, layer n−1, head]`` (length ``cfg.n_layers + 2``)."""
    b, t = shape
    rows = b * t
    first = cfg.patch_dim if cfg.input == "patches" else cfg.vocab_size
    work = [rows * int(first or 0) * cfg.d_model]
    for i in range(cfg.n_layers):
        ffn = (
            _moe(cfg, options, b, t)
            if cfg.is_moe(i)
            else _ffn(cfg.d_model, cfg.d_ff_dense, rows, cfg.gated)
        )
        work.append(_attention(cfg, b, t) + ffn)
    head_rows = {"classifier": b, "lm": rows}.get(cfg.head or "", 0)
    work.append(head_rows * cfg.d_model * cfg.out_dim)
    return work


#: The event announcing a run's stage work to a progress callback (before the first stage).
WORK_EVENT = re.compile(r"plan work (\d+(?:,\d+)*)")


def announce_work(
    progress: Callable[[str], None] | None,
    cfg: ModelConfig,
    options: RunOptions,
    shape: tuple[int, int],
) -> None:
    """Tell ``progress`` (if any) the :func:`stage_work` of the run about to start."""
    if progress is not None:
        progress("plan work " + ",".join(map(str, stage_work(cfg, options, shape))))


__all__ = ["WORK_EVENT", "announce_work", "stage_work"]

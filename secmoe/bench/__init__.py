"""``secmoe bench``: micro and end-to-end benchmarks (ops register themselves on import)."""

from . import (  # noqa: F401  (register the ops)
    channel_bench,
    matmul_bench,
    model_bench,
    moe_bench,
    ops_bench,
    ot_bench,
    protocols_bench,
)
from .registry import REGISTRY, BenchOp, register
from .runner import run_bench, run_party

__all__ = ["REGISTRY", "BenchOp", "register", "run_bench", "run_party"]

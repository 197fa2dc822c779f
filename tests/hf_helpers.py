"""The Hugging Face parity fixtures (tests/fixtures/hf/, made by scripts/make_hf_fixtures.py).

Each case directory holds a checkpoint exactly as transformers' ``save_pretrained`` wrote it and
what transformers computed on fixed token ids (float64, eager attention); see the script.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = [c["name"] for c in MANIFEST["cases"]]

#: float reference vs transformers (max abs)
FLOAT_TOL = 1e-5
#: fixed-point emulation or secure run vs transformers: 2% of the output's range (max abs).
#: The secure operators' approximations (piecewise GeLU/SiLU, exp and reciprocal of the
#: softmax, rsqrt of the norms, f = 18 fractional bits) err by ~1e-3 each; this bounds their
#: sum through a few layers with room to spare, and is far below a wrong model (RoPE, window,
#: capacity or activation ignored: errors of 0.5 to 5, see issue 14).
FIXED_REL_TOL = 0.02


@dataclass(frozen=True)
class HFCase:
    """One fixture: its directory, manifest entry and transformers' arrays."""

    name: str
    dir: Path
    info: dict
    input_ids: np.ndarray  # (B, T) int64
    output: np.ndarray  # (B, T, width) float64: logits or last hidden state
    experts: np.ndarray  # (L_moe, B, T, k) selected expert ids, largest first
    kept: np.ndarray  # (L_moe, B, T, k) False = dropped by the model's expert capacity

    @property
    def fixed_tol(self) -> float:
        """Max abs error allowed for a fixed-point or secure output (see FIXED_REL_TOL)."""
        return FIXED_REL_TOL * max(1.0, float(np.abs(self.output).max()))


@functools.cache
def hf_case(name: str) -> HFCase:
    """Load fixture ``name`` (no pickle)."""
    d = FIXTURES / name
    info = next(c for c in MANIFEST["cases"] if c["name"] == name)

    def arr(stem: str) -> np.ndarray:
        return np.load(d / f"{stem}.npy", allow_pickle=False)

    return HFCase(name, d, info, arr("input_ids"), arr("output"), arr("experts"), arr("kept"))


def assignment(experts: np.ndarray, kept: np.ndarray, n_experts: int) -> np.ndarray:
    """Routing as (..., E) codes: 0 = expert not selected, 1 = selected but dropped by capacity,
    2 = selected and computed. The order of the k selected experts does not matter (the MoE
    output is their gated sum), so two routings with equal codes compute the same function."""
    codes = np.zeros((*experts.shape[:-1], n_experts), np.int8)
    np.put_along_axis(codes, experts, np.where(kept, 2, 1).astype(np.int8), axis=-1)
    return codes


def max_err(got: np.ndarray, case: HFCase) -> float:
    """max |got − transformers' output| (shapes must agree)."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == case.output.shape, f"{case.name}: shape {got.shape} != {case.output.shape}"
    return float(np.abs(got - case.output).max())


def argmax_agreement(got: np.ndarray, case: HFCase) -> float:
    """Fraction of tokens whose argmax over the output's last axis equals transformers'."""
    return float((np.asarray(got).argmax(-1) == case.output.argmax(-1)).mean())

"""MoE transformer models: configs, safetensors weights, float and fixed-point references."""

from secmoe.model.config import ModelConfig, preset, preset_names
from secmoe.model.fixed import run_fixed
from secmoe.model.reference import forward, routing, run
from secmoe.model.weights import (
    ModelWeights,
    init_and_save,
    init_random,
    load_bundled,
    load_heldout,
    load_weights,
    save_weights,
)

__all__ = [
    "ModelConfig",
    "ModelWeights",
    "forward",
    "init_and_save",
    "init_random",
    "load_bundled",
    "load_heldout",
    "load_weights",
    "preset",
    "preset_names",
    "routing",
    "run",
    "run_fixed",
    "save_weights",
]

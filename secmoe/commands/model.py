"""``secmoe model presets|init``: the presets, and random weights for one."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from ..model.config import preset_names
from ..model.weights import init_and_save

NAME = "model"
HELP = "model files: presets, random initialization"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="model_cmd", required=True)
    init = sub.add_parser("init", help="random weights for a preset, as safetensors + config")
    init.add_argument("preset", help="a preset name (see `secmoe model presets`)")
    init.add_argument("out", help="output path (.safetensors is added if missing)")
    init.add_argument("--seed", type=int, default=0, help="initialization seed (public)")
    sub.add_parser("presets", help="list the presets")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.model_cmd == "presets":
        return {"presets": preset_names()}
    if args.preset not in preset_names():
        raise ValueError(f"unknown preset {args.preset!r}; choose from {preset_names()}")
    return {"wrote": str(init_and_save(args.preset, args.out, args.seed))}


def render(result: dict[str, Any]) -> Iterator[str]:
    if "presets" in result:
        yield from result["presets"]
    else:
        yield f"wrote {result['wrote']} (and its config JSON)"

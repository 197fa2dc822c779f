"""Build the Hugging Face parity fixtures in tests/fixtures/hf/ (needs ``pip install -e '.[hf]'``).

For each case below: a tiny random checkpoint made with transformers and written by
``save_pretrained(dir, safe_serialization=True)`` exactly as a user would (config.json +
model.safetensors; one case with ``save_original_format=False``, transformers 5's fused expert
tensors), fixed input token ids, and what transformers computes on them, reloaded from that
directory in float64 with eager attention:

* ``output.npy``: the last hidden state (base models; for the Switch encoder–decoder, the
  encoder's) or the logits (causal-LM heads), float64, shape (B, T, width);
* ``router_logits.npy``: per MoE layer the router logits (L_moe, B, T, E) as transformers
  returns them with ``output_router_logits=True``;
* ``experts.npy``: per MoE layer, per token, the selected expert ids (L_moe, B, T, k), largest
  router probability first; ``kept.npy``: whether that assignment was computed (False: dropped
  by Switch's ``expert_capacity``), the same shape;
* ``input_ids.npy`` (B, T) int64;
* causal-LM cases only (:data:`GENERATION`): ``generation_ids.npy`` (1, T_p + 16) int64, a prompt
  of ``GEN_PROMPT`` tokens followed by the ids ``generate(do_sample=False, max_new_tokens=16)``
  returns, and ``generation.json`` with the prompt length, the EOS id, and per generated token
  the float64 logit margin (largest − second largest); the prompt is drawn until no step emits
  EOS and every margin is at least ``MARGIN`` (the best draw otherwise, its margins recorded);
  the ids are checked against greedy decoding by full recomputation (no KV cache).

Everything is .npy/.json (``np.load(..., allow_pickle=False)`` reads it); ``manifest.json``
lists the cases, the versions of transformers and torch, the seed and what each case covers.
transformers computes in float64 except where it casts on purpose: the routers' softmax
(Switch: the whole router) and the Mixtral/Qwen3 RMS norms run in float32, so the float
reference agrees to ~1e-6, not 1e-12.

Weights are drawn variance-preserving (std 1/√fan_in, routers too, so the router
probabilities are spread and the gate rule (renormalised top-k or not) changes the output;
embeddings N(0, 1), 0.25² when they are also the LM head; norms 1 + N(0, 0.1²), so a norm
weight applied to the wrong place shows) instead of transformers' small init, so activations
are O(1) and meaningful in fixed point. Inputs are drawn until every router decision (the gap
between the k-th and (k+1)-th largest router logit: which experts are selected; their order
does not change the output) and every output argmax has a margin of at least ``MARGIN`` (a
near-tie may legitimately resolve either way in fixed point; that is not what the fixtures
test); the margins are in the manifest.

Run: ``python scripts/make_hf_fixtures.py [--out tests/fixtures/hf]`` (under a minute on CPU);
``--generation-only`` adds the generation files to existing checkpoints without rebuilding them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    MixtralModel,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Qwen3MoeModel,
    SwitchTransformersConfig,
    SwitchTransformersEncoderModel,
    SwitchTransformersForConditionalGeneration,
)

SEED = 20261206
MARGIN = 0.05  # smallest accepted gap of a router decision or an output argmax
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf"
#: Causal-LM cases that get expected greedy generations, the prompt length and new tokens.
GENERATION = [
    "mixtral-lm-gqa-swa-untied",
    "mixtral-lm-tied",
    "mixtral-lm-fused",
    "qwen3moe-lm-norm",
]
GEN_PROMPT, GEN_NEW, GEN_DRAWS = 8, 16, 200

_SWITCH = dict(
    vocab_size=64,
    d_model=16,
    d_kv=4,
    d_ff=32,
    num_heads=4,
    num_experts=4,
    num_decoder_layers=1,
    decoder_sparse_step=1,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)
_MIXTRAL = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "rope_theta": 500.0},
)
_QWEN = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,  # dense layers only: every layer here is sparse
    moe_intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    num_experts=8,
    num_experts_per_tok=4,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
)


@dataclass(frozen=True)
class Case:
    """One fixture: the transformers classes, config, input shape and what it covers."""

    model: type
    config: type
    kwargs: dict[str, Any]
    batch: int
    tokens: int
    covers: list[str]
    #: save_pretrained(..., save_original_format=False): transformers 5's fused expert tensors
    #: (mlp.experts.gate_up_proj / down_proj) instead of the per-expert names it writes by default
    fused: bool = False


CASES: dict[str, Case] = {
    "switch-enc-s2-relu-cap64": Case(
        SwitchTransformersEncoderModel,
        SwitchTransformersConfig,
        {
            **_SWITCH,
            "num_layers": 4,
            "encoder_sparse_step": 2,
            "dense_act_fn": "relu",
            "expert_capacity": 64,
        },
        1,
        9,
        [
            "SwitchTransformersEncoderModel",
            "encoder_sparse_step 2",
            "dense_act_fn relu",
            "expert_capacity 64 (drops nothing)",
            "9 tokens",
        ],
    ),
    "switch-enc-s1-gelu-cap1": Case(
        SwitchTransformersEncoderModel,
        SwitchTransformersConfig,
        {
            **_SWITCH,
            "num_layers": 2,
            "encoder_sparse_step": 1,
            "dense_act_fn": "gelu",
            "expert_capacity": 1,
        },
        2,
        8,
        [
            "SwitchTransformersEncoderModel",
            "encoder_sparse_step 1",
            "dense_act_fn gelu",
            "expert_capacity 1 (drops tokens, per sequence)",
            "batch 2",
        ],
    ),
    "switch-cg-s2-gelu-cap2": Case(
        SwitchTransformersForConditionalGeneration,
        SwitchTransformersConfig,
        {
            **_SWITCH,
            "num_layers": 3,
            "encoder_sparse_step": 2,
            "dense_act_fn": "gelu",
            "expert_capacity": 2,
        },
        1,
        8,
        [
            "SwitchTransformersForConditionalGeneration (encoder output)",
            "encoder_sparse_step 2",
            "dense_act_fn gelu",
            "expert_capacity 2 (drops tokens)",
        ],
    ),
    "mixtral-lm-gqa-swa-untied": Case(
        MixtralForCausalLM,
        MixtralConfig,
        {**_MIXTRAL, "sliding_window": 4, "tie_word_embeddings": False},
        1,
        10,
        [
            "MixtralForCausalLM",
            "GQA 4/2",
            "top-2",
            "rope_theta 500",
            "sliding_window 4",
            "untied lm_head",
            "10 tokens",
        ],
    ),
    "mixtral-lm-tied": Case(
        MixtralForCausalLM,
        MixtralConfig,
        {**_MIXTRAL, "sliding_window": None, "tie_word_embeddings": True},
        1,
        8,
        ["MixtralForCausalLM", "GQA 4/2", "top-2", "rope_theta 500", "tie_word_embeddings"],
    ),
    "mixtral-base-headdim": Case(
        MixtralModel,
        MixtralConfig,
        {
            **_MIXTRAL,
            "hidden_size": 24,
            "head_dim": 8,
            "num_key_value_heads": 1,
            "sliding_window": None,
        },
        1,
        9,
        [
            "MixtralModel (base names, no model. prefix)",
            "GQA 4/1",
            "head_dim 8 != d/H",
            "top-2",
            "rope_theta 500",
            "9 tokens",
        ],
    ),
    "qwen3moe-lm-norm": Case(
        Qwen3MoeForCausalLM,
        Qwen3MoeConfig,
        {**_QWEN, "norm_topk_prob": True, "num_hidden_layers": 1},
        1,
        6,
        [
            "Qwen3MoeForCausalLM",
            "E 8, top-4",
            "norm_topk_prob true",
            "q/k norms",
            "rope_theta 1000",
            "GQA 4/2",
            "1 layer, 6 tokens (small: the secure run's Qwen3-MoE case)",
        ],
    ),
    "qwen3moe-base-nonorm": Case(
        Qwen3MoeModel,
        Qwen3MoeConfig,
        {**_QWEN, "norm_topk_prob": False},
        1,
        9,
        [
            "Qwen3MoeModel (base names)",
            "E 8, top-4",
            "norm_topk_prob false",
            "q/k norms",
            "rope_theta 1000",
            "GQA 4/2",
            "9 tokens",
        ],
    ),
    "mixtral-lm-fused": Case(
        MixtralForCausalLM,
        MixtralConfig,
        {**_MIXTRAL, "num_hidden_layers": 1},
        1,
        8,
        [
            "MixtralForCausalLM saved with save_original_format=False (fused experts)",
            "top-2",
            "rope_theta 500",
        ],
        fused=True,
    ),
}


def _init(model: torch.nn.Module, gen: torch.Generator, family: str, cfg: Any) -> None:
    """Variance-preserving random weights (see the module docstring), in place."""
    d_head = getattr(cfg, "d_kv", None) or getattr(cfg, "head_dim", None)
    # a tied causal-LM head is the embedding too: smaller, so the logits stay O(1)
    tied = cfg.tie_word_embeddings and isinstance(model, MixtralForCausalLM | Qwen3MoeForCausalLM)
    embed_std = 0.25 if tied else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # RMS norm weights (layer_norm, q_norm, k_norm, model.norm)
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "relative_attention_bias" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif "embed" in name or name.endswith("shared.weight"):
                p.copy_(embed_std * torch.randn(p.shape, generator=gen))
            else:  # nn.Linear (out, in) or fused experts (E, out, in): fan_in is the last dim
                std = p.shape[-1] ** -0.5
                if family == "switch_transformers" and name.endswith("SelfAttention.q.weight"):
                    std *= d_head**-0.5  # T5 folds the 1/√d_k score scale into the queries
                p.copy_(std * torch.randn(p.shape, generator=gen))


def _forward(model: torch.nn.Module, ids: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """transformers' output (logits or last hidden state) and per-MoE-layer router logits."""
    with torch.no_grad():
        if isinstance(model, SwitchTransformersForConditionalGeneration):
            out = model(input_ids=ids, decoder_input_ids=ids[:, :1], output_router_logits=True)
            y, logits = out.encoder_last_hidden_state, out.encoder_router_logits
        else:
            out = model(input_ids=ids, output_router_logits=True)
            y = out.logits if hasattr(out, "logits") else out.last_hidden_state
            logits = out.router_logits
    if isinstance(logits[0], tuple):  # Switch: (router logits, expert index) per layer
        logits = [lg for lg, _ in logits]
    b, t = ids.shape
    return y.double().numpy(), [lg.double().numpy().reshape(b, t, -1) for lg in logits]


def _capture_routers(model: torch.nn.Module) -> list[torch.Tensor]:
    """Hook every router; a list that collects, per forward and MoE layer, its decision:
    Switch's capacity-masked one-hot (B, T, E), or the top-k indices (B·T, k) otherwise."""
    seen: list[torch.Tensor] = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if "decoder" in name.split("."):
            continue
        if kind.endswith("Top1Router"):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out[0]))
        elif kind.endswith("TopKRouter"):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out[2]))
    return seen


def _routing(
    router_logits: list[np.ndarray], decisions: list[torch.Tensor], k: int, shape: tuple
) -> tuple[np.ndarray, np.ndarray, float]:
    """experts (L, B, T, k), kept (L, B, T, k) and the smallest router margin.

    The experts are recomputed from the returned router logits (softmax in float32, largest
    first) and checked against what the routers decided inside the forward pass."""
    experts, kept, margin = [], [], math.inf
    for lg, dec in zip(router_logits, decisions, strict=True):
        probs = torch.softmax(torch.from_numpy(lg).float(), dim=-1)
        idx = torch.topk(probs, k, dim=-1).indices.numpy()
        srt = np.sort(lg, axis=-1)[..., ::-1]
        if k < lg.shape[-1]:
            margin = min(margin, float((srt[..., k - 1] - srt[..., k]).min()))
        if dec.shape[-1] == lg.shape[-1] and k == 1:  # Switch: capacity-masked one-hot
            dec = dec.reshape(*shape, -1).numpy()
            assert np.array_equal(
                np.take_along_axis(dec, idx, -1) | (dec.sum(-1, keepdims=True) == 0),
                np.ones_like(idx, bool),
            ), "router disagrees with its logits"
            kept.append(dec.sum(-1, keepdims=True) > 0)
        else:
            assert np.array_equal(dec.reshape(*shape, k).numpy(), idx), "router disagrees"
            kept.append(np.ones(idx.shape, bool))
        experts.append(idx.astype(np.int64))
    return np.stack(experts), np.stack(kept), margin


def _argmax_margin(y: np.ndarray) -> float:
    srt = np.sort(y, axis=-1)
    return float((srt[..., -1] - srt[..., -2]).min())


def build(name: str, out_dir: Path, case_seed: int) -> dict[str, Any]:
    """Make one case's directory; returns its manifest entry."""
    case = CASES[name]
    cls, batch, tokens = case.model, case.batch, case.tokens
    cfg = case.config(**case.kwargs)
    family = cfg.model_type
    gen = torch.Generator().manual_seed(case_seed)
    rng = np.random.default_rng(case_seed)  # public test data, not secrets
    d = out_dir / name
    for _ in range(20):
        model = cls(cfg).eval()
        _init(model, gen, family, cfg)
        if d.exists():
            shutil.rmtree(d)
        model.save_pretrained(d, safe_serialization=True, save_original_format=not case.fused)
        ref, info = cls.from_pretrained(
            d,
            dtype=torch.float64,
            attn_implementation="eager",
            experts_implementation="eager",
            output_loading_info=True,
        )
        bad = {k: v for k, v in info.items() if v}
        assert not bad, f"{name}: reloading the checkpoint: {bad}"
        ref.eval()
        decisions = _capture_routers(ref)
        k = getattr(cfg, "num_experts_per_tok", 1)
        for _ in range(50):
            ids = rng.integers(0, cfg.vocab_size, size=(batch, tokens), dtype=np.int64)
            decisions.clear()
            y, logits = _forward(ref, torch.from_numpy(ids))
            experts, kept, r_margin = _routing(logits, decisions, k, (batch, tokens))
            o_margin = _argmax_margin(y)
            if r_margin >= MARGIN and o_margin >= MARGIN:
                break
        else:
            continue  # no input with clear decisions for these weights: draw new weights
        break
    else:
        raise RuntimeError(f"{name}: no weights/inputs with margins ≥ {MARGIN}")
    for fname, arr in {
        "input_ids": ids,
        "output": y,
        "router_logits": np.stack(logits),
        "experts": experts,
        "kept": kept,
    }.items():
        np.save(d / f"{fname}.npy", arr, allow_pickle=False)
    files = sorted(p.name for p in d.iterdir())
    return {
        "name": name,
        "family": family,
        "class": cls.__name__,
        "output": "logits" if cls.__name__.endswith("ForCausalLM") else "last_hidden_state",
        "batch": batch,
        "tokens": tokens,
        "top_k": k,
        "moe_layers": int(experts.shape[0]),
        "dropped": int((~kept).sum()),
        "router_margin": r_margin,
        "argmax_margin": o_margin,
        "output_max_abs": float(np.abs(y).max()),
        "seed": case_seed,
        "covers": case.covers,
        "files": files,
        "checkpoint_bytes": (d / "model.safetensors").stat().st_size,
    }


def _greedy_margins(model: torch.nn.Module, ids: torch.Tensor, t: int) -> tuple[list[float], bool]:
    """Per generated position of ``ids`` (after the first t), the float64 logit margin of the
    greedy choice, recomputing the whole prefix (no cache); and whether each choice is the
    argmax (greedy decoding without a KV cache agrees with generate())."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double().numpy()
    margins, agree = [], True
    for pos in range(t - 1, ids.shape[1] - 1):
        row = logits[pos]
        srt = np.sort(row)
        margins.append(float(srt[-1] - srt[-2]))
        agree &= int(row.argmax()) == int(ids[0, pos + 1])
    return margins, agree


def add_generation(name: str, out_dir: Path, case_seed: int) -> dict[str, Any]:
    """Write ``generation_ids.npy`` and ``generation.json`` for one causal-LM case (its
    checkpoint already written); returns the json."""
    case = CASES[name]
    d = out_dir / name
    model = case.model.from_pretrained(
        d, dtype=torch.float64, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    eos = model.generation_config.eos_token_id
    rng = np.random.default_rng(case_seed + 1000)  # public test data, not secrets
    best: tuple[float, np.ndarray, list[float]] | None = None
    for _ in range(GEN_DRAWS):
        prompt = torch.from_numpy(
            rng.integers(0, model.config.vocab_size, size=(1, GEN_PROMPT), dtype=np.int64)
        )
        with torch.no_grad():
            out = model.generate(prompt, do_sample=False, max_new_tokens=GEN_NEW)
        if out.shape[1] < GEN_PROMPT + GEN_NEW or eos in out[0, GEN_PROMPT:].tolist():
            continue  # stopped at EOS
        margins, agree = _greedy_margins(model, out, GEN_PROMPT)
        assert agree, f"{name}: generate() disagrees with greedy decoding by recomputation"
        if best is None or min(margins) > best[0]:
            best = (min(margins), out.numpy(), margins)
        if best[0] >= MARGIN:
            break
    assert best is not None, f"{name}: every prompt emits EOS within {GEN_NEW} tokens"
    info = {
        "prompt_tokens": GEN_PROMPT,
        "max_new_tokens": GEN_NEW,
        "eos_token_id": eos,
        "do_sample": False,
        "logit_margins": best[2],
        "min_logit_margin": best[0],
    }
    np.save(d / "generation_ids.npy", best[1], allow_pickle=False)
    (d / "generation.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output directory")
    ap.add_argument(
        "--generation-only",
        action="store_true",
        help="only (re)write the generation files of the existing causal-LM checkpoints",
    )
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = {name: SEED + i for i, name in enumerate(CASES)}
    if not args.generation_only:
        _build_all(args.out)
    for name in GENERATION:
        g = add_generation(name, args.out, seeds[name])
        print(f"{name:28} generation: smallest logit margin {g['min_logit_margin']:.3f}")


def _build_all(out: Path) -> None:
    """Every case's checkpoint, transformers' outputs and the manifest."""
    cases = [build(name, out, SEED + i) for i, name in enumerate(CASES)]  # append new ones
    manifest = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "seed": SEED,
        "margin": MARGIN,
        "dtype": "float64; transformers computes the routers' softmax (Switch: the whole "
        "router) and the Mixtral/Qwen3 RMS norms in float32",
        "attn_implementation": "eager",
        "cases": cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for c in cases:
        print(
            f"{c['name']:28} {c['checkpoint_bytes'] / 1024:6.0f} KB  dropped {c['dropped']:2}  "
            f"router margin {c['router_margin']:.3f}  argmax margin {c['argmax_margin']:.3f}"
        )


if __name__ == "__main__":
    main()

"""Private generation (issue 21): correctness against transformers and the cost per token.

Both parties run in this process over the in-memory link (the same frames and byte counts as
TCP); seconds are wall time for both parties' work on one machine (on a loaded 2-core machine:
upper bounds). Each run appends one JSON object per line to its results file.

    python benchmarks/generate_tokens.py parity            # 16 tokens vs transformers, 4 fixtures
    python benchmarks/generate_tokens.py cost --case mixtral-lm-tied --strategy select
    python benchmarks/generate_tokens.py cost --case mixtral-lm-tied --strategy all --no-cache
    python benchmarks/generate_tokens.py experts           # select per token, E = 8 vs 64
    python benchmarks/generate_tokens.py table             # markdown for docs/generation.md
    python benchmarks/generate_tokens.py plot              # docs/generation_cost.png

``parity``: each causal-LM fixture's prompt (tests/fixtures/hf/*/generation_ids.npy), greedy
secure generation of all 16 tokens (``select``) against transformers' ``generate(do_sample=
False)``; a divergence is reported with transformers' logit margin at that step.
``cost``: a prompt of ``--prompt`` seeded random tokens (32 by default), ``--new`` tokens, per
token bytes / rounds / seconds, with the KV cache or recomputing the prefix (``--no-cache``);
the ids are checked against the float reference's greedy choice.
``experts``: ``select`` with the KV cache on seeded random Mixtral-shaped weights (d = 32,
d_ff = 32, top-2) at E = 8 and E = 64: the bytes of a step (T = 1) should not grow with E.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from secmoe.crypto.prg import PRG  # noqa: E402
from secmoe.model.config import PRESETS  # noqa: E402
from secmoe.model.generate import cache_bytes_per_token, secure_generate, setup_generation  # noqa: E402
from secmoe.model.reference import run  # noqa: E402
from secmoe.model.secure import RunOptions  # noqa: E402
from secmoe.model.weights import ModelWeights, init_random, load_weights  # noqa: E402
from secmoe.net import memory_pair, run_pair  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "hf"
RESULTS = ROOT / "benchmarks" / "results"
PARITY_CASES = [
    "mixtral-lm-gqa-swa-untied",
    "mixtral-lm-tied",
    "mixtral-lm-fused",
    "qwen3moe-lm-norm",
]


async def generate(
    weights: ModelWeights, prompt: np.ndarray, n: int, options: RunOptions, use_cache: bool
) -> dict:
    """One generation, both parties here; the client's result as a dict."""
    cfg, shape = weights.config, prompt.shape
    cch, sch = memory_pair()

    async def party(ch, w, x):
        t0 = time.perf_counter()
        with ch.phase("setup"):
            p = await setup_generation(ch, PRG(), cfg, w, shape, n, options, use_cache=use_cache)
        setup = time.perf_counter() - t0, ch.stats.total("setup").bytes_total
        gen = await secure_generate(p, cfg, w, x, shape, n, options=options, use_cache=use_cache)
        return gen, setup

    try:
        (gen, setup), _ = await run_pair(
            party(cch, None, prompt), party(sch, weights, None), timeout=7200
        )
    finally:
        await cch.close()
        await sch.close()
    return {
        "ids": gen.ids[0].tolist(),
        "setup_seconds": setup[0],
        "setup_bytes": setup[1],
        "cache_bytes": gen.cache_bytes,
        "tokens": [s.as_dict() for s in gen.steps],
    }


def float_greedy(
    weights: ModelWeights, prompt: np.ndarray, n: int
) -> tuple[list[int], list[float]]:
    """The float reference's greedy ids and logit margins (recomputing the prefix)."""
    seq, margins = prompt.copy(), []
    for _ in range(n):
        logits = run(weights, seq).output[0, -1]
        top = np.sort(logits)
        margins.append(float(top[-1] - top[-2]))
        seq = np.concatenate([seq, [[int(logits.argmax())]]], axis=1)
    return seq[0, prompt.shape[1] :].tolist(), margins


def meta() -> dict:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "note": "both parties in one process, in-memory link; wall seconds on a shared 2-core "
        "machine (upper bounds)",
    }


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "tokens"}), flush=True)


def parity(args: argparse.Namespace) -> None:
    for name in args.cases:
        d = FIXTURES / name
        ids = np.load(d / "generation_ids.npy", allow_pickle=False)
        info = json.loads((d / "generation.json").read_text())
        t, n = info["prompt_tokens"], min(args.new, info["max_new_tokens"])
        w = load_weights(d)
        got = asyncio.run(generate(w, ids[:, :t], n, RunOptions("select"), True))
        want = ids[0, t : t + n].tolist()
        diverged = [i for i in range(n) if got["ids"][i] != want[i]]
        first = diverged[0] if diverged else None
        append(
            args.out,
            {
                "kind": "parity",
                "case": name,
                "prompt_tokens": t,
                "new_tokens": n,
                "secure_ids": got["ids"],
                "transformers_ids": want,
                "identical": not diverged,
                "first_divergence": first,
                "margin_at_divergence": None if first is None else info["logit_margins"][first],
                "min_logit_margin": min(info["logit_margins"][:n]),
                **{k: got[k] for k in ("setup_seconds", "cache_bytes", "tokens")},
                **meta(),
            },
        )


def _model(case: str, prompt: int, new: int) -> ModelWeights:
    if case in PRESETS:  # seeded random weights at a preset's dimensions, positions for the run
        cfg = PRESETS[case]
        return init_random(cfg.replace(seq_len=max(cfg.seq_len, prompt + new)), seed=21)
    return load_weights(FIXTURES / case)


def cost(args: argparse.Namespace) -> None:
    w = _model(args.case, args.prompt, args.new)
    cfg = w.config
    rng = np.random.default_rng(2026)  # public test data
    prompt = rng.integers(0, cfg.vocab_size, (1, args.prompt), dtype=np.int64)
    options = RunOptions(args.strategy)
    got = asyncio.run(generate(w, prompt, args.new, options, not args.no_cache))
    want, margins = float_greedy(w, prompt, args.new)
    append(
        args.out,
        {
            "kind": "cost",
            "case": args.case,
            "strategy": args.strategy,
            "cache": not args.no_cache,
            "prompt_tokens": args.prompt,
            "new_tokens": args.new,
            "experts": cfg.n_experts,
            "sliding_window": cfg.sliding_window,
            "cache_bytes_per_token": cache_bytes_per_token(cfg),
            "ids_equal_float_greedy": got["ids"] == want,
            "float_margins": margins,
            **got,
            **meta(),
        },
    )


def experts(args: argparse.Namespace) -> None:
    base = PRESETS["mixtral-tiny"].replace(d_model=32, d_ff=32, vocab_size=64, seq_len=16)
    for e in args.experts:
        w = init_random(base.replace(n_experts=e, name=f"mixtral-e{e}"), seed=e)
        prompt = np.arange(1, 1 + args.prompt, dtype=np.int64)[None] % 64
        got = asyncio.run(generate(w, prompt, args.new, RunOptions("select"), True))
        append(
            args.out,
            {
                "kind": "experts",
                "experts": e,
                "strategy": "select",
                "prompt_tokens": args.prompt,
                "new_tokens": args.new,
                **got,
                **meta(),
            },
        )


def table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for f in args.inputs for line in Path(f).read_text().splitlines()]
    print("| model | strategy | cache | position | MB | rounds | s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        if r["kind"] != "cost":
            continue
        for s in r["tokens"]:
            # step i ≥ 1 feeds the token at position T + i − 1 (the prefix up to it without
            # the cache)
            pos = r["prompt_tokens"] + s["index"] - 1
            label = f"prompt ({r['prompt_tokens']})" if s["index"] == 0 else str(pos)
            print(
                f"| {r['case']} | {r['strategy']} | {'yes' if r['cache'] else 'no'} | {label} "
                f"| {s['bytes'] / 1e6:.2f} | {s['rounds']} | {s['seconds']:.1f} |"
            )


def plot(args: argparse.Namespace) -> None:
    """Bytes and seconds per generated token against the position, with and without the
    cache (matplotlib: the ``plot`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(args.input).read_text().splitlines()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in (r for r in rows if r["kind"] == "cost"):
        steps = r["tokens"][1:]  # step 0 is the prompt's pass
        x = [r["prompt_tokens"] + s["index"] - 1 for s in steps]
        label = f"{r['strategy']}, {'KV cache' if r['cache'] else 'recompute prefix'}"
        style = "o-" if r["cache"] else "s--"
        axes[0].plot(x, [s["bytes"] / 1e6 for s in steps], style, label=label)
        axes[1].plot(x, [s["seconds"] for s in steps], style, label=label)
    for ax, what in zip(axes, ("MB per token (both directions)", "seconds per token"), strict=True):
        ax.set_xlabel("position of the fed-back token")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{rows[0]['case']}: private greedy generation, T_prompt = {rows[0]['prompt_tokens']}"
    )
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parity")
    p.add_argument("--cases", nargs="+", default=PARITY_CASES)
    p.add_argument("--new", type=int, default=16)
    p.add_argument("--out", type=Path, default=RESULTS / "generate_parity.jsonl")
    p.set_defaults(fn=parity)
    p = sub.add_parser("cost")
    p.add_argument("--case", default="mixtral-lm-tied", help="a fixture or a preset name")
    p.add_argument("--strategy", default="select", choices=["select", "all", "dispatch"])
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=6)
    p.add_argument("--out", type=Path, default=RESULTS / "generate_cost.jsonl")
    p.set_defaults(fn=cost)
    p = sub.add_parser("experts")
    p.add_argument("--experts", type=int, nargs="+", default=[8, 64])
    p.add_argument("--prompt", type=int, default=4)
    p.add_argument("--new", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "generate_experts.jsonl")
    p.set_defaults(fn=experts)
    p = sub.add_parser("plot")
    p.add_argument("input", nargs="?", default=RESULTS / "generate_cost.jsonl")
    p.add_argument("--png", default=ROOT / "docs" / "generation_cost.png")
    p.set_defaults(fn=plot)
    p = sub.add_parser("table")
    p.add_argument("inputs", nargs="+")
    p.set_defaults(fn=table)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()

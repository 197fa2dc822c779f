"""``secmoe generate``: private text generation, greedy or sampled (``--temperature``,
``--top-k``, ``--seed``),
against a ``secmoe serve`` (the ``generate`` session kind, :mod:`secmoe.model.generate`). The
client tokenizes its text, the server runs one setup, the prompt's forward pass and one step
per new token on a secret-shared KV cache; each token is revealed to the client only, which
decodes it here and feeds it back as its secret input. The text streams to stderr as tokens
arrive (not with ``--json``); the result is the whole text with per-token bytes, rounds and
seconds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..app import options_from_args, run_async, warn_insecure
from ..model.config import ModelConfig
from ..model.generate import TokenStep, generate_session
from ..model.session import InputError
from ..net.transcript import TranscriptWriter
from ..ops.sampling import MAX_TEMPERATURE, check_sampling, gumbel_noise, sampling_prg
from ..text import load_tokenizer, read_text
from ..text import tokenize as tokenize_text
from .args import add_client_args, add_strategy_args, positive_float, positive_int
from .client import connect_server
from .output import table

NAME = "generate"
HELP = "the client: private text generation (greedy or sampled) against a server"

#: End-of-sequence tokens looked up in the tokenizer when --eos-id is not given.
EOS_TOKENS = ("</s>", "<|endoftext|>", "<|im_end|>", "<eos>", "[EOS]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", required=True, metavar="HOST:PORT")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="the prompt, tokenized on this side with --tokenizer")
    given.add_argument("--text-file", metavar="FILE", help="as --text, from a UTF-8 file")
    p.add_argument(
        "--tokenizer",
        required=True,
        metavar="FILE",
        help="a Hugging Face tokenizers file (tokenizer.json) with the model's vocabulary",
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=16, help="tokens to generate (default 16)"
    )
    eos = p.add_mutually_exclusive_group()
    eos.add_argument(
        "--eos-id",
        type=int,
        help="stop at this token id (default: the tokenizer's </s>, <|endoftext|>, … if any)",
    )
    eos.add_argument(
        "--no-eos",
        action="store_true",
        help="always generate --max-new-tokens (the server then does not learn where the "
        "text ended)",
    )
    p.add_argument(
        "--temperature",
        type=positive_float,
        help="sample from softmax(logits / T) instead of greedy decoding (0 < T ≤ "
        f"{MAX_TEMPERATURE:g}): this side adds T·Gumbel noise (from its cryptographic PRG) to "
        "its share of the logits before the argmax, so the server sees the same messages as "
        "for greedy decoding",
    )
    p.add_argument(
        "--top-k",
        type=positive_int,
        metavar="K",
        help="sample among the K largest logits only (at --temperature, default 1); the server "
        "learns K (the top-k runs on shares), not the temperature nor the tokens",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed this side's sampling PRG (reproducible samples; the protocol's own "
        "randomness stays fresh); needs --temperature or --top-k",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole prefix for every token (the baseline; slower)",
    )
    add_strategy_args(p)
    add_client_args(p)


def eos_id(args: argparse.Namespace, tokenizer: Any) -> int | None:
    """The id generation stops at: ``--eos-id``, none with ``--no-eos``, else the first of
    :data:`EOS_TOKENS` the tokenizer has."""
    if args.no_eos:
        return None
    if args.eos_id is not None:
        return args.eos_id
    found = (tokenizer.token_to_id(t) for t in EOS_TOKENS)
    return next((i for i in found if i is not None), None)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors before connecting: --seed without sampling, a temperature out of range."""
    if args.seed is not None and args.temperature is None and args.top_k is None:
        parser.error("--seed seeds the sampling: give --temperature or --top-k")
    try:
        check_sampling(args.temperature, args.top_k)
    except ValueError as exc:
        parser.error(str(exc))


def run(args: argparse.Namespace) -> dict[str, Any]:
    warn_insecure(args.strategy)
    return run_async(_generate(args))


async def _generate(args: argparse.Namespace) -> dict[str, Any]:
    tokenizer = load_tokenizer(args.tokenizer)
    tokenized = tokenize_text(tokenizer, read_text(args.text, args.text_file))
    n_new = args.max_new_tokens
    stop = eos_id(args, tokenizer)
    if stop is not None and not 0 <= stop < tokenizer.get_vocab_size():
        raise InputError(f"--eos-id {stop} is outside the tokenizer's vocabulary")

    def prompt(cfg: ModelConfig) -> np.ndarray:
        """The ids, keeping the last seq_len − max_new_tokens + 1 (room for the new ones)."""
        ids = tokenized(cfg)
        room = cfg.seq_len - n_new + 1
        if room < 1:
            raise InputError(
                f"--max-new-tokens {n_new} leaves no room for a prompt: the model has "
                f"{cfg.seq_len} positions"
            )
        if ids.shape[1] > room:
            tokenized.note = f"{len(tokenized.ids)} tokens truncated to the last {room}"
            ids = ids[:, -room:]
        return ids

    sampled = args.temperature is not None or args.top_k is not None
    temperature = (args.temperature or 1.0) if sampled else None
    rng = sampling_prg(args.seed)
    writer = TranscriptWriter(args.transcript) if args.transcript else None
    ids: list[int] = []
    shown = ""

    def on_token(step: TokenStep) -> None:
        nonlocal shown
        assert step.ids is not None
        ids.append(step.ids[0])
        if args.json:
            return
        text = tokenizer.decode(ids)
        sys.stderr.write(text[len(shown) :] if text.startswith(shown) else f" {text}")
        sys.stderr.flush()
        shown = text

    try:
        ch = await connect_server(args, writer)
        try:
            res = await generate_session(
                ch,
                prompt,
                n_new,
                eos_id=stop,
                options=options_from_args(args),
                use_cache=not args.no_cache,
                on_token=on_token,
                noise=None if temperature is None else gumbel_noise(rng, temperature),
                top_k=args.top_k,
            )
        finally:
            await ch.close()
    finally:
        if writer is not None:
            writer.close()
    if not args.json:
        sys.stderr.write("\n")
    gen = res.generation
    assert gen.ids is not None
    new = gen.ids[0].tolist()
    return {
        "strategy": args.strategy,
        "model_id": res.model_id,
        "prompt": {"text": tokenized.note, "tokens": len(tokenized.ids)},
        "ids": new,
        "text": tokenizer.decode(new),
        "stopped": gen.stopped,
        "eos_id": stop,
        "cache": not args.no_cache,
        "cache_bytes": gen.cache_bytes,
        "setup": {"seconds": res.setup_seconds, "bytes": res.setup.bytes_total},
        "seconds": res.seconds,
        "tokens": [s.as_dict() for s in gen.steps],
    } | (
        {"sampling": {"temperature": temperature, "top_k": args.top_k, "seed": args.seed}}
        if sampled
        else {}
    )


def render(out: dict[str, Any]) -> Iterator[str]:
    yield f"generated: {out['text']!r} ({len(out['ids'])} tokens, {out['stopped']})"
    yield f"prompt: {out['prompt']['text']} ({out['strategy']})"
    rows = [
        (s["index"], s["ids"][0], f"{s['bytes'] / 1e6:.2f}", s["rounds"], f"{s['seconds']:.2f}")
        for s in out["tokens"]
    ]
    yield from table(["token", "id", "MB", "rounds", "seconds"], rows, first=5)
    yield (
        f"setup {out['setup']['seconds']:.1f} s, {out['setup']['bytes'] / 1e6:.1f} MB; "
        f"KV cache {out['cache_bytes'] / 1024:.1f} KiB per party"
    )

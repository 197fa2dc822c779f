"""``secmoe infer``: the client's side against a ``secmoe serve``: inputs from a ``.npy``, a
text (tokenized here) or held-out bundled samples; batches through as few sessions as the
server allows; the output decoded here."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..app import (
    capacity_line,
    capacity_summary,
    options_from_args,
    run_async,
    warn_insecure,
)
from ..model.reference import batched
from ..model.session import InputError, check_patch_values
from ..model.weights import load_heldout
from ..net import Channel
from ..net.tcp import parse_hostport
from ..net.transcript import TranscriptWriter
from ..progress import Reporter
from ..text import Tokenized, Tokenizer, decode_output, decoded_lines, load_tokenizer, read_text
from ..text import tokenize as tokenize_text
from .args import add_client_args, add_count_args, add_norm_products_arg, add_strategy_args
from .client import connect_server, cost_lines, figures, run_client

NAME = "infer"
HELP = "the client: private inference against a server"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", required=True, metavar="HOST:PORT")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--input", help="a .npy of inputs (default: held-out bundled samples)")
    given.add_argument("--text", help="a text, tokenized on this side with --tokenizer")
    given.add_argument("--text-file", metavar="FILE", help="as --text, the text of a UTF-8 file")
    p.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="a Hugging Face tokenizers file (tokenizer.json) for --text/--text-file; its "
        "vocabulary must be the model's",
    )
    p.add_argument(
        "--save-output",
        metavar="FILE",
        help="save the revealed output as .npy (for a text: (T, width), e.g. an encoder's "
        "per-token hidden states)",
    )
    add_count_args(p, 1, "held-out images without --input (default 1)")
    add_strategy_args(p)
    add_norm_products_arg(p)
    add_client_args(p)


def load_input(path: str) -> np.ndarray:
    """The client's input from a ``.npy`` file, checked before any connection: one array (not
    a ``.npz`` archive, not pickled), non-empty, patch features (numbers, rank 2 or 3, finite,
    within what the first layer takes, see :func:`check_patch_values`) or token ids (integers
    ≥ 0, rank 1 or 2). :class:`InputError` names the problem; what needs the server's config
    (patch_dim, vocabulary, seq_len) is checked when it arrives, before any cryptography."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK"):
        raise InputError(f"{path}: a .npz archive; save one array with numpy.save (.npy)")
    if head != b"\x93NUMPY":
        raise InputError(f"{path}: not a .npy file (no NumPy header); save it with numpy.save")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle, which is never loaded
        raise InputError(f"{path}: cannot be read as a plain array ({exc})") from None
    if x.size == 0:
        raise InputError(f"{path}: the array is empty (shape {x.shape})")
    if np.issubdtype(x.dtype, np.integer) and x.ndim in (1, 2):
        if (x < 0).any():
            raise InputError(f"{path}: token id {int(x[x < 0][0])} is negative")
        return x
    if x.ndim not in (2, 3):
        raise InputError(
            f"{path}: shape {x.shape}, dtype {x.dtype}: expected patch features (T, P) or "
            "(B, T, P), or integer token ids (T,) or (B, T)"
        )
    return check_patch_values(x)


def client_input(args: argparse.Namespace) -> tuple[np.ndarray | Tokenized, Tokenizer | None]:
    """What ``infer`` sends: a text's tokens (fitted to the server's config when it arrives),
    a ``.npy`` or held-out bundled samples. Everything checkable without the server is
    checked here, before any connection."""
    if args.text is not None or args.text_file is not None:
        if not args.tokenizer:
            raise InputError("--text/--text-file need --tokenizer tokenizer.json")
        tokenizer = load_tokenizer(args.tokenizer)
        return tokenize_text(tokenizer, read_text(args.text, args.text_file)), tokenizer
    if args.tokenizer:
        raise InputError("--tokenizer is for --text/--text-file")
    if args.input:
        if not Path(args.input).is_file():
            raise InputError(f"input file {args.input!r} not found")
        return load_input(args.input), None
    return load_heldout()[0][: args.samples], None


def run(args: argparse.Namespace) -> dict[str, Any]:
    warn_insecure(args.strategy)
    return run_async(_infer(args))


async def _infer(args: argparse.Namespace) -> dict[str, Any]:
    x, tokenizer = client_input(args)
    parse_hostport(args.connect)  # before anything else
    writer = TranscriptWriter(args.transcript) if args.transcript else None
    reporter = Reporter(quiet=args.json)
    options = options_from_args(args)

    async def close(ch: Channel) -> None:
        await ch.close()

    try:
        run = await run_client(
            partial(connect_server, args, writer),
            close,
            x,
            batch=args.batch,
            options=options,
            reporter=reporter,
        )
    finally:
        if writer is not None:
            writer.close()
    cfg = run.cfg
    tokens = batched(cfg, x(cfg) if tokenizer is not None else x)[0].shape[1]
    out = capacity_summary(cfg, options, tokens) | figures(run)
    out |= {"strategy": args.strategy, "model_id": run.model_id, "sequences": len(run.output)}
    if args.save_output:  # a text is one sequence: saved without the batch axis
        np.save(args.save_output, run.output[0] if tokenizer else run.output, allow_pickle=False)
        out["saved_output"] = args.save_output
    if tokenizer is not None:
        return out | {"text": {"input": x.note, **decode_output(cfg, run.output, tokenizer)}}
    return out | {"prediction": run.output.argmax(-1).tolist(), "logits": run.output.tolist()}


def render(out: dict[str, Any]) -> Iterator[str]:
    if "text" in out:
        yield f"text: {out['text']['input']} ({out['strategy']})"
        yield from decoded_lines(out["text"], out.get("saved_output"))
    else:
        yield f"prediction {out['prediction']} ({out['strategy']})"
    yield from cost_lines(out)
    yield capacity_line(out)

"""Text in, text out for ``secmoe infer --text``: tokenization and decoding on the client.

The client tokenizes its text with a Hugging Face ``tokenizers`` file (``tokenizer.json``);
only the token ids enter the secure protocol (as secret shares: the server learns the number
of tokens T, as for any input, never the text or the ids). The revealed output is decoded on
the client too: the top next tokens with their probabilities (softmax of the last position's
logits) for a language-model head, the class for a classifier head, the per-token hidden
states for an encoder without a head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .model.config import ModelConfig
from .model.session import InputError


def load_tokenizer(path: str) -> Tokenizer:
    """A ``tokenizers`` tokenizer from its JSON file; :class:`InputError` names what is wrong."""
    if not Path(path).is_file():
        raise InputError(f"tokenizer file {path!r} not found")
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # the Rust library raises plain Exceptions for bad files
        raise InputError(f"{path}: not a tokenizers JSON file ({exc})") from None


def read_text(text: str | None, text_file: str | None) -> str:
    """The client's text, from ``--text`` or ``--text-file`` (UTF-8); :class:`InputError` for
    a missing file or an empty (blank) text."""
    if text_file is not None:
        try:
            text = Path(text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the text file {text_file!r}: {exc}") from None
    if not text or not text.strip():
        raise InputError("the text is empty")
    return text


@dataclass
class Tokenized:
    """A text's token ids, whole, before they are fitted to a model: calling it with the
    server's config gives the ids the model takes (:func:`client_session`'s ``inputs``)."""

    ids: list[int]
    tokenizer_vocab: int
    #: what fitting did, in a sentence (set by the call)
    note: str = ""

    def __call__(self, cfg: ModelConfig) -> np.ndarray:
        """The ids the model takes, shape (1, T); :attr:`note` says what was done.

        Raises :class:`InputError` if the tokenizer's vocabulary is larger than the model's
        (its ids would not be the model's tokens) or the model does not take token ids. A text
        longer than the model's ``seq_len`` is truncated: a language model keeps the last
        ``seq_len`` tokens (the context of the next token), other heads the first. Shorter
        texts are not padded: the server accepts any length from 1 to ``seq_len`` (padding
        would change a bidirectional encoder's output).
        """
        if cfg.input != "tokens":
            raise InputError(f"{cfg.name} takes patch features, not text")
        if self.tokenizer_vocab > (cfg.vocab_size or 0):
            raise InputError(
                f"the tokenizer's vocabulary ({self.tokenizer_vocab} tokens) is larger than "
                f"the model's ({cfg.vocab_size})"
            )
        n, keep = len(self.ids), cfg.seq_len
        if n <= keep:
            self.note = f"{n} tokens, not padded (the server takes 1 to {keep}; it learns T = {n})"
            return np.asarray([self.ids], dtype=np.int64)
        kept = self.ids[-keep:] if cfg.head == "lm" else self.ids[:keep]
        side = "last" if cfg.head == "lm" else "first"
        self.note = f"{n} tokens truncated to the {side} {keep} (the model's seq_len)"
        return np.asarray([kept], dtype=np.int64)


def tokenize(tokenizer: Tokenizer, text: str) -> Tokenized:
    """The text's token ids (with the tokenizer's own special tokens, if its post-processor
    adds them); :class:`InputError` if it has none."""
    ids = tokenizer.encode(text).ids
    if not ids:
        raise InputError("the text has no tokens under this tokenizer")
    return Tokenized(list(ids), tokenizer.get_vocab_size())


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    z = np.asarray(x, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _token(tokenizer: Tokenizer, i: int) -> str:
    tok = tokenizer.id_to_token(i)
    return f"<id {i}>" if tok is None else tok


def decode_output(
    cfg: ModelConfig, output: np.ndarray, tokenizer: Tokenizer, k: int = 5
) -> dict[str, Any]:
    """What one sequence's revealed output means, computed on the client.

    ``output``: the secure run's output for one sequence with the batch axis ((1, T, vocab)
    logits, (1, n_classes) or (1, T, d_model)). Returns ``{"kind": "next_tokens", "top":
    [{"id", "token", "probability"} × k]}`` for an LM head (softmax of the last position),
    ``{"kind": "class", "class", "probability"}`` for a classifier, ``{"kind":
    "hidden_states", "shape"}`` for an encoder without a head.
    """
    if cfg.head == "lm":
        probs = softmax(output[0, -1])
        top = np.argsort(-probs, kind="stable")[:k]
        return {
            "kind": "next_tokens",
            "top": [
                {"id": int(i), "token": _token(tokenizer, int(i)), "probability": float(probs[i])}
                for i in top
            ],
        }
    if cfg.head == "classifier":
        probs = softmax(output[0])
        c = int(probs.argmax())
        return {"kind": "class", "class": c, "probability": float(probs[c])}
    return {"kind": "hidden_states", "shape": list(output.shape[1:])}


def decoded_lines(decoded: dict[str, Any], saved: str | None) -> list[str]:
    """The printed form of :func:`decode_output`'s result (``saved``: the ``--save-output``
    file, if any)."""
    if decoded["kind"] == "next_tokens":
        return [f"next token (top {len(decoded['top'])}, probability):"] + [
            f"  {t['probability']:7.2%}  {t['token']!r} (id {t['id']})" for t in decoded["top"]
        ]
    if decoded["kind"] == "class":
        return [f"class {decoded['class']} (probability {decoded['probability']:.2%})"]
    shape = "×".join(map(str, decoded["shape"]))
    where = f"saved to {saved}" if saved else "save them with --save-output out.npy"
    return [f"per-token hidden states {shape} ({where})"]


__all__ = [
    "Tokenized",
    "Tokenizer",
    "decode_output",
    "decoded_lines",
    "load_tokenizer",
    "read_text",
    "softmax",
    "tokenize",
]

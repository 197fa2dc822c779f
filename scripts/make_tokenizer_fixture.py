"""Build the tiny tokenizer fixture tests/fixtures/tokenizer/tokenizer.json (no download).

A word-level tokenizer (split on whitespace and punctuation, lower-cased) with exactly 64
tokens — id 0 is ``[UNK]`` — the vocabulary size of the Hugging Face fixture models in
tests/fixtures/hf/, so its ids are their tokens. Run: ``python scripts/make_tokenizer_fixture.py``.
"""

from pathlib import Path

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

VOCAB_SIZE = 64
TEXT = (
    "the a an of to and in is it that on for with as was by at from this be are or his her "
    "cat dog bird fish tree house sun moon sky sea river road city king queen child "
    "runs sat sees eats sleeps flies swims grows shines falls "
    "big small red blue old new happy quiet green . , ! ?"
)
WORDS = TEXT.split()
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tokenizer"


def build() -> Tokenizer:
    """The fixture tokenizer."""
    vocab = {"[UNK]": 0} | {w: i + 1 for i, w in enumerate(WORDS)}
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    build().save(str(OUT / "tokenizer.json"))
    print(f"wrote {OUT / 'tokenizer.json'} ({VOCAB_SIZE} tokens)")

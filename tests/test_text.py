"""`secmoe infer --text … --tokenizer …` (issue 20): the client tokenizes, the server runs the
private inference, the client decodes (top-5 next tokens of an LM, hidden states of an
encoder), against the float reference on the same ids; input errors are one line."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from secmoe.cli import main
from secmoe.model.reference import run
from secmoe.model.session import InputError
from secmoe.model.weights import load_weights
from secmoe.text import read_text, softmax, tokenize
from tests.hf_helpers import FIXED_REL_TOL, FIXTURES
from tests.test_schema import check_schema
from tests.test_serve_infer import free_port, serve, wait_listening

TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer" / "tokenizer.json"
LM = FIXTURES / "mixtral-lm-tied"  # causal LM head, vocabulary 64, seq_len 64
ENCODER = FIXTURES / "switch-enc-s2-relu-cap64"  # bidirectional, no head, vocabulary 64
TEXT = "The cat sat on the mat!"


def _tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(TOKENIZER))


def test_the_fixture_tokenizer_round_trips_with_the_models_vocabulary():
    tok = _tokenizer()
    assert tok.get_vocab_size() == load_weights(LM).config.vocab_size == 64
    enc = tok.encode("the dog sees a bird .")
    assert tok.decode(enc.ids) == "the dog sees a bird ."
    assert tok.encode("mat").ids == [tok.token_to_id("[UNK]")]  # not in the vocabulary


def test_a_long_text_is_truncated_to_seq_len_keeping_what_the_head_needs():
    lm = load_weights(LM).config
    base = load_weights(FIXTURES / "mixtral-base-headdim").config  # no head
    assert lm.seq_len == base.seq_len
    tok = _tokenizer()
    tokenized = tokenize(tok, " ".join(["the", *["cat"] * (lm.seq_len + 3), "dog"]))
    assert len(tokenized.ids) == lm.seq_len + 5
    ids = tokenized(lm)  # an LM keeps the last seq_len (the next token's context)
    assert ids.shape == (1, lm.seq_len) and ids[0, -1] == tok.token_to_id("dog")
    assert f"{lm.seq_len + 5} tokens truncated to the last {lm.seq_len}" in tokenized.note
    ids = tokenized(base)  # other heads keep the first seq_len
    assert ids.shape == (1, lm.seq_len)
    assert ids[0, 0] == tok.token_to_id("the") and ids[0, -1] == tok.token_to_id("cat")
    assert "truncated to the first" in tokenized.note
    short = tokenize(tok, "the cat")
    assert short(lm).tolist() == [tok.encode("the cat").ids]
    assert "2 tokens, not padded" in short.note


def test_input_errors_are_one_clear_line(tmp_path, capsys):
    lm = load_weights(LM).config
    with pytest.raises(InputError, match=r"vocabulary \(64 tokens\) is larger than the model's"):
        tokenize(_tokenizer(), TEXT)(dataclasses.replace(lm, vocab_size=32))
    with pytest.raises(InputError, match="the text is empty"):
        read_text("  \n", None)
    connect = ["infer", "--connect", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.5"]
    (tmp_path / "blank.txt").write_text("\n\n")
    (tmp_path / "bad.json").write_text("{}")
    cases = [
        (["--text", TEXT], "--text/--text-file need --tokenizer"),
        (["--text", TEXT, "--tokenizer", str(tmp_path / "no.json")], "not found"),
        (["--text", TEXT, "--tokenizer", str(tmp_path / "bad.json")], "not a tokenizers JSON"),
        (["--text", "", "--tokenizer", str(TOKENIZER)], "the text is empty"),
        (["--text-file", str(tmp_path / "blank.txt"), "--tokenizer", str(TOKENIZER)], "empty"),
        (["--text-file", str(tmp_path / "none.txt"), "--tokenizer", str(TOKENIZER)], "cannot read"),
    ]
    for args, message in cases:
        assert main([*connect, *args]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (args, err)
        assert "cannot connect" not in err  # checked before any connection


def test_text_in_text_out_over_tcp_matches_the_float_reference(tmp_path, capsys):
    tok = _tokenizer()
    ids = np.array([tok.encode(TEXT).ids])
    lm, encoder = load_weights(LM), load_weights(ENCODER)
    ref_probs = softmax(run(lm, ids).output[0, -1])
    ref_hidden = run(encoder, ids).output[0]
    text_args = ["--text", TEXT, "--tokenizer", str(TOKENIZER), "--strategy", "all"]
    results = []
    for model, extra in [
        (LM, ["--json"]),  # machine-readable, nothing on stderr
        (LM, []),  # printed, with plain progress lines (stderr is not a terminal)
        (ENCODER, ["--json", "--save-output", str(tmp_path / "hidden.npy")]),
    ]:
        port = free_port()
        server = serve(port, "--model", str(model), "--sessions", "1")
        try:
            wait_listening(port, server)
            code = main(["infer", "--connect", f"127.0.0.1:{port}", *text_args, *extra])
            _, server_log = server.communicate(timeout=60)
        finally:
            server.kill()
        results.append((code, capsys.readouterr(), server_log))
        assert code == 0, results[-1][1].err
        assert "Traceback" not in server_log and ": done in" in server_log

    # LM head: the top 5 next tokens, probabilities computed on the client
    _, cap, server_log = results[0]
    assert cap.err == ""
    out = json.loads(cap.out.strip().splitlines()[-1])
    check_schema(out, "infer")
    assert "prediction" not in out and "saved_output" not in out
    assert out["text"]["input"].startswith(f"{ids.shape[1]} tokens, not padded")
    top = out["text"]["top"]
    assert len(top) == 5 and top[0]["id"] == int(ref_probs.argmax())
    fifth = np.sort(ref_probs)[-5]
    for t in top:
        assert t["token"] == tok.id_to_token(t["id"])
        assert abs(t["probability"] - ref_probs[t["id"]]) < 0.01
        assert ref_probs[t["id"]] >= fifth - 0.01  # a top-5 token of the reference
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    # the server logged one line per layer of the session (its stderr is not a terminal)
    assert "session 1 from 127.0.0.1:" in server_log and "layer 2/2 done (sent" in server_log

    # the printed form, with the client's plain progress lines on stderr
    _, cap, _ = results[1]
    assert "next token (top 5, probability):" in cap.out
    assert f"'{top[0]['token']}' (id {top[0]['id']})" in cap.out
    assert "session 1: layer 1/2 done (sent" in cap.err and "layer 2/2 done" in cap.err

    # encoder without a head: the per-token hidden states, saved on the client
    _, cap, _ = results[2]
    out = json.loads(cap.out.strip().splitlines()[-1])
    check_schema(out, "infer")
    assert out["saved_output"] == str(tmp_path / "hidden.npy")
    assert out["text"] == {
        "input": out["text"]["input"],
        "kind": "hidden_states",
        "shape": [ids.shape[1], encoder.config.d_model],
    }
    hidden = np.load(tmp_path / "hidden.npy", allow_pickle=False)
    assert hidden.shape == ref_hidden.shape
    tol = FIXED_REL_TOL * max(1.0, float(np.abs(ref_hidden).max()))
    assert np.abs(hidden - ref_hidden).max() <= tol

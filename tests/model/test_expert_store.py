"""ExpertStore (secmoe.model.expert_store): the experts' float weights in anonymous files,
mapped; loading and folding a checkpoint into it give the in-memory weights bit for bit, and
`release` drops them from the process without losing them."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from secmoe.cli import main
from secmoe.model.expert_store import ExpertStore, ExpertStoreFull
from secmoe.model.fold import fold_norms
from secmoe.model.weights import ModelWeights, load_weights
from tests.hf_helpers import hf_case


def _experts(w: ModelWeights) -> list[np.ndarray]:
    stacks = [getattr(w.layers[i].ffn, m) for i in w.config.moe_layers for m in ("w1", "w2", "v")]
    return [a for a in stacks if a is not None]


def _arrays(w: ModelWeights) -> list[np.ndarray]:
    """Every weight array, experts included, in a fixed order."""
    out = [getattr(w, k) for k in ("embed", "head") if getattr(w, k) is not None]
    for layer in w.layers:
        for part in (layer.attn_norm, layer.attn, layer.ffn_norm, layer.ffn):
            out += [v for v in vars(part).values() if isinstance(v, np.ndarray)]
    return out


def test_arrays_live_in_anonymous_files_and_release_keeps_their_values(tmp_path):
    store = ExpertStore(tmp_path)
    a = store.empty((3, 256, 64))
    assert not a.any() and a.flags.writeable
    a[...] = np.arange(a.size, dtype=np.float32).reshape(a.shape)
    assert list(tmp_path.iterdir()) == []  # no name on disk: nothing left behind
    assert store.nbytes == a.nbytes and store.resident_bytes() >= a.nbytes
    store.release()
    assert store.resident_bytes() == 0
    np.testing.assert_array_equal(a.ravel(), np.arange(a.size, dtype=np.float32))  # read back
    assert store.resident_bytes() >= a.nbytes
    store.drop(a[1])  # one matrix's pages (64 KiB, page-aligned here)
    assert store.resident_bytes() == a.nbytes - a[1].nbytes
    store.drop(np.ones(4096))  # outside the store: nothing
    assert store.resident_bytes() == a.nbytes - a[1].nbytes
    store.release()
    b = store.copy(a)  # reads a back in, writes b and drops it from memory
    assert store.resident_bytes() == a.nbytes
    np.testing.assert_array_equal(b, a)
    del a, b
    gc.collect()
    assert store.nbytes == 0  # a freed array's file goes with it


def test_an_array_that_does_not_fit_is_refused_before_anything_is_written(tmp_path):
    """The blocks are reserved when the array is made: past what the file system takes (here
    100 TB, beyond ext4's largest file), a one-line error naming the directory, not a SIGBUS
    when a page is written later."""
    store = ExpertStore(tmp_path)
    with pytest.raises(ExpertStoreFull, match=f"do not fit in {tmp_path}"):
        store.empty((10**14,), np.uint8)
    assert store.nbytes == 0 and list(tmp_path.iterdir()) == []


def test_a_store_needs_a_writable_directory_and_says_when_it_is_memory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        ExpertStore(tmp_path / "missing")
    assert not ExpertStore(tmp_path).in_memory
    mounts = Path("/proc/mounts").read_text().splitlines()
    if any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts):
        assert ExpertStore("/dev/shm").in_memory


@pytest.mark.parametrize("name", ["mixtral-lm-gqa-swa-untied", "mixtral-lm-fused"])
def test_a_checkpoint_loads_and_folds_into_the_store_bit_for_bit(tmp_path, name):
    """Per-expert and fused (transformers 5) checkpoints: the expert stacks, and only they, go
    to the store; the folded experts are written there too, and the unfolded ones go with the
    weights that held them."""
    case = hf_case(name)
    store = ExpertStore(tmp_path)
    mapped, memory = load_weights(case.dir, experts=store), load_weights(case.dir)
    assert mapped.store is store and memory.store is None
    assert store.resident_bytes() == 0  # each tensor dropped from memory once written
    assert store.nbytes == sum(a.nbytes for a in _experts(memory)) > 0
    for got, want in zip(_arrays(mapped), _arrays(memory), strict=True):
        np.testing.assert_array_equal(got, want)
    store.release()  # what the comparison read
    folded = fold_norms(mapped)
    assert store.resident_bytes() == 0
    for got, want in zip(_arrays(folded), _arrays(fold_norms(memory)), strict=True):
        np.testing.assert_array_equal(got, want)
    del mapped
    gc.collect()
    assert store.nbytes == sum(a.nbytes for a in _experts(folded))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--expert-dir", "."], "--expert-dir is where the coordinator of --workers N"),
        (["--workers", "2", "--expert-dir", "/nonexistent/x"], "not a directory"),
    ],
)
def test_serve_expert_dir_errors(extra, message, capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--listen", "127.0.0.1:0", *extra])
    assert message in capsys.readouterr().err

"""Model weights: a structured numpy representation, safetensors files with Hugging Face names.

Internally every linear map is stored in **math layout** (in, out), so a layer computes
``x @ W``; Hugging Face ``nn.Linear`` weights are stored (out, in) and are transposed on load
and save. Experts are stacked: ``MoE.w1[j]`` is expert j's first matrix.

Tensor names follow transformers' checkpoints (see :func:`expected_tensors`):

* ``arch="switch"`` (SwitchTransformers encoder): ``shared.weight``,
  ``encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight``,
  ``encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight``,
  ``encoder.block.{i}.layer.{0,1}.layer_norm.weight``, dense ``…layer.1.mlp.wi.weight`` /
  ``wi_0``, ``wi_1`` (gated) / ``wo``, sparse ``…layer.1.mlp.router.classifier.weight`` and
  ``…layer.1.mlp.experts.expert_{j}.{wi,wi_0,wi_1,wo}.weight``, ``encoder.final_layer_norm.weight``.
  A full encoder–decoder checkpoint loads: ``decoder.*`` and ``lm_head.weight`` are ignored
  (the encoder is what secmoe runs), and the tied copy ``encoder.embed_tokens.weight`` too.
* ``arch="mixtral"``: ``model.embed_tokens.weight``, ``model.layers.{i}.input_layernorm.weight``,
  ``…self_attn.{q,k,v,o}_proj.weight``, ``…post_attention_layernorm.weight``,
  ``…block_sparse_moe.gate.weight``, ``…block_sparse_moe.experts.{j}.{w1,w2,w3}.weight``
  (dense layers: ``…mlp.{gate,up,down}_proj.weight``), ``model.norm.weight``, ``lm_head.weight``
  (absent with ``tie_word_embeddings``: the head is the embedding).
* ``arch="qwen3_moe"``: as mixtral, with ``…self_attn.{q,k}_norm.weight`` (d_head,), router
  ``…mlp.gate.weight`` and experts ``…mlp.experts.{j}.{gate,up,down}_proj.weight``.
* Decoders load in four layouts (:class:`~secmoe.model.hf_names.Layout`, found from the names):
  the ``model.`` prefix and ``lm_head.weight`` of ``*ForCausalLM``, or no prefix and no head
  (``MixtralModel``, ``Qwen3MoeModel``); per-expert modules (what ``save_pretrained`` writes)
  or transformers 5's fused ``…mlp.experts.gate_up_proj`` (E, 2·d_ff, d) and
  ``…mlp.experts.down_proj`` (E, d, d_ff) with router ``…mlp.gate.weight``. secmoe writes the
  first: ``model.`` prefix, per-expert.
* secmoe extensions (no HF counterpart): LayerNorm biases ``<norm>.bias``; patch inputs
  ``{encoder,model}.patch_embed.{weight,bias}``; learned positions
  ``{encoder,model}.embed_positions.weight``; the classifier head ``classifier.{weight,bias}``.

A secmoe file stores its :class:`~secmoe.model.config.ModelConfig` as JSON in the safetensors
metadata (key ``secmoe.config``) and, by default, beside it as ``<stem>.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from secmoe.model.config import ModelConfig, preset
from secmoe.model.expert_store import ExpertStore
from secmoe.model.hf_names import (
    Layout,
    Slot,
    default_ignored,
    detect_layout,
    expected_tensors,
    param_count,
    slots,
)

__all__ = [
    "BUNDLED_DIR",
    "FFN",
    "Attention",
    "Layer",
    "MoE",
    "ModelWeights",
    "Norm",
    "WeightsError",
    "expected_tensors",
    "init_and_save",
    "init_random",
    "load_bundled",
    "load_heldout",
    "load_weights",
    "param_count",
    "save_weights",
    "to_tensors",
]

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED_NAME = "digits-moe"
CONFIG_KEY = "secmoe.config"
#: Accepted alternative names: a Switch checkpoint may carry the tied embedding only as
#: ``encoder.embed_tokens.weight``.
_ALIASES = {"shared.weight": "encoder.embed_tokens.weight"}


class WeightsError(ValueError):
    """A checkpoint that does not match its configuration (names each bad tensor)."""


@dataclass
class Norm:
    """LayerNorm (weight, bias) or RMSNorm (weight only)."""

    weight: np.ndarray
    bias: np.ndarray | None = None


@dataclass
class Attention:
    """Self-attention projections, math layout: wq (d, H·dk), wk/wv (d, Hkv·dk), wo (H·dk, d);
    with ``cfg.qk_norm`` the per-head RMSNorm weights of queries and keys, (dk,) each."""

    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None


@dataclass
class FFN:
    """Dense FFN: out = act(x·w1) [⊙ x·v if gated] · w2; w1, v (d, d_ff), w2 (d_ff, d)."""

    w1: np.ndarray
    w2: np.ndarray
    v: np.ndarray | None = None


@dataclass
class MoE:
    """Sparse MoE FFN: router (d, E); experts stacked: w1, v (E, d, d_ff), w2 (E, d_ff, d)."""

    router: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    v: np.ndarray | None = None

    def expert(self, j: int) -> FFN:
        """Expert j as a dense FFN (views, no copy)."""
        return FFN(self.w1[j], self.w2[j], None if self.v is None else self.v[j])


@dataclass
class Layer:
    """One pre-norm transformer block."""

    attn_norm: Norm
    attn: Attention
    ffn_norm: Norm
    ffn: FFN | MoE


@dataclass
class ModelWeights:
    """All weights of a model, with its config. Optional fields depend on the config."""

    config: ModelConfig
    layers: list[Layer]
    final_norm: Norm
    embed: np.ndarray | None = None  # (vocab, d)
    patch_proj: np.ndarray | None = None  # (patch_dim, d)
    patch_bias: np.ndarray | None = None  # (d,)
    pos_embed: np.ndarray | None = None  # (seq_len, d)
    rel_bias: np.ndarray | None = None  # (buckets, n_heads), shared by all layers
    head: np.ndarray | None = None  # (d, out)
    head_bias: np.ndarray | None = None  # (out,)
    #: Where the MoE layers' expert stacks live: None, in memory; an :class:`ExpertStore`, in
    #: its files, mapped (:func:`load_weights`'s ``experts``; :func:`~secmoe.model.fold.
    #: fold_norms` writes the folded experts there too).
    store: ExpertStore | None = None


# --------------------------------------------------------------------------------------------
# Building the structure
# --------------------------------------------------------------------------------------------


def _build(c: ModelConfig, fill: Callable[[str, tuple[int, ...]], np.ndarray]) -> ModelWeights:
    """Allocate the structure, each tensor (internal key, internal shape) from ``fill``."""
    arrays: dict[str, np.ndarray] = {}
    for s in slots(c):
        if s.key not in arrays:
            arrays[s.key] = fill(s.key, s.internal_shape(c))
    get = arrays.get
    layers = []
    for i in range(c.n_layers):
        L = f"layers.{i}"
        ffn_cls = MoE if c.is_moe(i) else FFN
        kw = {"router": arrays[f"{L}.ffn.router"]} if c.is_moe(i) else {}
        ffn = ffn_cls(w1=arrays[f"{L}.ffn.w1"], w2=arrays[f"{L}.ffn.w2"], v=get(f"{L}.ffn.v"), **kw)
        attn = Attention(
            *(arrays[f"{L}.attn.w{p}"] for p in "qkvo"),
            q_norm=get(f"{L}.attn.q_norm"),
            k_norm=get(f"{L}.attn.k_norm"),
        )
        layers.append(
            Layer(
                Norm(arrays[f"{L}.attn_norm.weight"], get(f"{L}.attn_norm.bias")),
                attn,
                Norm(arrays[f"{L}.ffn_norm.weight"], get(f"{L}.ffn_norm.bias")),
                ffn,
            )
        )
    top = ("embed", "patch_proj", "patch_bias", "pos_embed", "rel_bias", "head", "head_bias")
    if c.tie_word_embeddings:  # the head is the embedding (a view: one array, two roles)
        arrays["head"] = arrays["embed"].T
    return ModelWeights(
        config=c,
        layers=layers,
        final_norm=Norm(arrays["final_norm.weight"], get("final_norm.bias")),
        **{k: get(k) for k in top},
    )


def _get(w: ModelWeights, key: str) -> np.ndarray:
    obj: object = w
    for part in key.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)  # type: ignore[index]
    if not isinstance(obj, np.ndarray):
        raise WeightsError(f"weights field {key!r} is {type(obj).__name__}, not an array")
    return obj


def init_random(config: ModelConfig, seed: int = 0) -> ModelWeights:
    """Random float32 weights at ``config``'s dimensions (for benchmarks and tests).

    Variance-preserving: linear maps N(0, 1/fan_in) (queries also × d_head^−½ when the config
    does not scale scores, as T5 folds it), embeddings N(0, 1), positions and relative biases
    N(0, 0.1²), norms 1, biases 0, so activations stay O(1) in fixed point. Not HF's init.
    """
    # numpy's generator is fine here: model weights are the server's plaintext, not 2PC
    # secrets (secrets only ever come from secmoe.crypto.prg).
    rng = np.random.default_rng(seed)  # not secret: the server's plaintext weights
    c = config

    def fill(key: str, shape: tuple[int, ...]) -> np.ndarray:
        last = key.rsplit(".", 1)[-1]
        if last in ("bias", "patch_bias", "head_bias"):
            return np.zeros(shape, np.float32)
        if "norm" in key:
            return np.ones(shape, np.float32)
        if key in ("pos_embed", "rel_bias"):
            std = 0.1
        elif key == "embed":
            std = 1.0
        else:
            std = shape[-2] ** -0.5  # fan_in of an (…, in, out) matrix
            if key.endswith("attn.wq") and not c.scale_attention:
                std *= c.d_head**-0.5
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    return _build(c, fill)


# --------------------------------------------------------------------------------------------
# safetensors I/O
# --------------------------------------------------------------------------------------------


def to_tensors(weights: ModelWeights) -> dict[str, np.ndarray]:
    """The checkpoint dict (HF names and layout, float32, contiguous)."""
    out = {}
    for s in slots(weights.config):
        a = _get(weights, s.key)
        if s.expert is not None:
            a = a[s.expert]
        if s.linear:
            a = a.T
        out[s.hf] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def save_weights(weights: ModelWeights, path: str | os.PathLike, write_config: bool = True) -> Path:
    """Write a safetensors file (config JSON in its metadata) and ``<stem>.json`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", CONFIG_KEY: weights.config.to_json()}
    save_file(to_tensors(weights), str(path), metadata=meta)
    if write_config:
        weights.config.save(path.with_suffix(".json"))
    return path


def _open_all(path: Path) -> tuple[list[Path], dict[str, str]]:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise WeightsError(f"no .safetensors file in {path}")
    for f in files:
        if not f.is_file():
            raise WeightsError(f"checkpoint {f} does not exist")
    with safe_open(str(files[0]), framework="np") as h:
        meta = h.metadata() or {}
    return files, meta


def _resolve_config(path: Path, files: list[Path], meta: dict[str, str]) -> ModelConfig:
    if CONFIG_KEY in meta:
        return ModelConfig.from_json(meta[CONFIG_KEY])
    base = path if path.is_dir() else path.parent
    for cand in ([] if path.is_dir() else [path.with_suffix(".json")]) + [base / "config.json"]:
        if cand.is_file():
            return ModelConfig.load(cand)
    raise WeightsError(f"no config for {path}: pass one, or put config.json beside it")


def _read_tensor(handle, file: Path, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    if handle.get_slice(name).get_dtype() != "BF16":
        return handle.get_tensor(name)
    # numpy has no bfloat16: read the raw bytes and widen (bf16 is the top half of a float32).
    with open(file, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        info = json.loads(fh.read(n))[name]
        start, end = info["data_offsets"]
        fh.seek(8 + n + start)
        raw = np.frombuffer(fh.read(end - start), dtype="<u2").astype(np.uint32) << 16
    return raw.view(np.float32).reshape(info["shape"])


def load_weights(
    path: str | os.PathLike,
    config: ModelConfig | str | None = None,
    ignore: Sequence[str] | None = None,
    experts: ExpertStore | None = None,
) -> ModelWeights:
    """Load a checkpoint: a ``.safetensors`` file or a directory of shards.

    The config is ``config`` (a ModelConfig or preset name), else the file's metadata, else
    ``<stem>.json``, else a Hugging Face ``config.json`` beside it. The naming layout (causal
    LM or base model, per-expert or fused experts) is found from the names present
    (:func:`~secmoe.model.hf_names.detect_layout`). Tensor names starting with a prefix in
    ``ignore`` are skipped (default: :func:`~secmoe.model.hf_names.default_ignored`: the Switch
    decoder and tied embedding copy, an lm head the config does not use or ties). With
    ``tie_word_embeddings`` the head is the embedding. Raises :class:`WeightsError` naming
    every missing, unexpected or misshapen tensor with expected and found shapes.

    ``experts``: the MoE layers' expert stacks go to this store's files instead of memory
    (the server with workers, which only reads them to send them: :mod:`~secmoe.model.
    expert_store`), each dropped from memory once written: the checkpoint is read one tensor
    at a time, so memory never holds more of the experts than one checkpoint tensor.
    """
    path = Path(path)
    files, meta = _open_all(path)
    if isinstance(config, str):
        config = preset(config)
    cfg = config if config is not None else _resolve_config(path, files, meta)
    ign = tuple(default_ignored(cfg) if ignore is None else ignore)
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for f in files:
        with safe_open(str(f), framework="np") as h:
            for name in h.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                found[name] = (f, tuple(h.get_slice(name).get_shape()))
    source = {}  # expected name → name in the file (differs only for an alias)
    for name, alias in _ALIASES.items():
        if name not in found and alias in found:
            found[name], source[name] = found[alias], alias
    layout = detect_layout(cfg, found)
    todo = list(slots(cfg, layout))
    _check(cfg, layout, todo, found, (*ign, *source.values()))
    by_file: dict[Path, list[Slot]] = {}
    for s in todo:
        by_file.setdefault(found[s.hf][0], []).append(s)
    stacked = {f"layers.{i}.ffn.{m}" for i in cfg.moe_layers for m in ("w1", "w2", "v")}

    def empty(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if experts is not None and key in stacked:
            return experts.empty(shape, np.float32)
        return np.empty(shape, np.float32)

    w = _build(cfg, empty)
    w.store = experts
    for f, group in by_file.items():
        with safe_open(str(f), framework="np") as h:
            last: tuple[str, np.ndarray] | None = None  # a fused tensor feeds two slots in a row
            for s in group:
                if last is None or last[0] != s.hf:
                    a = _read_tensor(h, f, source.get(s.hf, s.hf)).astype(np.float32, copy=False)
                    last = (s.hf, a)
                dst = _get(w, s.key)
                dst = dst if s.expert is None else dst[s.expert]
                dst[...] = s.to_internal(last[1])
                if experts is not None:  # written to its file: not kept in memory
                    experts.drop(dst)
    return w


def _check(
    cfg: ModelConfig,
    layout: Layout,
    todo: list[Slot],
    found: dict[str, tuple[Path, tuple[int, ...]]],
    ignore: tuple[str, ...],
) -> None:
    problems = []
    expected = {s.hf: s.shape for s in todo}
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"missing tensor {name!r} (expected shape {shape})")
        elif found[name][1] != shape:
            problems.append(f"tensor {name!r} has shape {found[name][1]}, expected {shape}")
    for name, (_, shape) in found.items():
        if name not in expected and not name.startswith(ignore):
            problems.append(f"unexpected tensor {name!r} (shape {shape}) for {cfg.name!r}")
    if problems:
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise WeightsError(
            f"checkpoint does not match config {cfg.name!r} read as {layout.describe(cfg)} "
            f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems[:20]) + more
        )


def init_and_save(
    preset_or_config: str | ModelConfig, out: str | os.PathLike, seed: int = 0
) -> Path:
    """``secmoe model init PRESET OUT``: random weights for a preset, saved to ``OUT``.

    ``OUT`` gets a ``.safetensors`` suffix if it has none; the config JSON goes beside it.
    Returns the safetensors path. Memory: float32, e.g. ~1.2 GB for switch-base-8 and
    ~15 GB for switch-base-128 (see :func:`param_count`).
    """
    cfg = preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    return save_weights(init_random(cfg, seed), out)


# --------------------------------------------------------------------------------------------
# The bundled model
# --------------------------------------------------------------------------------------------


def load_bundled(experts: ExpertStore | None = None) -> ModelWeights:
    """The bundled trained digits model (``secmoe/model/bundled/``); its experts in
    ``experts`` if given."""
    return load_weights(BUNDLED_DIR / f"{BUNDLED_NAME}.safetensors", experts=experts)


def load_heldout() -> tuple[np.ndarray, np.ndarray]:
    """The bundled model's held-out split: inputs (N, 8, 8) float32 in [0, 1] (row tokens of
    8 pixels) and labels (N,) int64. Shipped as an .npz; no scikit-learn needed."""
    with np.load(BUNDLED_DIR / "heldout.npz") as z:
        x = z["pixels"].astype(np.float32) / np.float32(16.0)
        return x.reshape(-1, 8, 8), z["labels"].astype(np.int64)

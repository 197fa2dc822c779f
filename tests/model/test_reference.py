"""Float reference, fixed-point emulation, routing and capacity; the bundled model's accuracy."""

import math

import numpy as np
import pytest

from secmoe.model.config import preset
from secmoe.model.fixed import FixedOps, run_fixed
from secmoe.model.reference import (
    FloatOps,
    attention_mask,
    capacity_mask,
    forward,
    moe_forward,
    relative_position_buckets,
    rope_tables,
    routing,
    run,
)
from secmoe.model.weights import FFN, MoE, Norm, init_random, load_bundled, load_heldout

# Measured on the held-out split (359 images) when the model was trained: float accuracy
# 0.9805, fixed-point 0.9805 (same predictions); max |logit diff| 0.50, caused by 6 of 2872
# tokens whose top-1 expert flips on a near-tie of router logits; 0.093 on the other images.
FLOAT_ACCURACY_MIN = 0.97
FIXED_LOGIT_ERROR_MAX = 0.75  # fixed-point emulation vs exact float (approximations + rounding)
FIXED_LOGIT_ERROR_NO_FLIP_MAX = 0.15  # the same, on images whose routing did not change
FIXED_ROUNDING_ERROR_MAX = 0.03  # fixed-point vs float with the same approximations (0.009)


@pytest.fixture(scope="module")
def bundled():
    w = load_bundled()
    x, y = load_heldout()
    return w, x, y, run(w, x), run_fixed(w, x)


def test_bundled_float_accuracy(bundled):
    _, _, y, ref, _ = bundled
    assert (ref.output.argmax(-1) == y).mean() >= FLOAT_ACCURACY_MIN


def test_bundled_fixed_point_stays_close_to_float(bundled):
    w, x, y, ref, fx = bundled
    assert (fx.output.argmax(-1) == y).mean() >= FLOAT_ACCURACY_MIN
    assert (fx.output.argmax(-1) == ref.output.argmax(-1)).mean() >= 0.99
    assert np.abs(fx.output - ref.output).max() <= FIXED_LOGIT_ERROR_MAX
    approx = run(w, x, FloatOps(approximate=True)).output
    assert np.abs(fx.output - approx).max() <= FIXED_ROUNDING_ERROR_MAX
    # routing decisions survive fixed point, and where they do the outputs stay closer
    same = (fx.routing[0].experts == ref.routing[0].experts)[..., 0]
    assert same.mean() >= 0.99
    kept = same.all(axis=1)
    assert np.abs(fx.output - ref.output)[kept].max() <= FIXED_LOGIT_ERROR_NO_FLIP_MAX


def test_bundled_expert_load_is_balanced_and_input_dependent(bundled):
    _, _, y, ref, _ = bundled
    r = ref.routing[0]
    assert r.layer == 1 and r.experts.shape == (359, 8, 1)
    load = r.load()
    assert load.sum() == pytest.approx(1.0) and (load >= 0.15).all() and (load <= 0.35).all()
    # different digits prefer different experts
    favourite = {
        int(np.bincount(r.experts[y == c].ravel(), minlength=4).argmax()) for c in range(10)
    }
    assert len(favourite) >= 3


# --- routing ----------------------------------------------------------------------------------


def _moe_case(arch, top_k, seed=0, n_experts=4, d=8, d_ff=10):
    base = preset("digits-moe") if arch == "switch" else preset("mixtral-tiny")
    cfg = base.replace(
        n_experts=n_experts, top_k=top_k, d_model=d, n_heads=2, d_ff=d_ff, head_dim=None
    )
    rng = np.random.default_rng(seed)
    gated = cfg.gated
    w = MoE(
        router=rng.normal(0, 1, (d, n_experts)),
        w1=rng.normal(0, 0.5, (n_experts, d, d_ff)),
        w2=rng.normal(0, 0.5, (n_experts, d_ff, d)),
        v=rng.normal(0, 0.5, (n_experts, d, d_ff)) if gated else None,
    )
    x = rng.normal(0, 1, (3, 8, d))
    return cfg, w, x


def _expert(x, w: FFN, kind):
    h = x @ w.w1
    if kind == "swiglu":
        h = h / (1 + np.exp(-h))
    else:
        h = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in h])
    if w.v is not None:
        h = h * (x @ w.v)
    return h @ w.w2


def test_top1_switch_routing_matches_direct_computation():
    cfg, w, x = _moe_case("switch", 1)
    out, r = moe_forward(FloatOps(), x, w, cfg)
    for b in range(3):
        for t in range(8):
            logits = x[b, t] @ w.router
            p = np.exp(logits - logits.max())
            p /= p.sum()
            e = int(np.argmax(logits))
            assert r.experts[b, t, 0] == e
            assert r.gates[b, t, 0] == pytest.approx(p[e])
            assert np.allclose(r.probs[b, t], p)
            assert np.allclose(out[b, t], p[e] * _expert(x[b, t], w.expert(e), cfg.ffn))


def test_top2_mixtral_routing_matches_direct_computation():
    cfg, w, x = _moe_case("mixtral", 2, seed=1)
    out, r = moe_forward(FloatOps(), x, w, cfg)
    for b in range(3):
        for t in range(8):
            logits = x[b, t] @ w.router
            e1, e2 = np.argsort(-logits)[:2]
            g = np.exp(logits[[e1, e2]] - logits[e1])
            g /= g.sum()  # softmax over the two chosen logits = renormalized top-2 probs
            assert r.experts[b, t].tolist() == [e1, e2]
            assert np.allclose(r.gates[b, t], g)
            want = g[0] * _expert(x[b, t], w.expert(e1), "swiglu") + g[1] * _expert(
                x[b, t], w.expert(e2), "swiglu"
            )
            assert np.allclose(out[b, t], want)


def test_routing_ties_go_to_the_lower_index():
    idx = FloatOps().topk(np.array([[1.0, 3.0, 3.0, 0.0]]), 2)
    assert idx.tolist() == [[1, 2]]
    ring_idx = FixedOps().topk(FixedOps().encode(np.array([[1.0, 3.0, 3.0, 0.0]])), 1)
    assert ring_idx.tolist() == [[1]]


def test_capacity_mask_keeps_the_first_tokens_in_order():
    experts = np.array([[[0], [1], [0], [0], [1], [2]]])  # (B=1, T=6, k=1)
    assert capacity_mask(experts, 3, 2)[0, :, 0].tolist() == [True, True, True, False, True, True]
    top2 = np.array([[[0, 1], [1, 0], [1, 2]]])
    assert capacity_mask(top2, 3, 1)[0].tolist() == [[True, True], [False, False], [False, True]]


def test_capacity_drops_overflow_tokens_and_the_residual_carries_them():
    cfg, w, x = _moe_case("switch", 1, seed=2)
    w.router[:, :] = 0.0
    w.router[0, 0] = 50.0  # expert 0 wins where x[..., 0] > 0, else the tie → expert 1..3
    x[:, :, 0] = np.abs(x[:, :, 0]) + 0.1  # every token prefers expert 0
    cfg = cfg.replace(capacity_factor=1.0)  # C = ⌈8/4⌉ = 2 per sequence
    full, r_full = moe_forward(FloatOps(), x, w, cfg, capacity=False)
    capped, r = moe_forward(FloatOps(), x, w, cfg, capacity=True)
    assert (r.experts == 0).all()
    assert r.kept[:, :, 0].tolist() == [[True, True] + [False] * 6] * 3
    assert np.array_equal(capped[:, :2], full[:, :2])
    assert (capped[:, 2:] == 0).all()
    assert r.load().tolist() == [1.0, 0, 0, 0] and r_full.kept.all()


def test_capacity_in_the_full_model():
    w = init_random(preset("mixtral-tiny").replace(capacity_factor=0.25), seed=3)
    ids = np.random.default_rng(3).integers(0, 512, (2, 16))
    out, cap = run(w, ids), run(w, ids, capacity=True)
    assert cap.routing[0].kept.sum() < cap.routing[0].kept.size  # C = 1: most dropped
    assert not np.allclose(out.output, cap.output)
    assert np.array_equal(cap.routing[0].experts, out.routing[0].experts)


# --- whole-model checks against a direct, loop-based implementation ---------------------------


def test_relative_position_buckets_known_values():
    b = relative_position_buckets(1, 260, True, 32, 128)[0]  # query 0, keys at +0..+259
    assert b[:8].tolist() == [0, 17, 18, 19, 20, 21, 22, 23]  # exact buckets, + side offset 16
    assert b[8] == 24 and b[127] == 31 and b[259] == 31
    back = relative_position_buckets(260, 1, True, 32, 128)[:, 0]  # keys behind the query
    assert back[:8].tolist() == list(range(8)) and back[127] == 15 and back[259] == 15
    causal = relative_position_buckets(40, 1, False, 32, 128)[:, 0]
    assert causal[:16].tolist() == list(range(16)) and causal[17] == 16


#: A small Mixtral: GQA (4 query heads on 2 kv heads), RoPE, top-2 of 8.
MIXTRAL_SMALL = preset("mixtral-tiny").replace(
    d_model=16, d_ff=24, n_heads=4, n_kv_heads=2, vocab_size=40
)
#: A tiny Qwen3-MoE: q/k norms, top-3 of 8 without renormalisation (HF's default), a dense
#: first layer of its own width (mlp_only_layers), GQA, RoPE with a small θ.
QWEN3_TINY = MIXTRAL_SMALL.replace(
    name="qwen3-tiny",
    arch="qwen3_moe",
    d_ff=12,
    dense_d_ff=20,
    head_dim=8,
    top_k=3,
    moe_layers=(1,),
    rope_theta=100.0,
    qk_norm=True,
    norm_topk_prob=False,
    norm_eps=1e-6,
)


def _with_random_qk_norms(w, seed):
    """init_random gives q/k norm weights of 1; random ones show they are applied per dim."""
    rng = np.random.default_rng(seed)
    for layer in w.layers:
        if layer.attn.q_norm is not None:
            layer.attn.q_norm = rng.uniform(0.5, 1.5, layer.attn.q_norm.shape)
            layer.attn.k_norm = rng.uniform(0.5, 1.5, layer.attn.k_norm.shape)
    return w


def _norm(h, p, cfg):
    if cfg.norm == "layernorm":
        h = h - h.mean(-1, keepdims=True)
    out = h / np.sqrt((h * h).mean(-1, keepdims=True) + cfg.norm_eps) * p.weight
    return out if p.bias is None else out + p.bias


def _direct_forward(w, seq):
    """A second, loop-based implementation of the model for one sequence."""
    c = w.config
    t = len(seq)
    h = w.embed[seq].astype(float) if c.input == "tokens" else seq @ w.patch_proj + w.patch_bias
    if c.position == "learned":
        h = h + w.pos_embed[:t]
    dk, group = c.d_head, c.n_heads // c.kv_heads
    for layer in w.layers:
        a = _norm(h, layer.attn_norm, c)
        ctx = np.zeros((t, c.n_heads * dk))
        for hd in range(c.n_heads):
            kv = hd // group
            q = a @ layer.attn.wq[:, hd * dk : (hd + 1) * dk]
            k = a @ layer.attn.wk[:, kv * dk : (kv + 1) * dk]
            v = a @ layer.attn.wv[:, kv * dk : (kv + 1) * dk]
            if c.qk_norm:  # Qwen3: RMSNorm over the head dim, before RoPE
                q = _norm(q, Norm(layer.attn.q_norm), c.replace(norm="rmsnorm"))
                k = _norm(k, Norm(layer.attn.k_norm), c.replace(norm="rmsnorm"))
            if c.position == "rope":  # rotate pairs (i, i + dk/2) by pos·θ^(−2i/dk)
                half = dk // 2
                ang = np.arange(t)[:, None] * c.rope_theta ** (-2 * np.arange(half) / dk)
                for m in (q, k):
                    m1, m2 = m[:, :half].copy(), m[:, half:].copy()
                    m[:, :half] = m1 * np.cos(ang) - m2 * np.sin(ang)
                    m[:, half:] = m2 * np.cos(ang) + m1 * np.sin(ang)
            s = q @ k.T / (math.sqrt(dk) if c.scale_attention else 1.0)
            if c.position == "relative":
                rel = relative_position_buckets(
                    t, t, not c.causal, c.rel_buckets, c.rel_max_distance
                )
                s = s + w.rel_bias[rel, hd]
            if c.causal:
                for i in range(t):
                    for j in range(t):  # HF: causal and kv_idx > q_idx - sliding_window
                        window = c.sliding_window is None or j > i - c.sliding_window
                        if not (j <= i and window):
                            s[i, j] = -np.inf
            p = np.exp(s - s.max(-1, keepdims=True))
            ctx[:, hd * dk : (hd + 1) * dk] = (p / p.sum(-1, keepdims=True)) @ v
        h = h + ctx @ layer.attn.wo
        f = _norm(h, layer.ffn_norm, c)
        if isinstance(layer.ffn, MoE):
            y = np.zeros_like(f)
            for i in range(t):
                lg = f[i] @ layer.ffn.router
                chosen = np.argsort(-lg, kind="stable")[: c.top_k]
                g = (np.exp(lg - lg.max()) / np.exp(lg - lg.max()).sum())[chosen]
                if c.norm_topk_prob:  # HF: softmax over all, top-k, renormalise
                    g = g / g.sum()
                for e, ge in zip(chosen, g, strict=True):
                    y[i] += ge * _ffn_direct(f[i], layer.ffn.expert(e), c.ffn)
        else:
            y = np.array([_ffn_direct(f[i], layer.ffn, c.ffn) for i in range(t)])
        h = h + y
    h = _norm(h, w.final_norm, c)
    if c.head == "classifier":
        return h.mean(0) @ w.head + w.head_bias
    return h @ w.head if c.head == "lm" else h


def _ffn_direct(x, w, kind):
    u = x @ w.w1
    if kind == "relu":
        u = np.maximum(u, 0)
    elif kind == "swiglu":
        u = u / (1 + np.exp(-u))
    else:
        u = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in u])
    return (u * (x @ w.v) if w.v is not None else u) @ w.w2


@pytest.mark.parametrize(
    "cfg",
    [
        MIXTRAL_SMALL,
        preset("switch-base-8").replace(
            d_model=16,
            d_ff=24,
            n_heads=4,
            head_dim=4,
            n_layers=4,
            moe_layers=(1, 3),
            vocab_size=40,
            n_experts=3,
        ),
        preset("switch-base-8").replace(
            d_model=16,
            d_ff=24,
            n_heads=2,
            head_dim=None,
            n_layers=2,
            vocab_size=40,
            moe_layers=(1,),
            ffn="gated-gelu",
            norm="layernorm",
            top_k=2,
        ),
        MIXTRAL_SMALL.replace(n_kv_heads=1, rope_theta=30.0, sliding_window=3),
        QWEN3_TINY,
        QWEN3_TINY.replace(norm_topk_prob=True, top_k=5, sliding_window=4),
    ],
    ids=[
        "mixtral",
        "switch-relu-rms",
        "switch-gated-ln-top2",
        "mixtral-mqa-window",
        "qwen3",
        "qwen3-norm-topk-window",
    ],
)
def test_forward_matches_direct_implementation(cfg):
    w = _with_random_qk_norms(init_random(cfg, seed=11), seed=11)
    ids = np.random.default_rng(11).integers(0, 40, (2, 7))
    got = forward(w, ids)
    for b in range(2):
        assert np.allclose(got[b], _direct_forward(w, ids[b]), atol=1e-9)
    assert np.allclose(forward(w, ids[1]), got[1])  # a single sequence = batch of one


def test_bundled_forward_matches_direct_implementation(bundled):
    w, x, _, ref, _ = bundled
    for i in (0, 17, 200):
        assert np.allclose(ref.output[i], _direct_forward(w, x[i].astype(float)), atol=1e-9)


def test_attention_mask_causal_and_sliding_window():
    assert attention_mask(preset("switch-base-8"), 4) is None  # bidirectional
    causal = preset("mixtral-tiny")
    assert attention_mask(causal, 4).tolist() == np.tril(np.ones((4, 4), bool)).tolist()
    # transformers' sliding_window_overlay: key j visible from query i iff j > i − W (and j ≤ i)
    m = attention_mask(causal.replace(sliding_window=3), 6)
    assert m[5].tolist() == [False, False, False, True, True, True]
    assert m[1].tolist() == [True, True, False, False, False, False]
    assert (m.sum(-1) == [1, 2, 3, 3, 3, 3]).all()
    assert (attention_mask(causal.replace(sliding_window=1), 5) == np.eye(5, dtype=bool)).all()


def test_rope_tables_rotate_pairs_and_the_fixed_point_rope_matches_float():
    cfg = preset("mixtral-tiny").replace(head_dim=8, rope_theta=100.0)
    cos, sin = rope_tables(cfg, 6)
    x = np.random.default_rng(4).normal(0, 2, (2, 3, 6, 8))
    y = FloatOps().rope(x, cos, sin)

    def pair(v):  # squared norm of each rotated pair (i, i + d/2): a rotation keeps it
        return v[..., :4] ** 2 + v[..., 4:] ** 2

    assert np.allclose(pair(y), pair(x)) and np.allclose(y[..., 0, :], x[..., 0, :])  # position 0
    assert not np.allclose(y[..., 1:, :], x[..., 1:, :])
    fx = FixedOps()
    got = fx.decode(fx.rope(fx.encode(x), cos, sin))
    assert np.abs(got - y).max() <= 16 * 2.0**-18  # encoding of x and the tables, one floor


def test_fixed_point_emulation_on_a_decoder():
    w = init_random(preset("mixtral-tiny"), seed=5)
    ids = np.random.default_rng(5).integers(0, 512, (2, 16))
    approx = run(w, ids, FloatOps(approximate=True))
    fx = run_fixed(w, ids)
    assert np.abs(fx.output - approx.output).max() <= 0.02
    assert np.abs(fx.output - forward(w, ids)).max() <= 0.1
    for a, b in zip(fx.routing, approx.routing, strict=True):
        assert (a.experts == b.experts).mean() >= 0.95


def test_routing_inspection_and_input_checks():
    w = init_random(preset("digits-moe"), seed=1)
    x = np.random.default_rng(1).random((8, 8))
    (r,) = routing(w, x)
    assert r.experts.shape == (1, 8, 1) and r.gates.shape == (1, 8, 1)
    assert np.allclose(r.probs.sum(-1), 1) and np.allclose(r.gates[..., 0], r.probs.max(-1))
    with pytest.raises(ValueError, match="do not fit"):
        forward(w, np.zeros((8, 7)))
    with pytest.raises(ValueError, match="seq_len"):
        forward(w, np.zeros((9, 8)))

"""Train the bundled digits MoE model (``secmoe/model/bundled/``).

Data: scikit-learn's bundled 8×8 digits (offline), each image as 8 row tokens of 8 pixels
scaled to [0, 1]. Split: a fixed permutation (numpy seed 0); the first 20% is the held-out split,
shipped as ``heldout.npz`` (pixels 0..16 as uint8, labels, original indices) so that secmoe does
not need scikit-learn at run time.

Model: the ``digits-moe`` preset: linear patch projection + learned positions, a 2-layer
Switch-style pre-norm encoder (layer 0 dense, layer 1 MoE with 4 experts, top-1, gated-GeLU,
LayerNorm, d_model 32, 2 heads, d_ff 64), mean pooling, a linear head to 10 classes. Loss:
cross-entropy + 0.01 × the Switch load-balancing loss + 0.001 × the router z-loss. Training:
AdamW, one-cycle learning rate (peak 3e-3), batch 64, 120 epochs, random ±1 pixel shifts and
light Gaussian noise; seeded, single-threaded, about 25 s on one CPU core.

The trained weights are exported with secmoe's own writer, then checked: the numpy reference
must reproduce the PyTorch predictions, the fixed-point emulation is evaluated, and the
measured norm range must lie inside the preset's ``norm_range``.

Run::

    python3 -m venv /tmp/trainenv
    /tmp/trainenv/bin/pip install torch==2.13.0 scikit-learn numpy safetensors
    PYTHONPATH=. /tmp/trainenv/bin/python scripts/train_bundled_model.py

(or install secmoe with its ``train`` extra and run the script with that Python).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from secmoe.model.config import preset
from secmoe.model.fixed import run_fixed
from secmoe.model.reference import measure_ranges, run
from secmoe.model.weights import (
    BUNDLED_DIR,
    BUNDLED_NAME,
    FFN,
    Attention,
    Layer,
    ModelWeights,
    MoE,
    Norm,
    load_weights,
    save_weights,
)

SPLIT_SEED = 0
HELDOUT_FRACTION = 0.2


def load_data() -> tuple[np.ndarray, ...]:
    """(train pixels, train labels, held-out pixels, held-out labels, held-out indices)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.data.astype(np.uint8)  # (1797, 64), values 0..16
    labels = digits.target.astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = round(HELDOUT_FRACTION * len(labels))
    test, train = perm[:n_test], perm[n_test:]
    return pixels[train], labels[train], pixels[test], labels[test], test


def build_torch_model(cfg, torch):  # type: ignore[no-untyped-def]
    nn, F = torch.nn, torch.nn.functional
    d, h, dk, dff, e = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_ff, cfg.n_experts

    def lin(n_in: int, n_out: int, std: float | None = None) -> torch.nn.Linear:
        m = nn.Linear(n_in, n_out, bias=False)
        nn.init.normal_(m.weight, 0.0, std if std is not None else n_in**-0.5)
        return m

    class Block(nn.Module):
        def __init__(self, moe: bool) -> None:
            super().__init__()
            self.moe = moe
            self.ln1, self.ln2 = (
                nn.LayerNorm(d, eps=cfg.norm_eps),
                nn.LayerNorm(d, eps=cfg.norm_eps),
            )
            # T5 style: no 1/sqrt(dk) in the scores, folded into the query init.
            self.q, self.k, self.v = (
                lin(d, h * dk, (d * dk) ** -0.5),
                lin(d, h * dk),
                lin(d, h * dk),
            )
            self.o = lin(h * dk, d)
            n = e if moe else 1
            self.w1 = nn.Parameter(torch.randn(n, d, dff) * d**-0.5)
            self.wv = nn.Parameter(torch.randn(n, d, dff) * d**-0.5)
            self.w2 = nn.Parameter(torch.randn(n, dff, d) * dff**-0.5)
            if moe:
                self.router = lin(d, e, 0.02)

        def attention(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = (m(x).view(b, t, h, dk).transpose(1, 2) for m in (self.q, self.k, self.v))
            p = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
            return self.o((p @ v).transpose(1, 2).reshape(b, t, h * dk))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            x = x + self.attention(self.ln1(x))
            f = self.ln2(x)
            # every expert on every token (tiny), then pick: exact top-1 semantics
            y = torch.einsum("btd,edf->btef", f, self.w1)
            y = F.gelu(y) * torch.einsum("btd,edf->btef", f, self.wv)
            y = torch.einsum("btef,efd->bted", y, self.w2)
            zero = x.new_zeros(())
            if not self.moe:
                return x + y[:, :, 0], zero, zero
            logits = self.router(f)
            probs = torch.softmax(logits, dim=-1)
            idx = probs.argmax(dim=-1)
            gate = probs.gather(-1, idx[..., None])
            out = y.gather(2, idx[..., None, None].expand(-1, -1, 1, d))[:, :, 0] * gate
            frac = F.one_hot(idx, e).float().mean(dim=(0, 1))
            balance = e * torch.sum(frac * probs.mean(dim=(0, 1)))
            z = torch.logsumexp(logits, dim=-1).pow(2).mean()
            return x + out, balance, z

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Linear(cfg.patch_dim, d)
            self.pos = nn.Parameter(torch.randn(cfg.seq_len, d) * 0.1)
            self.blocks = nn.ModuleList(Block(cfg.is_moe(i)) for i in range(cfg.n_layers))
            self.ln_f = nn.LayerNorm(d, eps=cfg.norm_eps)
            self.head = nn.Linear(d, cfg.n_classes)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            h_ = self.patch(x) + self.pos
            aux_b, aux_z = x.new_zeros(()), x.new_zeros(())
            for blk in self.blocks:
                h_, b_, z_ = blk(h_)
                aux_b, aux_z = aux_b + b_, aux_z + z_
            return self.head(self.ln_f(h_).mean(dim=1)), aux_b, aux_z

    return Net()


def shift(x, torch):  # type: ignore[no-untyped-def]
    """Random translation of each 8×8 image by up to one pixel (zero fill)."""
    b = x.shape[0]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (b,)), torch.randint(0, 3, (b,))
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, :, None].expand(b, 8, 10)
    out = padded.gather(1, rows)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, :].expand(b, 8, 8)
    return out.gather(2, cols)


def export(net, cfg) -> ModelWeights:  # type: ignore[no-untyped-def]
    """PyTorch parameters → secmoe's structure (math layout: x @ W)."""

    def a(t) -> np.ndarray:  # type: ignore[no-untyped-def]
        return t.detach().cpu().numpy().astype(np.float32)

    layers = []
    for blk in net.blocks:
        attn = Attention(a(blk.q.weight.T), a(blk.k.weight.T), a(blk.v.weight.T), a(blk.o.weight.T))
        if blk.moe:
            ffn = MoE(a(blk.router.weight.T), a(blk.w1), a(blk.w2), a(blk.wv))
        else:
            ffn = FFN(a(blk.w1[0]), a(blk.w2[0]), a(blk.wv[0]))
        layers.append(
            Layer(
                Norm(a(blk.ln1.weight), a(blk.ln1.bias)),
                attn,
                Norm(a(blk.ln2.weight), a(blk.ln2.bias)),
                ffn,
            )
        )
    return ModelWeights(
        config=cfg,
        layers=layers,
        final_norm=Norm(a(net.ln_f.weight), a(net.ln_f.bias)),
        patch_proj=a(net.patch.weight.T),
        patch_bias=a(net.patch.bias),
        pos_embed=a(net.pos),
        head=a(net.head.weight.T),
        head_bias=a(net.head.bias),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--balance", type=float, default=0.01, help="load-balancing loss weight")
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR)
    args = ap.parse_args()

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    cfg = preset(BUNDLED_NAME)
    xtr, ytr, xte, yte, test_idx = load_data()

    def tokens(p: np.ndarray) -> np.ndarray:
        return (p.astype(np.float32) / 16.0).reshape(-1, cfg.seq_len, cfg.patch_dim)

    Xtr, Ytr = torch.tensor(tokens(xtr)), torch.tensor(ytr)
    Xte = torch.tensor(tokens(xte))
    net = build_torch_model(cfg, torch)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(Ytr) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=args.epochs * steps_per_epoch, pct_start=0.1
    )
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(Ytr))
        for s in range(steps_per_epoch):
            bi = perm[s * 64 : (s + 1) * 64]
            xb = shift(Xtr[bi], torch) + 0.02 * torch.randn_like(Xtr[bi])  # augmentation
            logits, bal, z = net(xb)
            loss = torch.nn.functional.cross_entropy(logits, Ytr[bi]) + args.balance * bal
            loss = loss + 1e-3 * z
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 20 == 0:
            net.eval()
            with torch.no_grad():
                acc = (net(Xte)[0].argmax(-1).numpy() == yte).mean()
            print(
                f"epoch {epoch + 1}: loss {loss.item():.4f} balance {bal.item():.3f} "
                f"held-out acc {acc:.4f} ({time.time() - t0:.0f} s)"
            )

    net.eval()
    with torch.no_grad():
        torch_pred = net(Xte)[0].argmax(-1).numpy()
    weights = export(net, cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    path = save_weights(weights, args.out / f"{BUNDLED_NAME}.safetensors")
    np.savez_compressed(
        args.out / "heldout.npz", pixels=xte, labels=yte.astype(np.uint8), indices=test_idx
    )

    # Checks with secmoe's own numpy code, on the file just written.
    w = load_weights(path)
    ref = run(w, tokens(xte))
    pred = ref.output.argmax(-1)
    fixed = run_fixed(w, tokens(xte))
    fpred = fixed.output.argmax(-1)
    print(f"torch held-out accuracy      {(torch_pred == yte).mean():.4f}")
    print(
        f"reference (float) accuracy   {(pred == yte).mean():.4f}  "
        f"(agrees with torch on {(pred == torch_pred).mean():.4f})"
    )
    print(
        f"fixed-point accuracy         {(fpred == yte).mean():.4f}  "
        f"(agrees with float on {(fpred == pred).mean():.4f}, "
        f"max |logit diff| {np.abs(fixed.output - ref.output).max():.4f})"
    )
    for r in ref.routing:
        print(f"layer {r.layer} expert load (held-out): {np.round(r.load(), 3).tolist()}")
    rng_tr, rng_te = measure_ranges(w, tokens(xtr)), measure_ranges(w, tokens(xte))
    lo, hi = (
        min(rng_tr["norm_min"], rng_te["norm_min"]),
        max(rng_tr["norm_max"], rng_te["norm_max"]),
    )
    print(
        f"norm rsqrt argument range [{lo:.4g}, {hi:.4g}] = [2^{math.log2(lo):.2f}, "
        f"2^{math.log2(hi):.2f}]; preset norm_range {cfg.norm_range}"
    )
    print(f"largest |activation| {max(rng_tr['abs_max'], rng_te['abs_max']):.3g}")
    if not (2.0 ** cfg.norm_range[0] <= lo / 2 and hi * 2 <= 2.0 ** cfg.norm_range[1]):
        raise SystemExit("the preset's norm_range does not cover the measured range ×2: widen it")
    if (pred != torch_pred).mean() > 0.005:
        raise SystemExit("the numpy reference disagrees with PyTorch")
    print(f"wrote {path} ({path.stat().st_size} bytes) and {args.out / 'heldout.npz'}")


if __name__ == "__main__":
    main()

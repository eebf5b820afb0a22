"""A self-contained lab for tuning the Tiny Shakespeare recipe: char data, a configurable GPT, a loop.

Throwaway-grade on purpose (it exists to compare settings fast, before the project's model and loop were
ready); the findings go into configs/shakespeare-char.yaml and docs/experiments.md, recipe.

    python experiments/recipe_lab.py --steps 300 d_model=128 n_layers=4 ctx=64 batch=48 muon_lr=0.02
    python experiments/recipe_lab.py --seconds 164 ...      # wall-clock budget, lr decays by time

Prints one JSON line: settings, steps, ms/step, val loss over the whole validation split (last 10% of the
file, consecutive windows of the context length), appended to experiments/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.train.optim import OptimConfig, build_optimizer

DEFAULTS = {
    "n_layers": 4,
    "d_model": 128,
    "n_heads": 4,
    "ctx": 64,
    "batch": 48,
    "mlp": "relu2",  # relu2 | swiglu | gelu
    "d_ff_mult": 4.0,
    "qk_norm": 0,
    "tied": 0,
    "zero_init": 0,  # zero-init output projections (modded-nanogpt)
    "softcap": 0.0,  # logit soft-capping (0: off)
    "optim": "muon",
    "lr": 6e-3,
    "embed_lr": 0.0,  # 0: lr
    "head_lr": 0.0,  # 0: lr
    "scalar_lr": 0.0,  # 0: lr
    "muon_lr": 0.02,
    "momentum": 0.95,
    "ns_steps": 5,
    "ns_dtype": "bfloat16",
    "wd": 0.0,
    "warmup": 20,
    "decay_frac": 0.5,  # wsd: final fraction decaying linearly
    "min_lr": 0.0,
    "bf16": 0,
    "threads": 2,
    "seed": 0,
    "init_std": 0.02,
    "dropout": 0.0,  # project model only
    "muon_wd": 0.0,
    "impl": "lab",  # lab (LabGPT below) | project (scratchlm.model.Transformer)
    "bigram": 0,  # lab: add an embedding of (previous char, char) to the input
    "trigram": 0,  # lab: add a hashed embedding of the last three chars (ngram_buckets rows)
    "quadgram": 0,  # lab: add a hashed embedding of the last four chars
    "ngram_buckets": 8192,
    "ngram_scale": 1.0,  # lab: n-gram tables' output times this, init std divided by it (Adam lr x scale)
    "value_embed": 0,  # lab: per-layer token embeddings added to the values (modded-nanogpt)
    "unet": 0,  # lab: skip connections from the first half of the blocks to the second (modded-nanogpt)
}


def load_data():
    path = Path(os.environ.get("SCRATCHLM_DATA", "/work/shared/data")) / "tinyshakespeare.txt"
    text = path.read_text()
    chars = sorted(set(text))
    lut = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lut[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(chars)


class Block(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        d, self.h = c["d_model"], c["n_heads"]
        self.c = c
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        hidden = int(c["d_ff_mult"] * d)
        if c["mlp"] == "swiglu":
            hidden = int(2 * hidden / 3)
            self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        self.n1 = nn.RMSNorm(d)
        self.n2 = nn.RMSNorm(d)
        if c["qk_norm"]:
            self.qn = nn.RMSNorm(d // self.h)
            self.kn = nn.RMSNorm(d // self.h)
        if c["zero_init"]:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.down.weight)

    def forward(self, x, cos, sin, ve=None):
        B, T, D = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, 3, self.h, D // self.h).unbind(2)  # (B, T, H, hd) each
        if ve is not None:
            v = v + ve.view(B, T, self.h, D // self.h)
        if self.c["qk_norm"]:
            q, k = self.qn(q), self.kn(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        h = self.n2(x)
        mlp = self.c["mlp"]
        if mlp == "swiglu":
            a = F.silu(self.gate(h)) * self.up(h)
        elif mlp == "gelu":
            a = F.gelu(self.up(h), approximate="tanh")
        else:
            a = F.relu(self.up(h)).square()
        return x + self.down(a)


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class LabGPT(nn.Module):
    def __init__(self, c: dict, vocab: int):
        super().__init__()
        self.c = c
        self.config = type("Cfg", (), {"vocab_size": vocab})()
        self.embed = nn.Embedding(vocab, c["d_model"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["n_layers"]))
        self.norm = nn.RMSNorm(c["d_model"])
        self.head = nn.Linear(c["d_model"], vocab, bias=False)
        d = c["d_model"]
        self.vocab = vocab
        if c["bigram"]:
            self.bigram = nn.Embedding((vocab + 1) * vocab, d)
        if c["trigram"]:
            self.trigram = nn.Embedding(c["ngram_buckets"], d)
        if c["quadgram"]:
            self.quadgram = nn.Embedding(c["ngram_buckets"], d)
        if c["value_embed"]:
            self.ve = nn.ModuleList(nn.Embedding(vocab, d) for _ in range(c["n_layers"]))
        if c["unet"]:
            self.skip_w = nn.Parameter(torch.ones(c["n_layers"] // 2))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)) and m.weight.abs().sum() > 0:
                nn.init.normal_(m.weight, std=c["init_std"])
        for name in ("bigram", "trigram", "quadgram"):
            if c[name]:
                nn.init.normal_(getattr(self, name).weight, std=c["init_std"] / c["ngram_scale"])
        if c["tied"]:
            self.head.weight = self.embed.weight
        hd = c["d_model"] // c["n_heads"]
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.arange(c["ctx"]).float()[:, None] * inv  # (T, hd/2)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, idx):
        T = idx.size(1)
        x = self.embed(idx)
        V = self.vocab
        if self.c["bigram"] or self.c["trigram"] or self.c["quadgram"]:
            p1 = F.pad(idx[:, :-1], (1, 0), value=V)  # previous char, V where the window starts
        if self.c["bigram"]:
            x = x + self.c["ngram_scale"] * self.bigram(p1 * V + idx)
        if self.c["trigram"]:
            p2 = F.pad(p1[:, :-1], (1, 0), value=V)
            h = ((p2 * 1000003 + p1) * 999983 + idx) % self.c["ngram_buckets"]
            x = x + self.c["ngram_scale"] * self.trigram(h)
        if self.c["quadgram"]:
            p2 = F.pad(p1[:, :-1], (1, 0), value=V)
            p3 = F.pad(p2[:, :-1], (1, 0), value=V)
            h = (((p3 * 1000003 + p2) * 999983 + p1) * 1000033 + idx) % self.c["ngram_buckets"]
            x = x + self.c["ngram_scale"] * self.quadgram(h)
        cos, sin = self.cos[:T], self.sin[:T]
        n = len(self.blocks)
        skips = []
        for i, b in enumerate(self.blocks):
            if self.c["unet"] and i >= n - n // 2:
                x = x + self.skip_w[n - 1 - i] * skips.pop()
            x = b(x, cos, sin, self.ve[i](idx) if self.c["value_embed"] else None)
            if self.c["unet"] and i < n // 2:
                skips.append(x)
        logits = self.head(self.norm(x))
        if self.c["softcap"]:
            cap = self.c["softcap"]
            logits = cap * torch.tanh(logits / cap)
        return logits


def project_model(c: dict, vocab: int) -> nn.Module:
    from scratchlm.model import ModelConfig, Transformer

    d_ff = int(c["d_ff_mult"] * c["d_model"] * (2 / 3 if c["mlp"] == "swiglu" else 1))
    cfg = ModelConfig(
        vocab_size=vocab, context_length=c["ctx"], n_layers=c["n_layers"], d_model=c["d_model"],
        n_heads=c["n_heads"], d_ff=d_ff, mlp=c["mlp"], qk_norm=bool(c["qk_norm"]),
        tie_embeddings=bool(c["tied"]), init_std=c["init_std"], dropout=c["dropout"],
    )  # fmt: skip
    return Transformer(cfg)


@torch.no_grad()
def val_loss(model, val, ctx, batch=256, max_windows=0):
    """Mean cross-entropy over the validation split in consecutive, non-overlapping ctx windows."""
    model.eval()
    n = (len(val) - 1) // ctx
    if max_windows:
        n = min(n, max_windows)
    x = val[: n * ctx].view(n, ctx)
    y = val[1 : n * ctx + 1].view(n, ctx)
    total = 0.0
    for i in range(0, n, batch):
        logits = model(x[i : i + batch])
        total += F.cross_entropy(
            logits.flatten(0, 1).float(), y[i : i + batch].flatten(), reduction="sum"
        ).item()
    model.train()
    return total / (n * ctx)


def lr_factor(step, progress, c):
    warm = min(1.0, (step + 1) / c["warmup"]) if c["warmup"] else 1.0
    start = 1 - c["decay_frac"]
    shape = 1.0 if progress <= start else 1 - (1 - c["min_lr"]) * (progress - start) / c["decay_frac"]
    return warm * shape


def run(c: dict, steps: int = 0, seconds: float = 0.0, curve_every: float = 0.0) -> dict:
    torch.set_num_threads(c["threads"])
    torch.manual_seed(c["seed"])
    train, val, vocab = load_data()
    model = LabGPT(c, vocab) if c["impl"] == "lab" else project_model(c, vocab)
    ocfg = OptimConfig(
        name=c["optim"],
        lr=c["lr"],
        embed_lr=c["embed_lr"] or None,
        head_lr=c["head_lr"] or None,
        scalar_lr=c["scalar_lr"] or None,
        muon_lr=c["muon_lr"],
        muon_momentum=c["momentum"],
        muon_ns_steps=c["ns_steps"],
        muon_ns_dtype=c["ns_dtype"],
        weight_decay=c["wd"],
        muon_weight_decay=c["muon_wd"],
    )
    opt = build_optimizer(model, ocfg)
    T, B = c["ctx"], c["batch"]
    offsets = torch.arange(T + 1)
    gen = torch.Generator().manual_seed(c["seed"])
    step, t_train, cpu_train, curve = 0, 0.0, 0.0, []
    next_curve = curve_every
    while True:
        t0, c0 = time.perf_counter(), time.process_time()
        progress = step / steps if steps else t_train / seconds
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(step, progress, c)
        starts = torch.randint(0, len(train) - T - 1, (B,), generator=gen)
        chunk = train[starts[:, None] + offsets]  # (B, T+1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(c["bf16"])):
            logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        t_train += time.perf_counter() - t0
        cpu_train += time.process_time() - c0
        if curve_every and t_train >= next_curve:  # eval time is not counted in t_train
            curve.append((t_train, step, val_loss(model, val, T, max_windows=400)))
            next_curve += curve_every
    t0 = time.perf_counter()
    vl = val_loss(model, val, T)
    eval_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return {
        **c,
        "steps": step,
        "train_s": round(t_train, 1),
        "ms_per_step": round(1000 * t_train / step, 1),
        "cpu_ms_per_step": round(1000 * cpu_train / step, 1),
        "tokens": step * B * T,
        "params": params,
        "val_loss": round(vl, 4),
        "eval_s": round(eval_s, 1),
        "last_train_loss": round(loss.item(), 4),
        "curve": curve,
    }


def parse_settings(items: list[str]) -> dict:
    c = dict(DEFAULTS)
    for item in items:
        k, v = item.split("=", 1)
        assert k in c, f"unknown setting {k}"
        c[k] = type(c[k])(v) if not isinstance(c[k], bool) else bool(int(v))
    return c


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--tag", default="")
    ap.add_argument("settings", nargs="*")
    args = ap.parse_args()
    c = parse_settings(args.settings)
    t0 = time.time()
    out = run(c, steps=args.steps, seconds=args.seconds)
    out["tag"], out["wall_s"] = args.tag, round(time.time() - t0, 1)
    out["load"] = os.getloadavg()[0]
    changed = {k: out[k] for k in DEFAULTS if out[k] != DEFAULTS[k]}
    print(
        json.dumps(
            {
                "tag": args.tag,
                "changed": changed,
                **{
                    k: out[k]
                    for k in (
                        "steps",
                        "ms_per_step",
                        "cpu_ms_per_step",
                        "tokens",
                        "params",
                        "val_loss",
                        "last_train_loss",
                        "wall_s",
                        "load",
                    )
                },
            }
        )
    )
    with open(Path(__file__).with_name("results.jsonl"), "a") as f:
        f.write(json.dumps(out) + "\n")

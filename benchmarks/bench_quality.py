"""Quality per CPU-second: train the shakespeare-char recipe for a wall-clock budget, measure, compare.

    python benchmarks/bench_quality.py                       # 164 s, the recipe in configs/
    python benchmarks/bench_quality.py --seconds 60 --set model.n_layers=3 --png /tmp/q.png

The run goes through the real `scratchlm.train.pretrain` (the same code as `scratchlm pretrain` and the
demo), with the time budget that ends it and decays its learning rate. Afterwards the final model is
scored again here, independently of the loop's own evaluation, with the issue's metric written out in
full: the mean cross-entropy (nats per character) over the WHOLE validation split (the last 10% of the
file) cut into consecutive windows of the model's context length, in float32.

The peer: nanoGPT's CPU recipe for Tiny Shakespeare (`--device=cpu --compile=False --eval_iters=20
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0`) took 164 s on this machine kind (2 cores) and reached 1.898 on the
same metric (issue 4). nanoGPT is not installed here (no network), so that figure is quoted, not re-run;
the budget defaults to its wall-clock so the two numbers are side by side.

Prints our loss beside nanoGPT's and the 1.50 goal, and writes a loss-versus-time PNG.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchlm.fileio import atomic_path
from scratchlm.train.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
NANOGPT_SECONDS, NANOGPT_LOSS = 164.0, 1.898  # measured on the 2-core machine (issue 4)
GOAL = 1.50
_MIRROR = ROOT.parent / "shared" / "data"  # the offline mirror beside a development checkout, as in tests
if "SCRATCHLM_DATA" not in os.environ and _MIRROR.is_dir():
    os.environ["SCRATCHLM_DATA"] = str(_MIRROR)


@torch.no_grad()
def whole_split_loss(model: torch.nn.Module, ids: list[int], context: int, batch: int = 128) -> float:
    """Mean nats per predicted character over consecutive `context` windows of the whole split (float32).

    Tokens 1..n-1 are each predicted once, from the start of their window; the last window may be short.
    """
    model.eval()
    data = torch.tensor(ids, dtype=torch.long)
    n_pred = len(data) - 1
    total = 0.0
    starts = list(range(0, n_pred, context))
    full = [s for s in starts if s + context <= n_pred]
    for i in range(0, len(full), batch):
        rows = torch.stack([data[s : s + context + 1] for s in full[i : i + batch]])  # (b, T+1)
        logits = model(rows[:, :-1]).float()  # (b, T, V)
        total += F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
    for s in starts[len(full) :]:
        row = data[s : n_pred + 1][None]  # (1, n_pred - s + 1)
        logits = model(row[:, :-1]).float()
        total += F.cross_entropy(logits.flatten(0, 1), row[:, 1:].flatten(), reduction="sum").item()
    return total / n_pred


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    run = RunDir(run_dir)
    return run.read_metrics("train"), run.read_metrics("eval")


def plot(train: list[dict], evals: list[dict], final_loss: float, seconds: float, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([r["elapsed_s"] for r in train], [r["loss"] for r in train], lw=1, label="scratchlm train loss")
    if evals:
        ax.plot(
            [r["elapsed_s"] for r in evals], [r["val_loss"] for r in evals], "o-", label="scratchlm val loss"
        )
    ax.plot(
        [seconds], [final_loss], "*", ms=14, color="tab:green", label=f"scratchlm final val {final_loss:.3f}"
    )
    ax.plot([NANOGPT_SECONDS], [NANOGPT_LOSS], "s", ms=9, color="tab:red", label=f"nanoGPT {NANOGPT_LOSS}")
    ax.axhline(GOAL, ls="--", color="gray", lw=1, label=f"goal {GOAL}")
    switch = next((r for r in train if r.get("context") != train[0].get("context")), None)
    if switch is not None:  # the context curriculum's switch to the model's full context
        label = f"context {switch['context']} from here"
        ax.axvline(switch["elapsed_s"], ls=":", color="tab:purple", lw=1, label=label)
    ax.set_xlabel("wall-clock seconds (2 CPU cores)")
    ax.set_ylabel("nats per character")
    ax.set_ylim(1.0, 3.0)  # train loss dips to ~1.2 on the last steps
    ax.set_title("Tiny Shakespeare, char-level: loss vs time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "shakespeare-char.yaml"))
    ap.add_argument("--seconds", type=float, default=NANOGPT_SECONDS, help="wall-clock training budget")
    ap.add_argument(
        "--steps",
        type=int,
        default=0,
        help="train N steps instead (a busy machine: loss per step, not per second)",
    )
    ap.add_argument("--out", default="", help="run folder (default: a fresh temporary folder)")
    ap.add_argument("--png", default=str(ROOT / "docs" / "quality-recipe.png"))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the machine has 2 cores)")
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", help="recipe overrides, key=value")
    args = ap.parse_args()

    from scratchlm.data import load_corpus
    from scratchlm.model.folder import load_model
    from scratchlm.train import load_pretrain_config, pretrain

    torch.set_num_threads(args.threads)
    budget = ["budget.max_steps=0", "budget.max_tokens=0", f"budget.max_time={args.seconds}s"]
    if args.steps:
        budget = [f"budget.max_steps={args.steps}", "budget.max_tokens=0", "budget.max_time="]
    cfg = load_pretrain_config(
        args.config, [*budget, "logging.progress=false", "eval.sample_tokens=0", *args.overrides]
    )
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-quality-")) / "run"
    started = time.perf_counter()
    result = pretrain(cfg, out, say=lambda *a: None)
    total_s = time.perf_counter() - started

    model, tokenizer, _ = load_model(result.final_dir, device="cpu")
    _, val_docs = load_corpus(cfg.data.corpus).split()
    ids = tokenizer.encode_ordinary("".join(val_docs))
    ours = whole_split_loss(model, ids, model.config.context_length)
    train, evals = read_metrics(out)
    trained_s = train[-1]["elapsed_s"] if args.steps and train else args.seconds
    plot(train, evals, ours, trained_s, Path(args.png))

    tokens_per_s = result.tokens / trained_s
    print(f"recipe {args.config} {' '.join(args.overrides)}")
    print(
        f"trained {result.step} steps, {result.tokens:,} tokens in {trained_s:.0f} s "
        f"({tokens_per_s:,.0f} tokens/s); run with final evaluation {result.elapsed_s:.1f} s, "
        f"whole command {total_s:.1f} s"
    )
    print(f"val loss (whole split, {model.config.context_length}-char windows, float32): {ours:.4f}")
    print(f"val loss (the loop's own evaluation):                          {result.val_loss:.4f}")
    print(f"nanoGPT CPU recipe at {NANOGPT_SECONDS:.0f} s: {NANOGPT_LOSS}   goal: <= {GOAL}")
    verdict = "meets" if ours <= GOAL else "misses"
    print(f"ours - nanoGPT = {ours - NANOGPT_LOSS:+.4f}; {verdict} the goal by {abs(ours - GOAL):.4f}")
    print(f"curve: {args.png}   run: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

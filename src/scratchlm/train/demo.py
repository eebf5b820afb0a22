"""`scratchlm demo`: Tiny Shakespeare to a character-level model that writes pseudo-Shakespeare, on a budget.

The README's first command, so it must work on a fresh machine: the corpus comes from the cache, the
$SCRATCHLM_DATA mirror, or a download; with none of them (offline) it says so in one line and trains on
`pystdlib` (the Python standard library, always on disk) instead. It runs the `shakespeare-char` recipe
with a wall-clock budget, prints the validation loss and a sample, and tells where the run is and how
to sample more.
"""

from __future__ import annotations

import time
from pathlib import Path

from scratchlm.data import fetch
from scratchlm.errors import ScratchError
from scratchlm.train.causal_lm import pretrain
from scratchlm.train.config import load_pretrain_config
from scratchlm.train.trainer import RunResult

RECIPE = "shakespeare-char"


def pick_corpus(say=print) -> str:
    """'shakespeare' if it can be had (cache, mirror, download), else 'pystdlib', said in one line."""
    try:
        fetch("shakespeare")
        return "shakespeare"
    except ScratchError:
        say(
            "offline: Tiny Shakespeare is not cached, not in $SCRATCHLM_DATA and cannot be downloaded; "
            "training on the pystdlib corpus (Python's standard library) instead"
        )
        return "pystdlib"


def run_demo(
    time_budget: str = "180s", out_dir: str | Path | None = None, overrides: list[str] = (), say=print
) -> RunResult:
    corpus = pick_corpus(say)
    out = Path(out_dir) if out_dir else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    settings = [
        f"data.corpus={corpus}",
        "budget.max_steps=0",
        "budget.max_tokens=0",
        f"budget.max_time={time_budget}",
    ]
    if corpus != "shakespeare":
        # pystdlib's validation split is 3M characters: score a slice, so the final evaluation takes
        # seconds, not minutes; and prompt the sample like code.
        settings += ["eval.max_tokens=131072", "eval.sample_prompt=def "]
    settings += list(overrides)  # the user's --set comes last and wins
    cfg = load_pretrain_config(RECIPE, settings)  # the recipe shipped in the package
    say(f"training {RECIPE} on {corpus} for {time_budget} into {out}")
    result = pretrain(cfg, out, say=say)
    say("")
    say(
        f"validation loss {result.val_loss:.4f} nats/char ({result.val_bpb:.4f} bits/byte), "
        f"{result.step} steps in {result.elapsed_s:.0f}s"
    )
    say("sample:")
    say(result.sample)
    say("")
    if result.final_dir is not None:
        say(f"sample more:  scratchlm generate --ckpt {result.final_dir}")
    say(f"run folder:   {out} (metrics.jsonl, config.yaml, checkpoints/, final/)")
    return result

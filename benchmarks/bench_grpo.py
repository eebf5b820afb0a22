"""GRPO and RLOO on held-out 3-digit arithmetic (issue 12): exact match before and after, in one run.

    python benchmarks/bench_grpo.py --sft runs/sft-arith                 # 2 x 10 minutes
    python benchmarks/bench_grpo.py --sft runs/sft-arith --minutes 1     # a smoke run

Both start from the same SFT model and train for the same wall-clock under the recipe
configs/grpo-arithmetic-char.yaml (RLOO: the same recipe with `algorithm: rloo`). Exact match is greedy,
on the same 200 held-out questions of each task (`scratchlm eval --tasks chat:SPEC` measures the same),
before and after; the goal is +15 points in at most 10 minutes on 2 cores. A few held-out answers of each
final model are printed beside the right ones (the reward-hacking check: exact match leaves little room).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scratchlm.align.grpo_config import load_grpo_config
from scratchlm.align.grpo_objective import grpo
from scratchlm.align.prompts import read_prompts
from scratchlm.align.rollout import rollout
from scratchlm.data.tasks import get_task
from scratchlm.eval.chat_tasks import chat_task_figures
from scratchlm.generate.config import SamplingConfig
from scratchlm.model.folder import load_model
from scratchlm.train.run_dir import resolve_model_dir

TASKS = ["arithmetic:digits=3,op=+", "arithmetic:digits=3,op=-"]


def exact(model_dir: Path, n: int) -> tuple[dict, list[str]]:
    """(held-out exact match per task, a few greedy answers with the right ones)."""
    model, tokenizer, _ = load_model(model_dir)
    out, shown = {}, []
    for spec in TASKS:
        out[spec] = chat_task_figures(model, tokenizer, spec, n, 8)["exact"]
        prompts = read_prompts(f"task:{spec}", 3, "heldout")
        batch = rollout(model, tokenizer, prompts, SamplingConfig(max_new_tokens=8, temperature=0.0))
        task = get_task(spec)
        for prompt, text in zip(prompts, batch.texts):
            question = prompt[-1]["content"]
            shown.append(
                f"{question}{text!r} (right: {task.answer(question)}, reward {task.reward(prompt, text)})"
            )
    return out, shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sft", required=True, help="the SFT run (arithmetic-capable, see docs/benchmarks.md)"
    )
    parser.add_argument("--work", default="/tmp/bench-grpo")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--algorithms", nargs="+", default=["grpo", "rloo"])
    args = parser.parse_args()
    sft_dir = resolve_model_dir(args.sft)
    before, _ = exact(sft_dir, args.heldout)
    rows = [("SFT", before, 0.0)]
    for algorithm in args.algorithms:
        out = Path(args.work) / algorithm
        budget = f"budget.max_time={args.minutes * 60:.0f}s"
        settings = [f"policy={args.sft}", f"algorithm={algorithm}", budget, "logging.progress=false",
                    "checkpoint.every=0", "eval.every=0"]  # fmt: skip
        started = time.perf_counter()
        result = grpo(load_grpo_config("grpo-arithmetic-char", settings), out, say=lambda *_: None)
        seconds = time.perf_counter() - started
        after, shown = exact(result.final_dir, args.heldout)
        rows.append((algorithm.upper(), after, seconds))
        print(f"{algorithm}: {result.step} steps in {seconds:.0f} s; held-out answers:")
        for example in shown:
            print(f"    {example}")
    print("\n| model | " + " | ".join(f"exact {t}" for t in TASKS) + " | mean | gain (points) | wall-clock |")
    print("|---" * (len(TASKS) + 4) + "|")
    base = sum(before.values()) / len(TASKS)
    for name, figures, seconds in rows:
        mean = sum(figures.values()) / len(TASKS)
        cells = " | ".join(f"{figures[t]:.1%}" for t in TASKS)
        print(f"| {name} | {cells} | {mean:.1%} | {100 * (mean - base):+.1f} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()

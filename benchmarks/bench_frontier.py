"""Every alignment method on one set of axes (issue 12): gold score against KL to the SFT model for
best-of-n, PPO, DPO and IPO, each at three strengths, on the sentiment task, from the same SFT model.

    python benchmarks/bench_rlhf.py --sft runs/sft-align --work /tmp/rlhf       # labels, reward model, BoN
    python benchmarks/bench_frontier.py --sft runs/sft-align --work /tmp/rlhf   # about 15 minutes more

It reuses what bench_rlhf.py left in --work: the preference file (DPO and IPO learn from it directly), the
reward model (PPO's, and the proxy score printed for every method), best-of-n's figures and the reward
model's training time. Each final model is measured by bench_rlhf's `measure`: one answer per held-out
prompt at temperature 1 with a fixed seed, gold = VADER, KL = sum of log pi - log pi_SFT over the answer.
Printed: the table of every point, DPO's wall-clock against reward model + PPO's, and a few answers of
each method's final model with their gold and proxy scores (the reward-hacking check). The plot goes to
docs/align-frontier.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_rlhf import QUIET, TASK, measure, run_ppo, show_samples, summary  # noqa: E402

from scratchlm.align.annotators import get_judge  # noqa: E402
from scratchlm.align.dpo_config import load_dpo_config  # noqa: E402
from scratchlm.align.dpo_objective import dpo  # noqa: E402
from scratchlm.align.prompts import read_prompts  # noqa: E402
from scratchlm.align.reward import load_reward_model  # noqa: E402
from scratchlm.model.folder import load_model  # noqa: E402
from scratchlm.train.run_dir import resolve_model_dir  # noqa: E402

STRENGTHS = {"dpo": [0.3, 0.1, 0.03], "ipo": [1.0, 0.3, 0.1], "ppo": [0.2, 0.05, 0.01]}  # weak -> strong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True)
    parser.add_argument("--work", required=True, help="bench_rlhf.py's --work folder")
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--ppo-steps", type=int, default=320)
    parser.add_argument("--dpo-steps", type=int, default=0, help="0: the recipe's")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["dpo", "ipo", "ppo"])
    parser.add_argument("--plot", default="docs/align-frontier.png")
    args = parser.parse_args()
    work = Path(args.work)
    done = json.loads((work / "summary.json").read_text())
    judge = get_judge("sentiment")
    sft, tokenizer, _ = load_model(resolve_model_dir(args.sft))
    reward, _ = load_reward_model(work / "rm" / "final")
    heldout = read_prompts(TASK, args.eval_prompts, "heldout", seed=0)
    points = {"best-of-n": [{"strength": f"n={r['n']}", **r} for r in done["bon"]]}
    seconds = {}
    for method in args.methods:
        points[method] = []
        for strength in STRENGTHS[method]:
            name = f"{method}-{strength}"
            started = time.perf_counter()
            if method == "ppo":
                out, _ = run_ppo(
                    args, work, f"frontier-{name}", work / "rm" / "final", **{"ppo.kl_coef": strength}
                )
            else:
                out = work / f"frontier-{name}"
                prefs = work / "prefs.jsonl"
                loss = {"dpo": "sigmoid"}.get(method, method)
                settings = {"policy": args.sft, "prefs": prefs, "loss": loss, "beta": strength,
                            "logging.progress": "false"}  # fmt: skip
                if args.dpo_steps:
                    settings["budget.max_steps"] = args.dpo_steps
                dpo(
                    load_dpo_config("dpo-sentiment-char", [f"{k}={v}" for k, v in settings.items()]),
                    out,
                    say=QUIET,
                )
            seconds[name] = time.perf_counter() - started
            policy, _, _ = load_model(out / "final")
            m = measure(policy, sft, reward, tokenizer, judge, heldout, args.max_new_tokens)
            points[method].append({"strength": strength, **summary(m), "seconds": seconds[name]})
            print(
                f"{name}: {seconds[name]:.0f} s, " + ", ".join(f"{k} {v:+.4f}" for k, v in summary(m).items())
            )
            show_samples(name, m)
    sft_point = done["sft"]
    print(f"\nSFT: gold {sft_point['gold']:+.4f}, proxy {sft_point['proxy']:+.4f}\n")
    print("| method | strength | gold | proxy | KL (nats/answer) | train s |\n|---|---|---|---|---|---|")
    for method, rows in points.items():
        for r in rows:
            print(f"| {method} | {r['strength']} | {r['gold']:+.4f} | {r['proxy']:+.4f} | {r['kl']:.2f} | "
                  f"{r.get('seconds', 0):.0f} |")  # fmt: skip
    rm_seconds = done.get("rm_seconds")
    if rm_seconds and "dpo" in points and "ppo" in points:
        dpo_s = sum(r["seconds"] for r in points["dpo"]) / len(points["dpo"])
        ppo_s = sum(r["seconds"] for r in points["ppo"]) / len(points["ppo"])
        print(f"\nwall-clock: DPO {dpo_s:.0f} s per run; reward model + PPO {rm_seconds + ppo_s:.0f} s "
              f"({(rm_seconds + ppo_s) / dpo_s:.1f}x DPO's)")  # fmt: skip
    (work / "frontier.json").write_text(json.dumps(points, indent=2))
    plot(points, sft_point, Path(args.plot))
    print(f"plot: {args.plot}")


def plot(points: dict, sft: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"best-of-n": "s-", "ppo": "o-", "dpo": "^-", "ipo": "v-"}
    for method, rows in points.items():
        rows = sorted(rows, key=lambda r: r["kl"])
        ax.plot(
            [math.sqrt(max(r["kl"], 0)) for r in rows],
            [r["gold"] for r in rows],
            styles[method],
            label=method,
        )
    ax.axhline(sft["gold"], color="gray", lw=0.8, label="SFT")
    ax.set_xlabel("sqrt(KL to the SFT model), nats^0.5 per answer")
    ax.set_ylabel("gold score (VADER compound, mean)")
    ax.set_title("Sentiment task: gold against KL, each method at three strengths")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

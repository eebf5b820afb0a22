"""RLHF end to end on the sentiment task (issue 11): simulated rankings -> reward model -> PPO, against
best-of-n, with the over-optimisation picture of Gao et al. 2022.

    python benchmarks/bench_rlhf.py --sft runs/sft-align --work /tmp/rlhf        # about 15 minutes
    python benchmarks/bench_rlhf.py --sft runs/sft-align --work /tmp/rlhf --quick  # a smoke run

The SFT model answers Shakespeare's speeches (the dialogue task); the hidden gold is VADER's compound
score of the answer; the annotator ranks K answers per prompt with Bradley-Terry noise whose tau gives a
noise ceiling of 0.8 on the generated pairs. Printed, against the issue's goals:
- the reward model's held-out pair accuracy as a share of the noise ceiling (goal >= 95%), and the
  Spearman correlation of its reward with gold on fresh samples;
- best-of-n for n = 1..16 by the reward model (gold, proxy, and its analytic KL log n - (n-1)/n);
- PPO at the recipe's beta and at beta = 0: gold, proxy and KL per answer through training, the final
  gold gain against best-of-16's (goal: at least as large, at KL <= 10 nats);
- wall-clock of reward model + PPO (goal <= 15 minutes), and a few answers of each final model with
  their gold and proxy scores, so a reader sees what was learned (the reward-hacking check).
Every method is measured the same way (`measure`): one answer per held-out prompt sampled at temperature
1 with a fixed seed, KL = sum over the answer of log pi - log pi_SFT (k1, the policy's own samples).
The plot goes to docs/rlhf-overoptimisation.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scratchlm.align.annotators import get_judge  # noqa: E402
from scratchlm.align.ppo_config import load_ppo_config  # noqa: E402
from scratchlm.align.ppo_objective import ppo  # noqa: E402
from scratchlm.align.preferences import write_records  # noqa: E402
from scratchlm.align.prompts import read_prompts  # noqa: E402
from scratchlm.align.reward import last_token, load_reward_model  # noqa: E402
from scratchlm.align.reward_config import load_reward_config  # noqa: E402
from scratchlm.align.reward_objective import spearman, train_reward  # noqa: E402
from scratchlm.align.rollout import rollout, token_logprobs  # noqa: E402
from scratchlm.align.simulate import simulate_preferences  # noqa: E402
from scratchlm.generate.config import SamplingConfig  # noqa: E402
from scratchlm.model.folder import load_model  # noqa: E402
from scratchlm.train.run_dir import RunDir, resolve_model_dir  # noqa: E402

TASK = "task:dialogue:user_chars=110,reply_chars=100"
SEED = 1_000_003  # the held-out answers of every method are drawn with this seed
QUIET = lambda *_: None  # noqa: E731


@torch.no_grad()
def measure(policy, reference, reward, tokenizer, judge, prompts, max_new_tokens, group=1) -> dict:
    """Gold, proxy and KL to the reference of answers sampled from `policy` (one per prompt, or `group`)."""
    batch = rollout(
        policy, tokenizer, prompts, SamplingConfig(max_new_tokens=max_new_tokens, seed=SEED), group
    )
    mask = batch.response_mask.float()
    ref = token_logprobs(reference, batch, 1.0, tokenizer.vocab_size)
    kl = ((batch.logprobs - ref) * mask).sum(-1)
    proxy = last_token(
        reward(batch.sequences, attention_mask=batch.attention_mask, positions=batch.positions),
        batch.attention_mask,
    )
    gold = torch.tensor([judge.score(p, a) for p, a in zip(batch.prompts, batch.texts)])
    return {
        "gold": gold,
        "proxy": proxy.cpu(),
        "kl": kl.cpu(),
        "texts": batch.texts,
        "prompts": batch.prompts,
        "length": mask.sum(-1).cpu(),
    }


def best_of_n(m: dict, group: int, ns=(1, 2, 4, 8, 16)) -> list[dict]:
    """Best-of-n by the proxy among the first n of each prompt's `group` samples (Gao et al.'s BoN)."""
    gold, proxy = m["gold"].view(-1, group), m["proxy"].view(-1, group)
    out = []
    for n in ns:
        pick = proxy[:, :n].argmax(-1, keepdim=True)
        out.append(
            {
                "n": n,
                "gold": float(gold[:, :n].gather(1, pick).mean()),
                "proxy": float(proxy[:, :n].gather(1, pick).mean()),
                "kl": math.log(n) - (n - 1) / n,
            }
        )
    return out


def summary(m: dict) -> dict:
    return {
        "gold": float(m["gold"].mean()),
        "proxy": float(m["proxy"].mean()),
        "kl": float(m["kl"].mean()),
        "length": float(m["length"].mean()),
    }


def show_samples(name: str, m: dict, k: int = 3) -> None:
    print(f"  samples of {name}:")
    for i in range(k):
        text = m["texts"][i].replace("\n", " / ")[:110]
        print(f"    gold {float(m['gold'][i]):+.2f} proxy {float(m['proxy'][i]):+.2f}  {text!r}")


def run_ppo(args, work: Path, name: str, rm_dir: Path, **settings) -> tuple[Path, float]:
    out = work / name
    base = {
        "policy": str(args.sft),
        "reward": str(rm_dir),
        "logging.progress": "false",
        "budget.max_steps": args.ppo_steps,
        "eval.every": args.ppo_steps // 8,
        "eval.prompts": args.eval_prompts,
        "checkpoint.every": 0,
    }
    overrides = [f"{k}={v}" for k, v in {**base, **settings}.items()]
    started = time.perf_counter()
    ppo(load_ppo_config("ppo-sentiment-char", overrides), out, say=QUIET)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="the SFT run (configs/sft-align-char.yaml)")
    parser.add_argument("--work", required=True, help="a folder for the runs (must not hold them yet)")
    parser.add_argument("--prompts", type=int, default=1600, help="prompts ranked by the annotator")
    parser.add_argument("--k", type=int, default=4, help="answers ranked per prompt")
    parser.add_argument("--ceiling", type=float, default=0.8)
    parser.add_argument("--rm-epochs", type=float, default=1.0, help="reward-model passes over the rankings")
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--ppo-steps", type=int, default=320)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--stop-after", choices=("rm", "bon"), help="stop after the reward model / best-of-n")
    parser.add_argument("--plot", default="docs/rlhf-overoptimisation.png")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.eval_prompts, args.ppo_steps = 48, 16, 32
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    judge = get_judge("sentiment")
    sft_dir = resolve_model_dir(args.sft)
    sft_model, tokenizer, _ = load_model(sft_dir)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)

    # 1. Rankings from the simulated annotator.
    t = time.perf_counter()
    prompts = read_prompts(TASK, args.prompts, "train", seed=1)
    records, stats = simulate_preferences(
        sft_model, tokenizer, prompts, args.k, judge, sampling, ceiling=args.ceiling, seed=0
    )
    prefs = work / "prefs.jsonl"
    write_records(prefs, records)
    print(f"labels: {stats.summary()} ({time.perf_counter() - t:.0f} s)")

    # 2. The reward model.
    t = time.perf_counter()
    rm_run = work / "rm"
    steps = max(1, round(args.rm_epochs * 0.9 * args.prompts / 4))  # 90% of the rankings train, 4 a step
    rm_settings = {
        "base": str(args.sft),
        "prefs": str(prefs),
        "logging.progress": "false",
        "budget.max_steps": steps,
        "eval.every": max(1, steps // 4),
        "eval.max_rises": 0,
    }
    result = train_reward(
        load_reward_config("reward-sentiment-char", [f"{k}={v}" for k, v in rm_settings.items()]),
        rm_run,
        say=QUIET,
    )
    rm_seconds = time.perf_counter() - t
    figures = result.evaluation
    print(
        f"reward model: {rm_seconds:.0f} s; "
        + ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if isinstance(v, float))
    )
    reward, _ = load_reward_model(result.final_dir)
    if args.stop_after == "rm":
        return

    # 3. Best-of-n from the SFT model, and the reward model against gold on fresh samples.
    heldout = read_prompts(TASK, args.eval_prompts, "heldout", seed=0)  # PPO's evaluation prompts
    t = time.perf_counter()
    bon_samples = measure(
        sft_model, sft_model, reward, tokenizer, judge, heldout, args.max_new_tokens, group=16
    )
    bon = best_of_n(bon_samples, 16)
    rho = spearman(bon_samples["proxy"].numpy(), bon_samples["gold"].numpy())
    print(
        f"best-of-n ({time.perf_counter() - t:.0f} s; Spearman(reward, gold) on these "
        f"{len(bon_samples['gold'])} fresh samples: {rho:.3f})"
    )
    for row in bon:
        print(f"  n {row['n']:2d}: gold {row['gold']:+.4f}  proxy {row['proxy']:+.4f}  KL {row['kl']:.3f}")

    if args.stop_after == "bon":
        return

    # 4. PPO at the recipe's beta, and at beta 0 (nothing holds it near the SFT model).
    runs = {}
    for name, beta in (("ppo", None), ("ppo-beta0", 0.0)):
        settings = {} if beta is None else {"ppo.kl_coef": beta}
        out, seconds = run_ppo(args, work, name, result.final_dir, **settings)
        runs[name] = (out, seconds)
        print(f"{name}: {seconds:.0f} s")
    sft_stats = summary(measure(sft_model, sft_model, reward, tokenizer, judge, heldout, args.max_new_tokens))
    finals = {}
    for name, (out, _) in runs.items():
        policy, _, _ = load_model(out / "final")
        m = measure(policy, sft_model, reward, tokenizer, judge, heldout, args.max_new_tokens)
        finals[name] = summary(m)
        show_samples(name, m)
    show_samples("sft", measure(sft_model, sft_model, reward, tokenizer, judge, heldout, args.max_new_tokens))

    # 5. The goals.
    ceiling = figures.get("noise_ceiling", stats.ceiling)
    accuracy = figures.get("accuracy", float("nan"))
    bon16_gain = bon[-1]["gold"] - bon[0]["gold"]
    ppo_gain = finals["ppo"]["gold"] - sft_stats["gold"]
    print("\n| measure | value | goal |\n|---|---|---|")
    print(
        f"| RM held-out pair accuracy / noise ceiling | {accuracy:.3f} / {ceiling:.3f} = "
        f"{accuracy / ceiling:.1%} | >= 95% |"
    )
    print(f"| Spearman(reward, gold), fresh SFT samples | {rho:.3f} | |")
    print(f"| SFT gold (one sample per prompt) | {sft_stats['gold']:+.4f} | |")
    print(f"| best-of-16 gold gain over best-of-1 | {bon16_gain:+.4f} (KL {bon[-1]['kl']:.2f}) | |")
    goal = ">= BoN-16's, KL <= 10"
    print(f"| PPO gold gain over SFT | {ppo_gain:+.4f} at KL {finals['ppo']['kl']:.2f} | {goal} |")
    b0 = finals["ppo-beta0"]
    print(
        f"| PPO beta=0: gold, proxy, KL | {b0['gold']:+.4f}, {b0['proxy']:+.4f}, {b0['kl']:.2f} "
        "| proxy up, gold stalls |"
    )
    print(f"| RM + PPO wall-clock | {rm_seconds + runs['ppo'][1]:.0f} s | <= 900 s |")
    (work / "summary.json").write_text(
        json.dumps(
            {
                "bon": bon,
                "sft": sft_stats,
                "finals": finals,
                "rm": figures,
                "spearman": rho,
                "rm_seconds": rm_seconds,
                "ppo_seconds": runs["ppo"][1],
            },
            indent=2,
        )  # fmt: skip
    )
    plot(runs, bon, sft_stats, Path(args.plot))
    print(f"plot: {args.plot}")


def plot(runs: dict, bon: list[dict], sft: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"ppo": "tab:blue", "ppo-beta0": "tab:red"}
    for name, (out, _) in runs.items():
        evals = [r for r in RunDir(out).read_metrics("eval") if "gold" in r]
        x = [math.sqrt(max(r["kl"], 0)) for r in evals]
        ax.plot(x, [r["gold"] for r in evals], "-o", color=colors[name], label=f"{name} gold")
        ax.plot(x, [r["score"] for r in evals], "--", color=colors[name], alpha=0.6, label=f"{name} proxy")
    x = [math.sqrt(r["kl"]) for r in bon]
    ax.plot(x, [r["gold"] for r in bon], "-s", color="tab:green", label="best-of-n gold")
    ax.plot(x, [r["proxy"] for r in bon], "--", color="tab:green", alpha=0.6, label="best-of-n proxy")
    ax.axhline(sft["gold"], color="gray", lw=0.8)
    ax.set_xlabel("sqrt(KL to the SFT model), nats^0.5 per answer")
    ax.set_ylabel("score (gold: VADER compound; proxy: reward model)")
    ax.set_title("Over-optimisation on the sentiment task (Gao et al. 2022's axes)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

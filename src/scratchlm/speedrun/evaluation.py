"""The speedrun's eval stage: every figure of the report card, measured once on the run's models.

- base: bits per byte on the held-out text, BLiMP when asked;
- SFT: held-out exact match on each exact-answer task, and the reply loss on held-out real chats (base
  and SFT, the same conversations);
- alignment: the reward model's held-out pair accuracy against the noise ceiling; gold and KL to the SFT
  model, each with its standard error, for SFT, best-of-n, PPO and DPO on held-out prompts; GRPO's exact
  match before and after;
- the same fixed prompts answered greedily after every stage, so a reader sees what each stage changed.

Every model answers the same held-out prompts with the same seed (`scratchlm.align.measure`), so the
figures of two methods differ by the method, not by the draw.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scratchlm.align.annotators import get_judge
from scratchlm.align.measure import best_of_n, mean_se, sample_and_score
from scratchlm.align.prompts import TASK_PREFIX, read_prompts
from scratchlm.data import load_corpus
from scratchlm.data.corpora import hold_out
from scratchlm.data.tasks import get_task
from scratchlm.eval.chat_tasks import chat_task_figures
from scratchlm.eval.checkpoint import load_checkpoint
from scratchlm.eval.lm import evaluate_text
from scratchlm.fileio import write_json_atomic
from scratchlm.generate.config import SamplingConfig
from scratchlm.generate.engine import generate
from scratchlm.model.device import pick_device
from scratchlm.train.prepare import VAL_FRACTION
from scratchlm.train.run_dir import resolve_model_dir

SEED = 1_000_003  # every model's held-out answers are drawn with this seed
ALIGNED = ("ppo", "dpo")  # the stages that optimise the annotator's preferences
CHAT_STAGES = ("sft", "ppo", "dpo", "grpo")


def evaluate_run(cfg, recipe, root: Path, out: Path, say=print) -> dict:
    """Measure the run's models; write `out/eval.json`; return the figures."""
    device = str(pick_device(cfg.device))
    stages = recipe.stages
    load = lambda stage: load_checkpoint(root / stage, device=device)[:2]  # noqa: E731
    base, tokenizer = load("pretrain")
    figures: dict = {"base": _base_figures(cfg, recipe, base, tokenizer, say)}
    models = {"pretrain": base}
    for stage in CHAT_STAGES:
        if stage in stages:
            models[stage] = load(stage)[0]
    if "sft" in stages:
        figures["sft"] = _sft_figures(cfg, recipe, root, models, tokenizer, say)
    if "preferences" in stages and "sft" in stages:
        figures["alignment"] = _alignment_figures(cfg, recipe, root, models, tokenizer, device, say)
    if "grpo" in stages:
        figures["grpo"] = _grpo_figures(cfg, root, models, tokenizer, say)
    figures["answers"] = _fixed_answers(cfg, models, tokenizer)
    figures["best_model"] = _best_model(figures, stages)
    write_json_atomic(out / "eval.json", figures)
    return {"best_model": figures["best_model"]}


def _base_figures(cfg, recipe, model, tokenizer, say) -> dict:
    corpus = load_corpus(recipe.corpus)
    if recipe.heldout:
        hold_out(corpus, recipe.heldout)
    _, val = corpus.split(VAL_FRACTION)
    text = "\n".join(val)
    if cfg.val_chars:
        text = text[: cfg.val_chars]
    say(f"eval: bits per byte on {len(text):,} held-out characters")
    scored = evaluate_text(model, tokenizer, text)
    out = {
        "val_bpb": scored["bpb"],
        "val_loss": scored["loss"],
        "val_bytes": scored["bytes"],
        "params": model.num_params(),
    }
    if cfg.blimp_pairs:
        from scratchlm.eval.blimp import score_blimp

        say(f"eval: BLiMP, {cfg.blimp_pairs} pairs per paradigm")
        blimp = score_blimp(model, tokenizer, max_pairs=cfg.blimp_pairs)
        out["blimp"] = blimp["mean"]
        out["blimp_pairs"] = blimp["pairs"]
    return out


def _exact_specs(specs) -> list[str]:
    return [spec for spec in specs if hasattr(get_task(spec), "check")]


def _sft_figures(cfg, recipe, root, models, tokenizer, say) -> dict:
    from scratchlm.speedrun.run import stage_record

    sft_config = stage_record(root, "sft")["config"]
    out = {"tasks": {}}
    for spec in _exact_specs(sft_config["data"]["tasks"]):
        say(f"eval: SFT on {spec}")
        got = chat_task_figures(models["sft"], tokenizer, spec, n=cfg.task_examples)
        out["tasks"][spec] = {"exact": got["exact"], "loss": got["loss"], "examples": got["examples"]}
    if recipe.chat and cfg.chat_heldout:
        from scratchlm.config import from_dict
        from scratchlm.eval.chat_tasks import heldout_rows, masked_loss
        from scratchlm.finetune.config import SFTDataConfig
        from scratchlm.finetune.sft_data import read_chat_file

        data = from_dict(SFTDataConfig, sft_config["data"])
        conversations = []  # the very conversations SFT held out of each chat file
        for path in data.files:
            conversations += read_chat_file(path, data, say=lambda *_: None)[1]
        conversations = conversations[: cfg.chat_heldout]
        rows = heldout_rows(conversations, tokenizer, models["sft"].config.context_length)
        out["chat"] = {
            "conversations": len(conversations),
            "reply_loss_base": masked_loss(models["pretrain"], rows),
            "reply_loss_sft": masked_loss(models["sft"], rows),
        }
    return out


def gold_prompts(source: str, skip: int, n: int) -> list:
    """Prompts no ranking saw: a task's held-out split, or a prompts file's lines after the ranked ones."""
    if source.startswith(TASK_PREFIX):
        return read_prompts(source, n=n, split="heldout")
    return read_prompts(source)[skip : skip + n]


def _alignment_figures(cfg, recipe, root, models, tokenizer, device, say) -> dict:
    from scratchlm.align.reward import load_reward_model
    from scratchlm.speedrun.run import stage_record

    prefs = stage_record(root, "preferences")
    pcfg = prefs["config"]
    judge = get_judge(pcfg["judge"])
    prompts = gold_prompts(pcfg["prompts"], pcfg["n"], cfg.gold_prompts)
    reward_model = None
    out: dict = {
        "judge": pcfg["judge"],
        "prompts": len(prompts),
        "noise_ceiling": prefs["figures"].get("ceiling"),
    }
    if "reward" in recipe.stages:
        reward_model, _ = load_reward_model(resolve_model_dir(root / "reward"), device=device)
        reward = stage_record(root, "reward")["figures"]
        if "accuracy" in reward:
            out["reward_accuracy"] = reward["accuracy"]
            if out["noise_ceiling"]:
                out["reward_share_of_ceiling"] = reward["accuracy"] / out["noise_ceiling"]
    reference = models["sft"]
    group = max(cfg.best_of) if (cfg.best_of and reward_model is not None) else 1
    methods = {}
    for stage in ("sft", *ALIGNED):
        if stage not in models:
            continue
        say(f"eval: gold and KL of {stage} on {len(prompts)} held-out prompts")
        m = sample_and_score(
            models[stage],
            reference,
            tokenizer,
            prompts,
            judge,
            reward_model=reward_model,
            max_new_tokens=cfg.max_new_tokens,
            group=group if stage == "sft" else 1,
            seed=SEED,
        )
        first = {
            k: (v.view(-1, group)[:, 0] if stage == "sft" and torch.is_tensor(v) else v) for k, v in m.items()
        }
        methods[stage] = _summary(first)
        if stage == "sft" and group > 1:
            for row in best_of_n(m, group, cfg.best_of):
                methods[f"best_of_{row['n']}"] = {
                    "gold": row["gold"],
                    "gold_se": row["gold_se"],
                    "kl": row["kl"],
                    "kl_se": 0.0,
                }
    sft_gold, sft_se = methods["sft"]["gold"], methods["sft"]["gold_se"]
    for name, row in methods.items():
        if name != "sft":
            row["gain"] = row["gold"] - sft_gold
            row["gain_se"] = (row["gold_se"] ** 2 + sft_se**2) ** 0.5  # independent draws
    out["methods"] = methods
    return out


def _summary(m: dict) -> dict:
    gold, gold_se = mean_se(m["gold"])
    kl, kl_se = mean_se(m["kl"])
    row = {
        "gold": gold,
        "gold_se": gold_se,
        "kl": kl,
        "kl_se": kl_se,
        "length": float(m["length"].float().mean()),
    }
    if m.get("proxy") is not None:
        row["proxy"] = float(m["proxy"].mean())
    row["samples"] = [
        {"prompt": p[-1]["content"][:160], "answer": t[:200]}
        for p, t in zip(m["prompts"][:3], m["texts"][:3])
    ]
    return row


def _grpo_figures(cfg, root, models, tokenizer, say) -> dict:
    from scratchlm.speedrun.run import stage_record

    gcfg = stage_record(root, "grpo")["config"]
    out = {}
    for spec in gcfg["tasks"]:
        say(f"eval: exact match on {spec}, before and after GRPO")
        before = chat_task_figures(models["sft"], tokenizer, spec, n=cfg.task_examples)
        after = chat_task_figures(models["grpo"], tokenizer, spec, n=cfg.task_examples)
        key = "exact" if "exact" in before else next(k for k in before if k not in ("loss", "examples"))
        n = before["examples"]
        out[spec] = {
            "before": before[key],
            "after": after[key],
            "examples": n,
            "gain": after[key] - before[key],
            "gain_se": ((before[key] * (1 - before[key]) + after[key] * (1 - after[key])) / max(1, n)) ** 0.5,
        }
    return out


def _fixed_answers(cfg, models, tokenizer) -> list[dict]:
    """Each fixed prompt, answered greedily by every stage's model (the base continues it as text)."""
    rows = []
    greedy = SamplingConfig(max_new_tokens=cfg.fixed_tokens, temperature=0.0)
    for prompt in cfg.fixed_prompts:
        row = {"prompt": prompt}
        for stage, model in models.items():
            if stage == "pretrain":
                row[stage] = generate(model, tokenizer, [prompt], greedy)[0]
            else:
                from scratchlm.align.rollout import rollout

                row[stage] = rollout(model, tokenizer, [[{"role": "user", "content": prompt}]], greedy).texts[
                    0
                ]
        rows.append(row)
    return rows


def _best_model(figures: dict, stages) -> str:
    """The aligned model with the highest gold; the SFT model if no aligned stage ran; else the base."""
    methods = figures.get("alignment", {}).get("methods", {})
    aligned = [s for s in ALIGNED if s in methods]
    if aligned:
        return max(aligned, key=lambda s: methods[s]["gold"])
    for stage in ("sft", "grpo"):
        if stage in stages:
            return stage
    return "pretrain"

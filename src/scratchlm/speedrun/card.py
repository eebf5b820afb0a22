"""The speedrun's report card: `RUN/report.json`, `report.md` and `report.html`, one page.

Built from the stages' own records (`stage.json`, through `speedrun.run.stage_record`), the eval stage's
figures and each training stage's metrics.jsonl (through `RunDir.read_metrics`, their one reader). Every
time-dependent figure sits under a key ending in `wall_s`, so two runs of one seed compare equal once
those are set aside (the reproducibility test does exactly that).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scratchlm.errors import ScratchError
from scratchlm.eval.report import new_figure, to_html, to_markdown
from scratchlm.fileio import write_json_atomic, write_text_atomic
from scratchlm.model import ModelConfig, Transformer
from scratchlm.plan import training_hours
from scratchlm.train.run_dir import RunDir, resolve_model_dir

TRAINING = ("pretrain", "sft", "reward", "ppo", "dpo", "grpo")


def without_wall(value):
    """A report card with its wall-clock figures (every key ending in `wall_s`) set aside: what two runs of
    one recipe and seed must agree on."""
    if isinstance(value, dict):
        return {k: without_wall(v) for k, v in value.items() if not k.endswith("wall_s")}
    if isinstance(value, list):
        return [without_wall(v) for v in value]
    return value


def _flops_per_token(model_dir: Path) -> tuple[float, int]:
    """(training FLOPs per token, parameters) of a model folder, without allocating its weights."""
    config = ModelConfig(**json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    with torch.device("meta"):
        model = Transformer(config)
    return model.flops_per_token(), model.num_params()


def stage_rows(cfg, recipe, root: Path) -> dict:
    """Per stage: wall time, what it processed, parameters, and the planner's GPU time and cost."""
    from scratchlm.speedrun.run import stage_record

    rows = {}
    for stage in recipe.stages:
        if stage == "report":
            continue
        record = stage_record(root, stage)
        if record is None:
            raise ScratchError(f"report: stage {stage} is not done; run the speedrun with --resume")
        figures = record["figures"]
        row = {"wall_s": record["wall_s"], "samples": figures.get("samples")}
        if stage in TRAINING:
            flops, params = _flops_per_token(resolve_model_dir(root / stage))
            hours = training_hours(flops * figures.get("tokens", 0), cfg.gpus, cfg.mfu)
            count = int(cfg.gpus.split("x")[0]) if "x" in cfg.gpus else 1
            row.update(
                params=params,
                tokens=figures.get("tokens"),
                plan={
                    "gpus": cfg.gpus,
                    "mfu": cfg.mfu,
                    "seconds": hours * 3600,
                    "dollars": hours * count * cfg.price_per_gpu_hour,
                },
            )
        rows[stage] = row
    return rows


def write_card(cfg, recipe, root: Path, out: Path) -> dict:
    """Write the card (report.json / .md / .html at the run's top, plots in `out`); return its figures."""
    evaluation = json.loads((root / "eval" / "eval.json").read_text(encoding="utf-8"))
    stages = stage_rows(cfg, recipe, root)
    card = {
        "recipe": recipe.name,
        "seed": recipe.seed,
        "corpus": recipe.corpus,
        "chat": recipe.chat,
        "stages": stages,
        "total_wall_s": sum(r["wall_s"] for r in stages.values()),
        **{k: v for k, v in evaluation.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    plots = [("Training loss of each stage", _loss_plot(recipe, root, out / "losses.png"))]
    if card.get("alignment", {}).get("methods"):
        plots.append(
            ("Gold against KL to the SFT model", _gold_plot(card["alignment"], out / "gold_vs_kl.png"))
        )
    blocks = _blocks(card, [(c, p) for c, p in plots if p is not None])
    write_json_atomic(root / "report.json", card)
    write_text_atomic(root / "report.md", to_markdown(blocks, root))
    write_text_atomic(root / "report.html", to_html(blocks, f"scratchlm speedrun: {recipe.name}"))
    write_json_atomic(out / "report.json", card)  # the stage's own output, for its digest
    # `--ckpt RUN` takes the best aligned model (RunDir.model_dir reads latest.json's "best").
    best = card["best_model"]
    write_json_atomic(
        root / "latest.json",
        {
            "best": f"{best}/{resolve_model_dir(root / best).relative_to(root / best)}",
            "stage": best,
            "why": _why(card, best),
        },
    )
    return {"best_model": best, "total_wall_s": card["total_wall_s"]}


def _why(card: dict, best: str) -> str:
    methods = card.get("alignment", {}).get("methods", {})
    if best in methods:
        return f"the highest gold ({methods[best]['gold']:.3f}) of the aligned models"
    return "no preference-aligned stage ran"


def _loss_plot(recipe, root: Path, path: Path) -> Path | None:
    stages = [s for s in TRAINING if s in recipe.stages]
    if not stages:
        return None
    fig = new_figure((3.2 * min(3, len(stages)), 2.6 * ((len(stages) + 2) // 3)))
    for i, stage in enumerate(stages):
        ax = fig.add_subplot((len(stages) + 2) // 3, min(3, len(stages)), i + 1)
        records = [r for r in RunDir(root / stage).read_metrics("train") if "loss" in r]
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], linewidth=1)
        evals = [r for r in RunDir(root / stage).read_metrics("eval") if "val_loss" in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", markersize=3)
        ax.set_title(stage, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _gold_plot(alignment: dict, path: Path) -> Path:
    fig = new_figure((5.6, 3.6))
    ax = fig.add_subplot()
    for name, row in alignment["methods"].items():
        ax.errorbar(
            row["kl"],
            row["gold"],
            yerr=row["gold_se"],
            xerr=row.get("kl_se", 0.0),
            fmt="o",
            capsize=3,
            label=name,
        )
    ax.set(xlabel="KL to the SFT model (nats per answer)", ylabel=f"gold ({alignment['judge']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pm(value, se) -> str:
    return f"{value:+.3f} ± {se:.3f}"


def _blocks(card: dict, plots) -> list[tuple]:
    blocks: list[tuple] = [("h1", f"Speedrun report card: {card['recipe']}")]
    chat = ", ".join(card["chat"]) or "the built-in tasks only"
    blocks.append(
        (
            "p",
            f"Corpus {card['corpus']}; chat data: {chat}; seed {card['seed']}; "
            f"{card['total_wall_s'] / 60:.1f} minutes in all.",
        )
    )
    rows = []
    for stage, r in card["stages"].items():
        plan = r.get("plan")
        rows.append(
            [
                stage,
                f"{r['wall_s']:.1f}",
                _f(r.get("samples")),
                _f(r.get("params")),
                f"{plan['seconds']:.3g} s, ${plan['dollars']:.3g}" if plan else "-",
            ]
        )
    gpus = next((r["plan"]["gpus"] for r in card["stages"].values() if r.get("plan")), "")
    blocks += [
        ("h2", "Stages"),
        ("table", ["stage", "wall s", "tokens / samples", "params", f"planner on {gpus}"], rows),
    ]
    base = card["base"]
    rows = [["validation bits per byte", _f(base["val_bpb"], 4)], ["parameters", _f(base["params"])]]
    if "blimp" in base:
        rows.append(["BLiMP (mean over paradigms)", f"{base['blimp']:.3f} ({base['blimp_pairs']:,} pairs)"])
    blocks += [("h2", "Base model"), ("table", ["figure", "value"], rows)]
    if "sft" in card:
        rows = [[f"exact match: {spec}", _f(t["exact"])] for spec, t in card["sft"]["tasks"].items()]
        if "chat" in card["sft"]:
            c = card["sft"]["chat"]
            rows += [
                [f"reply loss on {c['conversations']} held-out chats: base", _f(c["reply_loss_base"])],
                ["... after SFT", _f(c["reply_loss_sft"])],
            ]
        blocks += [("h2", "SFT"), ("table", ["figure", "value"], rows)]
    alignment = card.get("alignment")
    if alignment:
        lines = [f"Gold judge: {alignment['judge']}, on {alignment['prompts']} held-out prompts."]
        if "reward_accuracy" in alignment and alignment.get("noise_ceiling"):
            lines.append(
                f"Reward model: held-out pair accuracy {alignment['reward_accuracy']:.3f} against a noise "
                f"ceiling of {alignment['noise_ceiling']:.3f} "
                f"({100 * alignment['reward_share_of_ceiling']:.0f}% of it)."
            )
        rows = []
        for name, r in alignment["methods"].items():
            gain = _pm(r["gain"], r["gain_se"]) if "gain" in r else "-"
            raised = (
                "" if "gain" not in r else (" (raised)" if r["gain"] > 2 * r["gain_se"] else " (not raised)")
            )
            rows.append(
                [
                    name,
                    _pm(r["gold"], r["gold_se"]),
                    gain + raised,
                    f"{r['kl']:.2f} ± {r.get('kl_se', 0):.2f}",
                ]
            )
        blocks += [
            ("h2", "Alignment"),
            ("p", " ".join(lines)),
            ("table", ["model", "gold", "gain over SFT", "KL (nats/answer)"], rows),
        ]
    if "grpo" in card:
        rows = [
            [spec, _f(g["before"]), _f(g["after"]), _pm(g["gain"], g["gain_se"])]
            for spec, g in card["grpo"].items()
        ]
        blocks += [("h2", "GRPO"), ("table", ["task", "exact before", "after", "gain"], rows)]
    if card.get("answers"):
        stages = [k for k in card["answers"][0] if k != "prompt"]
        blocks += [
            ("h2", "The same prompts after every stage (greedy)"),
            ("table", ["prompt", *stages], [[a["prompt"], *(a[s] for s in stages)] for a in card["answers"]]),
        ]
    blocks += [("h2", "Plots")] + [("image", caption, path) for caption, path in plots]
    blocks.append(
        ("p", f"chat with the best aligned model ({card['best_model']}): scratchlm chat --ckpt RUN")
    )
    return blocks

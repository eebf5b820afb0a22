"""`scratchlm reward train|export`: thin wrappers over scratchlm.align.reward_objective.train_reward and
scratchlm.interop.hf_reward.export_hf_reward (any recipe field via --set).

scratchlm reward train --config reward-sentiment-char --base runs/sft --prefs prefs.jsonl --out runs/rm
scratchlm reward export --ckpt runs/rm --out rm-hf
"""

from __future__ import annotations

from scratchlm.cli.derive import add_recipe_arguments, recipe_overrides, report_run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reward",
        help="train a reward model on preference pairs and rankings (Bradley-Terry), or export one",
        description="Reward models: a transformer started from the SFT model with a scalar head, trained "
        "so that chosen answers score above rejected ones.",
    )
    sub = p.add_subparsers(dest="reward_command", metavar="COMMAND", required=True)
    t = sub.add_parser(
        "train",
        help="train a reward model from an SFT run on a preference file",
        description="Train a reward model: the body starts as --base, each step takes whole groups (all "
        "pairs of a ranking), the loss is -log sigmoid(r_chosen - r_rejected).",
    )
    t.add_argument("--base", help="the SFT run or model folder the body starts from (overrides the recipe)")
    t.add_argument("--prefs", help="the preference file, JSONL pairs or rankings (overrides the recipe)")
    add_recipe_arguments(t, "loss.center_rewards_coefficient=0.01")
    t.set_defaults(func=_train)
    e = sub.add_parser("export", help="a Hugging Face LlamaForSequenceClassification folder (one label)")
    e.add_argument("--ckpt", required=True, help="the reward-model run or folder (uses final/ or its newest)")
    e.add_argument("--out", required=True, help="the Hugging Face folder to write (replaced if present)")
    e.set_defaults(func=_export)


def _train(args) -> int:
    from scratchlm.align.reward_config import load_reward_config  # here: `--help` never imports torch
    from scratchlm.align.reward_objective import train_reward

    overrides = recipe_overrides(args, base=args.base, prefs=args.prefs)
    config = load_reward_config(args.config, overrides, run_dir=args.out if args.resume else None)
    return report_run(train_reward(config, args.out, resume=args.resume), "reward model folder")


def _export(args) -> int:
    from scratchlm.align.reward import load_reward_model
    from scratchlm.interop.hf_reward import export_hf_reward
    from scratchlm.train.run_dir import resolve_model_dir

    model, tokenizer = load_reward_model(resolve_model_dir(args.ckpt))
    out = export_hf_reward(model, tokenizer, args.out)
    print(f"wrote {out} (LlamaForSequenceClassification, num_labels 1: config.json, model.safetensors)")
    return 0

"""`scratchlm dpo`: a thin wrapper over scratchlm.align.dpo_objective.dpo (any recipe field via --set)."""

from __future__ import annotations

from scratchlm.cli.derive import add_recipe_arguments, recipe_overrides, report_run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dpo",
        help="direct preference optimization of an SFT model on preference pairs (DPO, IPO, hinge)",
        description="Train an SFT run or model folder on a preference file (pairs or rankings) against "
        "itself as the frozen reference, whose log-probabilities are computed once and cached in the run.",
    )
    p.add_argument("--policy", help="the SFT run or model folder to start from (overrides the recipe's)")
    p.add_argument("--prefs", help="preference file, JSONL pairs or rankings (overrides the recipe's)")
    add_recipe_arguments(p, "loss=ipo")
    p.set_defaults(func=_dpo)


def _dpo(args) -> int:
    from scratchlm.align.dpo_config import load_dpo_config  # here: `--help` never imports torch
    from scratchlm.align.dpo_objective import dpo

    overrides = recipe_overrides(args, policy=args.policy, prefs=args.prefs)
    config = load_dpo_config(args.config, overrides, run_dir=args.out if args.resume else None)
    return report_run(dpo(config, args.out, resume=args.resume))

"""`scratchlm ppo`: a thin wrapper over scratchlm.align.ppo_objective.ppo (any recipe field via --set)."""

from __future__ import annotations

from scratchlm.cli.derive import add_recipe_arguments, recipe_overrides, report_run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ppo",
        help="RLHF: train a policy with PPO against a reward model, held near the SFT model by KL",
        description="Sample answers from the policy, score them with the reward model, and update policy "
        "and value model with clipped PPO (the policy starts from the SFT run, the value model from the "
        "reward model).",
    )
    p.add_argument("--policy", help="the SFT run or model folder (also the frozen reference)")
    p.add_argument("--reward", help="the reward-model run (scratchlm reward train)")
    p.add_argument("--prompts", help="prompts: a JSONL file, or task:SPEC (e.g. task:dialogue)")
    add_recipe_arguments(p, "ppo.kl_coef=0.1")
    p.set_defaults(func=_ppo)


def _ppo(args) -> int:
    from scratchlm.align.ppo_config import load_ppo_config  # here: `--help` never imports torch
    from scratchlm.align.ppo_objective import ppo

    overrides = recipe_overrides(args, policy=args.policy, reward=args.reward, prompts=args.prompts)
    config = load_ppo_config(args.config, overrides, run_dir=args.out if args.resume else None)
    return report_run(ppo(config, args.out, resume=args.resume))

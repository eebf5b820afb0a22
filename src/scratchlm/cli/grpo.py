"""`scratchlm grpo` and `scratchlm rloo`: thin wrappers over scratchlm.align.grpo_objective.grpo.

Any recipe field is reachable with --set (the typed GRPOConfig parses it); `rloo` is `grpo` with
`algorithm=rloo`.
"""

from __future__ import annotations

import json

from scratchlm.cli.derive import add_recipe_arguments, recipe_overrides, report_run

COMMANDS = {
    "grpo": "GRPO (Shao et al. 2024): rewards standardised within each prompt's group of answers",
    "rloo": "RLOO (Ahmadian et al. 2024): each answer's reward less the mean of the others' (= grpo "
    "--set algorithm=rloo)",
}


def register(subparsers) -> None:
    for name, summary in COMMANDS.items():
        p = subparsers.add_parser(
            name,
            help=f"RL from verifiable rewards on a fine-tuned model: {summary.split(':')[0]}",
            description=f"Reinforce an SFT model's correct answers to built-in tasks (or to any reward "
            f"function). {summary}.",
        )
        p.add_argument("--policy", help="the SFT run or model folder to start from (overrides the recipe's)")
        p.add_argument("--task", dest="tasks", nargs="+", metavar="SPEC",
                       help="task specs to draw prompts from, e.g. arithmetic:digits=3,op=+")  # fmt: skip
        p.add_argument("--reward", metavar="MODULE:FUNCTION",
                       help="reward(prompt_messages, completion) -> float, as module:function or "
                       "file.py:function (default: each task's exact-answer checker)")  # fmt: skip
        add_recipe_arguments(p, "rollout.group=8")
        p.set_defaults(func=_grpo, algorithm=name if name == "rloo" else None)


def _grpo(args) -> int:
    from scratchlm.align.grpo_config import load_grpo_config  # here: `--help` never imports torch
    from scratchlm.align.grpo_objective import grpo

    quoted = {"policy": args.policy, "reward": args.reward, "tasks": args.tasks, "algorithm": args.algorithm}
    overrides = recipe_overrides(args, **{k: json.dumps(v) for k, v in quoted.items() if v is not None})
    config = load_grpo_config(args.config, overrides, run_dir=args.out if args.resume else None)
    return report_run(grpo(config, args.out, resume=args.resume))

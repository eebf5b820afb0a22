"""`scratchlm sft`: a thin wrapper over scratchlm.finetune.sft (any recipe field via --set)."""

from __future__ import annotations

from scratchlm.cli.derive import add_recipe_arguments, recipe_overrides, report_run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning of a pretrained model on conversations (full or LoRA)",
        description="Fine-tune a pretrained run or model folder on a mixture of built-in tasks and chat "
        "files; the loss counts only the assistant's tokens.",
    )
    p.add_argument("--base", help="the pretrained run or model folder (overrides the recipe's base)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip bad records of data.files and count them (default: stop)")  # fmt: skip
    add_recipe_arguments(p, "lora.rank=8")
    p.set_defaults(func=_sft)


def _sft(args) -> int:
    from scratchlm.finetune import load_sft_config, sft  # here: `--help` never imports torch

    skip = "true" if args.skip_invalid else None
    overrides = recipe_overrides(args, base=args.base, **{"data.skip_invalid": skip})
    config = load_sft_config(args.config, overrides, run_dir=args.out if args.resume else None)
    return report_run(sft(config, args.out, resume=args.resume))

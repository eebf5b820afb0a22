"""`scratchlm plan`: what a training run will cost before it runs (a thin wrapper over scratchlm.plan)."""

from __future__ import annotations

import json

# scratchlm.plan's names, repeated: --help imports no torch (tests/test_plan.py holds them equal).
PARALLEL = ("ddp", "fsdp", "zero1", "zero2", "zero3")
PRECISIONS = ("fp32", "bf16-autocast", "bf16-mixed", "bf16-pure")
OPTIMIZERS = ("adamw", "muon", "sgd", "adamw8bit")


def _count(text: str) -> int:
    return int(float(text))  # 2e12 as well as 2000000000000


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="parameters, FLOPs, memory per GPU, fit, tokens, time and cost of a run, before it runs",
        description="Estimate a training run from a recipe or a model preset: memory per GPU for each "
        "precision and optimizer (ZeRO's 16 bytes per parameter for mixed-precision Adam, divided as its "
        "stages divide it; activations derived for these blocks), the largest micro-batch that fits, "
        "Chinchilla's token count, and time and money at a given MFU. With --config, the recipe sets the "
        "model, precision, optimizer, checkpointing and micro-batch; flags override them.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a pretraining recipe")
    source.add_argument("--preset", help="a model preset, e.g. llama-100m, or a published shape: llama2-7b")
    p.add_argument("--gpus", default="1xH100", help="COUNTxNAME, e.g. 8xH100 (default %(default)s)")
    p.add_argument("--tokens", type=_count, help="training tokens, e.g. 2e12 (default: 20 per parameter)")
    p.add_argument("--parallel", choices=PARALLEL, help="default: ddp (a recipe's parallel: fsdp: fsdp)")
    p.add_argument("--checkpointing", choices=("none", "selective", "full"), help="default: none")
    p.add_argument("--precision", choices=PRECISIONS, help="default: bf16-mixed (a recipe's bf16: autocast)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: adamw")
    p.add_argument("--micro-batch", type=int, help="sequences per GPU per micro-step (default 1)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (default 0.4)")
    p.add_argument("--price-per-gpu-hour", type=float, help="for the cost line")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from scratchlm.plan import (
        check_fits,
        format_plan,
        get_shape,
        make_plan,
        recipe_settings,
    )  # no torch in --help
    from scratchlm.train.config import load_pretrain_config

    if args.config:
        settings = recipe_settings(load_pretrain_config(args.config), args.gpus)
    else:
        settings = {"config": get_shape(args.preset)}
    flags = {"parallel": args.parallel, "checkpointing": args.checkpointing, "precision": args.precision,
             "optimizer": args.optimizer, "micro_batch": args.micro_batch}  # fmt: skip
    settings.update({k: v for k, v in flags.items() if v is not None})
    config = settings.pop("config")
    plan = make_plan(config, gpus=args.gpus, tokens=args.tokens, mfu=args.mfu,
                     price_per_gpu_hour=args.price_per_gpu_hour, **settings)  # fmt: skip
    check_fits(plan, config)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0

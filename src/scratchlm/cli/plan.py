"""`scratchlm plan`: what a training run will cost before it runs (a thin wrapper over scratchlm.plan)."""

from __future__ import annotations

import json

PARALLEL = ("ddp", "fsdp", "zero1", "zero2", "zero3")  # scratchlm.plan's, repeated: --help imports no torch


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="parameters, FLOPs, memory per GPU, fit, tokens, time and cost of a run, before it runs",
        description="Estimate a training run from a recipe or a model preset: memory per GPU (ZeRO's "
        "16 bytes per parameter for mixed-precision Adam, Korthikanti et al.'s activations), the largest "
        "micro-batch that fits, Chinchilla's token count, and time and money at a given MFU.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a pretraining recipe (its model section)")
    source.add_argument("--preset", help="a model preset, e.g. llama-100m")
    p.add_argument("--gpus", default="1xH100", help="COUNTxNAME, e.g. 8xH100 (default %(default)s)")
    p.add_argument("--tokens", type=int, help="training tokens (default: Chinchilla's 20 per parameter)")
    p.add_argument("--parallel", choices=PARALLEL, default="ddp")
    p.add_argument("--checkpointing", choices=("none", "selective", "full"), default="none")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per micro-step")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (default 0.4)")
    p.add_argument("--price-per-gpu-hour", type=float, help="for the cost line")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from scratchlm.model import get_preset  # here: `--help` never imports torch
    from scratchlm.plan import format_plan, make_plan
    from scratchlm.train.config import load_pretrain_config, resolve_model_config

    if args.preset:
        config = get_preset(args.preset)
    else:
        recipe = load_pretrain_config(args.config)
        # A character vocabulary is known only once the tokenizer is trained: 256 bounds it.
        vocab = recipe.data.vocab_size if recipe.data.tokenizer == "bpe" else 256
        config = resolve_model_config(recipe.model, vocab)
    plan = make_plan(config, gpus=args.gpus, parallel=args.parallel, checkpointing=args.checkpointing,
                     micro_batch=args.micro_batch, tokens=args.tokens, mfu=args.mfu,
                     price_per_gpu_hour=args.price_per_gpu_hour)  # fmt: skip
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0

"""`scratchlm pretrain` and `scratchlm demo`: thin wrappers over scratchlm.train.pretrain / run_demo."""

from __future__ import annotations

from scratchlm.cli.derive import add_recipe_arguments, recipe_overrides


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="train a model from a YAML recipe into a run folder",
        description="Train a model from a recipe (configs/*.yaml). Works the same under torchrun.",
    )
    add_recipe_arguments(p, "optim.lr=3e-3")
    p.set_defaults(func=_pretrain)

    d = subparsers.add_parser(
        "demo",
        help="train a character-level Shakespeare model in about 3 minutes and show a sample",
        description="Fetch Tiny Shakespeare, train configs/shakespeare-char.yaml on a time budget, sample.",
    )
    d.add_argument("--time", default="180s", help="training time budget (default 180s)")
    d.add_argument("--out", help="run folder (default runs/demo-DATE-TIME)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field (repeatable)")  # fmt: skip
    d.set_defaults(func=_demo)


def _pretrain(args) -> int:
    from scratchlm.train import load_pretrain_config, pretrain  # here: `--help` never imports torch

    overrides = recipe_overrides(args)
    config = load_pretrain_config(args.config, overrides, run_dir=args.out if args.resume else None)
    result = pretrain(config, args.out, resume=args.resume)
    if result.stopped == "signal":
        return 130
    if result.val_loss is not None:
        print(f"step {result.step}: val loss {result.val_loss:.4f}, {result.val_bpb:.4f} bits/byte")
    if result.final_dir is not None:
        print(f"model folder: {result.final_dir}")
    return 0


def _demo(args) -> int:
    from scratchlm.train.demo import run_demo

    result = run_demo(args.time, args.out, args.overrides)
    return 130 if result.stopped == "signal" else 0

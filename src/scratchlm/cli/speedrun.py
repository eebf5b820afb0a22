"""`scratchlm speedrun`: a thin wrapper over scratchlm.speedrun.speedrun."""

from __future__ import annotations

from scratchlm.speedrun.recipe import PRESETS, STAGES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "speedrun",
        help="raw text to an aligned chat model in one command, with a report card",
        description="Tokenizer, pretraining, SFT, rankings, reward model, PPO, DPO, GRPO, evaluation and a "
        "report card, each stage in its own folder under --out, cached by fingerprint and resumable.",
    )
    p.add_argument("--out", required=True, help="the run folder (RUN/STAGE for each stage, RUN/report.md)")
    p.add_argument(
        "--preset",
        default="laptop",
        help=f"{' | '.join(PRESETS)}, a shipped recipe name or a recipe file (default laptop)",
    )
    p.add_argument(
        "--corpus", help="pretraining text: a corpus name, a file or a folder (default: the recipe's)"
    )
    p.add_argument(
        "--chat", nargs="+", metavar="PATH", help="chat files for SFT (e.g. ../shared/data/chitchat)"
    )
    p.add_argument("--resume", action="store_true", help="carry on in --out: done stages are kept")
    p.add_argument(
        "--from",
        dest="start",
        metavar="STAGE",
        choices=STAGES,
        help="run again from STAGE on (the stages before it must be done)",
    )
    p.add_argument("--until", metavar="STAGE", choices=STAGES, help="stop after STAGE")
    p.add_argument("--skip", nargs="+", default=[], metavar="STAGE", help="drop these stages")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.FIELD=VALUE",
        help="override a recipe field, e.g. --set dpo.beta=0.2 (repeatable)",
    )
    p.add_argument(
        "--label",
        action="store_true",
        help="rank the answers yourself on the label page instead of the simulated annotator",
    )
    p.set_defaults(func=_speedrun)


def _speedrun(args) -> int:
    from scratchlm.speedrun import speedrun  # here: `--help` never imports torch

    speedrun(
        args.preset,
        args.out,
        resume=args.resume,
        overrides=args.overrides,
        corpus=args.corpus,
        chat=args.chat,
        start=args.start,
        until=args.until,
        skip=args.skip,
        label=args.label,
    )
    return 0

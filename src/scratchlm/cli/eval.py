"""`scratchlm eval`, `scratchlm report`, `scratchlm compare`: thin wrappers over `scratchlm.eval`.

`scratchlm eval`'s flags are `scratchlm.eval.EvalConfig`'s fields and its work is `scratchlm.eval.evaluate`;
this module adds `--json` and the printing.

scratchlm eval --ckpt runs/demo --corpus shakespeare          # validation split: loss, ppl, bpb
scratchlm eval --ckpt runs/demo --text notes.txt --stride 128 --json
scratchlm eval --ckpt runs/demo --tasks builtin hellaswag=hellaswag_val.jsonl --run runs/demo
scratchlm report runs/demo
scratchlm compare runs/a runs/b --out compare/
"""

from __future__ import annotations

import json
import sys

from scratchlm.cli import unescape
from scratchlm.cli.derive import add_dataclass_arguments, dataclass_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure a model: loss/perplexity/bits per byte on text, or benchmark tasks",
        description="Measure a model folder (or a run's final model) on text or on benchmark tasks.",
    )
    # Every measurement flag comes from EvalConfig's fields (name, type, default, help), written once there.
    from scratchlm.eval.config import EvalConfig

    add_dataclass_arguments(p, EvalConfig, value_types={"stop": unescape})
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run_eval)

    r = subparsers.add_parser("report", help="write a run's report card (Markdown + HTML with plots)")
    r.add_argument("run_dir", help="a training run folder")
    r.add_argument("--out", help="where to write it (default RUN_DIR/report)")
    r.set_defaults(func=run_report)

    c = subparsers.add_parser(
        "compare", help="several runs' curves on one plot and their figures in one table"
    )
    c.add_argument("run_dirs", nargs="+", help="training run folders")
    c.add_argument("--out", default="compare", help="where to write compare.md/html/png (default ./compare)")
    c.set_defaults(func=run_compare)


def run_eval(args) -> int:
    from scratchlm.eval import EvalConfig, evaluate

    # A bar for a person at a terminal, nothing in logs and pipes.
    results = evaluate(dataclass_from_args(EvalConfig, args), progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, metrics in results.items():
            figures = "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
            )
            print(f"{name:<20} {figures}")
    return 0


def run_report(args) -> int:
    from scratchlm.eval.report import report

    paths = report(args.run_dir, args.out)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


def run_compare(args) -> int:
    from scratchlm.eval.compare import compare

    result = compare(args.run_dirs, args.out)
    print(result["markdown"], end="")
    print(f"wrote {result['paths']['markdown']}, {result['paths']['html']} and {result['paths']['plot']}")
    return 0

"""`scratchlm eval`, `scratchlm report`, `scratchlm compare`: thin wrappers over `scratchlm.eval`.

scratchlm eval --ckpt runs/demo --corpus shakespeare          # validation split: loss, ppl, bpb
scratchlm eval --ckpt runs/demo --text notes.txt --stride 128 --json
scratchlm eval --ckpt runs/demo --tasks builtin hellaswag=hellaswag_val.jsonl --run runs/demo
scratchlm report runs/demo
scratchlm compare runs/a runs/b --out compare/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from scratchlm.cli import unescape
from scratchlm.errors import ScratchError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure a model: loss/perplexity/bits per byte on text, or benchmark tasks",
        description="Measure a model folder (or a run's final model) on text or on benchmark tasks.",
    )
    p.add_argument(
        "--ckpt", required=True, help="model folder, or a run folder (uses final/ or its newest checkpoint)"
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", help="a text file to score whole")
    source.add_argument("--corpus", help="a corpus (name, file, folder, .jsonl): its validation split")
    p.add_argument("--stride", type=int, help="slide the context window by N tokens (default: whole windows)")
    p.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help="builtin | next_line | shuffled | FORMAT=FILE, FORMAT one of hellaswag, arc_easy, "
        "arc_challenge, piqa, lambada, mc, gen",
    )
    p.add_argument("--n", type=int, default=200, help="examples per built-in task (default 200)")
    p.add_argument("--limit", type=int, help="use only the first N examples of each task file")
    p.add_argument(
        "--stop",
        nargs="+",
        metavar="STR",
        help="generative tasks: cut answers at these strings (\\n and \\t understood; default: newline)",
    )
    p.add_argument("--max-new-tokens", type=int, help="generative tasks: longest answer (default 32)")
    p.add_argument(
        "--run", help="append the results to this run's metrics.jsonl (shown by `scratchlm report`)"
    )
    p.add_argument("--device", default=None, help="auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
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


def _default_corpus(args) -> str | None:
    """The corpus the evaluated run trained on, from its config.yaml, when --corpus is not given."""
    from scratchlm.eval.report import run_corpus

    for folder in (args.run, args.ckpt, Path(args.ckpt).parent, Path(args.ckpt).parent.parent):
        if folder and (corpus := run_corpus(folder)):
            return corpus
    return None


def run_eval(args) -> int:
    from scratchlm.eval import evaluate_text, load_checkpoint, load_tasks, run_tasks
    from scratchlm.model.device import pick_device

    corpus_name = args.corpus or _default_corpus(args)
    if not args.tasks and not args.text and not corpus_name:
        raise ScratchError(
            "nothing to evaluate: give --text FILE, --corpus NAME, or --tasks builtin|FORMAT=FILE"
        )

    def validation_documents() -> list[str]:
        from scratchlm.data import load_corpus

        _, val = load_corpus(corpus_name or "shakespeare").split()
        if not val:
            raise ScratchError(f"corpus {corpus_name} has no validation split; give --text FILE instead")
        return val

    stop = [unescape(s) for s in args.stop] if args.stop else None
    tasks = []
    if args.tasks:
        tasks = load_tasks(
            args.tasks,
            validation_documents,
            n=args.n,
            limit=args.limit,
            stop=stop,
            max_new_tokens=args.max_new_tokens,
        )
    model, tokenizer, _ = load_checkpoint(args.ckpt, device=str(pick_device(args.device or "auto")))
    results: dict[str, dict] = {}
    progress = sys.stderr.isatty()  # a bar for a person at a terminal, nothing in logs and pipes
    if args.text or (corpus_name and not args.tasks) or (args.corpus and args.tasks):
        if args.text:
            path = Path(args.text)
            if not path.is_file():
                raise ScratchError(f"--text {path}: no such file")
            name, text = f"text:{path.name}", path.read_text(encoding="utf-8")
        else:
            name, text = f"val:{corpus_name}", validation_documents()
        results[name] = evaluate_text(
            model, tokenizer, text, stride=args.stride, batch_size=args.batch_size, progress=progress
        )
    results.update(run_tasks(model, tokenizer, tasks, batch_size=args.batch_size, progress=progress))

    if args.run:
        from scratchlm.eval.report import append_benchmark

        append_benchmark(args.run, results, ckpt=args.ckpt)
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

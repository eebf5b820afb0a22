"""`scratchlm label`: preference files, ranked by a person on a local web page or by a simulated annotator.

scratchlm label --ckpt runs/sft --prompts prompts.jsonl --out prefs.jsonl --k 4
scratchlm label --ckpt runs/sft --prompts task:dialogue --n 200 --out prefs.jsonl --judge sentiment
"""

from __future__ import annotations

import functools
from pathlib import Path

from scratchlm.align.annotators import get_judge
from scratchlm.align.preferences import write_records
from scratchlm.align.prompts import read_prompts
from scratchlm.cli.derive import add_device_arguments
from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "label",
        help="rank a model's answers into a preference file (on a local web page, or simulated)",
        description="Sample K answers per prompt and rank them, best first, into a JSONL preference file. "
        "By default a local web page lets a person rank them (keys 1-K, undo, resumes where the file "
        "stops); with --judge a simulated annotator ranks them (a gold score plus Bradley-Terry noise).",
    )
    p.add_argument("--ckpt", required=True, help="model folder, or a run folder (uses final/ or its newest)")
    p.add_argument(
        "--prompts", required=True, metavar="SRC",
        help='a JSONL file ({"prompt": text or messages} a line), or task:SPEC such as task:dialogue',
    )  # fmt: skip
    p.add_argument("--n", type=int, help="how many prompts (a task source: default 256; a file: all)")
    p.add_argument("--split", default="train", help="a task source's split (default %(default)s)")
    p.add_argument("--out", required=True, help="the preference file (JSONL)")
    p.add_argument("--k", type=int, default=4, help="answers per prompt (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (default %(default)s)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the answers (and the simulated noise)")
    page = p.add_argument_group("the label page")
    page.add_argument("--host", default="127.0.0.1", help="address to serve on (default %(default)s)")
    page.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    simulated = p.add_argument_group("simulated labelling")
    simulated.add_argument(
        "--judge", metavar="SPEC", help="sentiment | exact:TASK_SPEC: rank with this judge"
    )
    noise = simulated.add_mutually_exclusive_group()
    noise.add_argument("--tau", type=float, help="Bradley-Terry noise scale (default: from --ceiling)")
    noise.add_argument(
        "--ceiling",
        type=float,
        default=0.8,
        help="noise ceiling on the generated pairs (default %(default)s)",
    )
    simulated.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_device_arguments(p)
    p.set_defaults(func=run_label)


def run_label(args) -> int:
    # Here, not at the top: `--help` never imports torch (nor fastapi).
    from scratchlm.align.rollout import prompt_ids
    from scratchlm.align.simulate import check_k
    from scratchlm.eval.checkpoint import load_checkpoint
    from scratchlm.serve.label_app import check_page_k

    check_k(args.k)
    if not args.judge:
        check_page_k(args.k)
    if args.n is not None and args.n < 1:
        raise ScratchError(f"--n {args.n}: give a number of prompts >= 1")
    prompts = read_prompts(args.prompts, n=args.n, split=args.split)
    judge = get_judge(args.judge) if args.judge else None
    out = Path(args.out)
    if judge is not None and out.exists() and not args.force:
        raise ScratchError(
            f"{out} exists, and simulated labelling writes a whole file: add --force or pick another --out"
        )
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
    )
    model, tokenizer, _ = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype)
    prompt_ids(tokenizer, prompts, model.config.context_length, args.max_new_tokens)  # each fits, or why not
    if judge is None:
        return _serve(args, model, tokenizer, prompts, sampling)
    return _simulate(args, model, tokenizer, prompts, judge, sampling)


def _simulate(args, model, tokenizer, prompts, judge, sampling) -> int:
    from scratchlm.align.simulate import simulate_preferences

    records, stats = simulate_preferences(
        model, tokenizer, prompts, args.k, judge, sampling, tau=args.tau, ceiling=args.ceiling, seed=args.seed
    )
    write_records(args.out, records)
    print(f"{args.out}: {stats.summary()}")
    return 0


def _serve(args, model, tokenizer, prompts, sampling) -> int:
    import uvicorn

    from scratchlm.align.simulate import sample_answers
    from scratchlm.serve.label_app import LabelQueue, create_app

    # One prompt per rollout, seeded by its position: a restart shows the answers the last run showed.
    sample = functools.partial(sample_answers, model, tokenizer, k=args.k, sampling=sampling, batch_size=1)
    queue = LabelQueue(prompts, args.out, sample, args.k)
    if queue.repaired:
        print(f"{args.out}: dropped a torn last line (a ranking whose write was cut short; redo it)")
    if queue.duplicates:
        print(f"{args.prompts}: {queue.duplicates} repeated prompts are ranked once")
    ranked, total = queue.progress()
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"label page: http://{host}:{args.port}/  ({ranked} / {total} ranked; Ctrl-C stops)")
    uvicorn.run(create_app(queue), host=args.host, port=args.port, log_level="warning")
    return 0

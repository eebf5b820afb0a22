"""`evaluate(config)`: one `EvalConfig` in, every figure out. `scratchlm eval` is this function plus printing.

    from scratchlm.eval import EvalConfig, evaluate
    evaluate(EvalConfig(ckpt="runs/demo"))                      # {"val:shakespeare": {loss, ppl, bpb, ...}}
    evaluate(EvalConfig(ckpt="runs/demo/checkpoints/step_500", tasks=["builtin"], run="runs/demo"))

What runs:
- `text`: that file, scored whole; `corpus`: its validation split. With neither, the corpus the model's run
  trained on (its config.yaml; `run`'s first, when given) is scored, unless only `tasks` were asked for;
  it is also where built-in tasks draw their examples from (shakespeare when no run names one).
- `tasks`: each task spec (see `scratchlm.eval.tasks.load_tasks`); `chat:SPEC` measures a chat model on a
  built-in instruction task (`scratchlm.eval.chat_tasks`: held-out loss, exact match or speaker share);
  `blimp[:max_pairs=N][,folder=DIR]` scores BLiMP's paradigms (`scratchlm.eval.blimp`; `limit` is
  max_pairs when the spec gives none).
- `run`: the results are appended to that run's metrics.jsonl as one `benchmark` record.
The model folder is resolved first, so a wrong `ckpt` is named before anything else is looked at.
"""

from __future__ import annotations

import functools
from pathlib import Path

from scratchlm.data import load_corpus
from scratchlm.data.corpora import hold_out
from scratchlm.data.tasks import get_task
from scratchlm.errors import ScratchError
from scratchlm.eval.blimp import blimp_figures, is_blimp_spec, parse_blimp_spec, read_blimp, score_paradigms
from scratchlm.eval.chat_tasks import chat_task_figures
from scratchlm.eval.checkpoint import load_checkpoint
from scratchlm.eval.config import EvalConfig
from scratchlm.eval.lm import evaluate_text
from scratchlm.eval.report import append_benchmark, run_corpus, run_heldout
from scratchlm.eval.tasks import load_tasks, run_tasks
from scratchlm.model.device import pick_device
from scratchlm.train.run_dir import RunDir, resolve_model_dir

FALLBACK_CORPUS = "shakespeare"  # built-in tasks' examples, when no corpus is given or recorded


def default_corpus(model_dir: str | Path, run: str | Path | None = None) -> str | None:
    """The corpus a model was trained on: `run`'s config.yaml when given and it records one, else that of
    the run the model folder belongs to (RUN, RUN/final or RUN/checkpoints/step_N), else None."""
    folder = _recording_run(model_dir, run)
    return run_corpus(folder) if folder is not None else None


def _recording_run(model_dir: str | Path, run: str | Path | None) -> Path | None:
    """The run that records the corpus: `run`, else the model's own run, else the run it started from
    (a fine-tuned or aligned run names its `base` or `policy`), followed back to pretraining."""
    folders = [Path(run)] if run is not None else []
    owner = RunDir.of_model(model_dir)
    for _ in range(8):  # pretrain -> sft -> dpo/ppo/grpo is three links; a loop cannot go on forever
        if owner is None:
            break
        folders.append(owner.path)
        config = owner.read_config()
        parent = config.get("base") or config.get("policy")
        owner = RunDir.of_model(parent) if parent and Path(parent).exists() else None
    return next((folder for folder in folders if run_corpus(folder)), None)


def evaluate(config: EvalConfig, *, progress: bool = False) -> dict[str, dict]:
    """{measurement name: figures} for `config`: `text:NAME` or `val:CORPUS` (loss, ppl, bpb, tokens,
    bytes), then one entry per task. `progress` shows a bar per measurement on stderr."""
    model_dir = resolve_model_dir(config.ckpt)  # first: a missing folder is named, not "nothing to do"
    if config.run is not None and not RunDir(config.run).metrics_path.is_file():  # before the work
        raise ScratchError(f"--run {config.run}: no metrics.jsonl there; give the folder of a training run")
    corpus = config.corpus or default_corpus(model_dir, config.run)
    if not config.tasks and config.text is None and not corpus:
        raise ScratchError(
            f"nothing to evaluate: {model_dir} belongs to no run recording its corpus; "
            "give --text FILE, --corpus NAME, or --tasks builtin|FORMAT=FILE"
        )
    if config.text is not None and not config.text.is_file():
        raise ScratchError(f"--text {config.text}: no such file")

    @functools.cache  # read once, for the text score and the built-in tasks alike
    def validation_documents() -> list[str]:

        source = load_corpus(corpus or FALLBACK_CORPUS)
        recorded = _recording_run(model_dir, config.run)
        if not config.corpus and recorded is not None and (heldout := run_heldout(recorded)):
            hold_out(source, heldout)  # the run's own validation text (e.g. Persuasion), never trained on
        _, val = source.split()
        if not val:
            raise ScratchError(f"corpus {corpus} has no validation split; give --text FILE instead")
        return val

    chat_specs = [spec.removeprefix("chat:") for spec in config.tasks if spec.startswith("chat:")]
    for spec in chat_specs:
        get_task(spec)  # a wrong spec is named before the model loads
    blimp = {}  # read before the model loads: a bad line is named first
    for spec in filter(is_blimp_spec, config.tasks):
        folder, max_pairs = parse_blimp_spec(spec)
        blimp[spec] = read_blimp(folder, max_pairs or config.limit)
    other = [spec for spec in config.tasks if not spec.startswith("chat:") and spec not in blimp]
    tasks = []
    if other:
        tasks = load_tasks(
            other,
            validation_documents,
            n=config.n,
            limit=config.limit,
            stop=config.stop or None,
            max_new_tokens=config.max_new_tokens,
        )
    model, tokenizer, _ = load_checkpoint(model_dir, device=str(pick_device(config.device)))
    results: dict[str, dict] = {}
    # Text is scored when asked for, or by default when no tasks are; a recorded corpus alone, with
    # tasks, only feeds the built-in tasks.
    if config.text is not None or config.corpus or (corpus and not config.tasks):
        if config.text is not None:
            name, text = f"text:{config.text.name}", config.text.read_text(encoding="utf-8")
        else:
            name, text = f"val:{corpus}", validation_documents()
        results[name] = evaluate_text(
            model, tokenizer, text, stride=config.stride, batch_size=config.batch_size, progress=progress
        )
    results.update(run_tasks(model, tokenizer, tasks, batch_size=config.batch_size, progress=progress))
    for spec, paradigms in blimp.items():
        scores = score_paradigms(model, tokenizer, paradigms, batch_size=config.batch_size, progress=progress)
        results[spec] = blimp_figures(scores)
    for spec in chat_specs:
        figures = chat_task_figures(
            model, tokenizer, spec, n=config.n, max_new_tokens=config.max_new_tokens or 48
        )
        results[f"chat:{spec}"] = figures

    if config.run is not None:
        append_benchmark(config.run, results, ckpt=config.ckpt)
    return results

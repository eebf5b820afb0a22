"""Evaluation: how good is a model, measured the way the field measures it.

    from scratchlm.eval import evaluate_text, load_checkpoint, load_tasks, run_tasks, report
    model, tokenizer, _ = load_checkpoint("runs/demo")               # final/ model of a run
    evaluate_text(model, tokenizer, text)                            # {loss, ppl, bpb, tokens, bytes}
    run_tasks(model, tokenizer, load_tasks(["hellaswag=val.jsonl"]))  # {task: {acc, acc_norm, ...}}
    report("runs/demo")                                              # runs/demo/report/report.{md,html}

The lm-evaluation-harness adapter lives in `scratchlm.eval.harness` (optional extra; importing it
registers the "scratchlm" model with the harness).
"""

from scratchlm.eval.checkpoint import load_checkpoint, resolve_model_dir
from scratchlm.eval.lm import evaluate_text
from scratchlm.eval.report import append_benchmark, report
from scratchlm.eval.tasks import Task, evaluate_task, load_tasks, run_tasks

__all__ = [
    "Task",
    "append_benchmark",
    "evaluate_task",
    "evaluate_text",
    "load_checkpoint",
    "load_tasks",
    "report",
    "resolve_model_dir",
    "run_tasks",
]

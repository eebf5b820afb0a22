"""Evaluation: how good is a model, measured the way the field measures it.

    from scratchlm.eval import EvalConfig, evaluate
    evaluate(EvalConfig(ckpt="runs/demo"))                            # what `scratchlm eval --ckpt` prints
    evaluate(EvalConfig(ckpt="runs/demo", tasks=["builtin"], run="runs/demo"))

    from scratchlm.eval import evaluate_text, load_checkpoint, load_tasks, run_tasks, report
    model, tokenizer, _ = load_checkpoint("runs/demo")               # final/ model of a run
    evaluate_text(model, tokenizer, text)                            # {loss, ppl, bpb, tokens, bytes}
    run_tasks(model, tokenizer, load_tasks(["hellaswag=val.jsonl"]))  # {task: {acc, acc_norm, ...}}
    report("runs/demo")                                              # runs/demo/report/report.{md,html}

The lm-evaluation-harness adapter lives in `scratchlm.eval.harness` (optional extra; importing it
registers the "scratchlm" model with the harness).

Imports are lazy (PEP 562): `scratchlm.eval.config` is importable without torch (the CLI's flags).
"""

from __future__ import annotations

import importlib
import sys
import types

from scratchlm.lazy import lazy_exports

_EXPORTS = {
    "EvalConfig": "scratchlm.eval.config",
    "Task": "scratchlm.eval.tasks",
    "append_benchmark": "scratchlm.eval.report",
    "evaluate": "scratchlm.eval.workflow",
    "evaluate_task": "scratchlm.eval.tasks",
    "evaluate_text": "scratchlm.eval.lm",
    "load_checkpoint": "scratchlm.eval.checkpoint",
    "load_tasks": "scratchlm.eval.tasks",
    "report": "scratchlm.eval.report",
    "resolve_model_dir": "scratchlm.eval.checkpoint",
    "run_tasks": "scratchlm.eval.tasks",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """Keeps `scratchlm.eval.report` the function, as it has always been: loading the submodule of the
    same name would otherwise bind the module over it (the import system sets a package's attribute to
    each submodule it loads). The submodule itself is `sys.modules["scratchlm.eval.report"]`."""

    @property
    def report(self):
        return importlib.import_module("scratchlm.eval.report").report

    @report.setter
    def report(self, value) -> None:
        pass


sys.modules[__name__].__class__ = _Package

"""Benchmark tasks: multiple choice by log-likelihood, targets, generation; built-in and published readers.

A task spec on the command line is `builtin` (both built-in tasks), a built-in name (`next_line`,
`shuffled`), or `FORMAT=FILE` for a local file in a published format (`hellaswag=hellaswag_val.jsonl`,
`arc_easy=ARC-Easy-Dev.jsonl`, `arc_challenge=...`, `piqa=valid.jsonl`, `lambada=lambada_test.jsonl`,
`mc=...`, `gen=...`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from scratchlm.errors import ScratchError
from scratchlm.eval.tasks.base import Choice, Generation, Target, Task, centered, evaluate_task
from scratchlm.eval.tasks.builtin import BUILTIN
from scratchlm.eval.tasks.readers import READERS

__all__ = ["Choice", "Generation", "Target", "Task", "centered", "evaluate_task", "load_tasks", "run_tasks"]


def load_tasks(
    specs: Sequence[str],
    validation_documents: Callable[[], Sequence[str]] | None = None,
    *,
    n: int = 200,
    seed: int = 0,
    limit: int | None = None,
    stop: Sequence[str] | None = None,
    max_new_tokens: int | None = None,
) -> list[Task]:
    """Tasks for `specs`. `validation_documents()` supplies the text built-in tasks are drawn from
    (called only if one is asked for); `limit` keeps the first examples of each file task; `stop` and
    `max_new_tokens` end the answers of generative tasks (default: at a newline, after 32 tokens)."""
    tasks: list[Task] = []
    for spec in specs:
        if "=" in spec:
            fmt, path = spec.split("=", 1)
            if fmt not in READERS:
                raise ScratchError(f"unknown task format {fmt!r} in {spec!r}; known: {', '.join(READERS)}")
            task = READERS[fmt](path)
            for number, ex in enumerate(task.examples, 1):
                if isinstance(ex, Choice) and not 0 <= ex.gold < len(ex.choices):
                    raise ScratchError(
                        f"{path}: example {number} has answer {ex.gold} "
                        f"but {len(ex.choices)} choices (0-based)"
                    )
            if limit is not None:
                task.examples = task.examples[:limit]
            if stop is not None:
                task.stop = list(stop)
            if max_new_tokens is not None:
                task.max_new_tokens = max_new_tokens
            tasks.append(task)
            continue
        names = list(BUILTIN) if spec == "builtin" else [spec]
        for name in names:
            if name not in BUILTIN:
                raise ScratchError(
                    f"unknown task {name!r}; use builtin, {', '.join(BUILTIN)}, or FORMAT=FILE "
                    f"with FORMAT one of {', '.join(READERS)}"
                )
            if validation_documents is None:
                raise ScratchError(f"task {name} needs validation text; give --corpus NAME")
            tasks.append(BUILTIN[name](validation_documents(), n=n, seed=seed))
    return tasks


def run_tasks(
    model, tokenizer, tasks: Sequence[Task], *, batch_size: int = 32, progress: bool = False
) -> dict[str, dict]:
    """{task name: metrics} for every task."""
    return {
        task.name: evaluate_task(model, tokenizer, task, batch_size=batch_size, progress=progress)
        for task in tasks
    }

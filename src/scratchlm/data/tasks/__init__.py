"""Built-in instruction tasks, offline and deterministic: conversations with fixed train/held-out splits.

task = get_task("arithmetic:digits=2,op=+")     # or "strings:kind=reverse,max_len=8", "dialogue"
train = task.examples("train", 5000, seed=0)    # [[{"role": "user", "content": "12+34="},
                                                #   {"role": "assistant", "content": "46"}], ...]
task.reward(train[0][:-1], "46<|end|>")         # 1.0: exact answer after stripping (see base.py)
chars = alphabet(["arithmetic", "dialogue"])    # train a character tokenizer over corpus + this

A task spec is `NAME` or `NAME:key=value,key=value`; the keys are the task's dataclass fields
(`Arithmetic.digits`, `Strings.kind`, ...), values are converted to the field's type, and a key left
out keeps its default. Values cannot contain commas.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable

from scratchlm.data.tasks.arithmetic import Arithmetic
from scratchlm.data.tasks.base import (
    SPLITS,
    Conversation,
    ExactTask,
    Message,
    Task,
    answer_text,
    is_heldout,
)
from scratchlm.data.tasks.dialogue import Dialogue, names_a_speaker, speakers
from scratchlm.data.tasks.strings import Strings
from scratchlm.errors import ScratchError

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Arithmetic, Strings, Dialogue)}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`"arithmetic:digits=2,op=+"` -> `("arithmetic", {"digits": "2", "op": "+"})`."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for item in rest.split(",") if rest else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ScratchError(f"task spec {spec!r}: {item!r} is not key=value; write e.g. {name}:key=value")
        if key in params:
            raise ScratchError(f"task spec {spec!r}: {key} is given twice")
        params[key] = value.strip()
    return name.strip(), params


def get_task(spec: str) -> Task:
    """The task a spec names, with its parameters set (see the module docstring)."""
    name, params = parse_spec(spec)
    if name not in TASKS:
        raise ScratchError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    types = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, object] = {}
    for key, value in params.items():
        if key not in known:
            raise ScratchError(
                f"task spec {spec!r}: unknown parameter {key!r}; {name} takes {', '.join(known)}"
            )
        try:
            kwargs[key] = types[key](value)
        except ValueError:
            raise ScratchError(
                f"task spec {spec!r}: {key} must be {types[key].__name__}, got {value!r}"
            ) from None
    return cls(**kwargs)


def alphabet(task_names: Iterable[str]) -> set[str]:
    """The characters the tasks' texts use (names or specs), so a character tokenizer covers them."""
    chars: set[str] = set()
    for spec in task_names:
        chars |= get_task(spec).alphabet()
    return chars


__all__ = [
    "SPLITS",
    "TASKS",
    "Arithmetic",
    "Conversation",
    "Dialogue",
    "ExactTask",
    "Message",
    "Strings",
    "Task",
    "alphabet",
    "answer_text",
    "get_task",
    "is_heldout",
    "names_a_speaker",
    "parse_spec",
    "speakers",
]

"""Readers for published benchmark files the user has locally (these machines have no internet).

Each reader turns a JSON Lines file into a `Task` with the prompt format lm-evaluation-harness uses for
that benchmark (its task YAML), so figures compare with published ones:

- HellaSwag (`hellaswag_val.jsonl`, or the Hugging Face `Rowan/hellaswag` rows): "{activity}: {ctx_a}
  {Ctx_b}" with the WikiHow bracket artifacts removed; four endings; `label`.
- ARC Easy / Challenge (AI2's `ARC-*-Dev.jsonl` with `question.stem` and `question.choices`, or the
  Hugging Face rows with `question` and `choices.text/label`): "Question: {q}\\nAnswer:"; `answerKey`.
- PIQA (`valid.jsonl` with its `valid-labels.lst` beside it, or rows carrying `label`):
  "Question: {goal}\\nAnswer:"; `sol1`/`sol2`.
- LAMBADA (`lambada_test.jsonl`, OpenAI's detokenized version): the text without its last word; the
  target is " " + the last word (greedy accuracy and perplexity of the target).
- `mc` (context, choices, gold) and `gen` (prompt, answer) rows: the user's own tasks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.eval.tasks.base import Choice, Generation, Target, Task


def read_jsonl(path: str | Path) -> list[dict]:
    return [row for _, row in numbered_rows(path)]


def numbered_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) for each non-blank line of a task file; a line that is not JSON is FILE:LINE."""
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"task file not found: {path}; give the path of a local .jsonl file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ScratchError(
                f"{path}:{number}: not valid JSON ({e.msg}); expected one object a line"
            ) from None
    if not rows:
        raise ScratchError(f"task file {path} holds no examples")
    return rows


def _field(row: dict, key: str, path, number: int):
    try:
        return row[key]
    except (KeyError, TypeError):
        raise ScratchError(
            f"{path}: example {number} has no field {key!r}; is this the right format?"
        ) from None


def _label(row: dict, key: str, path, number: int) -> int:
    value = _field(row, key, path, number)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ScratchError(
            f"{path}: example {number} has label {value!r}, not a number; test splits are unlabeled, "
            "use the validation file"
        ) from None


def _hellaswag_clean(text: str) -> str:
    # The WikiHow half of HellaSwag carries "[title]"/"[step]" markup; the harness strips it like this.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(path) -> Task:
    examples = []
    for n, row in enumerate(read_jsonl(path), 1):
        ctx = _field(row, "ctx_a", path, n) + " " + _field(row, "ctx_b", path, n).capitalize()
        query = _hellaswag_clean(_field(row, "activity_label", path, n) + ": " + ctx)
        choices = [_hellaswag_clean(e) for e in _field(row, "endings", path, n)]
        examples.append(Choice(query, choices, _label(row, "label", path, n)))
    return Task("hellaswag", examples)


def arc(path, name: str = "arc") -> Task:
    examples = []
    for n, row in enumerate(read_jsonl(path), 1):
        question = _field(row, "question", path, n)
        if isinstance(question, dict):  # AI2's release: {"stem", "choices": [{"text", "label"}]}
            stem = question["stem"]
            texts = [c["text"] for c in question["choices"]]
            labels = [c["label"] for c in question["choices"]]
        else:  # Hugging Face rows: "question": str, "choices": {"text": [...], "label": [...]}
            stem = question
            choices = _field(row, "choices", path, n)
            texts, labels = list(choices["text"]), list(choices["label"])
        key = str(_field(row, "answerKey", path, n))
        if key not in labels:
            raise ScratchError(f"{path}: example {n} answerKey {key!r} is not one of its labels {labels}")
        examples.append(Choice(f"Question: {stem}\nAnswer:", texts, labels.index(key)))
    return Task(name, examples)


def piqa(path) -> Task:
    rows = read_jsonl(path)
    path = Path(path)
    if "label" not in rows[0]:  # the original release keeps labels in "<split>-labels.lst" beside the data
        labels_file = path.with_name(path.stem + "-labels.lst")
        if not labels_file.is_file():
            raise ScratchError(f"{path} has no 'label' field and {labels_file.name} is not beside it")
        labels = labels_file.read_text().split()
        if len(labels) != len(rows):
            raise ScratchError(f"{labels_file} has {len(labels)} labels for {len(rows)} examples in {path}")
        rows = [{**row, "label": label} for row, label in zip(rows, labels)]
    examples = [
        Choice(
            f"Question: {_field(row, 'goal', path, n)}\nAnswer:",
            [row["sol1"], row["sol2"]],
            _label(row, "label", path, n),
        )
        for n, row in enumerate(rows, 1)
    ]
    return Task("piqa", examples)


def lambada(path) -> Task:
    examples = []
    for n, row in enumerate(read_jsonl(path), 1):
        words = _field(row, "text", path, n).split(" ")
        examples.append(Target(" ".join(words[:-1]), " " + words[-1]))
    return Task("lambada", examples)


def multiple_choice(path) -> Task:
    rows = read_jsonl(path)
    examples = [
        Choice(
            _field(r, "context", path, n),
            list(_field(r, "choices", path, n)),
            _label(r, "gold", path, n),
        )
        for n, r in enumerate(rows, 1)
    ]
    return Task(Path(path).stem, examples)


def generative(path) -> Task:
    rows = read_jsonl(path)
    examples = [
        Generation(_field(r, "prompt", path, n), str(_field(r, "answer", path, n)))
        for n, r in enumerate(rows, 1)
    ]
    return Task(Path(path).stem, examples)


READERS = {
    "hellaswag": hellaswag,
    "arc_easy": lambda p: arc(p, "arc_easy"),
    "arc_challenge": lambda p: arc(p, "arc_challenge"),
    "arc": arc,
    "piqa": piqa,
    "lambada": lambada,
    "mc": multiple_choice,
    "gen": generative,
}

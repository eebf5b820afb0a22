"""Prompt sources for labelling and RL: a JSONL file, or a built-in task's questions.

    read_prompts("prompts.jsonl")                         # {"prompt": "text" | [messages]} per line
    read_prompts("task:dialogue:user_chars=110,reply_chars=100", n=64, split="train")

A prompt is a message list ending with a user turn (a string becomes one user turn). A task source gives
the task's conversations without their answers, in the task's fixed seeded order (`Task.examples`).
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.data.chat import conversation_problem
from scratchlm.data.tasks import get_task
from scratchlm.errors import ScratchError

Message = dict[str, str]
TASK_PREFIX = "task:"


def read_prompts(
    source: str | Path, n: int | None = None, split: str = "train", seed: int = 0
) -> list[list[Message]]:
    """The prompts of `source` (see the module docstring); `n` of them (None: every one of a file)."""
    source = str(source)
    if n is not None and n < 1:
        raise ScratchError(f"asked for {n} prompts of {source}; ask for at least 1")
    if source.startswith(TASK_PREFIX):
        task = get_task(source.removeprefix(TASK_PREFIX))
        examples = task.examples(split, n if n is not None else 256, seed=seed)
        return [conversation[:-1] for conversation in examples]
    path = Path(source)
    if not path.is_file():
        raise ScratchError(
            f"{path}: no such prompts file (give a JSONL file, or task:SPEC for a built-in task)"
        )
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScratchError(f"{where}: not valid JSON ({e}); fix or remove that line") from None
        value = record.get("prompt", record.get("messages")) if isinstance(record, dict) else record
        messages = [{"role": "user", "content": value}] if isinstance(value, str) else value
        problem = conversation_problem(messages, add_generation_prompt=True)
        if problem:
            raise ScratchError(
                f"{where}: {problem} (a prompt is a string or messages ending with a user turn)"
            )
        prompts.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not prompts:
        raise ScratchError(f"{path}: no prompts in the file")
    return prompts[:n] if n is not None else prompts

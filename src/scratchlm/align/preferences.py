"""Preference files: people's (or a simulated annotator's) judgements of a model's answers, as JSONL.

One record a line, in either of two shapes:

    {"prompt": "...", "chosen": "...", "rejected": "..."}          a pair
    {"prompt": "...", "responses": ["best", "next", ..., "worst"]} a ranking of K answers, best first

`prompt` is a string (one user turn) or a message list; `chosen`/`rejected` are strings or, in TRL's
conversational convention, message lists whose last message is the assistant's answer. TRL's implicit
prompt (no `prompt` field; chosen and rejected are whole conversations sharing their prompt) is read too.
A pair may carry a `margin` (TRL's reward-model column). Other fields (`gold`, `annotator`) are kept for
analysis and ignored here.

A ranking of K answers becomes its K(K-1)/2 pairs, all with the record's `group`: InstructGPT (Ouyang et
al. 2022, sec. 3.5) trains on all pairs of one prompt in one batch, since as separate examples each answer
would be seen K-1 times per epoch and over-fit.

This module is the one owner of the format: the label page appends through `append_record` (one write,
then fsync) and undoes through `remove_last_record` (an atomic rewrite). A crash mid-append can leave a
last line without its newline: `read_preferences` refuses such a file by name and line, and
`repair_tail` (the label page's resume) drops that one unacknowledged line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.data.chat import conversation_problem
from scratchlm.errors import ScratchError
from scratchlm.fileio import fsync_dir, write_bytes_atomic

Message = dict[str, str]


@dataclass(frozen=True)
class Pair:
    prompt: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable, so pairs can be grouped
    chosen: str
    rejected: str
    group: int  # the record it came from: the pairs of one ranking share it
    margin: float = 0.0
    line: int = 0  # the record's line in its file, for messages (FILE:LINE)

    @property
    def messages(self) -> list[Message]:
        return [{"role": role, "content": content} for role, content in self.prompt]


@dataclass
class Preferences:
    pairs: list[Pair]
    records: int  # records read (pairs and rankings)
    identical: int = 0  # pairs skipped because chosen == rejected (they teach nothing)
    rankings: int = 0
    where: str = ""
    groups: list[list[int]] = field(default_factory=list)  # pair indices of each record, in file order

    def summary(self) -> str:
        skipped = f", {self.identical} identical pairs skipped" if self.identical else ""
        counts = f"{self.records} records ({self.rankings} rankings) -> {len(self.pairs)} pairs"
        return f"{self.where}: {counts}{skipped}"


def _as_prompt(value, where: str) -> list[Message]:
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list):
        messages = value
    else:
        raise ScratchError(f"{where}: prompt must be a string or a message list, got {type(value).__name__}")
    problem = conversation_problem(messages, add_generation_prompt=True)
    if problem:
        raise ScratchError(f"{where}: prompt: {problem}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _as_answer(value, name: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and isinstance(value[-1], dict)
        and value[-1].get("role") == "assistant"
    ):
        content = value[-1].get("content")
        if isinstance(content, str):
            return content
    raise ScratchError(f"{where}: {name} must be a string or a message list ending with an assistant message")


def _implicit_prompt(record: dict, where: str) -> tuple[list[Message], str, str]:
    """TRL's implicit prompt: the shared messages before the answers of two whole conversations."""
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if not (isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) >= 2):
        raise ScratchError(f"{where}: no prompt; give a prompt field (or chosen/rejected as conversations)")
    if chosen[:-1] != rejected[:-1]:
        raise ScratchError(f"{where}: chosen and rejected do not share their prompt messages")
    return (
        _as_prompt(chosen[:-1], where),
        _as_answer(chosen, "chosen", where),
        _as_answer(rejected, "rejected", where),
    )


def parse_record(record: object, where: str) -> tuple[list[Message], list[str], float]:
    """(prompt messages, answers best first, margin) of one record; an error names `where`."""
    if not isinstance(record, dict):
        raise ScratchError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "responses" in record:
        responses = record["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise ScratchError(f"{where}: responses must be a list of strings, best first")
        if len(responses) < 2:
            raise ScratchError(
                f"{where}: a ranking needs at least two responses, got {len(responses)}; rank two or more"
            )
        return _as_prompt(record.get("prompt"), where), list(responses), 0.0
    if "chosen" not in record or "rejected" not in record:
        raise ScratchError(f"{where}: a record needs chosen and rejected (a pair) or responses (a ranking)")
    if "prompt" in record:
        prompt = _as_prompt(record["prompt"], where)
        answers = [
            _as_answer(record["chosen"], "chosen", where),
            _as_answer(record["rejected"], "rejected", where),
        ]
    else:
        prompt, *answers = _implicit_prompt(record, where)
    margin = record.get("margin", 0.0)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool):
        raise ScratchError(f"{where}: margin must be a number, got {margin!r}")
    return prompt, answers, float(margin)


def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, record) of every non-blank line; refuses bad JSON and a torn last line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ScratchError(f"{path}: no such preference file") from None
    lines = data.split(b"\n")
    if lines[-1].strip():
        raise ScratchError(
            f"{path}:{len(lines)}: the last record has no end of line, so its write was cut short; "
            "remove that line (scratchlm label does so when it resumes)"
        )
    out = []
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            out.append((number, json.loads(raw)))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ScratchError(f"{path}:{number}: not valid JSON ({e}); fix or remove that line") from None
    return out


def read_preferences(path: str | Path) -> Preferences:
    """Every pair of a preference file (rankings expanded; identical pairs skipped and counted)."""
    path = Path(path)
    prefs = Preferences(pairs=[], records=0, where=str(path))
    for number, record in read_records(path):
        prompt, answers, margin = parse_record(record, f"{path}:{number}")
        prompt_key = tuple((m["role"], m["content"]) for m in prompt)
        prefs.records += 1
        prefs.rankings += "responses" in record
        group = []
        for i in range(len(answers)):
            for j in range(i + 1, len(answers)):
                if answers[i] == answers[j]:
                    prefs.identical += 1
                    continue
                group.append(len(prefs.pairs))
                pair = Pair(prompt_key, answers[i], answers[j], prefs.records - 1, margin, number)
                prefs.pairs.append(pair)
        if group:
            prefs.groups.append(group)
    if not prefs.pairs:
        raise ScratchError(
            f"{path}: no usable pair ({prefs.records} records, {prefs.identical} with identical answers); "
            "give records whose answers differ"
        )
    return prefs


# ---- writing -------------------------------------------------------------------------------------


def append_record(path: str | Path, record: dict) -> None:
    """Append one record as one line, in one write, then fsync: after return it survives a crash."""
    path = Path(path)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def repair_tail(path: str | Path) -> bool:
    """Drop a last line cut short by a crash (never acknowledged); True if one was dropped."""
    path = Path(path)
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    write_bytes_atomic(path, data[: data.rfind(b"\n") + 1])
    return True


def remove_last_record(path: str | Path) -> dict | None:
    """Undo: rewrite the file atomically without its last record; returns that record (None if empty)."""
    path = Path(path)
    records = read_records(path) if path.exists() else []
    if not records:
        return None
    lines = path.read_bytes().split(b"\n")
    last_line, record = records[-1]
    write_bytes_atomic(path, b"".join(line + b"\n" for line in lines[: last_line - 1]))
    return record


def write_records(path: str | Path, records: list[dict]) -> None:
    """A whole preference file at once, atomically (the simulated annotator's output)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_bytes_atomic(path, text.encode("utf-8"))

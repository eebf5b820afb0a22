"""Shakespearean dialogue: the user gives a speech, the assistant answers with the next speaker's speech.

Tiny Shakespeare is blocks of `NAME:\\nlines` separated by blank lines. Each pair of adjacent speeches
is one conversation, both given speaker name first:

    user:       "ROMEO:\\nShe speaks:\\nO, speak again, bright angel! ..."
    assistant:  "JULIET:\\nO Romeo, Romeo! wherefore art thou Romeo? ..."

Speeches are cut at line boundaries to fit small contexts: the user's keeps its last lines (those the
reply answers), the reply its first, each within `user_chars` / `reply_chars` characters, name line
included; a pair where not even one line fits is skipped.

The held-out split is the corpus's validation part (`Corpus.split()`: the last 10% of the text), not a
hash: the base model is pretrained on the first 90%, so held-out replies are text it has never seen.
A held-out pair whose exact text also occurs in the training part (short stock exchanges) is dropped.
The task is scored by the loss on held-out replies and by `names_a_speaker`.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import ClassVar

from scratchlm.data.corpora import load_corpus
from scratchlm.data.tasks.base import Conversation, Task, answer_text, check_split
from scratchlm.errors import ScratchError

# A speaker line: "ROMEO:", "First Citizen:", "Senators, &C:", "ALL SERVING-MEN:".
_SPEAKER = re.compile(r"[A-Za-z][A-Za-z' ,&.-]*:")


def speeches(text: str) -> list[tuple[str, list[str]] | None]:
    """(speaker, lines) for each blank-line-separated block; None for a block that is no speech (a name
    with no lines, or text cut mid-speech), so that pairs never join speeches that are not adjacent."""
    out: list[tuple[str, list[str]] | None] = []
    for block in re.split(r"\n{2,}", text):
        lines = block.strip("\n").split("\n")
        speech = _SPEAKER.fullmatch(lines[0]) is not None and len(lines) > 1
        out.append((lines[0][:-1], lines[1:]) if speech else None)
    return out


def _fit(name: str, lines: list[str], limit: int, keep_last: bool) -> str | None:
    """`NAME:\\n` plus as many whole lines as fit in `limit` characters, from the end or the start."""
    kept: list[str] = []
    size = len(name) + 1
    for line in reversed(lines) if keep_last else lines:
        if size + 1 + len(line) > limit:
            break
        kept.append(line)
        size += 1 + len(line)
    if not kept:
        return None
    return "\n".join([f"{name}:", *(reversed(kept) if keep_last else kept)])


def _pairs(text: str, user_chars: int, reply_chars: int) -> list[tuple[str, str]]:
    found = speeches(text)
    pairs = []
    for first, second in zip(found, found[1:]):
        if first is None or second is None:
            continue
        user, reply = _fit(*first, user_chars, keep_last=True), _fit(*second, reply_chars, keep_last=False)
        if user is not None and reply is not None:
            pairs.append((user, reply))
    return pairs


@functools.cache
def _splits(user_chars: int, reply_chars: int) -> dict[str, list[tuple[str, str]]]:
    (train_text,), (val_text,) = load_corpus("shakespeare").split()
    # The split cuts one speech in two (mid-line); neither half is a speech.
    train_text, val_text = train_text[: train_text.rfind("\n\n")], val_text[val_text.find("\n\n") :]
    train = _pairs(train_text, user_chars, reply_chars)
    seen = set(train)
    return {
        "train": train,
        "heldout": [p for p in _pairs(val_text, user_chars, reply_chars) if p not in seen],
    }


@functools.cache
def _play() -> tuple[frozenset[str], frozenset[str]]:
    """(speaker names, characters) of the whole play."""
    text = "\n".join(load_corpus("shakespeare").documents)
    first_lines = [block.strip("\n").split("\n")[0] for block in re.split(r"\n{2,}", text)]
    names = {line[:-1] for line in first_lines if _SPEAKER.fullmatch(line)}  # with or without lines
    return frozenset(names), frozenset(text)


def speakers() -> frozenset[str]:
    """Every speaker name of the play ("ROMEO", "First Citizen", "Nurse", ...)."""
    return _play()[0]


def names_a_speaker(reply: str) -> bool:
    """Whether the reply's first line is `NAME:` for a speaker of the play (after `answer_text`)."""
    first = answer_text(reply).split("\n", 1)[0]
    return first.endswith(":") and first[:-1] in speakers()


@dataclass(frozen=True)
class Dialogue(Task):
    """`user_chars` / `reply_chars`: the most characters of the user's speech and of the reply."""

    name: ClassVar[str] = "dialogue"
    user_chars: int = 200
    reply_chars: int = 150

    def __post_init__(self):
        for key in ("user_chars", "reply_chars"):
            if getattr(self, key) < 20:
                raise ScratchError(
                    f"dialogue: {key} must be at least 20 (a name and a line), got {getattr(self, key)}"
                )

    def examples(self, split: str, n: int, seed: int = 0) -> list[Conversation]:
        """`n` exchanges of `split` in a seeded order; a smaller `n` gives a prefix. Held-out exchanges are
        distinct (more than the split holds is an error); training ones come in reshuffled passes."""
        check_split(split)
        pairs = _splits(self.user_chars, self.reply_chars)[split]
        if (split == "heldout" and n > len(pairs)) or not pairs:
            raise ScratchError(
                f"task {self.spec} has {len(pairs)} {split} exchanges; ask for at most that many"
            )
        rng = random.Random(seed)
        order: list[int] = []
        while len(order) < n:
            one_pass = list(range(len(pairs)))
            rng.shuffle(one_pass)
            order += one_pass
        return [
            [{"role": "user", "content": pairs[i][0]}, {"role": "assistant", "content": pairs[i][1]}]
            for i in order[:n]
        ]

    names_a_speaker = staticmethod(names_a_speaker)

    def alphabet(self) -> set[str]:
        return set(_play()[1])

"""What every instruction task shares: conversations, the fixed held-out split, and the answer rule.

A conversation is a list of `{"role": ..., "content": ...}` messages (an optional "system", then "user"
and "assistant" turns) ending with the assistant's answer; a prompt is the same list without that answer.

The held-out split is fixed by a hash of the canonical question (task name and question text), not by the
seed or by how many examples are asked for: a held-out question is held out for every seed, every `n` and
every parameter setting that can produce it (`3+4=` is held out for `digits=1` and `digits=3` alike).

A completion is judged after `answer_text`: surrounding whitespace and one trailing `<|end|>` (the chat
template's end of turn, with whitespace around it) are removed, and the rest must equal the answer exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence
from typing import ClassVar

from scratchlm.errors import ScratchError
from scratchlm.tokenizer.base import CHAT_SPECIAL_TOKENS

Message = dict[str, str]
Conversation = list[Message]

SPLITS = ("train", "heldout")
# A fifth of the questions, so that even the smallest space (1-digit sums: 100 questions) holds out ~20.
HELDOUT_FRACTION = 0.2
END_OF_TURN = "<|end|>"
assert END_OF_TURN in CHAT_SPECIAL_TOKENS


def is_heldout(key: str) -> bool:
    """Whether the question `key` is in the held-out split (sha256: Python's hash() is salted per process)."""
    unit = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return unit < HELDOUT_FRACTION


def answer_text(completion: str) -> str:
    """The completion as it is compared with an answer (see the module docstring)."""
    text = completion.strip()
    if text.endswith(END_OF_TURN):
        text = text[: -len(END_OF_TURN)].strip()
    return text


def last_user(conversation_or_prompt: Sequence[Message] | str) -> str:
    """The question: the last user message's content, or the string itself."""
    if isinstance(conversation_or_prompt, str):
        return conversation_or_prompt
    for message in reversed(conversation_or_prompt):
        if message["role"] == "user":
            return message["content"]
    raise ScratchError("the conversation has no user message; a task question is the last user message")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ScratchError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


class Task:
    """A task's parameters are its dataclass fields; `spec` writes them back as `name:key=value,...`."""

    name: ClassVar[str]

    @property
    def spec(self) -> str:
        params = ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.name}:{params}" if params else self.name

    def examples(self, split: str, n: int, seed: int = 0) -> list[Conversation]:
        raise NotImplementedError

    def alphabet(self) -> set[str]:
        """Every character the task's texts can use (a superset is fine)."""
        raise NotImplementedError


class ExactTask(Task):
    """A task whose answer follows from the question alone, so that a prompt is all a checker needs.

    Subclasses draw a question (`question(rng)`) and compute its one right answer (`answer(question)`,
    a ScratchError for text that is not one of the task's questions).
    """

    def question(self, rng: random.Random) -> str:
        raise NotImplementedError

    def answer(self, question: str) -> str:
        raise NotImplementedError

    def examples(self, split: str, n: int, seed: int = 0) -> list[Conversation]:
        """`n` conversations of `split`, fixed by the seed (see `sample_questions`)."""
        questions = sample_questions(self.question, lambda q: f"{self.name}|{q}", split, n, seed, self.spec)
        return [
            [{"role": "user", "content": q}, {"role": "assistant", "content": self.answer(q)}]
            for q in questions
        ]

    def check(self, conversation_or_prompt: Sequence[Message] | str, completion: str) -> bool:
        """Whether `completion` answers the last user question exactly (after `answer_text`)."""
        return answer_text(completion) == self.answer(last_user(conversation_or_prompt))

    def reward(self, prompt_messages: Sequence[Message], completion: str) -> float:
        """1.0 for an exact answer, else 0.0: the GRPO reward."""
        return 1.0 if self.check(prompt_messages, completion) else 0.0


def sample_questions(
    draw: Callable[[random.Random], str], key: Callable[[str], str], split: str, n: int, seed: int, spec: str
) -> list[str]:
    """`n` questions of `split` from one seeded stream of draws, so a smaller `n` gives a prefix.

    Held-out questions are distinct: an accuracy counts each once, and asking for more than the split
    holds is an error. Training questions come in passes, like epochs: no repeat within a pass, a new
    pass once the split is used up, so any `n` can be asked for. A pass ends when 10,000 + 20 per question
    found draws in a row bring nothing new: among S equally likely questions, that many misses while one
    is still unseen has probability below e**-4 for a held-out split (S/5 questions), e**-16 for train.
    """
    check_split(split)
    want_heldout = split == "heldout"
    rng = random.Random(seed)
    in_split: dict[str, bool] = {}  # the hash split, computed once per question
    out: list[str] = []
    seen: set[str] = set()  # this pass
    misses = 0
    while len(out) < n:
        q = draw(rng)
        if q not in in_split:
            in_split[q] = is_heldout(key(q)) == want_heldout
        if in_split[q] and q not in seen:
            seen.add(q)
            out.append(q)
            misses = 0
            continue
        misses += 1
        if misses > 10_000 + 20 * len(seen):
            if want_heldout or not seen:
                raise ScratchError(
                    f"task {spec} has {len(seen)} {split} questions, fewer than the {n} asked for; "
                    "ask for fewer examples or widen the task"
                )
            seen, misses = set(), 0
    return out

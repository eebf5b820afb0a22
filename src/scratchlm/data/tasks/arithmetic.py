"""Addition and subtraction: the user writes `12+34=`, the assistant answers `46`.

The prompt is the bare equation, with no words around it: the models are tiny and character-level, so
every prompt character costs context and a digit the model has to attend past. Operands are drawn
uniformly from 0 .. 10**digits - 1. Subtraction puts the larger operand first, so an answer is never
negative: a small model learns borrowing before it learns signs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import ClassVar

from scratchlm.data.tasks.base import ExactTask
from scratchlm.errors import ScratchError

OPS = ("+", "-")
_QUESTION = re.compile(r"(\d+)([+-])(\d+)=")


@dataclass(frozen=True)
class Arithmetic(ExactTask):
    """`digits`: the most digits an operand has; `op`: `+` or `-`."""

    name: ClassVar[str] = "arithmetic"
    digits: int = 3
    op: str = "+"

    def __post_init__(self):
        if self.digits < 1:
            raise ScratchError(f"arithmetic: digits must be at least 1, got {self.digits}")
        if self.op not in OPS:
            raise ScratchError(f"arithmetic: op must be one of {' '.join(OPS)}, got {self.op!r}")

    def question(self, rng: random.Random) -> str:
        a, b = rng.randrange(10**self.digits), rng.randrange(10**self.digits)
        if self.op == "-" and a < b:
            a, b = b, a
        return f"{a}{self.op}{b}="

    def answer(self, question: str) -> str:
        match = _QUESTION.fullmatch(question.strip())
        if match is None:
            raise ScratchError(f"not an arithmetic question: {question!r}; expected the form 12+34=")
        a, op, b = int(match[1]), match[2], int(match[3])
        return str(a + b if op == "+" else a - b)

    def alphabet(self) -> set[str]:
        return set("0123456789+-=")

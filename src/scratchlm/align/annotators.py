"""Simulated annotators: a hidden "gold" judge, and Bradley-Terry noise on its preferences.

When nobody is at hand to rank answers, a gold scoring function g(prompt, answer) stands in for the
person's taste, and the labels it gives are noisy the way people's are (Bradley & Terry 1952):

    P(a > b) = sigmoid((g(a) - g(b)) / tau)

so the best agreement any model can reach with those labels, the *noise ceiling*, is known:
E[max(p, 1 - p)] over the pairs. A ranking of K answers is drawn by sorting g / tau plus Gumbel noise
(Plackett-Luce); every pair of that ranking then has exactly the Bradley-Terry probability above, because
the difference of two Gumbel draws is logistic.

Gold judges (`get_judge(spec)`):
- `sentiment`: VADER's compound score in [-1, 1] (Hutto & Gilbert 2014; the `vaderSentiment` package
  carries its lexicon): TRL's classic "make the text positive" task, here on Shakespeare's speeches.
- `exact:TASK_SPEC`: 1 for an exact answer of a built-in task (`scratchlm.data.tasks`), else 0.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from scratchlm.data.tasks import answer_text, get_task
from scratchlm.errors import ScratchError

Message = dict[str, str]


class SentimentJudge:
    name = "sentiment"

    def __init__(self):
        self._analyzer = _vader()

    def score(self, prompt: Sequence[Message], answer: str) -> float:
        return float(self._analyzer.polarity_scores(answer_text(answer))["compound"])


@functools.cache
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # optional at import time
    except ImportError:
        raise ScratchError("the sentiment judge needs vaderSentiment: pip install vaderSentiment") from None
    return SentimentIntensityAnalyzer()


class ExactJudge:
    def __init__(self, task_spec: str):
        self.task = get_task(task_spec)
        if not hasattr(self.task, "reward"):
            raise ScratchError(f"task {task_spec!r} has no exact answers; use an arithmetic or strings task")
        self.name = f"exact:{self.task.spec}"

    def score(self, prompt: Sequence[Message], answer: str) -> float:
        return float(self.task.reward(list(prompt), answer))


def get_judge(spec: str):
    """`sentiment` or `exact:TASK_SPEC` (e.g. `exact:arithmetic:digits=2,op=+`)."""
    if spec == "sentiment":
        return SentimentJudge()
    if spec.startswith("exact:"):
        return ExactJudge(spec.removeprefix("exact:"))
    raise ScratchError(f"unknown judge {spec!r}; use sentiment or exact:TASK_SPEC")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def agreement_ceiling(gold_differences: Sequence[float], tau: float) -> float:
    """E[max(p, 1 - p)], p = sigmoid(d / tau): the best pair accuracy possible on Bradley-Terry labels."""
    if not gold_differences:
        raise ScratchError("no pairs to measure a noise ceiling on")
    return sum(sigmoid(abs(d) / tau) for d in gold_differences) / len(gold_differences)


def tau_for_ceiling(gold_differences: Sequence[float], ceiling: float = 0.8) -> float:
    """The tau whose noise ceiling on these pairs is `ceiling` (bisection on log tau; it falls with tau)."""
    best = agreement_ceiling(gold_differences, 1e-9)
    if not 0.5 < ceiling < best:
        raise ScratchError(
            f"a noise ceiling of {ceiling} is out of reach: these pairs allow (0.5, {best:.3f}); "
            "ties in the gold score can never be called"
        )
    low, high = math.log(1e-6), math.log(1e6)
    for _ in range(100):
        mid = (low + high) / 2
        if agreement_ceiling(gold_differences, math.exp(mid)) > ceiling:
            low = mid
        else:
            high = mid
    return math.exp((low + high) / 2)


@dataclass
class Annotator:
    """A simulated person: ranks answers by `judge`'s gold score, with Bradley-Terry noise of scale `tau`."""

    judge: object
    tau: float
    seed: int = 0

    def __post_init__(self):
        if self.tau <= 0:
            raise ScratchError(f"annotator tau must be > 0 (0 would be a noiseless judge), got {self.tau}")
        self._rng = random.Random(self.seed)

    def rank(self, prompt: Sequence[Message], answers: Sequence[str]) -> tuple[list[int], list[float]]:
        """(order of `answers`, best first; their gold scores)."""
        gold = [self.judge.score(prompt, a) for a in answers]
        noisy = [g / self.tau - math.log(-math.log(self._rng.random() or 1e-300)) for g in gold]  # + Gumbel
        order = sorted(range(len(answers)), key=lambda i: -noisy[i])
        return order, gold

"""Benchmark tasks and how they are scored, following lm-evaluation-harness's definitions.

Three kinds of example:
- `Choice`: a context and several continuations, one right. The model picks the continuation of highest
  log-likelihood given the context (`acc`), or of highest log-likelihood per character of the
  continuation (`acc_norm`: long answers are not penalized for being long). Each continuation is scored
  as `delimiter + choice` (" " by default), while acc_norm divides by `len(choice)` alone: both exactly as
  the harness's multiple_choice output type does, so the numbers agree with it.
- `Target`: a context and the one right continuation (LAMBADA's last word): `acc` is whether greedy
  decoding produces it, `ppl` is exp of minus the mean log-likelihood of the target.
- `Generation`: a prompt and a reference answer: greedy generation, cut at the first stop string,
  stripped, must equal the answer exactly (`exact_match`).

Next to raw accuracy we report the chance-centered figure (nanochat's CORE does the same):
`(acc - chance) / (1 - chance)`, 0 at chance and 1 when perfect, so tasks with 2 and 4 choices compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scratchlm.eval.generation import greedy_until
from scratchlm.eval.scoring import encode_pair, score_continuations


@dataclass
class Choice:
    context: str
    choices: list[str]
    gold: int


@dataclass
class Target:
    context: str
    target: str


@dataclass
class Generation:
    prompt: str
    answer: str


@dataclass
class Task:
    """A named list of examples of one kind. `delimiter` joins context and choice (harness default)."""

    name: str
    examples: list
    delimiter: str = " "
    stop: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 32

    @property
    def kind(self) -> str:
        return type(self.examples[0]).__name__.lower() if self.examples else "empty"


def centered(acc: float, chance: float) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1."""
    return (acc - chance) / (1.0 - chance) if chance < 1.0 else 0.0


def choice_requests(task: Task) -> list[tuple[str, str]]:
    """(context, continuation) strings for every choice of every example, in order."""
    return [(ex.context, task.delimiter + choice) for ex in task.examples for choice in ex.choices]


def score_choices(task: Task, loglikelihoods: list[float]) -> dict:
    """acc / acc_norm from the log-likelihood of each choice (in `choice_requests` order)."""
    hits = hits_norm = 0
    chance = 0.0
    i = 0
    for ex in task.examples:
        lls = loglikelihoods[i : i + len(ex.choices)]
        i += len(ex.choices)
        # ties go to the first choice, as numpy's argmax does in the harness
        best = max(range(len(lls)), key=lambda k: (lls[k], -k))
        norm = [ll / len(c) if c else ll for ll, c in zip(lls, ex.choices)]  # harness: len(choice) chars
        best_norm = max(range(len(norm)), key=lambda k: (norm[k], -k))
        hits += best == ex.gold
        hits_norm += best_norm == ex.gold
        chance += 1.0 / len(ex.choices)
    n = len(task.examples)
    acc, acc_norm, chance = hits / n, hits_norm / n, chance / n
    return {
        "acc": acc,
        "acc_norm": acc_norm,
        "acc_centered": centered(acc, chance),
        "acc_norm_centered": centered(acc_norm, chance),
        "chance": chance,
        "n": n,
    }


def _loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int, progress: str | None):
    encoded = [encode_pair(tokenizer, ctx, cont) for ctx, cont in pairs]
    return score_continuations(model, encoded, batch_size=batch_size, progress=progress)


def evaluate_task(model, tokenizer, task: Task, *, batch_size: int = 32, progress: bool = False) -> dict:
    """Score `model` on `task`; returns the task's metrics and `n`, the number of examples."""
    assert task.examples, f"task {task.name} has no examples"
    label = task.name if progress else None
    if task.kind == "choice":
        results = _loglikelihoods(model, tokenizer, choice_requests(task), batch_size, label)
        return score_choices(task, [ll for ll, _ in results])
    if task.kind == "target":
        pairs = [(ex.context, ex.target) for ex in task.examples]
        results = _loglikelihoods(model, tokenizer, pairs, batch_size, label)
        mean_ll = sum(ll for ll, _ in results) / len(results)
        return {
            "acc": sum(greedy for _, greedy in results) / len(results),
            "ppl": math.exp(min(-mean_ll, 700.0)),
            "n": len(results),
        }
    outputs = greedy_until(
        model, tokenizer, [ex.prompt for ex in task.examples], task.stop, max_new_tokens=task.max_new_tokens
    )
    hits = sum(out.strip() == ex.answer.strip() for out, ex in zip(outputs, task.examples))
    return {"exact_match": hits / len(outputs), "n": len(outputs)}

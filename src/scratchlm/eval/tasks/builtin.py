"""Built-in tasks a small model can beat chance on, generated from the validation split alone.

Published benchmarks (HellaSwag, ARC) sit at chance for a model trained for minutes on Tiny Shakespeare;
these two do not, so they show progress from the first runs on. They are drawn deterministically (a
seeded `random.Random`) from validation documents only, so no example is text the model trained on.

- `next_line`: three lines of a play, then which of four lines really comes next (the true one and three
  lines drawn the same way from elsewhere in the validation text; only lines that occur once). Chance
  1/4. Needs the model to follow the text: who speaks, the metre, the thread of a sentence.
- `shuffled`: which of two passages is real and which has its words shuffled in place (whitespace
  untouched, so both have the same length and acc equals acc_norm). Chance 1/2. Needs word order.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

from scratchlm.errors import ScratchError
from scratchlm.eval.tasks.base import Choice, Task

CONTEXT_LINES = 3
PASSAGE_WORDS = 12


def next_line(documents: Sequence[str], n: int = 200, seed: int = 0) -> Task:
    """`n` "which line comes next" examples from `documents` (the validation split)."""
    rng = random.Random(f"next_line:{seed}")
    lines = [line for doc in documents for line in doc.split("\n")]
    # Only lines that occur once: then the true line and the distractors are exchangeable draws from one
    # set, and a model that ignores the context is at chance. With repeated lines allowed (speaker names
    # such as "ROMEO:"), a frequent line is often the answer yet can appear only once among distinct
    # choices, so "pick the speaker name" would beat chance without reading the context.
    counts = Counter(lines)
    candidates = [
        i
        for i in range(CONTEXT_LINES, len(lines))
        if lines[i].strip() and counts[lines[i]] == 1 and any(x.strip() for x in lines[i - 3 : i])
    ]
    if len({lines[i] for i in candidates}) < 4:
        raise ScratchError(
            "the validation text is too short for the next_line task (it needs a few dozen lines)"
        )
    examples = []
    for i in rng.sample(candidates, min(n, len(candidates))):
        truth = lines[i]
        distractors: list[str] = []
        while len(distractors) < 3:
            line = lines[candidates[rng.randrange(len(candidates))]]
            if line != truth and line not in distractors:
                distractors.append(line)
        choices = [truth, *distractors]
        rng.shuffle(choices)
        context = "\n".join(lines[i - CONTEXT_LINES : i]) + "\n"
        examples.append(Choice(context, choices, choices.index(truth)))
    return Task("next_line", examples, delimiter="")


def shuffle_words(passage: str, rng: random.Random) -> str:
    """The same words in another order, each whitespace run left where it was."""
    parts = re.split(r"(\s+)", passage)  # words at even indices, whitespace at odd ones
    words = parts[0::2]
    shuffled = words[:]
    for _ in range(10):  # a passage of repeated words may have no other order; give up then
        rng.shuffle(shuffled)
        if shuffled != words:
            break
    parts[0::2] = shuffled
    return "".join(parts)


def shuffled(documents: Sequence[str], n: int = 200, seed: int = 0) -> Task:
    """`n` "real or word-shuffled" examples from `documents` (the validation split)."""
    rng = random.Random(f"shuffled:{seed}")
    # Each passage is PASSAGE_WORDS consecutive words of one document, with the whitespace between them.
    spans = []
    for doc in documents:
        starts = [m.start() for m in re.finditer(r"\S+", doc)]
        ends = [m.end() for m in re.finditer(r"\S+", doc)]
        for k in range(0, len(starts) - PASSAGE_WORDS + 1, PASSAGE_WORDS):
            spans.append(doc[starts[k] : ends[k + PASSAGE_WORDS - 1]])
    if not spans:
        raise ScratchError(
            "the validation text is too short for the shuffled task (it needs a few paragraphs)"
        )
    examples = []
    for real in rng.sample(spans, min(n, len(spans))):
        fake = shuffle_words(real, rng)
        if fake == real:
            continue
        gold = rng.randrange(2)
        choices = [real, fake] if gold == 0 else [fake, real]
        examples.append(Choice("", choices, gold))
    return Task("shuffled", examples, delimiter="")


BUILTIN = {"next_line": next_line, "shuffled": shuffled}

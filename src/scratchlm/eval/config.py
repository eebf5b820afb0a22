"""`EvalConfig`: what `scratchlm eval` measures, typed once. Kept free of torch, so the command line derives
its flags from these fields (names, types, defaults and `metadata["help"]`) without importing torch, and a
notebook reaches the same policy through `scratchlm.eval.evaluate(EvalConfig(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.errors import ScratchError

TASKS_HELP = (
    "builtin | next_line | shuffled | blimp[:max_pairs=N,folder=DIR] | FORMAT=FILE, FORMAT one of "
    "hellaswag, arc_easy, arc_challenge, piqa, lambada, mc, gen"
)


@dataclass
class EvalConfig:
    """One evaluation of one model (see `scratchlm.eval.workflow.evaluate` for what runs when).

    With neither `text` nor `corpus`, the validation split of the corpus the model's run trained on is
    scored (its config.yaml; `run`'s, when given, comes first), unless only `tasks` are asked for.
    """

    ckpt: Path = field(
        metadata={
            "help": "model folder, or a run folder (uses final/ or its newest checkpoint)",
            "metavar": "DIR",
        }
    )
    text: Path | None = field(
        default=None, metadata={"help": "a text file to score whole", "metavar": "FILE"}
    )
    corpus: str | None = field(
        default=None,
        metadata={"help": "a corpus (name, file, folder, .jsonl): its validation split", "metavar": "NAME"},
    )
    stride: int | None = field(
        default=None,
        metadata={"help": "slide the context window by N tokens (default: whole windows)", "metavar": "N"},
    )
    tasks: list[str] = field(
        default_factory=list, metadata={"help": TASKS_HELP, "nargs": "+", "metavar": "TASK"}
    )
    n: int = field(default=200, metadata={"help": "examples per built-in task", "metavar": "N"})
    limit: int | None = field(
        default=None, metadata={"help": "use only the first N examples of each task file", "metavar": "N"}
    )
    stop: list[str] = field(
        default_factory=list,
        metadata={
            "help": "generative tasks: cut answers at these strings "
            "(\\n and \\t understood; default: newline)",
            "nargs": "+",
            "metavar": "STR",
        },
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "generative tasks: longest answer (default 32)", "metavar": "N"}
    )
    run: Path | None = field(
        default=None,
        metadata={
            "help": "append the results to this run's metrics.jsonl (shown by `scratchlm report`)",
            "metavar": "RUN",
        },
    )
    device: str = field(
        default="auto", metadata={"help": "auto | cpu | cuda | cuda:N | mps", "metavar": "DEVICE"}
    )
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass", "metavar": "N"})

    def __post_init__(self) -> None:
        if not str(self.ckpt).strip():
            raise ScratchError("ckpt is empty; give a model folder or a training run folder")
        # Paths typed as text (a notebook's "runs/demo") are paths; sequences are lists.
        self.ckpt = Path(self.ckpt)
        self.text = None if self.text is None else Path(self.text)
        self.run = None if self.run is None else Path(self.run)
        self.tasks, self.stop = list(self.tasks), list(self.stop)
        if self.text is not None and self.corpus is not None:
            raise ScratchError("give text or corpus, not both: text scores a file, corpus a validation split")
        if self.stride is not None and self.stride < 1:
            raise ScratchError(f"stride must be >= 1 (or unset: whole windows), got {self.stride}")
        if self.n < 1:
            raise ScratchError(f"n (examples per built-in task) must be >= 1, got {self.n}")
        if self.limit is not None and self.limit < 1:
            raise ScratchError(f"limit must be >= 1 (or unset: every example), got {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ScratchError(f"max_new_tokens must be >= 1 (or unset: 32), got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ScratchError(f"batch_size must be >= 1, got {self.batch_size}")
        if any(s == "" for s in self.stop):
            raise ScratchError("a stop string is empty; give non-empty --stop values")

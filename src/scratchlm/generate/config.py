"""`SamplingConfig`: how to decode. Kept free of torch, so the command line can derive
`scratchlm generate`'s flags from its fields (and their `metadata["help"]`) without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scratchlm.errors import ScratchError


@dataclass
class SamplingConfig:
    """How to decode. `temperature == 0` means greedy (argmax); filters then have no effect.

    `stop` strings end a row's text (the stop string itself is not returned); `stop_at_eot` ends it at the
    tokenizer's `<|endoftext|>`. A prompt longer than the model's context is cut from the left with a
    notice (`truncate="left"`) or refused (`truncate="error"`).
    """

    max_new_tokens: int = field(default=256, metadata={"help": "tokens to add per prompt"})
    temperature: float = field(default=1.0, metadata={"help": "0 = greedy"})
    top_k: int | None = field(default=None, metadata={"help": "sample among the k most likely tokens"})
    top_p: float | None = field(
        default=None, metadata={"help": "nucleus: the smallest set with this much mass"}
    )
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages repeats (CTRL)"})
    seed: int | None = field(default=None, metadata={"help": "make sampling reproducible"})
    stop: list[str] = field(
        default_factory=list, metadata={"help": "stop at this text (repeatable; \\n = newline)"}
    )
    stop_at_eot: bool = field(default=True, metadata={"help": "end a row at <|endoftext|>"})
    truncate: Literal["left", "error"] = field(
        default="left",
        metadata={"help": "a prompt longer than the context: cut from the left with a notice, or refuse"},
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ScratchError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ScratchError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ScratchError(f"top_k must be >= 1 (or unset), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ScratchError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ScratchError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.truncate not in ("left", "error"):
            raise ScratchError(f"truncate must be 'left' or 'error', got {self.truncate!r}")
        if any(s == "" for s in self.stop):
            raise ScratchError("a stop string is empty; give non-empty --stop values")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

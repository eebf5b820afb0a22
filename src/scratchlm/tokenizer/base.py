"""What every tokenizer offers the later stages, and the special tokens they share.

The `Tokenizer` protocol is the contract in docs/architecture.md: shards, training, evaluation and
generation only ever call these methods, so a character tokenizer and a BPE one are interchangeable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import regex

from scratchlm.errors import ScratchError

ENDOFTEXT = "<|endoftext|>"

# `<|endoftext|>` separates documents. The chat roles are reserved now, so that the chat issue adds
# behaviour, not vocabulary: a tokenizer trained today already has ids for them.
CHAT_SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
DEFAULT_SPECIAL_TOKENS = (ENDOFTEXT, *CHAT_SPECIAL_TOKENS)


@runtime_checkable
class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    special_tokens: dict[str, int]

    @property
    def eot_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]:
        """Ids for `text`; special-token strings in it become their special ids."""
        ...

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids for `text` with special-token strings treated as plain text."""
        ...

    def encode_batch(
        self, texts: list[str], *, ordinary: bool = False, num_threads: int = 0
    ) -> list[list[int]]:
        """`encode` (or `encode_ordinary`) of each text; BPE spreads them over threads."""
        ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: str | Path) -> Path: ...

    def fingerprint(self) -> str: ...


def special_splitter(special_tokens: dict[str, int]) -> regex.Pattern | None:
    """A pattern whose `split` keeps the special tokens as separate pieces (None: no specials).

    Longer specials are tried first, so one that is a prefix of another never shadows it.
    """
    if not special_tokens:
        return None
    if "" in special_tokens:
        raise ScratchError("a special token cannot be the empty string; name it, e.g. <|endoftext|>")
    names = sorted(special_tokens, key=lambda s: (-len(s), s))
    return regex.compile("(" + "|".join(regex.escape(s) for s in names) + ")")

"""Character-level tokenizer: one id per distinct character of the training text (nanoGPT's baseline).

Ids: the characters in code-point order, then the special tokens. A character outside the vocabulary
is an error naming it and its position, unless an `unknown` special token is declared, in which case
it maps to that token (and decoding shows the token's string).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.tokenizer.base import ENDOFTEXT, special_splitter
from scratchlm.tokenizer.io import payload_fingerprint, write_payload


class CharTokenizer:
    kind = "char"

    def __init__(
        self,
        chars: list[str],
        special_tokens: Iterable[str] | dict[str, int] = (),
        unknown: str | None = None,
        *,
        where: str = "",
    ):
        where = where or "character tokenizer"
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ScratchError(
                f"{where}: chars must be distinct single characters; the vocabulary is corrupt"
            )
        if isinstance(special_tokens, dict):
            specials = dict(special_tokens)
        else:
            names = list(dict.fromkeys(special_tokens))
            if unknown is not None and unknown not in names:
                names.append(unknown)
            specials = {s: len(chars) + k for k, s in enumerate(names)}
        ids = sorted(specials.values())
        if ids != list(range(len(chars), len(chars) + len(specials))):
            raise ScratchError(
                f"{where}: special token ids must follow the characters; the vocabulary is corrupt"
            )
        if unknown is not None and unknown not in specials:
            raise ScratchError(f"{where}: the unknown token {unknown!r} is not a special token")
        self.chars = list(chars)
        self.special_tokens = specials
        self.unknown = unknown
        self.vocab_size = len(chars) + len(specials)
        self._id_of = {c: i for i, c in enumerate(self.chars)}
        self._text_of = self.chars + sorted(specials, key=specials.get)
        self._specials_re = special_splitter(specials)

    @property
    def eot_id(self) -> int | None:
        return self.special_tokens.get(ENDOFTEXT)

    def encode(self, text: str) -> list[int]:
        if self._specials_re is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        offset = 0
        for k, piece in enumerate(self._specials_re.split(text)):
            if k % 2 == 1:  # split() puts the captured specials at odd positions
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self._encode_chars(piece, offset))
            offset += len(piece)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self._encode_chars(text, 0)

    def encode_batch(
        self, texts: list[str], *, ordinary: bool = False, num_threads: int = 0
    ) -> list[list[int]]:
        """Same signature as BPETokenizer.encode_batch; characters are cheap enough to do one by one."""
        encode = self.encode_ordinary if ordinary else self.encode
        return [encode(t) for t in texts]

    def _encode_chars(self, text: str, offset: int) -> list[int]:
        id_of = self._id_of
        try:
            return [id_of[c] for c in text]  # the fast path: every character known
        except KeyError:
            pass
        unk = self.special_tokens[self.unknown] if self.unknown is not None else None
        ids = []
        for i, c in enumerate(text):
            if c in id_of:
                ids.append(id_of[c])
            elif unk is not None:
                ids.append(unk)
            else:
                raise ScratchError(
                    f"character {c!r} (U+{ord(c):04X}) at position {offset + i} is not in the tokenizer's "
                    "vocabulary; train on text that contains it, or declare an unknown token"
                )
        return ids

    def decode(self, ids: list[int]) -> str:
        text_of = self._text_of
        bad = [i for i in ids if not 0 <= i < len(text_of)]  # a negative id must not index from the end
        if bad:
            raise ScratchError(
                f"token id {bad[0]} is outside this tokenizer's vocabulary (ids 0..{self.vocab_size - 1})"
            )
        return "".join([text_of[i] for i in ids])

    def save(self, directory: str | Path) -> Path:
        return write_payload(directory, self.to_payload())

    def fingerprint(self) -> str:
        return payload_fingerprint(self.to_payload())

    def to_payload(self) -> dict:
        return {
            "kind": "char",
            "chars": self.chars,
            "special_tokens": dict(sorted(self.special_tokens.items(), key=lambda kv: kv[1])),
            "unknown": self.unknown,
        }

    @classmethod
    def from_payload(cls, payload: dict, *, where: str) -> CharTokenizer:
        chars, unknown = payload.get("chars"), payload.get("unknown")
        if not isinstance(chars, list) or not (unknown is None or isinstance(unknown, str)):
            raise ScratchError(f"{where}: a char tokenizer needs a 'chars' list; the file is corrupt")
        return cls(chars, payload["special_tokens"], unknown, where=where)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, specials={len(self.special_tokens)})"


def train_char(
    text_or_docs: str | Iterable[str], *, special_tokens: Iterable[str] = (), unknown: str | None = None
) -> CharTokenizer:
    """A character tokenizer whose vocabulary is every character of the training text."""
    docs = [text_or_docs] if isinstance(text_or_docs, str) else list(text_or_docs)
    chars: set[str] = set()
    for doc in docs:
        chars.update(doc)
    if not chars:
        raise ScratchError("the training text is empty; give a corpus with some text")
    return CharTokenizer(sorted(chars), special_tokens, unknown)

"""Byte-level BPE: encoding through tiktoken with our own ranks, and the pure-Python reference twin.

A BPE tokenizer here is fully described by three things, exactly tiktoken's `Encoding` inputs:
`ranks` (token bytes, index = rank = id), the pre-tokenization `pattern`, and `special_tokens`.
Encoding a chunk (tiktoken's semantics, which `encode_reference` spells out in Python): if the chunk's
bytes are a token, that token; otherwise start from single bytes and repeatedly merge the adjacent pair
whose concatenation has the lowest rank (leftmost on ties) until no adjacent pair is a token.

Known limit of the twin: the reference splits with the `regex` module, tiktoken with its own engine, and
their Unicode tables differ for code points unassigned in older Unicode versions (U+3E4BC is a letter to
`regex`, not to tiktoken). On such text the two may cut pre-tokens differently; both still round-trip.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

import regex
import tiktoken

from scratchlm.errors import ScratchError
from scratchlm.tokenizer.base import ENDOFTEXT, special_splitter
from scratchlm.tokenizer.io import payload_fingerprint, write_payload

# GPT-4's (cl100k) split: case-insensitive contractions, letters with one leading non-letter, digits in
# groups of at most three, punctuation runs with trailing newlines, newline runs, whitespace. Possessive
# quantifiers (`?+`, `++`) keep the `regex` module and tiktoken's engine from backtracking.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# GPT-2's split, in the equivalent faster form tiktoken uses for its published ranks.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class BPETokenizer:
    """Byte-level BPE over tiktoken. `ranks[i]` is the byte string of token id `i`."""

    kind = "bpe"

    def __init__(self, ranks: list[bytes], pattern: str, special_tokens: dict[str, int], *, where: str = ""):
        where = where or "BPE tokenizer"
        if len(set(ranks)) != len(ranks):
            raise ScratchError(f"{where}: two ranks hold the same bytes; the token list is corrupt")
        if (
            len(ranks) < 256
            or any(len(t) == 0 for t in ranks)
            or len({t for t in ranks if len(t) == 1}) < 256
        ):
            raise ScratchError(
                f"{where}: every one of the 256 bytes must be a token; the token list is corrupt"
            )
        taken = [i for i in special_tokens.values() if i < len(ranks)]
        if taken or len(set(special_tokens.values())) != len(special_tokens):
            raise ScratchError(f"{where}: special token ids collide with each other or with ranks; corrupt")
        try:
            regex.compile(pattern)
        except regex.error as e:
            raise ScratchError(f"{where}: split pattern does not compile ({e})") from None
        self.ranks = list(ranks)
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self.vocab_size = max([len(ranks) - 1, *special_tokens.values()]) + 1
        self._rank_of = {t: i for i, t in enumerate(self.ranks)}
        self._compiled = regex.compile(pattern)
        self._specials_re = special_splitter(self.special_tokens)
        self._special_ids = {i: s for s, i in self.special_tokens.items()}
        try:
            self._enc = tiktoken.Encoding(
                name=f"scratchlm-{payload_fingerprint(self.to_payload())[:12]}",
                pat_str=pattern,
                mergeable_ranks=self._rank_of,
                special_tokens=self.special_tokens,
            )
        except ValueError as e:  # tiktoken's own checks (its regex engine may reject a pattern)
            raise ScratchError(f"{where}: tiktoken refuses this tokenizer ({e})") from None

    # -- the Tokenizer protocol ------------------------------------------------------------------
    @property
    def eot_id(self) -> int | None:
        return self.special_tokens.get(ENDOFTEXT)

    @property
    def num_merges(self) -> int:
        return len(self.ranks) - 256

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all")

    def encode_ordinary(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(
        self, texts: list[str], *, ordinary: bool = False, num_threads: int = 0
    ) -> list[list[int]]:
        """Several texts at once on tiktoken's thread pool (it releases the GIL while encoding)."""
        threads = num_threads or min(8, os.cpu_count() or 1)
        if ordinary:
            return self._enc.encode_ordinary_batch(texts, num_threads=threads)
        return self._enc.encode_batch(texts, num_threads=threads, allowed_special="all")

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 (a cut inside a character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: list[int]) -> bytes:
        bad = [i for i in ids if not (0 <= i < len(self.ranks) or i in self._special_ids)]
        if bad:
            raise ScratchError(
                f"token id {bad[0]} is outside this tokenizer's vocabulary (ids 0..{self.vocab_size - 1})"
            )
        return self._enc.decode_bytes(list(ids))

    def save(self, directory: str | Path) -> Path:
        return write_payload(directory, self.to_payload())

    def fingerprint(self) -> str:
        return payload_fingerprint(self.to_payload())

    # -- the pure-Python twin ------------------------------------------------------------------
    def encode_reference(self, text: str, *, allow_special: bool = True) -> list[int]:
        """The obviously correct (and slow) encoder that tests compare tiktoken's output against."""
        pieces = self._specials_re.split(text) if allow_special and self._specials_re else [text]
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 1:  # split() puts the captured specials at odd positions
                ids.append(self.special_tokens[piece])
                continue
            for chunk in self._compiled.findall(piece):
                ids.extend(self._encode_chunk_reference(chunk.encode("utf-8")))
        return ids

    def _encode_chunk_reference(self, data: bytes) -> list[int]:
        if data in self._rank_of:  # a whole chunk that is a token is that token (as tiktoken does)
            return [self._rank_of[data]]
        parts = [data[i : i + 1] for i in range(len(data))]
        while len(parts) > 1:
            best_rank, best_i = None, -1
            for i in range(len(parts) - 1):
                rank = self._rank_of.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_i = rank, i
            if best_rank is None:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        return [self._rank_of[p] for p in parts]

    # -- persistence ---------------------------------------------------------------------------
    def to_payload(self) -> dict:
        return {
            "kind": "bpe",
            "pattern": self.pattern,
            "special_tokens": dict(sorted(self.special_tokens.items(), key=lambda kv: kv[1])),
            "ranks": [base64.b64encode(t).decode("ascii") for t in self.ranks],
        }

    @classmethod
    def from_payload(cls, payload: dict, *, where: str) -> BPETokenizer:
        ranks_b64, pattern = payload.get("ranks"), payload.get("pattern")
        if not isinstance(ranks_b64, list) or not isinstance(pattern, str):
            raise ScratchError(
                f"{where}: a bpe tokenizer needs a 'ranks' list and a 'pattern'; the file is corrupt"
            )
        try:
            ranks = [base64.b64decode(t, validate=True) for t in ranks_b64]
        except (binascii.Error, TypeError, ValueError):
            raise ScratchError(f"{where}: a rank is not valid base64; the file is corrupt") from None
        return cls(ranks, pattern, payload["special_tokens"], where=where)

    def __repr__(self) -> str:
        n_specials = len(self.special_tokens)
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={self.num_merges}, specials={n_specials})"

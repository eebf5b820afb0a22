"""Word games with one right answer: reverse a word, upper-case it, count a letter, sort its letters.

    reverse: crown     ->  nworc
    upper: crown       ->  CROWN
    count o: crown     ->  1
    sort: crown        ->  cnorw

Words are lower-case a-z, at most `max_len` letters. `words` says where they come from: `shakespeare`
(Tiny Shakespeare's vocabulary, fetched if need be), `builtin` (a short list shipped here), or `auto`
(Shakespeare when it is already on disk, in the cache or the `$SCRATCHLM_DATA` mirror, else the built-in
list, so nothing is downloaded; name one explicitly when runs on different machines must match).
Three counting questions in four ask for a letter of the word, the fourth for any letter, so 0 is a real
answer but not a safe guess.
"""

from __future__ import annotations

import functools
import random
import re
import string
from dataclasses import dataclass
from typing import ClassVar

from scratchlm.data.corpora import load_corpus
from scratchlm.data.registry import locate
from scratchlm.data.tasks.base import ExactTask
from scratchlm.errors import ScratchError

KINDS = ("reverse", "upper", "count", "sort")
WORD_SOURCES = ("auto", "shakespeare", "builtin")
_QUESTION = re.compile(r"(reverse|upper|sort|count ([a-z])): ([a-z]+)")
# A whole word: letters with no apostrophe beside them ("know't" and "o'er" are not words here).
_WORD = re.compile(r"(?<![A-Za-z'])[A-Za-z]+(?![A-Za-z'])")

BUILTIN_WORDS = """
a i an at be by do go he if in is it me my no of on or so to up us we am as
and are but can day end far for had her him his how its let man may new not now old one our out own
say see she sun the too two was way who why yes you act air all art bed bid cup die eye fly ink joy
king lord good fair love life time night sweet heart death world queen blood crown grace speak peace
sword noble duke earth honour heaven father mother brother sister friend prince master gentle
tongue light music garden winter summer thunder morning evening shadow silver golden little
strange letter answer battle castle servant soldier present comfort fortune honest mercy reason
spring flower river forest stone water fire cloud storm horse field house bread apple table chair
window candle mirror pocket number orange purple yellow market doctor pepper silence patience
madness kingdom farewell tomorrow yesterday wherefore together whatever remember happiness
""".split()


@functools.cache
def vocabulary(source: str) -> tuple[str, ...]:
    """Sorted distinct lower-case words of `source` ("shakespeare" or "builtin"): sorted so that a seeded
    choice picks the same word in every process (set order depends on the per-process string hash)."""
    if source == "builtin":
        return tuple(sorted(set(BUILTIN_WORDS)))
    text = "\n".join(load_corpus("shakespeare").documents)
    return tuple(sorted({w.lower() for w in _WORD.findall(text)}))


@dataclass(frozen=True)
class Strings(ExactTask):
    """`kind`: one of reverse, upper, count, sort, or `all` (a kind drawn per question)."""

    name: ClassVar[str] = "strings"
    kind: str = "all"
    max_len: int = 8
    words: str = "auto"

    def __post_init__(self):
        if self.kind not in (*KINDS, "all"):
            raise ScratchError(f"strings: kind must be one of {', '.join(KINDS)}, all; got {self.kind!r}")
        if self.words not in WORD_SOURCES:
            raise ScratchError(f"strings: words must be one of {', '.join(WORD_SOURCES)}; got {self.words!r}")
        if not self.word_list():
            raise ScratchError(f"strings: no {self.words} word has at most {self.max_len} letters")

    def word_list(self) -> tuple[str, ...]:
        return _short_words(self.words, self.max_len)

    def question(self, rng: random.Random) -> str:
        word = rng.choice(self.word_list())
        kind = rng.choice(KINDS) if self.kind == "all" else self.kind
        if kind == "count":
            letter = rng.choice(word if rng.random() < 0.75 else string.ascii_lowercase)
            return f"count {letter}: {word}"
        return f"{kind}: {word}"

    def answer(self, question: str) -> str:
        match = _QUESTION.fullmatch(question.strip())
        if match is None:
            raise ScratchError(f"not a strings question: {question!r}; expected e.g. 'reverse: crown'")
        kind, letter, word = match[1], match[2], match[3]
        if kind == "reverse":
            return word[::-1]
        if kind == "upper":
            return word.upper()
        if kind == "sort":
            return "".join(sorted(word))
        return str(word.count(letter))

    def alphabet(self) -> set[str]:
        return set(string.ascii_letters + string.digits + ": ")


@functools.cache
def _short_words(source: str, max_len: int) -> tuple[str, ...]:
    # Cached, so `auto` is resolved once per process: a corpus fetched later does not change the words.
    if source == "auto":
        source = "builtin" if locate("shakespeare")[1] == "download" else "shakespeare"
    return tuple(w for w in vocabulary(source) if len(w) <= max_len)

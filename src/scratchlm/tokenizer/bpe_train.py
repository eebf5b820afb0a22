"""Byte-level BPE training, incremental: a merge touches only the chunks that contain its pair.

The algorithm (Sennrich et al. 2016, byte-level as in GPT-2), organised so one merge costs time in
proportion to the text it changes, not to the whole corpus:

1. Pre-tokenize: the split pattern cuts each document into chunks (words, number groups, punctuation
   runs, whitespace). Merges never cross a chunk boundary, so only the *unique* chunks matter, each
   weighted by how often it occurs (Tiny Shakespeare: 236k chunks, 14k unique).
2. Count every adjacent pair of token ids over the unique chunks (weighted), and index pair -> chunks
   where it occurs.
3. Repeat: take the most frequent pair from a max-heap; rewrite only the chunks the index names; in each,
   subtract the chunk's old pairs and add its new ones. Only pairs containing the new token can gain
   count, so only those are pushed onto the heap. Pairs that lose count keep their stale (too high)
   heap entry; when one reaches the top its count is checked and it is pushed back with the true count
   (lazy invalidation). The index is lazy the same way: a chunk that no longer holds a pair is skipped.

Tie-breaking is deterministic: among pairs of equal count the smallest (left id, right id) wins, ids
being byte values for the first 256 tokens and merge order after.

Token identity is the token's bytes, as in tiktoken's ranks: when a merge produces bytes that are
already a token (`a`+`bc` after `ab`+`c`), the chunks are rewritten to that existing token and no new
id is spent. This keeps ranks one-to-one with byte strings, which tiktoken requires.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

import regex

from scratchlm.errors import ScratchError
from scratchlm.tokenizer.base import DEFAULT_SPECIAL_TOKENS, special_splitter
from scratchlm.tokenizer.bpe import GPT4_PATTERN, BPETokenizer

# Below this many characters the pre-tokenization runs in this process; above it, in worker processes.
_PARALLEL_MIN_CHARS = 4_000_000


def train_bpe(
    text_or_docs: str | Iterable[str],
    vocab_size: int,
    *,
    pattern: str = GPT4_PATTERN,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    workers: int = 1,
) -> BPETokenizer:
    """Train a byte-level BPE whose vocabulary (bytes + merges + specials) has `vocab_size` ids.

    Special tokens take the last ids. `workers` > 1 pre-tokenizes a large corpus in that many processes.
    """
    specials = list(dict.fromkeys(special_tokens))
    special_splitter(dict.fromkeys(specials, 0))  # a bad special token fails now, not after training
    n_merges = vocab_size - 256 - len(specials)
    if n_merges < 0:
        raise ScratchError(
            f"vocab size {vocab_size} is smaller than the 256 byte tokens plus {len(specials)} special "
            f"tokens; ask for at least {256 + len(specials)}"
        )
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ScratchError(f"split pattern {pattern!r} does not compile ({e}); fix the pattern") from None
    docs = [text_or_docs] if isinstance(text_or_docs, str) else list(text_or_docs)
    if not any(docs):
        raise ScratchError("the training text is empty; give a corpus with some text")
    ranks = learn_merges(count_chunks(docs, pattern, workers), n_merges)
    return BPETokenizer(ranks, pattern, {s: len(ranks) + k for k, s in enumerate(specials)})


def count_chunks(docs: Iterable[str], pattern: str, workers: int = 1) -> Counter[str]:
    """Unique pre-token chunks of all documents with their counts. Chunks never span documents."""
    docs = list(docs)
    total = sum(len(d) for d in docs)
    if workers > 1 and total >= _PARALLEL_MIN_CHARS:
        # Pre-tokenizing is the single largest cost on big corpora; documents split across processes
        # (contiguous groups of about equal size) and their Counters summed give the same counts.
        groups = _balanced_groups(docs, workers * 4)
        with ProcessPoolExecutor(workers) as pool:
            counts: Counter[str] = Counter()
            for part in pool.map(_count_group, [(g, pattern) for g in groups]):
                counts.update(part)
            return counts
    compiled = regex.compile(pattern)
    counts = Counter()
    for doc in docs:
        counts.update(compiled.findall(doc))
    return counts


def _count_group(args: tuple[list[str], str]) -> Counter[str]:
    docs, pattern = args
    compiled = regex.compile(pattern)
    counts: Counter[str] = Counter()
    for doc in docs:
        counts.update(compiled.findall(doc))
    return counts


def _balanced_groups(docs: list[str], n: int) -> list[list[str]]:
    """Cut the document list into about `n` contiguous groups of about equal character count.

    Documents are never cut (a cut would move chunk boundaries and change the counts), so one huge
    document stays in one group.
    """
    target = max(1, sum(len(d) for d in docs) // n)
    groups: list[list[str]] = [[]]
    size = 0
    for doc in docs:
        groups[-1].append(doc)
        size += len(doc)
        if size >= target:
            groups.append([])
            size = 0
    return [g for g in groups if g]


def learn_merges(chunk_counts: dict[str, int], n_merges: int) -> list[bytes]:
    """Token byte strings in rank order: the 256 single bytes, then up to `n_merges` merged tokens.

    Fewer are returned when the text runs out of pairs (every chunk is already one token).
    """
    token_bytes = [bytes([i]) for i in range(256)]
    id_of = {t: i for i, t in enumerate(token_bytes)}
    words: list[list[int]] = []
    freqs: list[int] = []
    counts: dict[tuple[int, int], int] = {}
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for chunk, freq in chunk_counts.items():
        word = list(chunk.encode("utf-8"))
        if len(word) < 2:
            continue  # a one-byte chunk has no pairs and never changes
        wi = len(words)
        words.append(word)
        freqs.append(freq)
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            where[pair].add(wi)

    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    target = 256 + n_merges
    while len(token_bytes) < target and heap:
        neg_count, pair = heapq.heappop(heap)
        count = counts.get(pair, 0)
        if count != -neg_count:
            # Stale entry. A count that grew was pushed fresh when it grew; one that shrank goes back in.
            if 0 < count < -neg_count:
                heapq.heappush(heap, (-count, pair))
            continue
        a, b = pair
        merged = token_bytes[a] + token_bytes[b]
        new_id = id_of.get(merged)
        if new_id is None:
            new_id = len(token_bytes)
            token_bytes.append(merged)
            id_of[merged] = new_id
        grown: set[tuple[int, int]] = set()
        for wi in where.pop(pair):
            _merge_in_word(words, wi, freqs[wi], a, b, new_id, counts, where, grown)
        assert counts[pair] == 0, "every occurrence of the merged pair is rewritten"
        del counts[pair]
        for new in grown:
            heapq.heappush(heap, (-counts[new], new))
    return token_bytes


def _merge_in_word(
    words: list[list[int]],
    wi: int,
    freq: int,
    a: int,
    b: int,
    new_id: int,
    counts: dict[tuple[int, int], int],
    where: defaultdict[tuple[int, int], set[int]],
    grown: set[tuple[int, int]],
) -> None:
    """Rewrite word `wi`, merging each non-overlapping (a, b) left to right into `new_id`.

    Pair counts change only next to a merge: for a match at old position i, (left, a) becomes
    (left, new) and (b, right) becomes (new, right); two adjacent matches turn (b, a) into (new, new).
    A word that no longer holds the pair (a stale index entry: about 40% of visits on pystdlib) is left
    alone; finding that out is left to `list.index`, in C, before any list is built.
    """
    word = words[wi]
    i = _find_pair(word, a, b, 0)
    if i < 0:
        return
    n = len(word)
    out: list[int] = []
    done = 0  # old positions before this are copied to `out`
    while i >= 0:
        out += word[done:i]
        counts[(a, b)] -= freq
        if i > 0:
            if done == i and i >= 2:  # ... a b | a b ...: (b, a) becomes (new, new)
                old, new = (b, a), (new_id, new_id)
            else:
                left = word[i - 1]
                old, new = (left, a), (left, new_id)
            counts[old] -= freq
            counts[new] = counts.get(new, 0) + freq
            where[new].add(wi)
            grown.add(new)
        nxt = _find_pair(word, a, b, i + 2)
        if i + 2 < n and nxt != i + 2:  # a right neighbour that is not itself the next match
            right = word[i + 2]
            old, new = (b, right), (new_id, right)
            counts[old] -= freq
            counts[new] = counts.get(new, 0) + freq
            where[new].add(wi)
            grown.add(new)
        out.append(new_id)
        done = i + 2
        i = nxt
    out += word[done:]
    words[wi] = out


def _find_pair(word: list[int], a: int, b: int, start: int) -> int:
    """First position >= start of `a` followed by `b`, or -1."""
    end = len(word) - 1
    while True:
        try:
            i = word.index(a, start, end)
        except ValueError:
            return -1
        if word[i + 1] == b:
            return i
        start = i + 1

"""Tokenizers: the incremental BPE trainer against a naive full-recount twin, save/load, char, errors."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.paths import shakespeare_path

from scratchlm.errors import ScratchError
from scratchlm.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    GPT2_PATTERN,
    GPT4_PATTERN,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe,
    train_char,
)
from scratchlm.tokenizer.bpe_train import _balanced_groups, count_chunks, learn_merges

SAMPLE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "aaaaaaa abababab  bbbb\t\tcccc 12345 1234 99 -- ... !!! don't we'll I'M\r\n"
    "Grüße, naïve café; 東京は晴れ 🙂🙂🙂 e\u0301e\u0301 \x00\x07 end"
)


def naive_merges(chunk_counts: dict[str, int], n_merges: int) -> list[bytes]:
    """Textbook BPE: recount every pair over every chunk before each merge. Slow and obviously right.

    Same rules as the incremental trainer: most frequent pair, ties to the smallest (left, right) ids,
    non-overlapping left-to-right rewriting, a merge that yields existing bytes reuses that token.
    """
    token_bytes = [bytes([i]) for i in range(256)]
    id_of = {t: i for i, t in enumerate(token_bytes)}
    words = {chunk: list(chunk.encode("utf-8")) for chunk in chunk_counts}
    while len(token_bytes) < 256 + n_merges:
        pairs: Counter = Counter()
        for chunk, word in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += chunk_counts[chunk]
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = token_bytes[a] + token_bytes[b]
        if merged not in id_of:
            id_of[merged] = len(token_bytes)
            token_bytes.append(merged)
        new_id = id_of[merged]
        for chunk, word in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[chunk] = out
    return token_bytes


def test_incremental_trainer_matches_naive_on_text():
    counts = count_chunks([SAMPLE * 3, "the theme of the thesis: aaaa aaaa"], GPT4_PATTERN)
    assert learn_merges(counts, 150) == naive_merges(counts, 150)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="ab c\u00e9\U0001f642", min_size=1, max_size=12),
        st.integers(1, 5),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 40),
)
def test_incremental_trainer_matches_naive_property(chunk_counts, n_merges):
    # A tiny alphabet forces repeats, overlapping pairs (aaa, abab) and merges that rebuild existing bytes.
    assert learn_merges(chunk_counts, n_merges) == naive_merges(chunk_counts, n_merges)


def test_trainer_runs_out_of_pairs_gracefully():
    tok = train_bpe("ab ab ab", 1000, special_tokens=["<|endoftext|>"])
    assert tok.num_merges == 2  # "ab" and " ab": then every chunk is one token
    assert tok.eot_id == 256 + 2 and tok.vocab_size == 259


def test_parallel_pre_tokenization_counts_equal_serial(monkeypatch):
    import scratchlm.tokenizer.bpe_train as bt

    docs = [SAMPLE[i:] for i in range(0, 200, 7)]
    monkeypatch.setattr(bt, "_PARALLEL_MIN_CHARS", 0)
    assert count_chunks(docs, GPT4_PATTERN, workers=2) == count_chunks(docs, GPT4_PATTERN, workers=1)
    groups = _balanced_groups(docs, 5)
    assert [d for g in groups for d in g] == docs


def test_training_is_deterministic_and_layout():
    a = train_bpe(SAMPLE * 2, 300)
    b = train_bpe(SAMPLE * 2, 300)
    assert a.ranks == b.ranks and a.fingerprint() == b.fingerprint()
    assert a.vocab_size == 300
    n = len(DEFAULT_SPECIAL_TOKENS)
    assert sorted(a.special_tokens.values()) == list(range(300 - n, 300))
    assert a.ranks[:256] == [bytes([i]) for i in range(256)]
    # every merged token is the concatenation of two earlier tokens (a real merge, not invented bytes)
    for rank, token in enumerate(a.ranks[256:], start=256):
        earlier = set(a.ranks[:rank])
        assert any(token[:k] in earlier and token[k:] in earlier for k in range(1, len(token)))


def test_vocab_too_small_is_a_user_error():
    with pytest.raises(ScratchError, match="smaller than the 256 byte tokens plus 5 special"):
        train_bpe("hello", 260)
    assert train_bpe("hello", 261).num_merges == 0


def test_empty_text_and_bad_pattern_are_user_errors():
    with pytest.raises(ScratchError, match="empty"):
        train_bpe(["", ""], 300)
    with pytest.raises(ScratchError, match="does not compile"):
        train_bpe("hello", 300, pattern="(")
    with pytest.raises(ScratchError, match="empty"):
        train_char("")
    with pytest.raises(ScratchError, match="empty string"):
        train_bpe("hello", 300, special_tokens=["<|endoftext|>", ""])


def test_specials_encode_as_one_id_and_ordinary_does_not():
    tok = train_bpe(SAMPLE, 300)
    text = "hello<|endoftext|>world<|user|>"
    ids = tok.encode(text)
    assert tok.eot_id in ids and tok.special_tokens["<|user|>"] == ids[-1]
    assert tok.eot_id not in tok.encode_ordinary(text)
    assert tok.decode(ids) == text == tok.decode(tok.encode_ordinary(text))
    assert ids == tok.encode_reference(text)
    for t in (tok, train_char(SAMPLE + text, special_tokens=["<|endoftext|>", "<|user|>"])):
        texts = [text, SAMPLE, ""]
        assert t.encode_batch(texts) == [t.encode(x) for x in texts]
        assert t.encode_batch(texts, ordinary=True) == [t.encode_ordinary(x) for x in texts]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_load_is_bit_identical(tmp_path, kind):
    tok = (
        train_bpe(SAMPLE, 320, pattern=GPT2_PATTERN) if kind == "bpe" else train_char(SAMPLE, unknown="<unk>")
    )
    tok.save(tmp_path / "tok")
    data = (tmp_path / "tok" / "tokenizer.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == tok.fingerprint()
    back = load_tokenizer(tmp_path / "tok")
    assert isinstance(back, type(tok)) and isinstance(back, Tokenizer)
    assert back.fingerprint() == tok.fingerprint()
    assert back.to_payload() == tok.to_payload()
    back.save(tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == data
    assert back.encode(SAMPLE) == tok.encode(SAMPLE)


def test_missing_and_corrupt_folders_are_user_errors(tmp_path):
    with pytest.raises(ScratchError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchError, match="not a tokenizer folder"):
        load_tokenizer(tmp_path / "empty")
    good = train_bpe(SAMPLE, 280)
    payload = json.loads((good.save(tmp_path / "t") / "tokenizer.json").read_text())
    corruptions = {
        "truncated": None,
        "kind": {**payload, "kind": "wordpiece"},
        "version": {**payload, "version": 99},
        "base64": {**payload, "ranks": payload["ranks"][:-1] + ["!!"]},
        "duplicate": {**payload, "ranks": payload["ranks"][:-1] + [payload["ranks"][0]]},
        "no byte": {**payload, "ranks": payload["ranks"][1:]},
        "specials": {**payload, "special_tokens": {"<|endoftext|>": 3}},
    }
    for name, bad in corruptions.items():
        path = tmp_path / "t" / "tokenizer.json"
        text = json.dumps(bad) if bad is not None else path.read_text()[:100]
        path.write_text(text)
        with pytest.raises(ScratchError):
            load_tokenizer(tmp_path / "t")
        good.save(tmp_path / "t")
        assert load_tokenizer(tmp_path / "t").fingerprint() == good.fingerprint(), name


def test_char_tokenizer_roundtrip_and_unknown_character():
    tok = train_char("hello world", special_tokens=["<|endoftext|>"])
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == len(tok.chars) + 1
    ids = tok.encode("hello<|endoftext|>world")
    assert ids[5] == tok.eot_id and tok.decode(ids) == "hello<|endoftext|>world"
    with pytest.raises(ScratchError, match=r"'z' \(U\+007A\) at position 19"):
        tok.encode("hello<|endoftext|>wzrld")  # position counts characters of the whole text
    with pytest.raises(ScratchError, match="outside this tokenizer's vocabulary"):
        tok.decode([-1])
    unk = train_char("hello world", unknown="<unk>")
    ids = unk.encode("hellz")
    assert ids[-1] == unk.special_tokens["<unk>"] and unk.decode(ids) == "hell<unk>"


def test_char_tokenizer_on_shakespeare_has_65_characters():
    path = shakespeare_path()
    if path is None:
        pytest.skip("Tiny Shakespeare mirror absent ($SCRATCHLM_DATA)")
    text = path.read_text(encoding="utf-8")
    tok = train_char(text)
    assert tok.vocab_size == 65  # the figure nanoGPT's shakespeare_char reports
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]


def test_bpe_on_shakespeare_compresses_and_agrees_with_reference():
    path = shakespeare_path()
    if path is None:
        pytest.skip("Tiny Shakespeare mirror absent ($SCRATCHLM_DATA)")
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    tok = train_bpe(text[:200_000], 1024)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 1024
    val = text[cut : cut + 20_000]
    ids = tok.encode(val)
    assert ids == tok.encode_reference(val)
    assert tok.decode(ids) == val
    assert len(val.encode()) / len(ids) > 2.0  # far better than bytes (1.0); about 2.3 at this size


def test_char_tokenizer_rejects_corrupt_vocabulary():
    with pytest.raises(ScratchError):
        CharTokenizer(["a", "a"])
    with pytest.raises(ScratchError):
        CharTokenizer(["ab"])


def test_reference_follows_tiktoken_whole_chunk_shortcut():
    # "bc" merges first, leaving a|bc|d where no adjacent pair is a token; yet the whole chunk "abcd" is
    # one. tiktoken returns the whole-chunk token; the reference must do the same to stay its twin.
    ranks = [bytes([i]) for i in range(256)] + [b"bc", b"ab", b"cd", b"abcd"]
    tok = BPETokenizer(ranks, GPT4_PATTERN, {})
    assert tok.encode("abcd") == tok.encode_reference("abcd") == [259]
    assert tok.encode("abcde") == tok.encode_reference("abcde") == [97, 256, 100, 101]

"""TokenLoader: windows come from the shards, determinism, exact resume, DDP slices, packing, full passes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from support.fake_tokenizer import ByteTokenizer

from scratchlm.data import Corpus, TokenLoader, load_tokens, prepare
from scratchlm.errors import ScratchError

B, T = 4, 16


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory):
    """The same corpus prepared twice: in many small shards and in one, to compare reads across seams."""
    root = tmp_path_factory.mktemp("loader")
    docs = [f"doc {i} " + "abcdefghij"[i % 10] * (3 + 7 * (i % 6)) + "\n" for i in range(120)]
    corpus = Corpus(name="t", documents=docs, sha256="0" * 64)
    prepare(corpus, ByteTokenizer(), root / "many", shard_tokens=97, workers=1, progress=False)
    prepare(corpus, ByteTokenizer(), root / "one", workers=1, progress=False)
    return root / "many", root / "one"


def _batches(loader: TokenLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(n)]


def _same(a, b) -> bool:
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_random_windows_are_real_windows(shard_dirs):
    many, one = shard_dirs
    tokens = load_tokens(many, "train")
    windows = sliding_window_view(tokens.astype(np.int64), T + 1)  # (N-T, T+1): every possible window
    loader = TokenLoader(many, "train", B, T, seed=3)
    for x, y in _batches(loader, 10):
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
            assert (windows == row).all(axis=1).any()
    # Shard seams are invisible: many small shards give the batches one big shard gives.
    assert _same(
        _batches(TokenLoader(many, "train", B, T, seed=5), 20),
        _batches(TokenLoader(one, "train", B, T, seed=5), 20),
    )


def test_determinism_and_exact_resume(shard_dirs):
    many, _ = shard_dirs
    for mode in ("random", "packed"):
        a = TokenLoader(many, "train", B, T, seed=1, mode=mode)
        b = TokenLoader(many, "train", B, T, seed=1, mode=mode)
        c = TokenLoader(many, "train", B, T, seed=2, mode=mode)
        first = _batches(a, 5)
        assert _same(first, _batches(b, 5))
        assert not _same(first, _batches(c, 5))
        state = a.state_dict()
        rest = _batches(a, 40)  # runs past an epoch in packed mode
        resumed = TokenLoader(many, "train", B, T, seed=1, mode=mode)
        resumed.load_state_dict(state)
        assert _same(rest, _batches(resumed, 40))
    with pytest.raises(ScratchError, match="saved seed=1"):
        TokenLoader(many, "train", B, T, seed=9).load_state_dict(state)


def test_ranks_read_their_own_rows(shard_dirs):
    many, _ = shard_dirs
    for mode in ("random", "packed"):
        whole = _batches(TokenLoader(many, "train", 2 * B, T, seed=4, mode=mode), 6)
        r0 = _batches(TokenLoader(many, "train", B, T, seed=4, rank=0, world_size=2, mode=mode), 6)
        r1 = _batches(TokenLoader(many, "train", B, T, seed=4, rank=1, world_size=2, mode=mode), 6)
        assert not _same(r0, r1)
        for (x, y), (x0, y0), (x1, y1) in zip(whole, r0, r1):  # the ranks split one global batch
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    with pytest.raises(ScratchError, match="rank must be"):
        TokenLoader(many, "train", B, T, rank=2, world_size=2)


def test_packed_rows_start_at_document_boundaries(shard_dirs):
    many, _ = shard_dirs
    tokens = load_tokens(many, "train").astype(np.int64)
    eot = ByteTokenizer().eot_id
    # The slow twin: walk the stream, note where each document starts, and for long documents every T
    # tokens after that start.
    allowed, start = set(), 0
    for i in range(len(tokens) + 1):
        if i == len(tokens) or tokens[i] == eot:
            allowed.update(range(start, max(i, start + 1), T))
            start = i + 1
    allowed = {a for a in allowed if a + T + 1 <= len(tokens)}
    loader = TokenLoader(many, "train", B, T, seed=0, mode="packed")
    n_rows = len(allowed)
    seen = []
    for x, y in _batches(loader, -(-n_rows // B)):
        for row in torch.cat([x, y[:, -1:]], dim=1).numpy():
            hits = [a for a in allowed if np.array_equal(tokens[a : a + T + 1], row)]
            assert hits, "a packed row must start at a document start or T-multiple inside one"
            seen.append(row.tobytes())
    # One epoch visits every allowed row exactly once (compared as a multiset of row contents).
    expected = Counter(tokens[a : a + T + 1].tobytes() for a in allowed)
    assert Counter(seen[:n_rows]) == expected


def test_loader_argument_errors(shard_dirs):
    many, _ = shard_dirs
    for kwargs, message in (
        ({"mode": "sequential"}, "mode must be one of"),
        ({"split": "test"}, "no split 'test'"),
        ({"context_length": 10**6}, "too few for one window"),
    ):
        args = {"split": "train", "context_length": T} | kwargs
        with pytest.raises(ScratchError, match=message):
            TokenLoader(many, args.pop("split"), B, args.pop("context_length"), **args)

"""Token shards and the batch loader, each against its plain peer measured in the same run.

prepare: `scratchlm.data.prepare` with 1 and 2 worker processes against the nanoGPT way (one process:
encode every document, concatenate, `tofile`), on the same corpus with the same tokenizer. The shards must
hold exactly the peer's tokens (checked), so the ratio compares equal work.

loader: `TokenLoader` batches/s (random and packed modes) against nanoGPT's `get_batch` (a fresh
np.memmap per batch, torch.stack of B slices).

    python benchmarks/bench_prepare.py --tokenizer TOKDIR                         # Tiny Shakespeare
    python benchmarks/bench_prepare.py --tokenizer TOKDIR --corpus pystdlib
    python benchmarks/bench_prepare.py --vocab 4096                 # trains a BPE on the corpus first
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scratchlm.data import TokenLoader, load_corpus, load_tokens, prepare, shards
from scratchlm.data.shards import dtype_for_vocab
from scratchlm.tokenizer import load_tokenizer, train_bpe


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peer_prepare(docs: list[str], tok, path: Path) -> None:
    """nanoGPT's prepare.py, generalised to documents: one process, encode, join with eot, tofile."""
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i and tok.eot_id is not None:
            ids.append(tok.eot_id)
        ids.extend(tok.encode_ordinary(doc))
    np.asarray(ids, dtype=dtype_for_vocab(tok.vocab_size)).tofile(path)


def peer_get_batch(path: Path, dtype, batch: int, context: int, generator: torch.Generator):
    """nanoGPT's get_batch: a new memmap each call (to avoid its memory leak), B slices stacked."""
    data = np.memmap(path, dtype=dtype, mode="r")
    ix = torch.randint(len(data) - context, (batch,), generator=generator)
    x = torch.stack([torch.from_numpy(data[i : i + context].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + context].astype(np.int64)) for i in ix])
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--tokenizer", help="a saved tokenizer folder (default: train a BPE of --vocab)")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()

    corpus = load_corpus(args.corpus)
    train_docs = corpus.split()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_prepare."))
    if args.tokenizer:
        tok_dir = Path(args.tokenizer)
    else:
        tok_dir = work / "tok"
        train_bpe("".join(train_docs)[:2_000_000], args.vocab).save(tok_dir)
    tok = load_tokenizer(tok_dir)
    mb = sum(len(d.encode("utf-8")) for d in corpus.documents) / 1e6
    print(f"corpus {corpus.name}: {len(corpus.documents)} documents, {mb:.1f} MB; vocab {tok.vocab_size}")

    dtype = dtype_for_vocab(tok.vocab_size)
    peer_path = work / "peer_train.bin"
    splits = corpus.split()

    def peer() -> None:  # both splits, like prepare
        for docs, path in zip(splits, (peer_path, work / "peer_val.bin")):
            peer_prepare(docs, tok, path)

    t_peer = best_of(peer, args.repeats)
    print(f"peer (nanoGPT-style, 1 process): {t_peer:.2f} s, {mb / t_peer:.1f} MB/s")
    shards.POOL_MIN_CHARS = 0  # measure the pool itself, even where prepare would skip it by default
    for workers in (1, 2):
        out = work / f"shards{workers}"

        def ours(out=out, workers=workers) -> None:
            prepare(corpus, str(tok_dir), out, workers=workers, progress=False)

        t = best_of(ours, args.repeats)
        assert np.array_equal(load_tokens(out, "train"), np.fromfile(peer_path, dtype=dtype))
        print(
            f"prepare workers={workers} (+ manifest, checksums): {t:.2f} s, {mb / t:.1f} MB/s, "
            f"{t_peer / t:.2f}x the peer's speed"
        )

    out = work / "shards2"
    B, T, n = args.batch, args.context, args.batches
    g = torch.Generator().manual_seed(0)
    t_peer = best_of(lambda: [peer_get_batch(peer_path, dtype, B, T, g) for _ in range(n)], args.repeats)
    print(f"peer get_batch: {n / t_peer:.0f} batches/s (B={B}, T={T})")
    for mode in ("random", "packed"):
        loader = TokenLoader(out, "train", B, T, mode=mode)
        t = best_of(lambda loader=loader: [next(loader) for _ in range(n)], args.repeats)
        print(f"TokenLoader {mode}: {n / t:.0f} batches/s, {t_peer / t:.2f}x the peer's speed")


if __name__ == "__main__":
    main()

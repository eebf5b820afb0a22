"""Token shards: a corpus, tokenized once, stored as raw binary files plus a manifest.

Layout of a shard folder (the contract in docs/architecture.md):

    train_0000.bin ...   raw little-endian token ids, uint16 when the vocabulary fits (<= 65536), else uint32
    val_0000.bin ...
    train_docs.idx ...   int64 token offsets where each document starts (for document-aligned batches)
    manifest.json        tokenizer fingerprint, source sha256, dtype, token counts and sha256 per shard

Within a split the shards are one token stream cut into pieces; documents follow each other separated by
the tokenizer's `<|endoftext|>` token when it has one. The whole folder is built in a temporary folder and
renamed into place, with the manifest written last: a killed `prepare` leaves at most a hidden temporary
folder, never a folder a loader would accept.

Tokenizing runs in worker processes (one tokenizer per worker, loaded once). A long document is cut into
pieces at a newline followed by a non-space character: neither the GPT-2 nor the GPT-4 split pattern
makes a pre-token across such a point, so the pieces encode to exactly the tokens of the whole (tested).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scratchlm import __version__
from scratchlm.data.corpora import Corpus, load_corpus
from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, read_tagged_json, sha256_file, write_json_atomic

FORMAT = "scratchlm-shards/1"
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per file: few files, each easy to copy and checksum
PIECE_CHARS = 1 << 18  # work item size for the tokenizer workers: big enough to amortise the IPC
# Below this many characters a worker pool costs more to start than it saves (Tiny Shakespeare, 1.1 MB:
# 0.46 s in-process against 0.80 s with two workers; docs/benchmarks.md, data).
POOL_MIN_CHARS = 4_000_000
_SAFE_CUT = re.compile(r"\n(?=\S)")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, so vocabularies up to 65536 tokens; anything bigger needs uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _resolve_tokenizer(tokenizer: Any):
    if isinstance(tokenizer, (str, os.PathLike)):
        from scratchlm.tokenizer import load_tokenizer  # late: the data stage does not need it otherwise

        path = Path(tokenizer)
        if not path.is_dir():
            raise ScratchError(
                f"tokenizer folder {path} does not exist; train one with scratchlm tokenizer train"
            )
        return load_tokenizer(path)
    return tokenizer


# ---- worker side: one tokenizer per process, set once by the pool initializer ----
_WORKER_TOKENIZER = None
_WORKER_DTYPE: np.dtype | None = None


def _init_worker(tokenizer: Any, dtype: str) -> None:
    global _WORKER_TOKENIZER, _WORKER_DTYPE
    _WORKER_TOKENIZER = _resolve_tokenizer(tokenizer)
    _WORKER_DTYPE = np.dtype(dtype)


def _encode_item(item: list[tuple[int, str]]) -> list[np.ndarray]:
    # encode_ordinary: text that happens to contain "<|endoftext|>" stays text, and decodes back to itself.
    return [np.asarray(_WORKER_TOKENIZER.encode_ordinary(text), dtype=_WORKER_DTYPE) for _, text in item]


def cut_document(text: str, max_chars: int = PIECE_CHARS) -> list[str]:
    """Pieces of `text` of about `max_chars`, cut only after a newline that precedes a non-space."""
    pieces, start = [], 0
    while len(text) - start > max_chars:
        m = _SAFE_CUT.search(text, start + max_chars)
        if m is None:
            break
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


def _work_items(docs: list[str], max_chars: int) -> Iterator[list[tuple[int, str]]]:
    """Consecutive (document index, piece) pairs grouped into items of about `max_chars` characters."""
    item, size = [], 0
    for i, doc in enumerate(docs):
        for piece in cut_document(doc, max_chars):
            item.append((i, piece))
            size += len(piece)
            if size >= max_chars:
                yield item
                item, size = [], 0
    if item:
        yield item


class _ShardWriter:
    """Appends token arrays to `{split}_NNNN.bin` files of at most `shard_tokens` tokens each."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.total = 0
        self._file = None

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):04d}.bin"
        self._file = open(self.folder / name, "wb")
        self._hash = hashlib.sha256()
        self.shards.append({"file": name, "tokens": 0, "sha256": None})

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self._file = None

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            head, tokens = tokens[:room], tokens[room:]
            data = head.astype(self.dtype, copy=False).tobytes()
            self._file.write(data)
            self._hash.update(data)
            self.shards[-1]["tokens"] += len(head)
            self.total += len(head)
            if self.shards[-1]["tokens"] == self.shard_tokens:
                self._close()

    def finish(self) -> list[dict]:
        self._close()
        return self.shards


def _write_split(
    folder: Path,
    split: str,
    docs: list[str],
    encode: Callable[[list], Iterable[list[np.ndarray]]],
    eot_id: int | None,
    dtype: np.dtype,
    *,
    shard_tokens: int,
    progress: bool,
) -> dict:
    sep = np.asarray([eot_id], dtype=dtype) if eot_id is not None else None
    writer = _ShardWriter(folder, split, dtype, shard_tokens)
    doc_starts: list[tuple[int, int]] = []  # (document index, token offset of its first token)
    items = list(_work_items(docs, PIECE_CHARS))
    chars = sum(len(d) for d in docs)
    bar = tqdm(total=chars, unit="char", unit_scale=True, desc=f"prepare {split}", disable=not progress)
    for item, encoded in zip(items, encode(items)):
        for (doc, text), ids in zip(item, encoded):
            if not doc_starts or doc_starts[-1][0] != doc:
                if doc_starts and sep is not None:
                    writer.write(sep)  # separated, not terminated: a lone document decodes to itself
                doc_starts.append((doc, writer.total))
            writer.write(ids)
            bar.update(len(text))
    bar.close()
    shards = writer.finish()
    index = f"{split}_docs.idx"
    (folder / index).write_bytes(np.asarray([s for _, s in doc_starts], dtype="<i8").tobytes())
    return {
        "tokens": writer.total,
        "documents": len(docs),
        "bytes": sum(len(d.encode("utf-8")) for d in docs),
        "shards": shards,
        "doc_starts": {"file": index, "sha256": sha256_file(folder / index)},
    }


def prepare(
    corpus: str | Corpus,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_fraction: float = 0.1,
    workers: int | None = None,
    glob: str = "**/*.txt",
    jsonl_field: str = "text",
    errors: str = "strict",
    progress: bool = True,
) -> dict:
    """Tokenize `corpus` (a `load_corpus` spec, or a Corpus) into shards in `out_dir`; return the manifest.

    `tokenizer` is a saved tokenizer folder (what the CLI passes) or a loaded tokenizer object.
    `workers` defaults to up to two processes; a corpus under POOL_MIN_CHARS is encoded in-process.
    """
    if shard_tokens < 1:
        raise ScratchError(f"shard_tokens must be at least 1, got {shard_tokens}")
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus, glob=glob, jsonl_field=jsonl_field, errors=errors)
    tok = _resolve_tokenizer(tokenizer)
    dtype = dtype_for_vocab(tok.vocab_size)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    eot_id = getattr(tok, "eot_id", None)
    splits = dict(zip(("train", "val"), corpus.split(val_fraction)))
    manifest = {
        "format": FORMAT,
        "scratchlm_version": __version__,
        "corpus": corpus.name,
        "source_sha256": corpus.sha256,
        "tokenizer_fingerprint": tok.fingerprint(),
        "vocab_size": tok.vocab_size,
        "eot_id": eot_id,
        "dtype": dtype.name,
        "byteorder": "little",
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "splits": {},
    }
    with contextlib.ExitStack() as stack:
        if workers > 1 and corpus.num_chars >= POOL_MIN_CHARS:
            # Workers load the tokenizer from its folder themselves when there is one; an object is
            # inherited. fork keeps start-up cheap (no re-import, no pickling of the object).
            source = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else tok
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            pool = stack.enter_context(ctx.Pool(workers, _init_worker, (source, dtype.str)))

            def encode(items: list) -> Iterable[list[np.ndarray]]:
                return pool.imap(_encode_item, items)
        else:
            _init_worker(tok, dtype.str)

            def encode(items: list) -> Iterable[list[np.ndarray]]:
                return map(_encode_item, items)

        tmp = stack.enter_context(atomic_dir(out_dir))
        for split, docs in splits.items():
            manifest["splits"][split] = _write_split(
                tmp, split, docs, encode, eot_id, dtype, shard_tokens=shard_tokens, progress=progress
            )
        write_json_atomic(tmp / "manifest.json", manifest)  # last: its presence means "complete"
    return manifest


def read_manifest(shard_dir: str | os.PathLike) -> dict:
    """The manifest of a complete shard folder, or a ScratchError saying why the folder is not one."""
    folder = Path(shard_dir)
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise ScratchError(f"shard folder {folder} does not exist; create it with scratchlm prepare")
    if not path.is_file():
        raise ScratchError(
            f"{folder} has no manifest.json, so it is not a complete shard folder (an interrupted prepare?); "
            "run scratchlm prepare again"
        )
    return read_tagged_json(path, FORMAT, "shard manifest", "run scratchlm prepare again")


def check_fingerprint(manifest: dict, expected: str | None, where: str) -> None:
    """Refuse shards that another tokenizer made: their ids would mean different text to the model."""
    got = manifest["tokenizer_fingerprint"]
    if expected is not None and got != expected:
        raise ScratchError(
            f"{where}: shards were made by tokenizer {got[:12]}, not the expected tokenizer {expected[:12]}; "
            "prepare the shards again with the model's tokenizer (scratchlm prepare --tokenizer DIR)"
        )


def load_tokens(shard_dir: str | os.PathLike, split: str = "val") -> np.ndarray:
    """All tokens of one split (1-D), without a loader: for evaluation and for tests."""
    manifest = read_manifest(shard_dir)
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    if split not in manifest["splits"]:
        raise ScratchError(f"{shard_dir} has no split {split!r}; splits: {', '.join(manifest['splits'])}")
    info = manifest["splits"][split]
    parts = [np.fromfile(Path(shard_dir) / s["file"], dtype=dtype) for s in info["shards"]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

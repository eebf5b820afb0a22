"""A run's data: the corpus it names, a tokenizer for it, and token shards, built once and reused.

`data.corpus` + `data.tokenizer` (char, bpe with `vocab_size`, or a saved tokenizer folder) determine the
shards completely, so they are built under a key of (corpus sha256, tokenizer choice) in the user cache
(`cache_dir()/prepared/KEY/{tokenizer,shards}`) and shared by every run on the same data; with
`data.shared_cache: false` they go into the run folder instead. Both folders are written atomically, and
a folder whose manifest is missing is rebuilt, so a run killed while preparing leaves nothing half-made.

The character vocabulary is read from the whole corpus (as nanoGPT does): a character that occurs only in
the validation text would otherwise be unencodable. A BPE vocabulary is learned from the training
split only, so validation text stays unseen.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scratchlm.data import load_corpus, prepare
from scratchlm.data.corpora import hold_out
from scratchlm.fileio import atomic_dir
from scratchlm.paths import cache_dir
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, load_tokenizer, train_bpe, train_char
from scratchlm.train.config import DataConfig
from scratchlm.train.distributed import World, barrier

VAL_FRACTION = 0.1  # nanoGPT's Tiny Shakespeare convention, also the data stage's default


def prepare_run_data(cfg: DataConfig, run_dir: Path, world: World, say=print) -> tuple[Path, object]:
    """(shard folder, tokenizer) for `cfg`, building what is missing on rank 0 while the others wait."""
    corpus = load_corpus(cfg.corpus)
    if cfg.heldout:
        hold_out(corpus, cfg.heldout)
    given = Path(cfg.tokenizer) if cfg.tokenizer not in ("char", "bpe") else None
    if given is not None:
        choice = {"tokenizer": load_tokenizer(given).fingerprint()}
    else:
        choice = {
            "tokenizer": cfg.tokenizer,
            "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
        }
        if cfg.extra_chars or cfg.chat_tokens:  # keys of runs without them stay as they were
            choice.update(extra_chars=cfg.extra_chars, chat_tokens=cfg.chat_tokens)
    split = {"heldout": sorted(cfg.heldout)} if cfg.heldout else {"val_fraction": VAL_FRACTION}
    key_source = json.dumps({"corpus": corpus.sha256, **split, **choice}, sort_keys=True)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    root = cache_dir() / "prepared" / key if cfg.shared_cache else run_dir / "data"
    tok_dir, shard_dir = root / "tokenizer", root / "shards"

    if world.is_main:
        if given is not None:
            tok_dir = given
        elif not _complete(tok_dir):
            say(f"training a {cfg.tokenizer} tokenizer on {corpus.name} ...")
            tokenizer = _train_tokenizer(cfg, corpus)
            with atomic_dir(tok_dir) as tmp:
                tokenizer.save(tmp)
        if not (shard_dir / "manifest.json").is_file():
            say(f"tokenizing {corpus.name} into {shard_dir} ...")
            prepare(corpus, tok_dir, shard_dir, val_fraction=VAL_FRACTION, progress=False)
    barrier(world)
    if given is not None:
        tok_dir = given
    return shard_dir, load_tokenizer(tok_dir)


def _complete(tok_dir: Path) -> bool:
    return tok_dir.is_dir() and any(tok_dir.iterdir())


def _train_tokenizer(cfg: DataConfig, corpus):
    if cfg.tokenizer == "char":
        # Many documents need <|endoftext|> between them; one (Tiny Shakespeare) keeps nanoGPT's 65 symbols.
        specials = (ENDOFTEXT,) if len(corpus.documents) > 1 or cfg.chat_tokens else ()
        if cfg.chat_tokens:
            specials += CHAT_SPECIAL_TOKENS
        # extra_chars: an alphabet the corpus lacks but later stages need (Tiny Shakespeare's only digit
        # is "3"; the SFT tasks need all ten), learned from a document of just those characters.
        return train_char([*corpus.documents, cfg.extra_chars], special_tokens=specials)
    train_docs, _ = corpus.split(VAL_FRACTION)
    return train_bpe(train_docs, cfg.vocab_size)

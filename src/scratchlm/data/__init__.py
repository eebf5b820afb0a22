"""The data stage: named corpora and the user's own text, token shards, and the batch loader.

corpus = load_corpus("shakespeare")            # or a file, a folder, a .jsonl file, "pystdlib"
train_docs, val_docs = corpus.split()          # deterministic; one document: last 10% is validation
prepare("shakespeare", "tok/", "shards/")      # tokenized shards + manifest.json (written last)
loader = TokenLoader("shards/", "train", batch_size=8, context_length=256)
inputs, targets = next(loader)                 # (8, 256) int64 each
"""

from scratchlm.data.corpora import Corpus, load_corpus
from scratchlm.data.registry import REGISTRY, NamedCorpus, corpus_names, fetch, locate
from scratchlm.data.shards import dtype_for_vocab, load_tokens, prepare, read_manifest


def __getattr__(name: str):
    # The loader is the one part that needs torch (seconds to import); corpora, prepare and its worker
    # processes do not, so it is imported on first use only.
    if name == "TokenLoader":
        from scratchlm.data.loader import TokenLoader

        return TokenLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REGISTRY",
    "Corpus",
    "NamedCorpus",
    "TokenLoader",
    "corpus_names",
    "dtype_for_vocab",
    "fetch",
    "load_corpus",
    "load_tokens",
    "locate",
    "prepare",
    "read_manifest",
]

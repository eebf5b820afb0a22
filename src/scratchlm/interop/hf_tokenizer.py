"""Our byte-level BPE as a Hugging Face `tokenizer.json`, so `AutoTokenizer` can read an exported folder.

Two formats describe the same tokenizer differently:
- ours (tiktoken's): an ordered list of token byte strings, rank = id. Encoding merges, inside each
  pre-tokenized piece, the adjacent pair whose concatenation has the lowest rank, until none is a token;
  a piece that is itself a token is taken whole.
- Hugging Face `tokenizers`' BPE model: a vocabulary of *strings* plus an ordered list of merges (a, b).
  Bytes become printable characters through GPT-2's byte-to-unicode table (the `ByteLevel` step), and the
  merge list's order is the priority.

The merge that creates a token is recovered by re-running BPE on the token's own bytes with only the
ranks below its own: what is left is exactly two parts (this is how tiktoken-to-HF converters work). The
list of those pairs in rank order reproduces the same encoding; `ignore_merges` takes a piece that is a
whole token directly, as tiktoken does. The pre-tokenization regex is carried over as is (HF's Oniguruma
engine reads the GPT-2 and GPT-4 patterns; `?+`, `*+` and `++` are possessive there too, but `{n,m}+` is a
second quantifier, so it is written as plain `{n,m}`, see `oniguruma_pattern`). The tests encode text both
ways and compare.

A tokenizer with the chat role tokens also gets our chat format as `tokenizer_config.json`'s Jinja
`chat_template` (scratchlm.data.chat), so `apply_chat_template` renders conversations to our ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from scratchlm.data.chat import CHAT_TEMPLATE
from scratchlm.errors import ScratchError
from scratchlm.tokenizer.base import CHAT_SPECIAL_TOKENS


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 (control
    characters, space, ...) are given the characters from U+0100 on, in byte order. So every token's
    bytes become a visible string without whitespace or control characters, which BPE vocabularies need.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_below(token: bytes, rank_of: dict[bytes, int], limit: int) -> list[bytes]:
    """BPE on `token`'s bytes using only tokens ranked below `limit`: the parts it ends with."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, where = limit, -1
        for i in range(len(parts) - 1):
            rank = rank_of.get(parts[i] + parts[i + 1], limit)
            if rank < best:
                best, where = rank, i
        if where < 0:
            break
        parts[where : where + 2] = [parts[where] + parts[where + 1]]
    return parts


def merges_from_ranks(ranks: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The merge list, in priority order, that rebuilds every multi-byte token of `ranks`."""
    rank_of = {token: i for i, token in enumerate(ranks)}
    merges = []
    for rank, token in enumerate(ranks):
        if len(token) < 2:
            continue
        parts = _split_below(token, rank_of, rank)
        if len(parts) != 2:
            raise ScratchError(
                f"token {rank} ({token!r}) is not the merge of two lower-ranked tokens; "
                "this vocabulary cannot be written as Hugging Face BPE merges"
            )
        merges.append((parts[0], parts[1]))
    return merges


def oniguruma_pattern(pattern: str) -> str:
    """`pattern` for HF's Oniguruma engine (Ruby syntax), where `X{1,3}+` means `(X{1,3})+`, any length.

    Possessive `{n,m}+` becomes greedy `{n,m}`: the same matches wherever nothing after the quantifier
    can fail and backtrack into it, as in GPT-4's `\\p{N}{1,3}+` (the last item of its alternative).
    Without this, digit runs were one piece in HF and groups of three in tiktoken ("4242": 42|42 vs 424|2).
    """
    return re.sub(r"(\{\d*,?\d*\})\+", r"\1", pattern)


def hf_tokenizer_json(tokenizer) -> dict:
    """The `tokenizer.json` document for a scratchlm BPE tokenizer."""
    if getattr(tokenizer, "kind", None) != "bpe":
        raise ScratchError(
            f"only byte-level BPE tokenizers convert to Hugging Face's tokenizer.json "
            f"(this one is {getattr(tokenizer, 'kind', type(tokenizer).__name__)!r})"
        )
    to_char = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab = {text(token): i for i, token in enumerate(tokenizer.ranks)}
    merges = [[text(a), text(b)] for a, b in merges_from_ranks(tokenizer.ranks)]
    added = [
        {
            "id": i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for name, i in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": oniguruma_pattern(tokenizer.pattern)},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


def write_hf_tokenizer(tokenizer, directory: str | Path, model_max_length: int) -> None:
    """Write `tokenizer.json` and `tokenizer_config.json` (with the chat template) into an (export) folder."""
    directory = Path(directory)
    document = hf_tokenizer_json(tokenizer)
    (directory / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False) + "\n")
    eot = next((name for name, i in tokenizer.special_tokens.items() if i == tokenizer.eot_id), None)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "bos_token": eot,
        "eos_token": eot,
        "clean_up_tokenization_spaces": False,
    }
    if all(token in tokenizer.special_tokens for token in CHAT_SPECIAL_TOKENS):
        config["chat_template"] = CHAT_TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

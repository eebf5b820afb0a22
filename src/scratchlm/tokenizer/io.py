"""The saved-tokenizer format: one folder holding one canonical JSON file.

    <dir>/tokenizer.json

written atomically (the whole folder appears at once, scratchlm.fileio.atomic_dir) as canonical JSON:
keys sorted, ASCII only (other characters as \\u escapes), one space of indent, a final newline. Fields:

    format          "scratchlm-tokenizer"
    version         1
    kind            "bpe" or "char"
    special_tokens  {"<|endoftext|>": id, ...}: strings encoded as one id each, never merged
    -- kind "bpe" --
    pattern         the pre-tokenization regex (Python `regex` / tiktoken syntax)
    ranks           [base64 of token bytes, ...]: list index = rank = token id, as in tiktoken's
                    `.tiktoken` files (one "base64 rank" per line); ids 0..len-1 are contiguous and
                    every single byte is a token, so any text can be encoded
    -- kind "char" --
    chars           [character, ...]: list index = id
    unknown         null, or the special token that unknown characters map to

`fingerprint()` is the sha256 of exactly these bytes, so it equals `sha256sum <dir>/tokenizer.json` and is
stable across save/load; a manifest that records it ties token shards to their tokenizer.

A tokenizer that has the chat role tokens also writes `<dir>/chat_format.json`, `{"format":
"scratchlm-chat", "version": 1}`: the chat template its role tokens are rendered with
(scratchlm.data.chat, docs/chat-format.md). It sits beside tokenizer.json, outside the fingerprint (the
ids of text do not depend on it), and travels with the tokenizer into model folders and exports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, read_tagged_json
from scratchlm.tokenizer.base import CHAT_SPECIAL_TOKENS

FORMAT = "scratchlm-tokenizer"
VERSION = 1
FILENAME = "tokenizer.json"
KINDS = ("bpe", "char")
# The chat format rendered by scratchlm.data.chat; a change to the rendering is a new version.
CHAT_FORMAT, CHAT_FORMAT_VERSION, CHAT_FORMAT_FILE = "scratchlm-chat", 1, "chat_format.json"


def canonical_bytes(payload: dict[str, Any]) -> bytes:
    """The one byte form of a payload (see the module docstring)."""
    full = {"format": FORMAT, "version": VERSION, **payload}
    return (json.dumps(full, sort_keys=True, ensure_ascii=True, indent=1) + "\n").encode("ascii")


def payload_fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(payload)).hexdigest()


def write_payload(directory: str | Path, payload: dict[str, Any]) -> Path:
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        (tmp / FILENAME).write_bytes(canonical_bytes(payload))
        if all(token in payload["special_tokens"] for token in CHAT_SPECIAL_TOKENS):
            record = {"format": CHAT_FORMAT, "version": CHAT_FORMAT_VERSION}
            (tmp / CHAT_FORMAT_FILE).write_text(json.dumps(record, sort_keys=True) + "\n")
    return directory


def read_chat_format(directory: str | Path) -> dict[str, Any] | None:
    """The chat format a tokenizer folder records (`{"format", "version"}`), or None if it records none.

    A folder recording another format or version is an error: this scratchlm would render it wrongly.
    """
    path = Path(directory) / CHAT_FORMAT_FILE
    if not path.is_file():
        return None
    redo = "render it with the scratchlm that wrote it, or save the tokenizer again"
    return read_tagged_json(path, CHAT_FORMAT, "chat format", redo, CHAT_FORMAT_VERSION)


def read_payload(directory: str | Path) -> dict[str, Any]:
    """The payload of a saved tokenizer folder, checked for the fields every kind has."""
    directory = Path(directory)
    path = directory / FILENAME
    if not directory.is_dir():
        raise ScratchError(
            f"tokenizer folder {directory} does not exist; train one with `scratchlm tokenizer train`"
        )
    if not path.is_file():
        raise ScratchError(
            f"{directory} is not a tokenizer folder (no {FILENAME}); give the folder a tokenizer was saved to"
        )
    payload = read_tagged_json(path, FORMAT, "tokenizer file", "train or save the tokenizer again", VERSION)
    if payload.get("kind") not in KINDS:
        raise ScratchError(
            f"{path}: unknown tokenizer kind {payload.get('kind')!r} (known: {', '.join(KINDS)})"
        )
    specials = payload.get("special_tokens")
    if not isinstance(specials, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in specials.items()
    ):
        raise ScratchError(
            f"{path}: special_tokens must map strings to non-negative ids; the file is corrupt"
        )
    del payload["format"], payload["version"]
    return payload


def load_tokenizer(directory: str | Path):
    """Load any saved tokenizer folder; its `kind` field picks the class."""
    payload = read_payload(directory)
    where = str(Path(directory) / FILENAME)
    if payload["kind"] == "bpe":
        from scratchlm.tokenizer.bpe import BPETokenizer

        return BPETokenizer.from_payload(payload, where=where)
    from scratchlm.tokenizer.char import CharTokenizer

    return CharTokenizer.from_payload(payload, where=where)

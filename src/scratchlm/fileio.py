"""Atomic file and folder writes: a reader never sees a half-written file as whole.

Every writer goes through a temporary name in the same directory, is flushed and fsync'ed, and only
then renamed into place (rename is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it is fsync'ed and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file follows the umask
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary folders of `atomic_dir(path)` left by writers that were killed on this host.

    A SIGKILL'ed writer cannot clean up after itself; its temporary folder names the host and process
    that made it, so the next writer removes it once that process is gone. Folders of live processes,
    and of other hosts (a shared filesystem), are left alone.
    """
    removed = []
    prefix = f".{path.name}.{socket.gethostname()}."
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        if not (tmp.name.startswith(prefix) and tmp.is_dir()):
            continue
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename.

    If `path` already exists it is moved aside first and removed after the new folder is in
    place, so at every instant either the old or the new folder is complete under that name
    (or, between the two renames, absent: never half-written). Temporary folders of earlier writers
    that were killed are removed first (`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    owner = f"{socket.gethostname()}.{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a finished folder follows the umask
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_tagged_json(path: Path, fmt: str, what: str, redo: str, version: int | None = None) -> dict:
    """A JSON object that names its own format (and version): a manifest or a saved tokenizer.

    Every way it can be wrong is a one-line ScratchError naming the file and what to do (`redo`):
    unreadable or truncated JSON, another format, another version of this one.
    """
    from scratchlm.errors import ScratchError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScratchError(f"{path} is corrupt ({e}); {redo}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ScratchError(f"{path} is not a scratchlm {what} (format {fmt!r} expected); {redo}")
    if version is not None and data.get("version") != version:
        raise ScratchError(
            f"{path} has {what} version {data.get('version')!r}; this scratchlm reads version {version}"
        )
    return data

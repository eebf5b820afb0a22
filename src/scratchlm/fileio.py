"""Atomic file and folder writes: a reader never sees a half-written file as whole.

Every writer goes through a temporary name in the same directory, is flushed and fsync'ed, and only
then renamed into place (rename is atomic on POSIX within one filesystem).

An `OSError` from these writers is marked with what it failed to do (`write` or `read`) and names the
destination rather than the temporary (`describe_io_error` makes the CLI's one line of it); safetensors
writes go through `save_safetensors`, since a `SafetensorError` names no file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scratchlm.errors import ScratchError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- saying what failed ---------------------------------------------------------------------------------

ACTION = "scratchlm_action"  # the attribute an OSError carries once a writer or reader here has marked it
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _inside(name, tmp: Path, dest: Path) -> Path | None:
    """`name` (an OSError's filename) inside the temporary `tmp`, as the same path under `dest`."""
    if not isinstance(name, (str, bytes, os.PathLike)):
        return None
    try:
        rel = Path(os.fsdecode(name)).relative_to(tmp)
    except ValueError:
        return None
    return dest / rel


def mark_io_error(
    e: OSError, action: str, path=None, *, tmp: Path | None = None, dest: Path | None = None
) -> OSError:
    """Record on `e` that it failed to `action` ("write", "read"), and name `path` where it names no file.

    A filename inside the temporary `tmp` becomes the same name under `dest`: the user asked for
    `dest`, and the temporary is gone by the time the message is read (of a rename, the source is the
    temporary and the destination `filename2` is not shown). The first mark wins.
    """
    if tmp is not None and dest is not None:
        moved = _inside(e.filename, tmp, dest)
        if moved is not None:
            e.filename = str(moved)
    if e.filename is None and path is not None:
        e.filename = str(path)
    if getattr(e, ACTION, None) is None:
        setattr(e, ACTION, action)
    return e


@contextlib.contextmanager
def io_action(action: str, path=None, *, tmp: Path | None = None, dest: Path | None = None) -> Iterator[None]:
    """Mark any OSError raised inside as failing to `action` `path` (see `mark_io_error`) and re-raise it."""
    try:
        yield
    except OSError as e:
        mark_io_error(e, action, path, tmp=tmp, dest=dest)
        raise


def _is_safetensor_error(e: BaseException) -> bool:
    module = sys.modules.get("safetensors")  # not imported: cannot be one of its errors
    return module is not None and isinstance(e, getattr(module, "SafetensorError", ()))


def describe_io_error(e: BaseException) -> str | None:
    """One line for an I/O failure: `cannot write PATH: CAUSE` (or read); None if `e` is not one.

    An OSError gives its filename and strerror; one that no writer here marked is called a write when
    its errno can only mean one (disk full, read-only filesystem), a read when the file is missing, and
    otherwise an access. A bare SafetensorError names no file; its own message says what it was doing.
    """
    if isinstance(e, OSError):
        cause = e.strerror or str(e) or type(e).__name__
        action = getattr(e, ACTION, None)
        if action is None:
            action = "write" if e.errno in _WRITE_ERRNOS else "read" if e.errno == errno.ENOENT else "access"
        if e.filename is None:
            return f"cannot {action}: {cause}"
        name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes, os.PathLike)) else e.filename
        return f"cannot {action} {name}: {cause}"
    if _is_safetensor_error(e):
        message = " ".join(str(e).split()) or type(e).__name__
        action = "read" if "deserializ" in message.lower() else "write"
        return f"cannot {action} a safetensors file: {message}"
    return None


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, whose failures (a SafetensorError naming no file, or an OSError)
    become an OSError that names `path` and says it could not be written."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    try:
        with io_action("write", path):
            save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        message = " ".join(str(e).split())
        code = re.search(r"\(os error (\d+)\)", message)
        if code:  # an I/O failure: its errno and strerror, with the file it was writing
            number = int(code.group(1))
            error = OSError(number, os.strerror(number), str(path))
        else:
            error = OSError(None, message or "safetensors could not serialize the tensors", str(path))
        raise mark_io_error(error, "write") from e


# --- atomic writes ---------------------------------------------------------------------------------------


def _make_folder(folder: Path) -> None:
    """`folder` and its parents; a regular file in the way is NotADirectoryError naming `folder`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # exist_ok forgives folders only: a file already holds this name
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None


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
    """Yield a temporary file path; on success it is fsync'ed and renamed onto `path`.

    An OSError of the writing (in the body too, where it names the temporary) is marked as failing to
    write `path` (`mark_io_error`); others raised in the body (a failed download, say) pass unmarked.
    """
    path = Path(path)
    with io_action("write", path):
        _make_folder(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp = Path(tmp)
    try:
        with io_action("write", path, tmp=tmp, dest=path):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file follows the umask
        with _writing_into(tmp, path):
            yield tmp
        with io_action("write", path, tmp=tmp, dest=path):
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
    tmp = _temporary_folder(path)
    try:
        with _writing_into(tmp, path):
            yield tmp
        with io_action("write", path, tmp=tmp, dest=path):
            _fsync_files(tmp)
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


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success its files are moved into `path`.

    For output folders a user names (`--out`), which may already hold other things: unlike `atomic_dir`
    nothing else in `path` is removed. A `path` that does not exist yet appears in one rename, complete;
    into an existing one each file is renamed over its old version, so each is old or new, never half
    written. If the body raises, nothing is left behind: no folder, no temporary, no file.
    """
    path = Path(path)
    tmp = _temporary_folder(path)
    try:
        with _writing_into(tmp, path):
            yield tmp
        with io_action("write", path, tmp=tmp, dest=path):
            files = _fsync_files(tmp)
            if not path.is_dir():
                os.replace(tmp, path)  # a regular file there: NotADirectoryError, which names it
            else:
                for f in files:
                    target = path / f.relative_to(tmp)
                    _make_folder(target.parent)
                    os.replace(f, target)
                    fsync_dir(target.parent)
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _temporary_folder(path: Path) -> Path:
    """A new temporary folder beside `path`, named for `remove_stale_temporaries` (removed first)."""
    with io_action("write", path):
        _make_folder(path.parent)
        remove_stale_temporaries(path)
        owner = f"{socket.gethostname()}.{os.getpid()}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a finished folder follows the umask
    return tmp


@contextlib.contextmanager
def _writing_into(tmp: Path, path: Path) -> Iterator[None]:
    """The body of a folder writer: an OSError naming a file in `tmp` failed to write that file under
    `path`; others (reading an input, say) pass unmarked."""
    try:
        yield
    except OSError as e:
        if _inside(e.filename, tmp, path) is not None:
            mark_io_error(e, "write", tmp=tmp, dest=path)
        raise


def _fsync_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    return files


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with io_action("read", path), open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_tagged_json(path: Path, fmt: str, what: str, redo: str, version: int | None = None) -> dict:
    """A JSON object that names its own format (and version): a manifest or a saved tokenizer.

    Every way it can be wrong is a one-line ScratchError naming the file and what to do (`redo`):
    unreadable or truncated JSON, another format, another version of this one.
    """

    try:
        with io_action("read", path):
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

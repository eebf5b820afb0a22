"""scratchlm.fileio: what a failed write says (path and cause), and output folders that appear whole."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from scratchlm import fileio
from scratchlm.fileio import atomic_dir, describe_io_error, save_safetensors, staged_dir


def test_save_safetensors_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    save_safetensors(tensors, tmp_path / "ok.safetensors", metadata={"format": "pt"})
    assert torch.equal(load_file(tmp_path / "ok.safetensors")["w"], tensors["w"])

    missing = tmp_path / "no" / "such" / "model.safetensors"  # a real failure: safetensors names no file
    with pytest.raises(OSError) as info:
        save_safetensors(tensors, missing)
    assert isinstance(info.value.__cause__, SafetensorError) and info.value.errno == errno.ENOENT
    assert describe_io_error(info.value) == f"cannot write {missing}: No such file or directory"

    import safetensors.torch

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    dest = tmp_path / "ckpt"
    with pytest.raises(OSError) as info, atomic_dir(dest) as tmp:  # inside a folder writer: the final name
        save_safetensors(tensors, tmp / "model.safetensors")
    assert (
        describe_io_error(info.value) == f"cannot write {dest / 'model.safetensors'}: No space left on device"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors"]


def test_unmarked_errors_are_described_by_their_errno():
    assert describe_io_error(OSError(errno.EROFS, "Read-only file system", "/x")) == (
        "cannot write /x: Read-only file system"
    )
    assert describe_io_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/y")) == (
        "cannot read /y: No such file or directory"
    )
    assert describe_io_error(PermissionError(errno.EACCES, "Permission denied", "/z")) == (
        "cannot access /z: Permission denied"
    )
    assert describe_io_error(OSError(errno.EIO, "Input/output error")) == "cannot access: Input/output error"
    assert describe_io_error(SafetensorError("Error while deserializing header: header too small")) == (
        "cannot read a safetensors file: Error while deserializing header: header too small"
    )
    assert describe_io_error(ValueError("not I/O")) is None


def test_read_errors_are_marked_as_reads(tmp_path):
    with pytest.raises(IsADirectoryError) as info:
        fileio.sha256_file(tmp_path)
    assert describe_io_error(info.value) == f"cannot read {tmp_path}: Is a directory"


def test_staged_dir_appears_whole_and_keeps_what_else_an_existing_folder_holds(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("fails midway")
    assert list(tmp_path.iterdir()) == []

    with staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1" and (out / "sub" / "b.txt").read_text() == "1"

    (out / "mine.txt").write_text("user's")
    with staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("2")
    assert (out / "a.txt").read_text() == "2" and (out / "mine.txt").read_text() == "user's"
    assert (out / "sub" / "b.txt").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["out"]

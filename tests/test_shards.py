"""Shards: prepare -> load round trips, dtype choice, manifest, parallel == serial, killed prepare."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from support.fake_tokenizer import EOT, ByteTokenizer
from support.paths import shakespeare_path

from scratchlm.data import Corpus, TokenLoader, load_corpus, load_tokens, prepare, read_manifest, shards
from scratchlm.errors import ScratchError
from scratchlm.fileio import sha256_file
from scratchlm.tokenizer import load_tokenizer, train_bpe


def _docs_corpus(n: int = 40) -> Corpus:
    docs = [f"Document {i}: " + "ünïcode words and lines\n" * (1 + i % 5) for i in range(n)]
    return Corpus(name="docs", documents=docs, sha256="0" * 64)


def test_round_trip_many_documents(tmp_path):
    corpus, tok = _docs_corpus(), ByteTokenizer()
    manifest = prepare(corpus, tok, tmp_path / "s", shard_tokens=500, workers=1, progress=False)
    train_docs, val_docs = corpus.split()
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ids = load_tokens(tmp_path / "s", split)
        assert tok.decode(ids.tolist()) == EOT.join(docs)  # documents separated by <|endoftext|>
        info = manifest["splits"][split]
        assert info["tokens"] == len(ids) and info["documents"] == len(docs)
        assert [s["tokens"] for s in info["shards"]][:-1] == [500] * (len(info["shards"]) - 1)
        for shard in info["shards"]:
            assert sha256_file(tmp_path / "s" / shard["file"]) == shard["sha256"]
        starts = np.fromfile(tmp_path / "s" / info["doc_starts"]["file"], dtype="<i8")
        assert [tok.decode(ids[a : a + 11].tolist()) for a in starts] == [d[:11] for d in docs]
    on_disk = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert on_disk == manifest == read_manifest(tmp_path / "s")
    assert manifest["tokenizer_fingerprint"] == tok.fingerprint() and manifest["dtype"] == "uint16"
    assert manifest["source_sha256"] == corpus.sha256


def test_single_document_decodes_to_its_text(tmp_path):
    text = "".join(f"line {i} of one long document, with ω and 😀\n" for i in range(4000))
    corpus = Corpus(name="one", documents=[text], sha256="1" * 64)
    tok = ByteTokenizer()
    prepare(corpus, tok, tmp_path / "s", workers=1, progress=False)
    (train,), (val,) = corpus.split()
    assert tok.decode(load_tokens(tmp_path / "s", "train").tolist()) == train
    assert tok.decode(load_tokens(tmp_path / "s", "val").tolist()) == val


def test_parallel_equals_serial(tmp_path, monkeypatch):
    # Small pieces, so the one document and the many are spread over several work items and processes.
    monkeypatch.setattr(shards, "PIECE_CHARS", 2000)
    monkeypatch.setattr(shards, "POOL_MIN_CHARS", 0)
    text = "".join(f"line {i}:  indented\n\n  more text\n" for i in range(3000))
    for corpus in (Corpus("one", [text], "2" * 64), _docs_corpus(200)):
        a = prepare(corpus, ByteTokenizer(), tmp_path / "a", shard_tokens=7000, workers=1, progress=False)
        b = prepare(corpus, ByteTokenizer(), tmp_path / "b", shard_tokens=7000, workers=2, progress=False)
        assert a == b and len(a["splits"]["train"]["shards"]) > 2


def test_cut_document_only_at_safe_points():
    text = "a\n b\n\nc\nd" * 1000
    pieces = shards.cut_document(text, 50)
    assert "".join(pieces) == text and len(pieces) > 10
    assert all(p.endswith("\n") and not q[0].isspace() for p, q in zip(pieces, pieces[1:]))
    assert shards.cut_document("x" * 500, 50) == ["x" * 500]  # no safe point: one piece


def test_dtype_follows_vocabulary(tmp_path):
    assert shards.dtype_for_vocab(65536) == np.uint16 and shards.dtype_for_vocab(65537) == np.uint32
    corpus = Corpus("d", ["abc", "def", "ghi"] * 5, "3" * 64)
    for vocab, dtype in ((65536, "uint16"), (65537, "uint32")):
        tok = ByteTokenizer(vocab_size=vocab)  # eot is the last id: 65535 or 65536
        m = prepare(corpus, tok, tmp_path / str(vocab), workers=1, progress=False)
        ids = load_tokens(tmp_path / str(vocab), "train")
        assert m["dtype"] == dtype and ids.dtype == np.dtype(dtype)
        assert tok.eot_id in ids.tolist()  # the largest id survives the round trip
        itemsize = np.dtype(dtype).itemsize
        files = m["splits"]["train"]["shards"]
        assert sum((tmp_path / str(vocab) / f["file"]).stat().st_size for f in files) == len(ids) * itemsize


def test_loader_refuses_foreign_or_damaged_shards(tmp_path):
    prepare(_docs_corpus(), ByteTokenizer(), tmp_path / "s", shard_tokens=300, workers=1, progress=False)
    ok = TokenLoader(tmp_path / "s", "train", 2, 16, expect_fingerprint=ByteTokenizer().fingerprint())
    assert ok.num_tokens > 0
    with pytest.raises(ScratchError, match="not the expected tokenizer"):
        TokenLoader(tmp_path / "s", "train", 2, 16, expect_fingerprint=ByteTokenizer(300).fingerprint())
    shard = tmp_path / "s" / "train_0001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    assert TokenLoader(tmp_path / "s", "train", 2, 16).num_tokens > 0  # sizes only, by default
    with pytest.raises(ScratchError, match="train_0001.bin fails its sha256 check"):
        TokenLoader(tmp_path / "s", "train", 2, 16, verify=True)
    shard.write_bytes(data[:-2])
    with pytest.raises(ScratchError, match="train_0001.bin has 598 bytes but the manifest says 600"):
        TokenLoader(tmp_path / "s", "train", 2, 16)
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(ScratchError, match="no manifest.json"):
        TokenLoader(tmp_path / "s", "train", 2, 16)
    with pytest.raises(ScratchError, match="does not exist"):
        TokenLoader(tmp_path / "nowhere", "train", 2, 16)


KILLED_PREPARE = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from support.fake_tokenizer import ByteTokenizer
from scratchlm.data import Corpus, prepare, shards

def die(*args, **kwargs):  # the worst moment: every shard written, the manifest not yet
    os.kill(os.getpid(), signal.SIGKILL)

shards.write_json_atomic = die
corpus = Corpus("k", ["killed " * 1000, "prepare " * 1000], "4" * 64)
prepare(corpus, ByteTokenizer(), {out!r}, shard_tokens=1000, workers=1, progress=False)
"""


def test_killed_prepare_leaves_nothing_complete(tmp_path):
    tests = str(__import__("pathlib").Path(__file__).parent)
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    # A complete earlier folder must stay whole and untouched by a killed rerun.
    prepare(Corpus("k", ["earlier"] * 3, "5" * 64), ByteTokenizer(), existing, workers=1, progress=False)
    before = (existing / "manifest.json").read_bytes()
    procs = [  # both at once: each pays the interpreter and torch start-up
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(KILLED_PREPARE.format(tests=tests, out=str(out)))],
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in (fresh, existing)
    ]
    for proc in procs:
        _, err = proc.communicate()
        assert proc.returncode == -9, err
    for out in (fresh, existing):
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]
        assert leftovers, "the killed run should have been writing into a hidden temporary folder"
    assert not fresh.exists()
    with pytest.raises(ScratchError, match="does not exist"):
        TokenLoader(fresh, "train", 1, 4)
    assert (existing / "manifest.json").read_bytes() == before
    assert TokenLoader(existing, "train", 1, 4).num_tokens == 2 * len("earlier") + 1


def test_real_tokenizer_round_trip_and_exact_pieces(tmp_path, monkeypatch):
    """With the project's BPE: cutting documents into pieces gives exactly the tokens of the whole."""
    path = shakespeare_path()
    if path is None:
        pytest.skip("Tiny Shakespeare mirror absent (set SCRATCHLM_DATA to ../shared/data)")
    text = path.read_text(encoding="utf-8")[:60_000]
    tok = train_bpe(text[:20_000], 300)
    tok.save(tmp_path / "tok")
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr(shards, "PIECE_CHARS", 3000)  # many cuts, two worker processes
    monkeypatch.setattr(shards, "POOL_MIN_CHARS", 0)
    m = prepare(
        str(tmp_path / "corpus.txt"), str(tmp_path / "tok"), tmp_path / "s", workers=2, progress=False
    )
    (train,), (val,) = load_corpus(str(tmp_path / "corpus.txt")).split()
    ids = load_tokens(tmp_path / "s", "train").tolist()
    assert ids == tok.encode_ordinary(train)
    assert tok.decode(ids) == train and tok.decode(load_tokens(tmp_path / "s", "val").tolist()) == val
    assert m["tokenizer_fingerprint"] == load_tokenizer(tmp_path / "tok").fingerprint()

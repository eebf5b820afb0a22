"""Corpora: registry lookup order, atomic download, the user's own text, decoding errors, the split."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from support.paths import shakespeare_path

from scratchlm.data import load_corpus, registry
from scratchlm.data.registry import REGISTRY, NamedCorpus, fetch
from scratchlm.errors import ScratchError

GOOD = b"To be, or not to be, that is the question.\n" * 50


@contextlib.contextmanager
def serve(folder: Path):
    """A static file server on 127.0.0.1 (loopback only) serving `folder`; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(folder), **kw)

        def do_GET(self):
            if self.path != "/cut":
                return super().do_GET()
            # A connection that drops half way: the promised length never arrives.
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 2])
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def toy_corpus(monkeypatch, tmp_path):
    """A registry entry 'toy' whose cache, mirror and server all live under tmp_path."""
    cache, mirror, web = tmp_path / "cache", tmp_path / "mirror", tmp_path / "web"
    for d in (cache, mirror, web):
        d.mkdir()
    monkeypatch.setenv("SCRATCHLM_CACHE", str(cache))
    monkeypatch.setenv("SCRATCHLM_DATA", str(mirror))
    entry = NamedCorpus(
        name="toy",
        description="test",
        filename="toy.txt",
        url="http://127.0.0.1:9/toy.txt",
        sha256=hashlib.sha256(GOOD).hexdigest(),
        size=len(GOOD),
    )
    monkeypatch.setitem(REGISTRY, "toy", entry)
    return entry, cache / "corpora", mirror, web


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lookup_order_cache_then_mirror_then_download(toy_corpus, monkeypatch):
    entry, cache, mirror, web = toy_corpus
    (web / "toy.txt").write_bytes(GOOD)
    (mirror / "toy.txt").write_bytes(GOOD)
    assert fetch("toy") == mirror / "toy.txt"  # nothing cached: the mirror
    cache.mkdir(parents=True)
    (cache / "toy.txt").write_bytes(GOOD)
    assert fetch("toy") == cache / "toy.txt"  # the cache wins over the mirror
    (cache / "toy.txt").unlink()
    (mirror / "toy.txt").unlink()
    with serve(web) as url:
        monkeypatch.setitem(REGISTRY, "toy", replace(entry, url=f"{url}/toy.txt"))
        path = fetch("toy")
    assert path == cache / "toy.txt" and path.read_bytes() == GOOD
    assert sorted(p.name for p in cache.iterdir()) == ["toy.txt"]  # no temporary files left
    assert load_corpus("toy").documents == [GOOD.decode()]


def test_corrupted_download_leaves_nothing(toy_corpus, monkeypatch):
    entry, cache, mirror, web = toy_corpus
    (web / "toy.txt").write_bytes(GOOD[:-1] + b"?")  # same size, one byte changed
    (web / "short.txt").write_bytes(GOOD[:100])  # an interrupted transfer
    with serve(web) as url:
        for name, message in (
            ("toy.txt", "corrupted"),
            ("short.txt", "corrupted"),
            ("cut", "corrupted"),
        ):
            monkeypatch.setitem(REGISTRY, "toy", replace(entry, url=f"{url}/{name}"))
            with pytest.raises(ScratchError, match=message):
                fetch("toy")
            assert not cache.exists() or list(cache.iterdir()) == []


def test_offline_without_mirror_says_what_to_do(toy_corpus, monkeypatch):
    entry, cache, mirror, web = toy_corpus
    monkeypatch.setitem(REGISTRY, "toy", replace(entry, url=f"http://127.0.0.1:{_free_port()}/toy.txt"))
    with pytest.raises(ScratchError, match="SCRATCHLM_DATA") as e:
        fetch("toy")
    assert "\n" not in str(e.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_bad_mirror_copy_is_refused(toy_corpus):
    entry, cache, mirror, web = toy_corpus
    (mirror / "toy.txt").write_bytes(GOOD[:-1] + b"?")
    with pytest.raises(ScratchError, match="not the expected file"):
        fetch("toy")


def test_shakespeare_split_is_nanogpt_convention():
    if shakespeare_path() is None:
        pytest.skip("Tiny Shakespeare mirror absent (set SCRATCHLM_DATA to ../shared/data)")
    corpus = load_corpus("shakespeare")
    assert corpus.sha256 == REGISTRY["shakespeare"].sha256
    assert len(corpus.documents) == 1 and len(corpus.documents[0]) == 1_115_394
    (train,), (val,) = corpus.split()
    assert len(val) == 111_540 and train + val == corpus.documents[0]
    assert corpus.split() == corpus.split()


def test_many_documents_split_by_name_hash(tmp_path):
    for i in range(300):
        (tmp_path / "d" / f"{i % 7}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / f"{i % 7}" / f"doc{i}.txt").write_text(f"document {i}\n")
    corpus = load_corpus(str(tmp_path / "d"))
    train, val = corpus.split(0.1)
    assert len(train) + len(val) == 300 and 15 <= len(val) <= 45  # ~10% of documents, by hash
    assert sorted(train + val) == sorted(corpus.documents)
    # Adding a document moves no other document between the splits.
    (tmp_path / "d" / "new.txt").write_text("a new document\n")
    train2, val2 = load_corpus(str(tmp_path / "d")).split(0.1)
    assert set(val) <= set(val2) and set(train) <= set(train2)
    # Two documents: one each side, whatever the hash says.
    two = load_corpus(str(tmp_path / "d" / "0"), glob="doc0.txt")
    assert len(two.documents) == 1
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.txt").write_text("alpha")
    (tmp_path / "two" / "b.txt").write_text("beta")
    train, val = load_corpus(str(tmp_path / "two")).split()
    assert len(train) == 1 and len(val) == 1


def test_user_file_folder_and_jsonl(tmp_path):
    (tmp_path / "one.txt").write_text("héllo wörld\n", encoding="utf-8")
    corpus = load_corpus(str(tmp_path / "one.txt"))
    assert corpus.documents == ["héllo wörld\n"]
    assert corpus.sha256 == hashlib.sha256("héllo wörld\n".encode()).hexdigest()

    folder = tmp_path / "folder"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "b.txt").write_text("B")
    (folder / "sub" / "a.txt").write_text("A")
    (folder / "sub" / "deeper" / "c.txt").write_text("C")
    (folder / "sub" / "skip.md").write_text("not text by the glob")
    corpus = load_corpus(str(folder))
    assert corpus.names == ["b.txt", "sub/a.txt", "sub/deeper/c.txt"] and corpus.documents == ["B", "A", "C"]
    assert load_corpus(str(folder), glob="**/*.md").documents == ["not text by the glob"]

    rows = [{"text": "first", "id": 1}, {"text": "second\nline", "id": 2}, {"body": "x", "text": "third"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_corpus(str(tmp_path / "d.jsonl")).documents == ["first", "second\nline", "third"]
    (tmp_path / "e.jsonl").write_text('{"body": "x"}\n')
    assert load_corpus(str(tmp_path / "e.jsonl"), jsonl_field="body").documents == ["x"]
    with pytest.raises(ScratchError, match=r"line 1: no field 'text'"):
        load_corpus(str(tmp_path / "e.jsonl"))
    (tmp_path / "f.jsonl").write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(ScratchError, match="line 2: not valid JSON"):
        load_corpus(str(tmp_path / "f.jsonl"))


def test_undecodable_bytes_name_file_and_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef")
    with pytest.raises(ScratchError, match=r"bad\.txt: byte offset 3 \(0xff\)") as e:
        load_corpus(str(bad))
    assert "errors='replace'" in str(e.value)
    assert load_corpus(str(bad), errors="replace").documents == ["abc\ufffddef"]
    lines = tmp_path / "bad.jsonl"
    lines.write_bytes(b'{"text": "fine"}\n{"text": "x\xc3"}\n')
    with pytest.raises(ScratchError, match=r"byte offset 28 \(line 2\)"):
        load_corpus(str(lines))
    assert load_corpus(str(lines), errors="replace").documents == ["fine", "x\ufffd"]


def test_user_mistakes_are_one_line_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "nothing").mkdir()
    cases = {
        "shakespear": "unknown corpus 'shakespear'",
        str(tmp_path / "missing.txt"): "does not exist",
        str(tmp_path / "empty.txt"): "is empty",
        str(tmp_path / "nothing"): "no files matching",
    }
    for spec, message in cases.items():
        with pytest.raises(ScratchError, match=message) as e:
            load_corpus(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(ScratchError, match="errors must be"):
        load_corpus(str(tmp_path / "empty.txt"), errors="ignore")


def test_pystdlib_is_the_standard_library():
    corpus = load_corpus("pystdlib")
    root = registry.stdlib_dir()
    assert "os.py" in corpus.names and corpus.names == sorted(corpus.names)
    assert not any("site-packages" in n or "dist-packages" in n for n in corpus.names)
    assert corpus.documents[corpus.names.index("os.py")] == (root / "os.py").read_text(encoding="utf-8")
    assert len(corpus.documents) > 500 and corpus.num_chars > 5_000_000
    assert os.path.isdir(fetch("pystdlib"))

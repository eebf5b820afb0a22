"""The chitchat reader: turns by sender, both role assignments, records without a dialogue skipped and
counted, gzip read transparently, and a held-out split by record id that SFT never trains on."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from scratchlm.data.chat_readers import read_conversations
from scratchlm.errors import ScratchError
from scratchlm.finetune.config import SFTDataConfig
from scratchlm.finetune.sft_data import read_chat_file, sft_mixture

A, B = "sender-a", "sender-b"
REAL = Path(os.environ.get("SCRATCHLM_DATA", "/nonexistent")) / "chitchat" / "dataset.json.gz"


def msg(sender: str, text: str) -> dict:
    return {"text": text, "timestamp": "2018-05-05T21:01:14Z", "sender": sender}


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write(path: Path, records: dict) -> Path:
    data = json.dumps(records).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


RECORDS = {
    # A's two inner lists are one turn: consecutive messages of one sender, joined by newlines.
    "talk": {
        "messages": [
            [msg(A, "hi")],
            [msg(A, "anyone?")],
            [msg(B, "hello")],
            [msg(A, "how are you")],
            [msg(B, "fine"), msg(B, "you?")],
            [msg(A, "bye")],
        ],
        "start": "x",
    },  # fmt: skip
    "alone": {"messages": [[msg(A, "hello?"), msg(A, "anybody?")]]},
    "blank": {"messages": [[msg(A, "hi")], [msg(B, " ")], [msg(A, "well")]]},
    "short": {"messages": [[msg(B, "yo")], [msg(A, "hey")]]},
}


@pytest.mark.parametrize("name", ["chat.json.gz", "chat.json"])
def test_turns_by_sender_both_ways_round_and_unusable_records_counted(tmp_path, name):
    path = write(tmp_path / name, RECORDS)
    data = read_conversations(path)
    assert data.conversations == [
        [u("hi\nanyone?"), a("hello"), u("how are you"), a("fine\nyou?")],  # A is the user; "bye" dropped
        [u("hello"), a("how are you"), u("fine\nyou?"), a("bye")],  # B is the user: A's first turn dropped
        [u("yo"), a("hey")],  # the other way round has no exchange: not made
    ]
    assert data.ids == ["talk", "talk", "short"] and data.sources[0] == f"{path}: talk"
    assert (data.unusable, data.skipped) == (2, 0)
    assert any("alone: 1 senders" in n for n in data.notes) and any(
        "blank: an empty message" in n for n in data.notes
    )
    assert "2 records without a dialogue skipped" in data.summary()
    assert read_conversations(path, format="chitchat").conversations == data.conversations


def test_a_malformed_record_names_its_id_unless_skipped(tmp_path):
    records = {**RECORDS, "broken": {"messages": [[{"text": "hi"}]]}}
    path = write(tmp_path / "chat.json.gz", records)
    with pytest.raises(ScratchError, match=rf"{path}: broken: a message of messages\[0\] has no 'sender'"):
        read_conversations(path)
    data = read_conversations(path, skip_invalid=True)
    assert (data.skipped, data.unusable, len(data.conversations)) == (1, 2, 3)
    (tmp_path / "bad.json.gz").write_bytes(gzip.compress(b"{}")[:-6])
    with pytest.raises(ScratchError, match="not a readable gzip file"):
        read_conversations(tmp_path / "bad.json.gz")


def many(n: int) -> dict:
    return {
        f"chat-{i:03d}": {"messages": [[msg(A, f"q{i}")], [msg(B, f"a{i}")], [msg(A, f"r{i}")]]}
        for i in range(n)
    }


def test_the_held_out_split_is_by_record_id_and_keeps_a_records_conversations_together(tmp_path):
    records = many(50)
    data = read_conversations(write(tmp_path / "chat.json", records))
    train, heldout = data.split(5)
    assert len(set(heldout.ids)) == 5 and len(heldout.conversations) == 10  # both role assignments
    assert not set(heldout.ids) & set(train.ids) and len(train.conversations) == 90
    reordered = read_conversations(write(tmp_path / "reordered.json", dict(reversed(list(records.items())))))
    assert sorted(reordered.split(5)[1].ids) == sorted(heldout.ids)  # the ids decide, not the order
    assert data.split(6)[1].ids[:0] == [] and set(heldout.ids) <= set(data.split(6)[1].ids)


def test_jsonl_records_without_an_id_are_held_out_by_content(tmp_path):
    line = json.dumps({"messages": [u("1+1="), a("2")]})
    path = tmp_path / "chat.jsonl"
    path.write_text(line + "\n" + line + "\n" + json.dumps({"id": 7, "messages": [u("2+2="), a("4")]}) + "\n")
    data = read_conversations(path)
    assert data.ids[0] == data.ids[1] != data.ids[2] == "7"  # duplicates share a side of the split


def test_sft_never_trains_on_a_files_held_out_records(tmp_path):
    path = write(tmp_path / "chat.json.gz", many(60))
    cfg = SFTDataConfig(tasks=[], files=[str(path)], heldout=4, examples=500)
    train, heldout = read_chat_file(path, cfg, say=lambda *_: None)
    assert len(heldout) == 8 and len(train) == 112
    held = {c[0]["content"] for c in heldout}
    mixture = sft_mixture(cfg, "train", 0, None, say=lambda *_: None)
    assert len(mixture) == 500 and not held & {c[0]["content"] for c in mixture}
    assert sft_mixture(cfg, "train", 0, None, say=lambda *_: None) == mixture  # deterministic
    small = write(tmp_path / "small.json", many(9))  # a tenth of 9 records: nothing held out
    assert read_chat_file(small, cfg, say=lambda *_: None)[1] == []


@pytest.mark.skipif(not REAL.is_file(), reason="the chitchat mirror ($SCRATCHLM_DATA/chitchat) is absent")
def test_the_real_chitchat_file():
    data = read_conversations(REAL)
    assert len(data.conversations) > 6000 and len(set(data.ids)) > 3000
    assert data.unusable > 2900 and data.skipped == 0  # 2,936 one-sender records and a few empty messages
    assert all(c[0]["role"] == "user" and c[-1]["role"] == "assistant" for c in data.conversations)

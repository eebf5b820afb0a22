"""Chat data from local files: JSON Lines, a JSON array or a JSON object of records by id (any of them
gzipped), and, through `datasets`, Parquet and Arrow.

Four record layouts, detected per record (or named with `format=`):

    messages   {"messages": [{"role": "user", "content": "..."}, ...]}               OpenAI / Hugging Face
    alpaca     {"instruction": "...", "input": "...", "output": "..."}               input optional
    sharegpt   {"conversations": [{"from": "human", "value": "..."}, ...]}          human/gpt/system
    chitchat   {"messages": [[{"text": "...", "sender": "..."}, ...], ...]}          BYU chitchat, by id

An Alpaca record becomes one exchange: the user says the instruction, then a blank line and the input
when there is one; the assistant says the output. A chitchat record is a chat between two people: the
consecutive messages of one sender are one turn (joined by newlines), and the record gives two
conversations, each person once the user. The second starts at the second person's first turn; both end
on the assistant (a trailing user turn is dropped), and one with no exchange left is not made. Every
conversation must follow the chat rules (scratchlm.data.chat) and end with the assistant's reply. A bad
record is `FILE:LINE: what is wrong` (`FILE: row N` in a table, `FILE: ID` in an object of records); with
`skip_invalid=True` it is left out and counted instead. A well-formed chitchat record with one sender
only or an empty message holds no dialogue to learn: it is always left out, and counted (`unusable`).

Each conversation's id (`ChatData.ids`, what a held-out split hashes) is its record's: the key in an
object of records, else the record's `id` field, else a sha256 of the record, so duplicates stay together.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from scratchlm.data.chat import ChatData, Conversation, conversation_problem, fit_to_context
from scratchlm.errors import ScratchError

FORMATS = ("auto", "messages", "alpaca", "sharegpt", "chitchat")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
TABLE_SUFFIXES = (".parquet", ".arrow")


class _BadRecord(Exception):
    """What is wrong with one record (the reader adds FILE:LINE)."""


class _Unusable(Exception):
    """Why a well-formed record holds no dialogue (always skipped and counted)."""


def read_conversations(path: str | Path, *, format: str = "auto", skip_invalid: bool = False) -> ChatData:
    """Every conversation in the file at `path`, with FILE:LINE sources, record ids and the skipped counts."""
    if format not in FORMATS:
        raise ScratchError(f"chat format must be one of {', '.join(FORMATS)}, got {format!r}")
    path = Path(path)
    if not path.is_file():
        raise ScratchError(
            f"chat data file {path} does not exist; give a .jsonl, .json (.gz), .parquet or .arrow file"
        )
    records = _table_records(path) if path.suffix.lower() in TABLE_SUFFIXES else _json_records(path)
    data = ChatData([], [])
    for where, record in records:
        try:
            if isinstance(record, _BadRecord):
                raise record
            conversations = _to_conversations(record, format)
        except _Unusable as e:
            data.unusable += 1
            data.notes.append(f"{where}: {e}")
            continue
        except _BadRecord as e:
            if not skip_invalid:
                raise ScratchError(
                    f"{where}: {e}; fix the record, or skip bad records "
                    "(scratchlm sft --skip-invalid; skip_invalid=True)"
                ) from None
            data.skipped += 1
            data.notes.append(f"{where}: {e}")
            continue
        key = _record_id(record)
        for conversation in conversations:
            data.conversations.append(conversation)
            data.sources.append(where)
            data.ids.append(key)
    return data


def load_chat(
    path: str | Path,
    tokenizer,
    max_tokens: int,
    *,
    format: str = "auto",
    skip_invalid: bool = False,
    overflow: str = "truncate",
) -> ChatData:
    """`read_conversations` then `fit_to_context`: the conversations that fit, with every count."""
    data = read_conversations(path, format=format, skip_invalid=skip_invalid)
    fitted = fit_to_context(
        data.conversations, tokenizer, max_tokens, overflow=overflow, sources=data.sources, ids=data.ids
    )
    return replace(fitted, skipped=data.skipped, unusable=data.unusable, notes=data.notes + fitted.notes)


def _to_conversations(record: object, format: str = "auto") -> list[Conversation]:
    """The conversations of one record; raises _BadRecord saying what is wrong, _Unusable why it has none."""
    if not isinstance(record, dict):
        raise _BadRecord(f"a record must be an object, not {type(record).__name__}")
    if format == "auto":
        format = _detect(record)
    if format == "chitchat":
        conversations = _chitchat(record)
    elif format == "messages":
        conversations = [_messages(record)]
    elif format == "sharegpt":
        conversations = [_sharegpt(record)]
    else:
        conversations = [_alpaca(record)]
    for conversation in conversations:
        problem = conversation_problem(conversation)
        if problem is not None:
            raise _BadRecord(problem)
        if conversation[-1]["role"] != "assistant":
            raise _BadRecord(
                "the conversation ends with a user turn; a training conversation ends with the reply"
            )
    return conversations


def _record_id(record: dict) -> str:
    key = record.get("id")
    if isinstance(key, (str, int)) and not isinstance(key, bool):
        return str(key)
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _detect(record: dict) -> str:
    if "messages" in record:
        items = record["messages"]
        return "chitchat" if isinstance(items, list) and items and isinstance(items[0], list) else "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    keys = ", ".join(sorted(map(str, record))[:5]) or "none"
    raise _BadRecord(
        f"no 'messages', 'conversations' or 'instruction'/'output' field (keys: {keys}); "
        "see docs/chat-format.md for the formats read"
    )


def _field(record: dict, key: str, kind: type, what: str = "the record"):
    if key not in record:
        raise _BadRecord(f"{what} has no {key!r} field")
    value = record[key]
    if not isinstance(value, kind):
        raise _BadRecord(f"{what} field {key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _messages(record: dict) -> Conversation:
    items = _field(record, "messages", list)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _BadRecord(f"message {index} is a {type(item).__name__}, not an object")
        _field(item, "role", str, f"message {index}")
        _field(item, "content", str, f"message {index}")
    return [{"role": item["role"], "content": item["content"]} for item in items]


def _sharegpt(record: dict) -> Conversation:
    items = _field(record, "conversations", list)
    conversation = []
    system = record.get("system")  # some ShareGPT exports keep the system prompt beside the turns
    if isinstance(system, str) and system:
        conversation.append({"role": "system", "content": system})
    for index, item in enumerate(items):
        what = f"conversations[{index}]"
        if not isinstance(item, dict):
            raise _BadRecord(f"{what} is a {type(item).__name__}, not an object")
        speaker = _field(item, "from", str, what)
        if speaker not in SHAREGPT_ROLES:
            raise _BadRecord(
                f"{what} is from unknown speaker {speaker!r} (known: {', '.join(SHAREGPT_ROLES)})"
            )
        conversation.append({"role": SHAREGPT_ROLES[speaker], "content": _field(item, "value", str, what)})
    return conversation


def _chitchat(record: dict) -> list[Conversation]:
    """Both role assignments of a two-person chat (see the module docstring)."""
    turns: list[tuple[str, list[str]]] = []  # (sender, texts): consecutive messages of one sender
    for index, group in enumerate(_field(record, "messages", list)):
        if not isinstance(group, list):
            raise _BadRecord(f"messages[{index}] is a {type(group).__name__}, not a list of messages")
        for item in group:
            what = f"a message of messages[{index}]"
            if not isinstance(item, dict):
                raise _BadRecord(f"{what} is a {type(item).__name__}, not an object")
            text, sender = _field(item, "text", str, what), _field(item, "sender", str, what)
            if not text.strip():
                raise _Unusable(f"an empty message in messages[{index}]")
            if turns and turns[-1][0] == sender:
                turns[-1][1].append(text)
            else:
                turns.append((sender, [text]))
    senders = len({sender for sender, _ in turns})
    if senders != 2:
        raise _Unusable(f"{senders} senders; a chat to learn from has two")
    texts = ["\n".join(parts) for _, parts in turns]
    conversations = []
    for first in (0, 1):  # the first sender as the user, then the second
        roles = ["user", "assistant"] * len(texts)
        chat = [{"role": role, "content": text} for role, text in zip(roles, texts[first:])]
        chat = chat[: len(chat) // 2 * 2]  # end on the assistant
        if chat:
            conversations.append(chat)
    return conversations


def _alpaca(record: dict) -> Conversation:
    instruction = _field(record, "instruction", str)
    output = _field(record, "output", str)
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _BadRecord(f"the record field 'input' is {type(extra).__name__}, not str")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    """(FILE:LINE, record or _BadRecord) per non-blank line; a file starting with `[` is one JSON array, and
    one JSON object whose values are all objects is records by id (`FILE: ID`, the id in the record's
    `id`). Gzipped files are read the same."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip's magic number
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise ScratchError(f"{path}: not a readable gzip file ({e}); fix or recompress it") from None
    if data.lstrip()[:1] == b"{" and (mapping := _records_by_id(data)) is not None:
        yield from ((f"{path}: {key}", {**record, "id": key}) for key, record in mapping.items())
        return
    if data.lstrip()[:1] == b"[":
        try:
            array = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScratchError(f"{path}: not valid JSON ({e}); fix the file") from None
        yield from ((f"{path}: record {i}", record) for i, record in enumerate(array))
        return
    for number, line in enumerate(data.splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield where, _BadRecord(f"byte {e.start} is not valid UTF-8")
            continue
        if not text.strip():
            continue
        try:
            yield where, json.loads(text)
        except json.JSONDecodeError as e:
            yield where, _BadRecord(f"invalid JSON ({e.msg} at column {e.colno})")


def _records_by_id(data: bytes) -> dict | None:
    """The file as one object of records by id, or None (JSON Lines: it fails to parse past line one)."""
    try:
        whole = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(whole, dict) and whole and all(isinstance(v, dict) for v in whole.values()):
        return whole
    return None


def _table_records(path: Path) -> Iterator[tuple[str, object]]:
    """(FILE: row N, record) for each row of a Parquet or Arrow file, read through `datasets`."""
    try:
        import datasets  # optional: only tables need it, and it takes seconds to import
    except ImportError:
        raise ScratchError(f"reading {path} needs the datasets library; pip install datasets") from None
    try:
        if path.suffix.lower() == ".arrow":
            table = datasets.Dataset.from_file(str(path))  # memory-mapped, nothing written
        else:
            # Parquet is converted to Arrow on the way in; keep that copy in memory and its cache
            # temporary, so reading a file leaves nothing behind.
            with tempfile.TemporaryDirectory() as cache:
                table = datasets.Dataset.from_parquet(str(path), cache_dir=cache, keep_in_memory=True)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ScratchError(
            f"{path}: cannot read it as {path.suffix[1:]} ({e}); write it with `datasets` "
            "(Dataset.to_parquet, or save_to_disk for Arrow streams)"
        ) from None
    for row, record in enumerate(table):
        yield f"{path}: row {row}", record

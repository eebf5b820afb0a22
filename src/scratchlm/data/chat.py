"""Conversations -> token ids + loss mask: the project's one chat format (docs/chat-format.md).

A conversation is a list of `{"role", "content"}` messages: an optional system message first, then turns
alternating user, assistant, ... starting with user. Each turn renders as

    ROLE_TOKEN content <|end|>          (no newlines or spaces added; ROLE_TOKEN is <|system|>, ...)

and a generation prompt is an open assistant turn, `<|assistant|>`, after the last (user) message. The
role tokens are the special tokens every tokenizer reserves (`CHAT_SPECIAL_TOKENS`); message content is
always text, encoded with `encode_ordinary`, so a user who types `<|assistant|>` cannot open a turn.
The loss mask is 1 on what the model should learn to say: assistant content and its closing `<|end|>`.

`CHAT_TEMPLATE` is the same format as a Jinja template for Hugging Face's `apply_chat_template`; its
name and version are recorded in every tokenizer folder with the role tokens (scratchlm.tokenizer.io).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from scratchlm.errors import ScratchError
from scratchlm.tokenizer.base import CHAT_SPECIAL_TOKENS
from scratchlm.tokenizer.io import CHAT_FORMAT, CHAT_FORMAT_VERSION

Message = dict[str, str]
Conversation = list[Message]

ROLES = ("system", "user", "assistant")
SYSTEM, USER, ASSISTANT, END = CHAT_SPECIAL_TOKENS
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
assert all(token == f"<|{role}|>" for role, token in ROLE_TOKENS.items())  # CHAT_TEMPLATE relies on it
OVERFLOW = ("truncate", "drop")
ORDER_RULE = "after an optional system message, turns alternate user, assistant, ... starting with user"

# The Jinja twin of `chat_text`, checking the same rules (HF's sandbox provides `raise_exception`).
# Every tag trims whitespace, so the template adds no characters of its own.
CHAT_TEMPLATE = (
    "{%- set offset = 1 if messages and messages[0]['role'] == 'system' else 0 -%}"
    "{%- for message in messages -%}"
    "{%- if loop.index0 >= offset and message['role'] != ['user', 'assistant'][(loop.index0 - offset) % 2]"
    " -%}"
    "{{- raise_exception('message ' ~ loop.index0 ~ ' has role ' ~ message['role'] ~ '; "
    + ORDER_RULE
    + "') -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>' ~ message['content'] ~ '" + END + "' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{%- if not messages or messages[-1]['role'] != 'user' -%}"
    "{{- raise_exception('a generation prompt must follow a user message') -}}"
    "{%- endif -%}"
    "{{- '" + ASSISTANT + "' -}}"
    "{%- endif -%}"
)


def conversation_problem(messages: object, *, add_generation_prompt: bool = False) -> str | None:
    """What is wrong with `messages` as a conversation (one clause, naming the message), or None."""
    if not isinstance(messages, list) or not messages:
        return "a conversation must be a non-empty list of messages"
    offset = 1 if isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {index} is a {type(message).__name__}, not an object with role and content"
        for key in ("role", "content"):
            if key not in message:
                return f"message {index} has no {key!r}"
        role, content = message["role"], message["content"]
        if role not in ROLES:
            return f"message {index} has unknown role {role!r} (known: {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"message {index} ({role}) content is {type(content).__name__}, not a string"
        if index >= offset:
            expected = ("user", "assistant")[(index - offset) % 2]
            if role != expected:
                return f"message {index} is {role!r} where {expected!r} belongs; {ORDER_RULE}"
    if add_generation_prompt and messages[-1]["role"] != "user":
        return f"a generation prompt must follow a user message, not {messages[-1]['role']!r}"
    return None


def check_conversation(messages: object, *, add_generation_prompt: bool = False, where: str = "") -> None:
    """Raise a one-line ScratchError (prefixed by `where`, e.g. FILE:LINE) if `messages` break the rules."""
    problem = conversation_problem(messages, add_generation_prompt=add_generation_prompt)
    if problem is not None:
        raise ScratchError(f"{where}: {problem}" if where else problem)


def chat_text(messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """The conversation as one string, what `CHAT_TEMPLATE` renders (for display and for comparison).

    Tokenizing this string with `encode` gives `render_chat`'s ids only when no content spells a special
    token; `render_chat` is the safe way to get ids.
    """
    check_conversation(list(messages), add_generation_prompt=add_generation_prompt)
    text = "".join(ROLE_TOKENS[m["role"]] + m["content"] + END for m in messages)
    return text + (ASSISTANT if add_generation_prompt else "")


def chat_token_ids(tokenizer) -> dict[str, int]:
    """The ids of the four chat tokens, {"<|system|>": id, ...}; an error if the tokenizer lacks one."""
    missing = [token for token in CHAT_SPECIAL_TOKENS if token not in tokenizer.special_tokens]
    if missing:
        raise ScratchError(
            f"the tokenizer has no {missing[0]} token, which chat needs; train it with the chat special "
            "tokens (DEFAULT_SPECIAL_TOKENS: train_bpe's default; train_char(special_tokens=...))"
        )
    return {token: tokenizer.special_tokens[token] for token in CHAT_SPECIAL_TOKENS}


def render_chat(
    messages: Sequence[Message], tokenizer, *, add_generation_prompt: bool = False, where: str = ""
) -> tuple[list[int], list[int]]:
    """`(ids, loss_mask)` of a conversation; the mask is 1 on assistant content and its `<|end|>`.

    `add_generation_prompt` appends an open assistant turn (its role token, mask 0) for the model to
    continue. `where` (e.g. FILE:LINE) prefixes any error.
    """
    check_conversation(list(messages), add_generation_prompt=add_generation_prompt, where=where)
    special = chat_token_ids(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    for index, message in enumerate(messages):
        turn = _turn_ids(message, index, tokenizer, special, where)
        learn = int(message["role"] == "assistant")
        ids += turn
        mask += [0] + [learn] * (len(turn) - 1)  # the role token is given, never predicted
    if add_generation_prompt:
        ids.append(special[ASSISTANT])
        mask.append(0)
    return ids, mask


def _turn_ids(message: Message, index: int, tokenizer, special: dict[str, int], where: str) -> list[int]:
    """ROLE_TOKEN + content + <|end|> as ids; content is text, never special tokens."""
    content = message["content"]
    try:
        content_ids = tokenizer.encode_ordinary(content)
    except ScratchError:  # a character vocabulary without one of the characters: say which, and where
        bad = next(((i, c) for i, c in enumerate(content) if not _encodes(tokenizer, c)), None)
        if bad is None:
            raise
        at = f"{where}: " if where else ""
        i, c = bad
        raise ScratchError(
            f"{at}message {index} ({message['role']}): character {c!r} (U+{ord(c):04X}) at position {i} is "
            "not in the tokenizer's vocabulary; train a tokenizer over the task's alphabet (chat text "
            "included), or use a byte-level BPE tokenizer"
        ) from None
    return [special[ROLE_TOKENS[message["role"]]], *content_ids, special[END]]


def _encodes(tokenizer, char: str) -> bool:
    try:
        tokenizer.encode_ordinary(char)
    except ScratchError:
        return False
    return True


@dataclass
class ChatData:
    """Conversations read or fitted, with a count of everything left out or shortened (never silent).

    `sources[i]` says where `conversations[i]` came from (FILE:LINE); `ids[i]` is the key that decides its
    side of a held-out split (`split`): the record's id, shared by every conversation made from one record.
    `notes` has one line per record skipped, conversation dropped or truncated, `FILE:LINE: what happened`.
    """

    conversations: list[Conversation]
    sources: list[str] = field(default_factory=list)
    skipped: int = 0  # invalid records left out (skip_invalid=True)
    truncated: int = 0  # conversations whose oldest turns were dropped to fit
    dropped: int = 0  # conversations left out: even the last exchange did not fit (or overflow="drop")
    notes: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # default: the sources
    unusable: int = 0  # well-formed records with no dialogue (one sender, an empty message): always left out

    def __post_init__(self):
        if not self.sources:
            self.sources = [f"conversation {i}" for i in range(len(self.conversations))]
        if not self.ids:
            self.ids = list(self.sources)
        assert len(self.sources) == len(self.conversations) == len(self.ids)

    def summary(self) -> str:
        unusable = f"{self.unusable} records without a dialogue skipped, " if self.unusable else ""
        return (
            f"{len(self.conversations)} conversations; {self.skipped} invalid records skipped, {unusable}"
            f"{self.truncated} truncated, {self.dropped} dropped as too long"
        )

    def split(self, heldout: int) -> tuple[ChatData, ChatData]:
        """(train, held out): every conversation of the `heldout` ids whose sha256 is lowest is held out.

        The split is a function of the ids alone (not of the order, the process or the other records'
        content), and the conversations of one record stay on one side. The counts stay with train.
        """
        order = sorted(set(self.ids), key=lambda key: hashlib.sha256(key.encode("utf-8")).digest())
        held = set(order[: max(0, heldout)])
        train = replace(self, conversations=[], sources=[], ids=[], notes=list(self.notes))
        out = ChatData([])
        for conversation, source, key in zip(self.conversations, self.sources, self.ids):
            side = out if key in held else train
            side.conversations.append(conversation)
            side.sources.append(source)
            side.ids.append(key)
        return train, out


def fit_to_context(
    conversations: Sequence[Conversation],
    tokenizer,
    max_tokens: int,
    *,
    overflow: str = "truncate",
    sources: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
) -> ChatData:
    """Keep each conversation within `max_tokens` ids as rendered by `render_chat`.

    `overflow="truncate"` drops the oldest whole user/assistant exchanges after the system message,
    keeping at least the last one; a conversation that still does not fit is dropped. `"drop"` drops
    every conversation that does not fit. Each conversation must end with an assistant turn. For
    next-token training a context of T positions takes T + 1 ids: pass `max_tokens=context_length + 1`.
    """
    if overflow not in OVERFLOW:
        raise ScratchError(f"overflow must be one of {', '.join(OVERFLOW)}, got {overflow!r}")
    if max_tokens < 1:
        raise ScratchError(f"max_tokens must be positive, got {max_tokens}")
    sources = (
        list(sources) if sources is not None else [f"conversation {i}" for i in range(len(conversations))]
    )
    ids = list(ids) if ids is not None else sources
    special = chat_token_ids(tokenizer)
    out = ChatData([], [])
    for conversation, where, key in zip(conversations, sources, ids, strict=True):
        check_conversation(conversation, where=where)
        if conversation[-1]["role"] != "assistant":
            raise ScratchError(
                f"{where}: the conversation ends with a user turn; end it with the reply to learn"
            )
        sizes = [len(_turn_ids(m, i, tokenizer, special, where)) for i, m in enumerate(conversation)]
        total = sum(sizes)
        head = 1 if conversation[0]["role"] == "system" else 0
        start = head
        if overflow == "truncate":
            while total > max_tokens and start + 2 < len(conversation):
                total -= sizes[start] + sizes[start + 1]
                start += 2
        if total > max_tokens:
            out.dropped += 1
            out.notes.append(f"{where}: dropped, {sum(sizes)} tokens do not fit in {max_tokens}")
            continue
        if start > head:
            out.truncated += 1
            out.notes.append(f"{where}: truncated, the oldest {(start - head) // 2} exchanges dropped")
            conversation = conversation[:head] + conversation[start:]
        out.conversations.append(conversation)
        out.sources.append(where)
        out.ids.append(key)
    return out


__all__ = [
    "CHAT_FORMAT",
    "CHAT_FORMAT_VERSION",
    "CHAT_TEMPLATE",
    "ChatData",
    "Conversation",
    "Message",
    "ROLES",
    "chat_text",
    "chat_token_ids",
    "check_conversation",
    "conversation_problem",
    "fit_to_context",
    "render_chat",
]

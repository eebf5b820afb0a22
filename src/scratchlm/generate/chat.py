"""A conversation with a chat model: the history in the project's chat format, each reply streamed.

    session = ChatSession(model, tokenizer, SamplingConfig(max_new_tokens=200, top_k=50), system="Be brief.")
    reply = session.reply("Hello")
    if reply.notice:
        print(reply.notice)
    for piece in reply:
        print(piece, end="", flush=True)
    session.save("chat.json")

The prompt is the history rendered by `render_chat` with an open assistant turn (docs/chat-format.md);
`decode_steps` continues it until the model closes the turn with `<|end|>`. Every other special token
is a stop string too: a model that opens a `<|user|>` turn of its own has finished its reply, and reply
text must stay plain text (a character vocabulary could not encode `<|` in the next prompt).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from scratchlm.data.chat import END, Conversation, conversation_problem, render_chat
from scratchlm.errors import ScratchError
from scratchlm.fileio import write_json_atomic
from scratchlm.generate.config import SamplingConfig
from scratchlm.generate.engine import decode_steps
from scratchlm.tokenizer.base import CHAT_SPECIAL_TOKENS


class Reply:
    """One reply being decoded: iterate it for the text pieces as they become printable.

    `notice` says what was dropped from the history to make room (None when nothing was). The session's
    history gets the user's message and the assistant turn once the reply has started, when it ends,
    however it ends: exhausted, `close()`d, or broken by an exception such as `KeyboardInterrupt`
    (Ctrl-C); the turn keeps the text produced until then. A reply closed unread changes nothing.
    """

    def __init__(self, pieces: Iterator[str], notice: str | None):
        self._pieces = pieces
        self.notice = notice

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        """Stop decoding now; the text so far becomes the assistant's turn."""
        self._pieces.close()

    def text(self) -> str:
        """Decode to the end and return the whole reply."""
        return "".join(self._pieces)


class ChatSession:
    """A conversation with `model`: `reply` to each user message, with `reset`, `set_system`, `save`,
    `load`. `history` is the conversation so far, an optional system message then user/assistant pairs.

    When a prompt and `sampling.max_new_tokens` would outgrow the model's context, the oldest whole
    exchanges leave the history (the system message stays), and the reply's `notice` says how many.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer, sampling: SamplingConfig, system: str | None = None
    ):
        missing = [token for token in CHAT_SPECIAL_TOKENS if token not in tokenizer.special_tokens]
        if missing:
            raise ScratchError(
                f"the model's tokenizer has no {missing[0]} token: this is not a chat model; pretrain with "
                "the chat tokens (any BPE tokenizer, or data.chat_tokens=true for char) and fine-tune it "
                "with `scratchlm sft`"
            )
        self.model = model
        self.tokenizer = tokenizer
        extra = [token for token in tokenizer.special_tokens if token not in sampling.stop]
        self.sampling = replace(sampling, stop=[*sampling.stop, *extra])
        self.end_id = tokenizer.special_tokens[END]
        self.history: Conversation = []
        self.set_system(system)

    @property
    def system(self) -> str | None:
        has = self.history and self.history[0]["role"] == "system"
        return self.history[0]["content"] if has else None

    def set_system(self, text: str | None) -> None:
        """Set (or, with None or '', remove) the system message; the exchanges stay."""
        exchanges = self.history[1:] if self.system is not None else self.history
        head = [{"role": "system", "content": text}] if text else []
        if head:
            render_chat(head, self.tokenizer)  # a character the tokenizer cannot encode: an error now
        self.history = head + exchanges

    def reset(self) -> None:
        """Forget the exchanges; the system message stays."""
        self.history = self.history[:1] if self.system is not None else []

    def reply(self, user_text: str) -> Reply:
        """Answer `user_text`. The prompt is fitted and checked now (a message the tokenizer cannot
        encode is an error here, and the history is unchanged); decoding happens as the reply is read."""
        messages = [*self.history, {"role": "user", "content": user_text}]
        messages, dropped = self._fit(messages)
        prompt, _ = render_chat(messages, self.tokenizer, add_generation_prompt=True)
        steps = decode_steps(
            self.model,
            self.tokenizer,
            [prompt],
            self.sampling,
            eot_id=self.end_id,
            vocab_limit=self.tokenizer.vocab_size,
        )
        notice = None
        if dropped:
            notice = f"(dropped the oldest {dropped} exchange{'s' * (dropped != 1)} to fit the context)"
        return Reply(self._stream(messages, steps), notice)

    def _fit(self, messages: Conversation) -> tuple[Conversation, int]:
        """Drop the oldest exchanges until prompt + max_new_tokens fit the context (or only the new
        message is left: then the engine's own policy, `sampling.truncate`, applies)."""
        budget = self.model.config.context_length - self.sampling.max_new_tokens
        total = len(render_chat(messages, self.tokenizer, add_generation_prompt=True)[0])
        start = head = 1 if messages[0]["role"] == "system" else 0
        while total > budget and start + 1 < len(messages):
            total -= len(render_chat(messages[start : start + 2], self.tokenizer)[0])
            start += 2
        return messages[:head] + messages[start:], (start - head) // 2

    def _stream(self, messages: Conversation, steps) -> Iterator[str]:
        pieces: list[str] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for step in steps:
                if step.texts[0]:
                    pieces.append(step.texts[0])
                    yield step.texts[0]
        finally:
            steps.close()
            self.model.train(was_training)
            self.history = [*messages, {"role": "assistant", "content": "".join(pieces)}]

    def save(self, path: str | Path) -> None:
        """Write the history as JSON, `{"messages": [...]}` (a chat data record's layout), atomically."""
        write_json_atomic(path, {"messages": self.history})

    def load(self, path: str | Path) -> None:
        """Replace the history with a conversation `save` wrote (its system message included)."""
        path = Path(path)
        if not path.is_file():
            raise ScratchError(f"{path}: no such file; give a conversation written by /save")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScratchError(
                f"{path}: not valid JSON ({e}); give a conversation written by /save"
            ) from None
        messages = record.get("messages") if isinstance(record, dict) else record
        if messages == []:  # what `save` writes before the first message
            self.history = []
            return
        problem = conversation_problem(messages)
        if problem is None and messages[-1]["role"] == "user":
            problem = "it ends with a user turn; a saved conversation ends with the assistant's reply"
        if problem is not None:
            raise ScratchError(f"{path}: {problem}; give a conversation written by /save")
        render_chat(messages, self.tokenizer, where=str(path))  # a character the tokenizer cannot encode
        self.history = [{"role": m["role"], "content": m["content"]} for m in messages]

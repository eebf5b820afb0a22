"""The OpenAI API's request bodies and response shapes, as far as this server implements them.

Requests are pydantic models in strict mode: a string where a number belongs is a 400, as with OpenAI,
not a silent conversion. Fields we do not implement (`logprobs`, `presence_penalty`, `user`, ...) are
ignored, as OpenAI ignores unknown fields. Responses are plain dicts in the API's exact layout
(https://platform.openai.com/docs/api-reference/chat/object and .../chat-streaming), so the official
`openai` client parses them.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name of max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def error_body(message: str, type_: str = "invalid_request_error", param=None, code=None) -> dict:
    """The OpenAI error object: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _response(
    rid, model, object_: str, choices: list[dict], prompt_tokens, completion_tokens, notice
) -> dict:
    body = {
        "id": rid,
        "object": object_,
        "created": now(),
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }
    if notice:
        body["notice"] = notice  # scratchlm's own field: what was cut from the prompt
    return body


def chat_response(rid, model, texts, reasons, prompt_tokens, completion_tokens, notice=None) -> dict:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": reason,
        }
        for i, (text, reason) in enumerate(zip(texts, reasons))
    ]
    return _response(rid, model, "chat.completion", choices, prompt_tokens, completion_tokens, notice)


def completion_response(rid, model, texts, reasons, prompt_tokens, completion_tokens, notice=None) -> dict:
    choices = [
        {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
        for i, (text, reason) in enumerate(zip(texts, reasons))
    ]
    return _response(rid, model, "text_completion", choices, prompt_tokens, completion_tokens, notice)


def _chunk(rid, model, created, object_: str, choice: dict, with_usage: bool) -> dict:
    chunk = {"id": rid, "object": object_, "created": created, "model": model, "choices": [choice]}
    if with_usage:
        chunk["usage"] = None  # every chunk carries the key; only the last one a value
    return chunk


def chat_chunk(rid, model, created, index, delta, finish_reason=None, with_usage=False) -> dict:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _chunk(rid, model, created, "chat.completion.chunk", choice, with_usage)


def completion_chunk(rid, model, created, index, text, finish_reason=None, with_usage=False) -> dict:
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return _chunk(rid, model, created, "text_completion", choice, with_usage)


def usage_chunk(rid, model, created, object_: str, prompt_tokens, completion_tokens) -> dict:
    """The last chunk under `stream_options.include_usage`: no choices, the whole request's usage."""
    return {
        "id": rid,
        "object": object_,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }

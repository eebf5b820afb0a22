"""The OpenAI-compatible server through the real `openai` client, on a server bound to 127.0.0.1.

Replies are held against their slow twin, the model decoding alone (`ChatSession` for chat, the engine
for completions), streaming and not, one at a time and under concurrency; errors against OpenAI's shapes.
"""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import torch
from support.serving import random_model, serving, wait_until

from scratchlm.data.chat import render_chat
from scratchlm.generate import SamplingConfig, decode_steps
from scratchlm.generate.chat import ChatSession
from scratchlm.model.folder import save_model
from scratchlm.serve.config import ServeConfig
from scratchlm.serve.server import build
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.?!<|>"  # '<', '|', '>': content may spell a role token
CONTEXT = 96


@pytest.fixture(scope="module")
def tokenizer():
    return train_char([ALPHABET], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS))


@pytest.fixture(scope="module")
def model(tokenizer):
    model = random_model(tokenizer, CONTEXT, seed=1)
    with torch.no_grad():  # rarely end a turn, so replies run long enough to batch and to stream
        for token in (ENDOFTEXT, *CHAT_SPECIAL_TOKENS):
            model.lm_head.weight[tokenizer.special_tokens[token]] *= 0.0
    return model


@pytest.fixture(scope="module")
def model_dir(model, tokenizer, tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("serve") / "tiny-chat", model, tokenizer)


class Running:
    """`scratchlm serve`'s app over a model folder, on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, model_dir, **overrides):
        config = ServeConfig(ckpt=str(model_dir), device="cpu", **overrides)
        self.app, self.scheduler, self.name = build(config)
        self._serving = serving(self.app)
        self.url = self._serving.__enter__()
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=overrides.get("api_key") or "none")

    def close(self):
        self._serving.__exit__(None, None, None)
        self.scheduler.stop()


@pytest.fixture(scope="module")
def server(model_dir):
    running = Running(model_dir)
    yield running
    running.close()


def chat_alone(model, tokenizer, message: str, **sampling) -> str:
    session = ChatSession(model, tokenizer, SamplingConfig(**sampling))
    return session.reply(message).text()


def completion_alone(model, tokenizer, prompt: str, **sampling) -> str:
    ids = tokenizer.encode_ordinary(prompt)
    steps = decode_steps(
        model,
        tokenizer,
        [ids],
        SamplingConfig(**sampling),
        eot_id=tokenizer.eot_id,
        vocab_limit=tokenizer.vocab_size,
    )
    return "".join(step.texts[0] for step in steps)


# --- the endpoints ------------------------------------------------------------------------------------


def test_models_lists_the_one_served(server):
    assert [m.id for m in server.client.models.list().data] == ["tiny-chat"]


def test_chat_replies_as_the_model_alone_streaming_and_not(server, model, tokenizer):
    want = chat_alone(model, tokenizer, "hello, who are you?", max_new_tokens=30, temperature=0)
    reply = server.client.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "hello, who are you?"}],
        max_tokens=30,
        temperature=0,
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == want and len(want) > 5
    assert reply.choices[0].finish_reason in ("stop", "length")
    n_prompt = len(
        render_chat(
            [{"role": "user", "content": "hello, who are you?"}], tokenizer, add_generation_prompt=True
        )[0]
    )
    assert reply.usage.prompt_tokens == n_prompt

    chunks = list(
        server.client.chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "hello, who are you?"}],
            max_tokens=30,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    assert len(chunks) > 5  # it streamed in pieces
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == reply.usage.completion_tokens


def test_completions_stream_and_not_with_seed_n_and_stop(server, model, tokenizer):
    prompt = "the cat sat on"
    kwargs = dict(max_new_tokens=25, temperature=0.8, top_p=0.9, seed=5, stop=["q"])
    want = completion_alone(model, tokenizer, prompt, **kwargs)
    want_second = completion_alone(model, tokenizer, prompt, **{**kwargs, "seed": 6})  # choice 1: seed + 1
    reply = server.client.completions.create(
        model="tiny-chat", prompt=prompt, max_tokens=25, temperature=0.8, top_p=0.9, seed=5, stop="q", n=2
    )
    assert [c.text for c in reply.choices] == [want, want_second]
    assert want != want_second
    stream = server.client.completions.create(
        model="tiny-chat",
        prompt=prompt,
        max_tokens=25,
        temperature=0.8,
        top_p=0.9,
        seed=5,
        stop="q",
        stream=True,
    )
    assert "".join(c.choices[0].text for c in stream) == want
    default = server.client.completions.create(model="tiny-chat", prompt=prompt, temperature=0)
    assert default.usage.completion_tokens <= 16  # OpenAI's completions default for max_tokens


def test_concurrent_clients_each_get_their_lone_reply(server, model, tokenizer, monkeypatch):
    asks = [
        ("tell me a story", dict(temperature=0)),
        ("why?", dict(temperature=1.0, seed=1)),
        ("a much longer question, about many things, to ask", dict(temperature=0)),
        ("ok", dict(temperature=0.7, seed=9, top_p=0.8)),
        ("and then", dict(temperature=0)),
        ("x", dict(temperature=1.0, seed=2)),
    ]
    want = [chat_alone(model, tokenizer, q, max_new_tokens=40, **s) for q, s in asks]
    # Decoding waits until every request has been submitted, so they share a batch however the client
    # threads happen to be scheduled; `sizes` counts the rows of each decode step.
    scheduler, submitted, sizes, all_in = server.scheduler, [], [], threading.Event()
    submit, decode = scheduler.submit, scheduler.decoder

    def counted_submit(sequences):
        submit(sequences)
        submitted.append(sequences)
        if len(submitted) == len(asks):
            all_in.set()

    def gated_decode(tokens, cache):  # tokens: (B, 1)
        assert all_in.wait(60), "the requests did not all arrive"
        sizes.append(tokens.shape[0])
        return decode(tokens, cache)

    monkeypatch.setattr(scheduler, "submit", counted_submit)
    monkeypatch.setattr(scheduler, "decoder", gated_decode)
    got: dict[int, str] = {}

    def ask(i, q, s, stream):
        messages = [{"role": "user", "content": q}]
        if stream:
            chunks = server.client.chat.completions.create(
                model="tiny-chat", messages=messages, max_tokens=40, stream=True, **s
            )
            got[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            r = server.client.chat.completions.create(
                model="tiny-chat", messages=messages, max_tokens=40, **s
            )
            got[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i, q, s, i % 2 == 0)) for i, (q, s) in enumerate(asks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got.get(i) for i in range(len(asks))] == want
    assert max(sizes) > 1  # they really were decoded together


def test_role_tokens_in_content_stay_text_and_unknown_fields_are_ignored(server, tokenizer):
    content = "<|user|>hi<|end|>"
    body = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 3,
        "logprobs": False,
        "presence_penalty": 0.0,
        "some_future_field": {"x": 1},
    }
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 200
    # <|user|> role, every character of the content, <|end|>, <|assistant|>: the content's "tokens" are text
    assert r.json()["usage"]["prompt_tokens"] == 1 + len(content) + 2


# --- bad input: each a 4xx in OpenAI's error shape ----------------------------------------------------


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    "body, where",
    [
        (
            {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5},
            "max_tokens",
        ),
        (
            {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"},
            "max_tokens",
        ),
        ({"model": "tiny-chat", "messages": [{"role": "user", "content": 7}]}, "messages"),
        ({"model": "tiny-chat", "messages": []}, "messages"),
        ({"model": "tiny-chat", "messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        (
            {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 5},
            "temperature",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(server, body, where):
    error = error_of(httpx.post(server.url + "/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error" and where in error["param"]


def test_malformed_json_unknown_model_route_and_characters(server):
    bad = httpx.post(
        server.url + "/v1/chat/completions",
        content=b'{"model": "tiny-chat", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert "JSON" in error_of(bad, 400)["message"]
    with pytest.raises(openai.NotFoundError):
        server.client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    error = error_of(
        httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
        ),
        404,
    )
    assert error["code"] == "model_not_found"
    error_of(httpx.get(server.url + "/v1/nothing-here"), 404)
    chars = error_of(
        httpx.post(server.url + "/v1/completions", json={"model": "tiny-chat", "prompt": "caf\u00e9"}), 400
    )
    assert "U+00E9" in chars["message"]


def test_a_10_mb_body_is_413_and_the_server_goes_on(server):
    huge = json.dumps({"model": "tiny-chat", "prompt": "a" * (10 << 20)})
    error = error_of(
        httpx.post(
            server.url + "/v1/completions", content=huge, headers={"content-type": "application/json"}
        ),
        413,
    )
    assert "limit" in error["message"]
    chunked = httpx.post(
        server.url + "/v1/completions",
        content=(b"x" * 65536 for _ in range(40)),  # no content-length: counted as it arrives
        headers={"content-type": "application/json"},
    )
    error_of(chunked, 413)
    assert server.client.completions.create(model="tiny-chat", prompt="still here", max_tokens=2).choices


def test_a_prompt_over_the_context_is_400_or_truncated_with_a_notice(server, model_dir):
    long = "ab " * CONTEXT
    error = error_of(
        httpx.post(server.url + "/v1/completions", json={"model": "tiny-chat", "prompt": long}), 400
    )
    assert error["code"] == "context_length_exceeded"
    truncating = Running(model_dir, prompt_overflow="truncate")
    try:
        r = httpx.post(
            truncating.url + "/v1/completions", json={"model": "tiny-chat", "prompt": long, "max_tokens": 8}
        )
        assert r.status_code == 200
        body = r.json()
        assert "kept its newest" in body["notice"] and body["usage"]["prompt_tokens"] == CONTEXT - 8
    finally:
        truncating.close()


def test_the_api_key_is_required_when_set(model_dir):
    guarded = Running(model_dir, api_key="sesame")
    try:
        assert guarded.client.models.list().data  # the right key
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=guarded.url + "/v1", api_key="wrong").models.list()
        assert error_of(httpx.get(guarded.url + "/v1/models"), 401)["code"] == "invalid_api_key"
        assert httpx.get(guarded.url + "/health").status_code == 200  # health stays open for probes
    finally:
        guarded.close()


def test_a_full_queue_is_429(model_dir):
    """A scheduler that is not running keeps everything queued: the second request finds the queue full."""
    config = ServeConfig(ckpt=str(model_dir), device="cpu", max_queue=1)
    app, scheduler, _ = build(config)
    scheduler.stop()  # nothing is decoded: what is submitted stays in the queue
    from fastapi.testclient import TestClient

    scheduler.waiting.append([])  # one request already waits
    with TestClient(app) as client:
        body = {"model": "tiny-chat", "prompt": "hi", "max_tokens": 2}
        error = error_of(client.post("/v1/completions", json=body), 429)
        assert error["code"] == "rate_limit_exceeded"


# --- the slots, health and metrics --------------------------------------------------------------------


def test_a_client_that_leaves_mid_stream_frees_its_row(server, monkeypatch):
    # The decode step holds its row until the request is cancelled: the row is live when the client
    # leaves, and the reply cannot reach its end first, however fast or slow this machine is.
    scheduler, rows, decoding = server.scheduler, [], threading.Event()
    decode = scheduler.decoder

    def held_decode(tokens, cache):
        rows.extend(scheduler.live)
        decoding.set()
        wait_until(lambda: all(seq.cancelled for seq in scheduler.live))
        return decode(tokens, cache)

    monkeypatch.setattr(scheduler, "decoder", held_decode)
    body = {"model": "tiny-chat", "prompt": "go", "max_tokens": CONTEXT, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as r:
        lines = r.iter_lines()  # held: a dropped line iterator closes the stream, the client leaves early
        next(line for line in lines if line.startswith("data: "))  # the prefill's piece
        assert decoding.wait(30)  # its row waits in the batch's decode step
        assert scheduler.live == rows and len(rows) == 1
    wait_until(lambda: not scheduler.live)
    (seq,) = rows  # one decode step: the row left at the next one, not at its end
    assert seq.finish_reason == "cancelled" and seq.generated == 2 < seq.sampling.max_new_tokens


def test_health_and_metrics(server):
    server.client.completions.create(model="tiny-chat", prompt="count me", max_tokens=4)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "scratchlm_requests_total",
        "scratchlm_completion_tokens_total",
        "scratchlm_queue_depth",
        "scratchlm_batch_size",
        "scratchlm_time_to_first_token_seconds_count",
    ):
        assert name in text
    ttft = next(
        line for line in text.splitlines() if line.startswith("scratchlm_time_to_first_token_seconds_count")
    )
    assert float(ttft.split()[-1]) >= 1
    ok = [
        line
        for line in text.splitlines()
        if line.startswith("scratchlm_requests_total") and 'status="200"' in line
    ]
    assert ok and all(float(line.split()[-1]) >= 1 for line in ok)

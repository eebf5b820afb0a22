"""The chat page in a real browser: headless Debian Chromium through Playwright, the server under uvicorn.

The model is rigged to say `<script>` over and over, one character a step, slowed to a known pace, so a
reply streams for as long as the test wants and holds markup. A reply must grow while it streams, stop
when asked (and the server must drop its row), stay in the history sent with the next turn, be gone after
"New conversation", and show `<script>` as text. A request without the API key shows the server's error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from playwright.sync_api import expect, sync_playwright
from support.serving import serving, wait_until

from scratchlm.data.chat import ASSISTANT
from scratchlm.model import ModelConfig, Transformer
from scratchlm.serve.app import create_app
from scratchlm.serve.config import ServeConfig
from scratchlm.serve.metrics import ServerMetrics
from scratchlm.serve.scheduler import Scheduler
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
REPLY = "<script>"  # each character once, so the next character is a function of the last one
STEP_SECONDS = 0.02  # per forward pass: 50 characters a second, a reply that streams visibly
KEY = "sesame"
NAME = 'tiny <b>"chat"</b> & co'  # a model id that is markup: the page must show it as text, too
CHAT = "/v1/chat/completions"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="no /usr/bin/chromium: install Debian's chromium (apt-get install chromium)",
)


def rigged_model(tokenizer) -> Transformer:
    """A model that answers REPLY, repeated. Every block's output projection is zero, so the residual
    stream is the token's embedding; embeddings are one-hot, and the head maps each character of REPLY to
    the next one (the assistant token to the first), with a margin no temperature up to 2 overcomes."""
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=1024,
        n_layers=1,
        d_model=64,
        n_heads=4,
        tie_embeddings=False,
    )
    assert config.d_model >= config.vocab_size  # room for one-hot embeddings
    model = Transformer(config).eval()
    ids = [tokenizer.encode_ordinary(c)[0] for c in REPLY]
    with torch.no_grad():
        for block in model.layers:
            block.attention.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.token_embedding.weight.copy_(torch.eye(config.vocab_size, config.d_model))
        model.lm_head.weight.zero_()
        follows = dict(zip(ids, ids[1:] + ids[:1])) | {tokenizer.special_tokens[ASSISTANT]: ids[0]}
        for last, nxt in follows.items():
            model.lm_head.weight[nxt, last] = 10.0  # logit 10 * sqrt(d_model) after the RMSNorm: 80
    model.register_forward_pre_hook(lambda module, args: time.sleep(STEP_SECONDS))
    return model


@pytest.fixture(scope="module")
def server():
    """The real app over the rigged model, served by uvicorn on 127.0.0.1 (a free port) in a thread."""
    tokenizer = train_char(
        ["abcdefghijklmnopqrstuvwxyz ,.?!\n" + REPLY], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS)
    )
    scheduler = Scheduler(rigged_model(tokenizer), tokenizer, max_batch=4)
    scheduler.decoder = None  # every step through the model's forward, which its pre-hook slows down
    scheduler.start()
    config = ServeConfig(ckpt="unused", device="cpu", api_key=KEY)
    app = create_app(scheduler, config, NAME, ServerMetrics())
    try:
        with serving(app) as url:
            yield url + "/", scheduler
    finally:
        scheduler.stop()


@pytest.fixture
def chat(server):
    """A fresh tab on the chat page, and the bodies of the chat requests it sends, as the browser sent
    them (the history is the page's own; only these show what it sends)."""
    url, _ = server
    sent = []

    def record(request) -> None:
        if request.url.endswith(CHAT):
            sent.append(json.loads(request.post_data))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.on("request", record)
            page.goto(url)
            yield page, sent
        finally:
            browser.close()


def reply(page) -> str:
    return page.locator(".message.assistant .content").last.text_content()


def grows_past(page, n: int) -> int:
    """Wait for the last reply to be longer than n characters; its length then."""
    page.wait_for_function(
        "n => [...document.querySelectorAll('.message.assistant .content')].pop().textContent.length > n",
        arg=n,
    )
    return len(reply(page))


def ask(page, text: str, max_tokens: int | str) -> None:
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_stream_stop_continue_and_start_over(server, chat):
    (_, scheduler), (page, sent) = server, chat
    assert page.title() == f"scratchlm: {NAME}" and page.locator("#model").text_content() == NAME

    ask(page, "hello", 2000)  # no key yet: the server's 401 message, and the text back in the box
    expect(page.locator("#error")).to_contain_text("missing or wrong API key")
    expect(page.locator("#input")).to_have_value("hello")
    assert page.locator(".message").count() == 0

    page.fill("#api-key", KEY)
    page.press("#input", "Enter")
    expect(page.locator("body")).to_have_attribute("data-state", "streaming")
    expect(page.locator("#error")).to_have_text("")
    first = grows_past(page, 0)
    second = grows_past(page, first)  # two observations while it streams: it grows
    assert first < second < 1000
    expect(page.locator("body")).to_have_attribute("data-state", "streaming")

    page.click("#stop")
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    wait_until(lambda: not scheduler.live)  # the server drops the row of a closed stream
    assert not scheduler.queue_depth
    stopped = reply(page)
    time.sleep(10 * STEP_SECONDS)
    assert reply(page) == stopped and second <= len(stopped) < 1000  # it stopped growing, early
    assert (REPLY * 1000).startswith(stopped)
    expect(page.locator(".message.assistant .note")).to_have_text("(stopped)")

    # The next turn carries the partial reply; Shift+Enter is a newline, Enter sends.
    page.fill("#max-tokens", "16")
    page.fill("#input", "go on")
    page.press("#input", "Shift+Enter")
    page.locator("#input").press_sequentially("please")
    page.press("#input", "Enter")
    expect(page.locator("body")).to_have_attribute("data-state", "idle")
    assert sent[-1]["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": stopped},
        {"role": "user", "content": "go on\nplease"},
    ]
    assert sent[-1]["max_tokens"] == 16 and sent[-1]["stream"] is True and sent[-1]["model"] == NAME
    assert reply(page) == REPLY * 2
    expect(page.locator(".message.assistant .note").last).to_have_text("(stopped at max tokens)")

    page.click("#new")
    expect(page.locator(".message")).to_have_count(0)
    ask(page, "fresh start", 8)
    expect(page.locator(".message.assistant .content")).to_have_text(REPLY)
    assert sent[-1]["messages"] == [{"role": "user", "content": "fresh start"}]


def test_a_reply_of_markup_shows_as_text(chat):
    page, sent = chat
    page.fill("#api-key", KEY)
    page.fill("#temperature", "2")
    ask(page, "say something", 3 * len(REPLY))
    expect(page.locator(".message.assistant .content")).to_have_text(REPLY * 3)
    assert sent[-1]["temperature"] == 2
    assert page.locator("#messages script").count() == 0
    html = page.locator(".message.assistant .content").inner_html()
    assert html == "&lt;script&gt;" * 3

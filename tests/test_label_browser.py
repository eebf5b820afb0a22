"""The label page in a real browser: headless Debian Chromium through Playwright, the app under uvicorn.

Three prompts are ranked with the keyboard (K-1 keys each, the last answer implied), one ranking is undone,
and the file must hold exactly the rankings made. A prompt holding HTML must show as text.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from support.serving import serving
from test_label import K, babbler, chat_tokenizer

from scratchlm.align.simulate import sample_answers
from scratchlm.generate.config import SamplingConfig
from scratchlm.serve.label_app import LabelQueue, create_app

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PROMPTS = [
    [{"role": "user", "content": "<img src=x onerror=\"document.title='owned'\"> hello"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "how are you?"}],
    [{"role": "user", "content": "say yes"}],
    [{"role": "user", "content": "bye"}],
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="no /usr/bin/chromium: install Debian's chromium (apt-get install chromium)",
)


@pytest.fixture
def server(tmp_path):
    """The real app over a tiny model, served by uvicorn on 127.0.0.1 (a free port) in a thread."""
    tokenizer = chat_tokenizer()
    sampling = SamplingConfig(max_new_tokens=8, seed=0)
    model = babbler(tokenizer)
    sample = functools.partial(sample_answers, model, tokenizer, k=K, sampling=sampling, batch_size=1)
    out = tmp_path / "prefs.jsonl"
    app = create_app(LabelQueue(PROMPTS, out, sample, K))
    with serving(app) as url:
        yield url + "/", out


@pytest.fixture
def page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def shown(page) -> tuple[int, list[str]]:
    index = int(page.locator("#prompt").get_attribute("data-index"))
    return index, page.locator(".answer .text").all_text_contents()


def wait_for(page, ranked: int, index: int) -> None:
    expect(page.locator("#progress")).to_have_text(f"{ranked} / {len(PROMPTS)} ranked")
    expect(page.locator("body")).to_have_attribute("data-state", "prompt")
    expect(page.locator("#prompt")).to_have_attribute("data-index", str(index))


def test_rank_three_prompts_with_the_keyboard_and_undo_one(server, page):
    url, out = server
    page.goto(url)
    wait_for(page, 0, 0)
    assert page.title() == "scratchlm label" and page.locator("#prompt img").count() == 0
    assert PROMPTS[0][0]["content"] in page.locator("#prompt").inner_text()  # text, not markup
    made, seen = [], {}
    for keys in (["2", "3"], ["3", "1"], ["1", "2"]):  # best first; the third answer is implied
        index, answers = shown(page)
        seen[index] = answers
        assert len(answers) == K and all(len(a) == 8 for a in answers)
        for key in keys:
            page.keyboard.press(key)
        picked = [int(k) - 1 for k in keys]
        order = picked + [i for i in range(K) if i not in picked]
        made.append(
            {"prompt": PROMPTS[index], "responses": [answers[i] for i in order], "annotator": "human"}
        )
        wait_for(page, len(made), index + 1)
    page.keyboard.press("u")  # undo the third ranking: its prompt comes back, with the same answers
    wait_for(page, 2, 2)
    assert shown(page) == (2, seen[2])
    page.reload()  # a reload keeps this tab's prompt and its answers
    wait_for(page, 2, 2)
    assert shown(page) == (2, seen[2])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == made[:2]


def test_the_page_says_the_model_is_writing_while_answers_are_sampled(tmp_path, page):
    """The first answers take seconds on a CPU: the page says what it waits for, then shows the prompt.
    The sampler is held until the message is on screen, so the order is certain on any machine."""
    tokenizer = chat_tokenizer()
    model = babbler(tokenizer)
    release = threading.Event()

    def held(prompts, start):
        assert release.wait(timeout=60), "the page never showed its waiting message"
        return sample_answers(model, tokenizer, prompts, K, SamplingConfig(max_new_tokens=8, seed=0),
                              batch_size=1, start=start)  # fmt: skip

    app = create_app(LabelQueue(PROMPTS, tmp_path / "prefs.jsonl", held, K))
    with serving(app) as url:
        page.goto(url + "/")
        expect(page.locator("#message")).to_contain_text("writing the answers")
        assert page.locator(".answer").count() == 0
        release.set()
        wait_for(page, 0, 0)
        expect(page.locator("#message")).to_have_text("")

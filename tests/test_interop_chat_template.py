"""The exported chat template: transformers' apply_chat_template gives exactly our render_chat ids."""

from __future__ import annotations

import json
import random

import pytest

from scratchlm.data.chat import CHAT_TEMPLATE, render_chat
from scratchlm.interop.hf import export_hf
from scratchlm.interop.hf_tokenizer import write_hf_tokenizer
from scratchlm.model import ModelConfig, Transformer
from scratchlm.tokenizer import load_tokenizer, train_bpe
from scratchlm.tokenizer.io import read_chat_format

transformers = pytest.importorskip("transformers", reason="transformers is a test extra (pip install .[hf])")

# Words, punctuation, whitespace runs, accents, CJK, emoji: no '|', so no content spells a special token
# (HF tokenizes the rendered string, so only then can its ids match ours; docs/chat-format.md).
PIECES = ["Hello", " world", ",", " ", "  ", "\n", "\n\n", "\t", "?", "42", " 7", "héllo", " wörld", "日本語",
          "🙂", "don't", " DON'T", "<", ">", "x", "Ünïcödé", "", "  \n "]  # fmt: skip


def _random_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    conversations = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.4:
            messages.append({"role": "system", "content": "".join(rng.choices(PIECES, k=rng.randint(0, 8)))})
        for turn in range(rng.randint(1, 8)):
            role = ("user", "assistant")[turn % 2]
            content = "" if rng.random() < 0.1 else "".join(rng.choices(PIECES, k=rng.randint(1, 12)))
            messages.append({"role": role, "content": content})
        conversations.append(messages)
    return conversations


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    corpus = ("".join(random.Random(1).choices(PIECES, k=20_000)) + " The quick brown fox. ") * 2
    tok = train_bpe(corpus, 400)
    folder = tmp_path_factory.mktemp("hf")
    write_hf_tokenizer(tok, folder, model_max_length=4096)
    return tok, transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_apply_chat_template_renders_our_ids_on_100_conversations(pair):
    tok, hf = pair
    conversations = _random_conversations(100)
    assert sum(c[0]["role"] == "system" for c in conversations) > 20
    assert any(m["content"] == "" for c in conversations for m in c)
    compared = 0
    for messages in conversations:
        prompts = [False, True] if messages[-1]["role"] == "user" else [False]
        for gen in prompts:
            ours, _ = render_chat(messages, tok, add_generation_prompt=gen)
            theirs = hf.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=gen, return_dict=False
            )
            assert theirs == ours, messages
            compared += 1
    assert compared > 100


def test_the_template_refuses_what_render_chat_refuses(pair):
    _, hf = pair
    with pytest.raises(Exception, match="message 1 has role user"):
        hf.apply_chat_template([{"role": "user", "content": "a"}] * 2, tokenize=False)
    with pytest.raises(Exception, match="generation prompt must follow a user message"):
        turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        hf.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def test_the_export_carries_the_template_and_the_format_record(tmp_path):
    tok = train_bpe("Hello there, how are you? " * 100, 300)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layers=1, d_model=16, n_heads=2))
    export_hf(model.eval(), tmp_path / "hf", tok)
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    assert read_chat_format(tmp_path / "hf" / "tokenizer") == {"format": "scratchlm-chat", "version": 1}
    back = load_tokenizer(tmp_path / "hf" / "tokenizer")
    messages = [{"role": "user", "content": "Hello"}]
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    ours = render_chat(messages, back, add_generation_prompt=True)[0]
    assert hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == ours


def test_no_template_for_a_tokenizer_without_role_tokens(tmp_path):
    tok = train_bpe("Hello there " * 50, 270, special_tokens=["<|endoftext|>"])
    write_hf_tokenizer(tok, tmp_path, model_max_length=64)
    assert "chat_template" not in json.loads((tmp_path / "tokenizer_config.json").read_text())

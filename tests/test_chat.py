"""`ChatSession` and `scratchlm chat`: history, commands, context fitting, Ctrl-C, in a real terminal.

The model is a tiny Transformer rigged into a "babbler": its final norm outputs a constant vector, so
every step samples the same distribution over characters and never a special token (logit -100), so a
reply runs exactly `max_new_tokens` characters unless a test favours one special token (+100). Its
replies are gibberish: these tests check mechanics, not content.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys

import pexpect
import pytest
import torch

from scratchlm.cli import main
from scratchlm.data.chat import render_chat
from scratchlm.errors import ScratchError
from scratchlm.generate.chat import ChatSession
from scratchlm.generate.config import SamplingConfig
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char

# No '>' among the characters: a reply can never spell the terminal's prompt `you> `.
ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.?!"
CONTEXT = 64


def babbler(tokenizer, *, favour: str | None = None) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=CONTEXT,
        n_layers=1,
        d_model=16,
        n_heads=2,
        d_ff=32,
        norm="layernorm",
        bias=True,
        tie_embeddings=False,
    )
    model = Transformer(config)
    with torch.no_grad():
        model.final_norm.weight.zero_()  # LayerNorm(x) = 0 * x_hat + bias = e_0, whatever the input
        model.final_norm.bias.zero_()
        model.final_norm.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = torch.randn(tokenizer.vocab_size)  # the logits, every step
        for token, index in tokenizer.special_tokens.items():
            model.lm_head.weight[index, 0] = 100.0 if token == favour else -100.0
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return train_char([ALPHABET], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS))


@pytest.fixture(scope="module")
def model(tokenizer):
    return babbler(tokenizer)


@pytest.fixture(scope="module")
def model_dir(tokenizer, model, tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("chat") / "model", model, tokenizer)


def session(model, tokenizer, max_new_tokens=5, **kwargs) -> ChatSession:
    return ChatSession(model, tokenizer, SamplingConfig(max_new_tokens=max_new_tokens, seed=0), **kwargs)


# --- the session API ----------------------------------------------------------------------------------


def test_history_grows_and_reset_keeps_the_system_message(model, tokenizer):
    chat = session(model, tokenizer, system="be brief")
    first = chat.reply("hello")
    assert first.notice is None
    text = first.text()
    assert len(text) == 5 and set(text) <= set(ALPHABET)
    assert chat.history == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": text},
    ]
    chat.reply("and again?").text()
    assert [m["role"] for m in chat.history] == ["system", "user", "assistant", "user", "assistant"]
    chat.set_system("be kind")  # replaces the system message, keeps the exchanges
    assert chat.system == "be kind" and len(chat.history) == 5
    chat.reset()
    assert chat.history == [{"role": "system", "content": "be kind"}]
    chat.set_system(None)
    assert chat.history == [] and chat.system is None
    chat.reply("hi").text()
    assert [m["role"] for m in chat.history] == ["user", "assistant"]


def test_a_reply_ends_at_any_special_token_and_stays_plain_text(tokenizer):
    for token in ("<|end|>", "<|user|>", ENDOFTEXT):
        chat = session(babbler(tokenizer, favour=token), tokenizer)
        assert chat.reply("hello").text() == ""
        assert chat.history[-1] == {"role": "assistant", "content": ""}
        render_chat(chat.history, tokenizer)  # the history still encodes: no '<|' in any content


def test_a_stopped_reply_keeps_what_it_produced(model, tokenizer):
    chat = session(model, tokenizer, max_new_tokens=30)
    reply = chat.reply("hello")
    pieces = [next(iter(reply)) for _ in range(3)]
    reply.close()
    assert chat.history[-1] == {"role": "assistant", "content": "".join(pieces)}

    # Ctrl-C while the model computes: the interrupt leaves through the decoding loop.
    calls = []

    def interrupt(module, inputs, output):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    model.train()
    # On the embedding: every step passes through it, the packed decode step too (which skips forward).
    handle = model.token_embedding.register_forward_hook(interrupt)
    try:
        got = []
        with pytest.raises(KeyboardInterrupt):
            for piece in chat.reply("more"):
                got.append(piece)
    finally:
        handle.remove()
    assert len(got) == 3 and chat.history[-1] == {"role": "assistant", "content": "".join(got)}
    assert [m["role"] for m in chat.history] == ["user", "assistant"] * 2
    assert model.training  # the model's mode comes back
    model.eval()
    assert chat.reply("unread") is not None and len(chat.history) == 4  # a reply never read changes nothing


def test_save_and_load_round_trip(model, tokenizer, tmp_path):
    chat = session(model, tokenizer, system="be brief")
    chat.reply("hello").text()
    path = tmp_path / "chat.json"
    chat.save(path)
    assert json.loads(path.read_text()) == {"messages": chat.history}
    other = session(model, tokenizer)
    other.load(path)
    assert other.history == chat.history and other.system == "be brief"
    empty = session(model, tokenizer)
    empty.save(tmp_path / "empty.json")
    other.load(tmp_path / "empty.json")
    assert other.history == []


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "ends with a user turn"),
        ('{"messages": [{"role": "assistant", "content": "hi"}]}', "'user' belongs"),
        ('{"messages": [{"role": "user", "content": "<7>"}, {"role": "assistant", "content": ""}]}', "'<'"),
        ('{"messages": "hello"}', "non-empty list"),
    ],
)
def test_load_refuses_a_bad_file_in_one_line(model, tokenizer, tmp_path, content, problem):
    chat = session(model, tokenizer, system="kept")
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ScratchError, match=problem) as e:
        chat.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert chat.history == [{"role": "system", "content": "kept"}]
    with pytest.raises(ScratchError, match="no such file"):
        chat.load(tmp_path / "missing.json")


def test_the_oldest_exchanges_leave_to_fit_the_context(model, tokenizer, tmp_path):
    # Each exchange is 6 + 12 tokens (role token, content, <|end|>), the system message 3.
    exchanges = [[{"role": "user", "content": "abcd"}, {"role": "assistant", "content": "e" * 10}]] * 5
    history = [{"role": "system", "content": "s"}] + [m for pair in exchanges for m in pair]
    (tmp_path / "long.json").write_text(json.dumps({"messages": history}))
    chat = session(model, tokenizer, max_new_tokens=8)
    chat.load(tmp_path / "long.json")
    # 3 + 5 * 18 + 4 ("hi") + 1 (<|assistant|>) + 8 new = 106 > 64; without 3 exchanges: 52 fits.
    reply = chat.reply("hi")
    assert reply.notice == "(dropped the oldest 3 exchanges to fit the context)"
    reply.text()
    assert chat.history[0] == {"role": "system", "content": "s"} and len(chat.history) == 1 + 2 * 3
    assert chat.history[1:5] == history[-4:]
    # Next: 3 + 2 * 18 + 14 ("hi" and its 8-token reply) + 5 + 8 = 66 > 64: one more goes.
    assert chat.reply("hi").notice == "(dropped the oldest 1 exchange to fit the context)"


def test_a_message_the_tokenizer_cannot_encode_changes_nothing(model, tokenizer):
    chat = session(model, tokenizer)
    with pytest.raises(ScratchError, match="'7'"):
        chat.reply("room 7")
    assert chat.history == []


def test_a_tokenizer_without_chat_tokens_is_not_a_chat_model(model, tmp_path, capsys):
    plain = train_char([ALPHABET], special_tokens=(ENDOFTEXT,))
    with pytest.raises(ScratchError, match="not a chat model.*scratchlm sft"):
        ChatSession(model, plain, SamplingConfig())
    folder = save_model(tmp_path / "plain", babbler(plain), plain)
    assert main(["chat", "--ckpt", str(folder), "--message", "hi"]) == 2
    err = capsys.readouterr().err
    assert "not a chat model" in err and err.count("\n") == 1


# --- the command line: one message, for scripts -------------------------------------------------------


def chat_once(capsys, model_dir, *flags) -> tuple[int, str, str]:
    code = main(["chat", "--ckpt", str(model_dir), "--device", "cpu", "--seed", "0", *map(str, flags)])
    out, err = capsys.readouterr()
    return code, out, err


def test_message_answers_once_and_sampling_flags_work_as_in_generate(model_dir, capsys):
    code, out, _ = chat_once(capsys, model_dir, "--message", "hello", "--max-new-tokens", 8)
    assert code == 0 and len(out) == 9 and out.endswith("\n") and set(out[:-1]) <= set(ALPHABET)
    assert chat_once(capsys, model_dir, "--message", "hello", "--max-new-tokens", 8)[1] == out  # --seed
    _, greedy, _ = chat_once(capsys, model_dir, "--message", "hi", "--max-new-tokens", 6, "--temperature", 0)
    assert greedy == greedy[0] * 6 + "\n"  # the babbler's most likely character, every step
    _, cut, _ = chat_once(capsys, model_dir, "--message", "hi", "--temperature", 0, "--stop", greedy[0])
    assert cut == "\n"
    code, _, err = chat_once(capsys, model_dir, "--message", "hi", "--max-new-tokens", 60, "--system", "x")
    assert code == 0 and "dropped" not in err  # one message: nothing to drop
    code, _, err = chat_once(capsys, model_dir, "--message", "room 7")
    assert code == 2 and "'7'" in err


def test_standard_input_answers_once(model_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n"))
    code, out, _ = chat_once(capsys, model_dir, "--max-new-tokens", 7)
    assert code == 0 and len(out) == 8
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, _, err = chat_once(capsys, model_dir)
    assert code == 2 and "message is empty" in err


# --- a real terminal ----------------------------------------------------------------------------------


def spawn(model_dir, max_new_tokens: int, *flags: str) -> pexpect.spawn:
    env = {**os.environ, "TERM": "dumb", "OMP_NUM_THREADS": "1"}  # dumb: no escape codes from readline
    argv = ["-m", "scratchlm", "chat", "--ckpt", str(model_dir), "--device", "cpu", "--seed", "0"]
    child = pexpect.spawn(
        sys.executable, [*argv, "--max-new-tokens", str(max_new_tokens), *flags], env=env, encoding="utf-8"
    )
    child.timeout = 30
    child.expect_exact("you> ")
    return child


def saved(child, path) -> list[dict]:
    child.sendline(f"/save {path}")
    child.expect(r"\(saved \d+ messages? to ")
    child.expect_exact("you> ")
    return json.loads(path.read_text())["messages"]


def test_a_conversation_in_a_terminal(model_dir, tmp_path):
    child = spawn(model_dir, 8)
    child.sendline("hello")
    child.expect_exact("model> ")
    child.expect_exact("you> ")
    assert child.before.endswith("\r\n")
    reply = child.before[:-2]
    assert len(reply) == 8
    child.sendline("/system be brief")
    child.expect_exact("(system message set)")
    child.expect_exact("you> ")
    assert saved(child, tmp_path / "chat.json") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": reply},
    ]
    child.sendline("/reset")
    child.expect_exact("(conversation cleared)")
    child.expect_exact("you> ")
    assert saved(child, tmp_path / "reset.json") == [{"role": "system", "content": "be brief"}]
    child.sendline("/load nowhere.json")
    child.expect_exact("scratchlm: error: nowhere.json: no such file")
    child.expect_exact("you> ")  # an error is one line, and the session goes on
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_a_reply_and_the_session_goes_on(model_dir, tmp_path):
    # Greedy, the babbler says its likeliest character at every step and never a special token (-100):
    # with a billion new tokens (hours), only Ctrl-C can end the reply, however slow this machine is.
    child = spawn(model_dir, 10**9, "--temperature", "0")
    for message in ("hello", "again"):
        child.sendline(message)
        child.expect_exact("model> ")
        child.expect(f"[{re.escape(ALPHABET)}]")  # the reply has started streaming
        child.sendcontrol("c")
        child.expect_exact("[stopped]")
        child.expect_exact("you> ")
    history = saved(child, tmp_path / "chat.json")
    # A billion new tokens never fit a context of 64: each message drops the exchange before it.
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "again"
    reply = history[1]["content"]
    assert reply and reply == reply[0] * len(reply)  # what it said before Ctrl-C, one character repeated
    child.sendeof()  # Ctrl-D ends the session
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

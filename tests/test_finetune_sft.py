"""SFT: packed rows give each conversation its own loss, masked tokens get no gradient, a tiny run trains
through the Trainer (full and LoRA), resumes exactly, and refuses a base that cannot spell a conversation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from support.training import tiny_corpus, tiny_overrides

from scratchlm.data.chat import render_chat
from scratchlm.data.packing import IGNORE, example, pack
from scratchlm.errors import ScratchError
from scratchlm.finetune.config import load_sft_config
from scratchlm.finetune.sft_objective import sft
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import load_model
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char
from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.run_dir import RunDir

CONVERSATIONS = [
    [{"role": "user", "content": "12+34="}, {"role": "assistant", "content": "46"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "abc"},
        {"role": "assistant", "content": "cba"},
        {"role": "user", "content": "xy"},
        {"role": "assistant", "content": "yx"},
    ],  # fmt: skip
    [{"role": "user", "content": "7-2="}, {"role": "assistant", "content": "5"}],
]


def _tokenizer():
    return train_char(["0123456789+-=abcxyz brief"], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS))


def _loss_sum(model, inputs, targets, documents=None):
    logits = model(inputs, document_ids=documents)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")


def test_a_packed_row_gives_each_conversation_the_loss_it_gets_alone():
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    shape = {"context_length": 64, "n_layers": 2, "d_model": 32, "n_heads": 2, "ngram_orders": [2]}
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **shape)).eval()
    examples = [example(*render_chat(c, tokenizer)) for c in CONVERSATIONS]
    rows = pack(examples, 64)
    assert len(rows) == 1  # all three in one row
    inputs, targets, documents = rows.take(torch.arange(1).numpy())
    with torch.no_grad():
        packed = _loss_sum(model, inputs, targets, documents)
        alone = sum(_loss_sum(model, torch.tensor([i]), torch.tensor([t])) for i, t in examples)
        leaked = _loss_sum(model, inputs, targets)  # the same row without document ids
    assert packed.item() == pytest.approx(alone.item(), abs=1e-5)
    assert abs(leaked.item() - alone.item()) > 1e-3  # the twin that can fail: documents would see each other
    unpacked = pack(examples, 64, packing=False)
    assert len(unpacked) == 3


def test_only_assistant_tokens_count_and_masked_tokens_get_no_gradient():
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    ids, mask = render_chat(CONVERSATIONS[1], tokenizer)
    inputs, targets = example(ids, mask)
    counted = [i for i, t in enumerate(targets) if t != IGNORE]
    answer = tokenizer.decode([ids[i + 1] for i in counted])
    assert answer == "cba<|end|>yx<|end|>"  # assistant content and its <|end|>, nothing of user or system
    shape = {"context_length": 64, "n_layers": 1, "d_model": 16, "n_heads": 2}
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **shape))
    logits = model(torch.tensor([inputs]))
    logits.retain_grad()
    F.cross_entropy(logits[0], torch.tensor(targets), ignore_index=IGNORE, reduction="sum").backward()
    grad = logits.grad[0].abs().sum(-1)  # (T,)
    assert all(grad[i] > 0 for i in counted)
    assert all(grad[i] == 0 for i in range(len(targets)) if i not in counted)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny pretrained base whose character vocabulary spells the tasks and holds the chat tokens."""
    corpus = tiny_corpus(tmp_path_factory)
    run = tmp_path_factory.mktemp("base") / "run"
    extra = {"data.extra_chars": "0123456789+-=", "data.chat_tokens": "true", "eval.sample_tokens": 0,
             "model": "{n_layers: 2, d_model: 32, n_heads: 2, context_length: 32}"}  # fmt: skip
    pretrain(load_pretrain_config(None, tiny_overrides(corpus, steps=4, **extra)), run, say=lambda *_: None)
    return run


def _sft_settings(base, steps: int, **extra) -> list[str]:
    settings = {
        "base": str(base), "data.tasks": "['arithmetic:digits=1,op=+', 'strings:kind=reverse,max_len=4']",
        "data.examples": 400, "data.heldout": 20, "data.batch_size": 4, "data.ptx": 0.25,
        "budget.max_time": "", "budget.max_steps": steps, "eval.max_examples": 8, "eval.max_new_tokens": 6,
        "logging.every": 1, "logging.progress": "false", "logging.tensorboard": "false",
        "checkpoint.every": 3, "schedule.kind": "constant", "optim.lr": 0.003, **extra,
    }  # fmt: skip
    return [f"{k}={v}" for k, v in settings.items()]


def test_a_tiny_sft_run_trains_evaluates_and_resumes_exactly(base, tmp_path):
    whole = sft(load_sft_config(None, _sft_settings(base, 6)), tmp_path / "whole", say=lambda *_: None)
    figures = whole.evaluation
    assert {"val_loss", "exact:arithmetic:digits=1,op=+", "pretrain_val_loss"} <= set(figures)
    assert 0.0 <= figures["exact:arithmetic:digits=1,op=+"] <= 1.0
    model, tokenizer, _ = load_model(whole.final_dir)
    assert "<|assistant|>" in tokenizer.special_tokens
    sft(load_sft_config(None, _sft_settings(base, 3)), tmp_path / "broken", say=lambda *_: None)
    sft(load_sft_config(None, _sft_settings(base, 6)), tmp_path / "broken", resume=True, say=lambda *_: None)
    losses = {
        name: [r["loss"] for r in RunDir(tmp_path / name).read_metrics("train")]
        for name in ("whole", "broken")
    }
    assert len(losses["whole"]) == 6 and losses["broken"] == losses["whole"]


def test_lora_sft_trains_the_adapter_only_and_writes_a_merged_model(base, tmp_path):
    result = sft(load_sft_config(None, _sft_settings(base, 4, **{"lora.rank": 4})), tmp_path / "lora",
                 say=lambda *_: None)  # fmt: skip
    merged, _, _ = load_model(result.final_dir)
    original, _, _ = load_model(RunDir(base).final)
    changed = [n for (n, a), (_, b) in zip(merged.state_dict().items(), original.state_dict().items())
               if not torch.equal(a, b)]  # fmt: skip
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)  # only the adapted projections
    assert (result.final_dir / "adapter" / "adapter.safetensors").is_file()
    sft(load_sft_config(None, _sft_settings(base, 6, **{"lora.rank": 4})), tmp_path / "lora", resume=True,
        say=lambda *_: None)  # fmt: skip
    assert [r["step"] for r in RunDir(tmp_path / "lora").read_metrics("train")] == list(range(1, 7))


def test_a_base_without_chat_tokens_is_one_line(tmp_path_factory, tmp_path):
    corpus = tiny_corpus(tmp_path_factory)
    run = tmp_path / "plain"
    pretrain(load_pretrain_config(None, tiny_overrides(corpus, steps=1, **{"eval.sample_tokens": 0})), run,
             say=lambda *_: None)  # fmt: skip
    with pytest.raises(ScratchError, match=r"no <\|system\|> token.*data.chat_tokens=true"):
        sft(load_sft_config(None, _sft_settings(run, 2)), tmp_path / "sft", say=lambda *_: None)


def test_bad_records_stop_sft_with_file_and_line_unless_skipped(base, tmp_path, capsys):
    from scratchlm.cli import main

    data = tmp_path / "chat.jsonl"
    good = '{"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}'
    data.write_text(good + "\n" + '{"messages": [{"role": "assistant", "content": "2"}]}\n' + good + "\n")
    args = ["sft", "--out", str(tmp_path / "run"), *[a for o in _sft_settings(base, 2) for a in ("--set", o)],
            "--set", "data.tasks=[]", "--set", f"data.files=['{data}']", "--set", "data.ptx=0"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{data}:2:" in err and "--skip-invalid" in err
    assert main([*args, "--skip-invalid"]) == 0
    assert "1 invalid records skipped" in capsys.readouterr().out


def test_a_chat_file_holds_out_records_and_reports_their_reply_loss(base, tmp_path):
    def turn(sender, text):
        return [{"text": text, "timestamp": "", "sender": sender}]

    records = {f"r{i}": {"messages": [turn("a", f"{i}+1="), turn("b", f"{i + 1}"), turn("a", "=")]}
               for i in range(40)}  # fmt: skip
    data = tmp_path / "chitchat.json"
    data.write_text(json.dumps(records))
    settings = _sft_settings(base, 2, **{"data.tasks": "[]", "data.files": f"['{data}']", "data.ptx": 0})
    result = sft(load_sft_config(None, settings), tmp_path / "run", say=lambda *_: None)
    loss = result.evaluation[f"loss:{data}"]  # 4 of the 40 records (a tenth; data.heldout is 20)
    assert 0.0 < loss and result.evaluation["val_loss"] == loss

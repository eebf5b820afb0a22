"""The pretraining loop: run folder and metrics contract, NaN stop, time budget, evaluation, checkpointing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.training import tiny_corpus, tiny_overrides

from scratchlm.errors import ScratchError
from scratchlm.model import Transformer
from scratchlm.model.folder import load_model
from scratchlm.train import checkpoint as ckpt
from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.config import resolve_model_config
from scratchlm.train.distributed import World
from scratchlm.train.evaluate import bits_per_byte, validation_loss
from scratchlm.train.run_dir import RunDir, read_metrics
from scratchlm.train.trainer import Trainer, enable_activation_checkpointing


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory)


def test_run_folder_metrics_and_final_model(corpus, tmp_path):
    run = tmp_path / "run"
    cfg = load_pretrain_config(None, tiny_overrides(corpus, steps=8))
    result = pretrain(cfg, run, say=lambda *_: None)
    assert result.stopped == "budget" and result.step == 8 and result.tokens == 8 * 8 * 16

    # The resolved config reloads to the same configuration, with the model section fully expanded.
    again = load_pretrain_config(run / "config.yaml")
    model_config = resolve_model_config(again.model, again.model["vocab_size"])
    assert again.data == cfg.data and again.optim == cfg.optim and again.budget == cfg.budget
    assert json.loads((run / "final" / "config.json").read_text()) == model_config.to_dict()

    train = read_metrics(run / "metrics.jsonl", "train")
    evals = read_metrics(run / "metrics.jsonl", "eval")
    assert [r["step"] for r in train] == list(range(1, 9)) and [r["step"] for r in evals] == [4, 8]
    for r in train:
        assert {"kind", "step", "tokens", "elapsed_s", "loss", "lr", "tokens_per_s", "mfu"} <= set(r)
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["mfu"] > 0
    for r in evals:
        assert {"kind", "step", "tokens", "elapsed_s", "val_loss", "val_bpb", "sample"} <= set(r)
        assert isinstance(r["sample"], str) and r["sample"]
    assert evals[-1]["val_loss"] == result.val_loss < math.log(model_config.vocab_size)

    # keep_last=2: steps 4 and 8 remain; final/ holds the same weights as the last checkpoint.
    assert [s for s, _ in RunDir(run).checkpoints()] == [4, 8]
    assert json.loads((run / "latest.json").read_text())["last"] == "checkpoints/step_8"
    final, tokenizer, _ = load_model(run / "final")
    last, _, _ = load_model(run / "checkpoints" / "step_8")
    for (name, a), (_, b) in zip(final.state_dict().items(), last.state_dict().items()):
        assert torch.equal(a, b), name
    assert tokenizer.vocab_size == model_config.vocab_size

    with pytest.raises(ScratchError, match="already holds a run"):
        pretrain(cfg, run, say=lambda *_: None)


def test_nan_loss_stops_and_keeps_the_good_checkpoint(corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = Trainer._train_step

    def poisoned(self, objective, models, optimizers, step, progress):
        if step == 5:  # the 6th step: after the checkpoint at step 4
            with torch.no_grad():
                objective.models["model"].token_embedding.weight.fill_(float("nan"))
        return original(self, objective, models, optimizers, step, progress)

    monkeypatch.setattr(Trainer, "_train_step", poisoned)
    cfg = load_pretrain_config(None, tiny_overrides(corpus, steps=12))
    with pytest.raises(ScratchError, match=r"diverged.*nan.*step 6.*step_4"):
        pretrain(cfg, run, say=lambda *_: None)
    assert [s for s, _ in RunDir(run).checkpoints()] == [4]
    assert ckpt.verify_checkpoint(run / "checkpoints" / "step_4") is None
    assert not (run / "final").exists()
    assert json.loads((run / "latest.json").read_text())["last"] == "checkpoints/step_4"
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl", "train")]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    model, _, _ = load_model(run / "checkpoints" / "step_4")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_corrupted_checkpoint_resume_falls_back_and_repeats_the_run(corpus, tmp_path):
    run = tmp_path / "run"
    cfg = load_pretrain_config(None, tiny_overrides(corpus, steps=8, **{"checkpoint.keep_last": 3}))
    pretrain(cfg, run, say=lambda *_: None)
    reference = [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl", "train")]
    weights = run / "checkpoints" / "step_8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as by a full disk
    said = []
    result = pretrain(cfg, run, resume=True, say=said.append)
    assert any("step_8" in s and "falling back to step_4" in s for s in said), said
    assert any("continuing from step_4" in s for s in said), said
    assert result.step == 8
    assert [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl", "train")] == reference


def test_time_budget_ends_the_run_and_decays_the_schedule(corpus, tmp_path):
    settings = tiny_overrides(corpus, steps=0, **{"budget.max_time": "2s", "eval.every": 0})
    cfg = load_pretrain_config(None, settings + ["checkpoint.every=0", "schedule.min_lr_ratio=0.0"])
    result = pretrain(cfg, tmp_path / "run", say=lambda *_: None)
    train = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    assert result.stopped == "budget" and result.elapsed_s >= 2.0 and len(train) == result.step > 3
    factors = [r["lr_factor"] for r in train]
    assert factors == sorted(factors, reverse=True)  # cosine over elapsed time: never rises
    assert factors[-1] < 0.5 * factors[0]  # and the last steps ran near the end of the decay
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_validation_loss_matches_a_token_by_token_twin():
    torch.manual_seed(0)
    config = resolve_model_config({"n_layers": 1, "d_model": 16, "n_heads": 2, "context_length": 8}, 11)
    model = Transformer(config)
    tokens = np.random.default_rng(0).integers(0, 11, size=45).astype(np.uint16)
    from contextlib import nullcontext

    loss, n_pred = validation_loss(
        model, tokens, batch_size=2, max_tokens=0, autocast=nullcontext, world=World()
    )
    assert n_pred == 44
    # Twin: consecutive windows of 8 scored one at a time; the last one ends at the last token with a
    # full window of context and scores only the 4 tokens no earlier window did.
    total, scored_to = 0.0, 0
    with torch.no_grad():
        for end in (8, 16, 24, 32, 40, 44):
            window = torch.tensor(tokens[end - 8 : end + 1].astype(np.int64))[None]  # (1, 9)
            logits = model(window[:, :-1])[0]  # (8, V)
            new = end - scored_to  # positions of this window no earlier window scored
            total += F.cross_entropy(logits[-new:], window[0, 1:][-new:], reduction="sum").item()
            scored_to = end
    assert loss == pytest.approx(total / 44, rel=1e-6)
    assert bits_per_byte(loss, 44, 44) == pytest.approx(loss / math.log(2))  # one byte per token
    _, n = validation_loss(model, tokens, batch_size=4, max_tokens=20, autocast=nullcontext, world=World())
    assert n == 20


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = resolve_model_config({"n_layers": 2, "d_model": 32, "n_heads": 2, "context_length": 16}, 50)
    plain, wrapped = Transformer(config), Transformer(config)
    wrapped.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(wrapped)
    assert plain.state_dict().keys() == wrapped.state_dict().keys()  # the folder format is untouched
    x = torch.randint(0, 50, (3, 16))
    for model in (plain, wrapped):
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path):
    # A step's rows do not depend on grad_accum, and each micro-loss is scaled by 1/grad_accum, so the
    # two runs take the same steps up to float summation order. Dropout off: masks are drawn per call.
    model = "{n_layers: 2, d_model: 32, n_heads: 2, context_length: 16}"
    runs = {}
    for accum in (1, 2):
        cfg = load_pretrain_config(
            None, tiny_overrides(corpus, steps=6, model=model, **{"data.grad_accum": accum})
        )
        pretrain(cfg, tmp_path / f"accum{accum}", say=lambda *_: None)
        runs[accum] = [r["loss"] for r in read_metrics(tmp_path / f"accum{accum}" / "metrics.jsonl", "train")]
    assert runs[2] == pytest.approx(runs[1], rel=1e-4, abs=1e-5)
    assert runs[1][-1] < runs[1][0]


def test_tensorboard_gets_the_same_scalars_as_metrics_jsonl(corpus, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = load_pretrain_config(None, tiny_overrides(corpus, steps=4, **{"logging.tensorboard": "true"}))
    pretrain(cfg, run, say=lambda *_: None)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/tokens_per_s", "eval/val_loss", "eval/val_bpb"} <= set(
        events.Tags()["scalars"]
    )
    logged = [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl", "train")]
    shown = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in shown] == [s for s, _ in logged] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(shown, logged):
        assert a == pytest.approx(b, rel=1e-6)  # TensorBoard stores float32


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_nothing_half_written(
    corpus, tmp_path, monkeypatch, capsys
):
    import errno
    from pathlib import Path

    from scratchlm.cli import main

    real = Path.write_bytes

    def full_disk(self, data):
        if self.name == ckpt.STATE:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    run = tmp_path / "run"
    overrides = [a for o in tiny_overrides(corpus, steps=8) for a in ("--set", o)]
    assert main(["pretrain", "--out", str(run), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "step_4" in err[0], err
    assert "Traceback" not in err[0] and not (run / "final").exists()
    assert not (run / "checkpoints").exists() or not list(
        (run / "checkpoints").iterdir()
    )  # no partial folder

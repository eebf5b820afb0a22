"""The reward model (issue 11): the objective's loss equals a plain loop over pairs, a step keeps each
ranking whole, margin and centering are TRL's terms, a run resumes exactly through the Trainer, the export
is HF's `LlamaForSequenceClassification` with our rewards, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from support.training import run_python

from scratchlm.align import reward_objective
from scratchlm.align.reward import RewardModel, last_token, load_reward_model, pad_id
from scratchlm.align.reward_config import load_reward_config
from scratchlm.align.reward_objective import (
    RewardObjective,
    bradley_terry,
    check_same_tokenizer,
    right_pad,
    spearman,
    train_reward,
)
from scratchlm.cli import main
from scratchlm.data.chat import render_chat
from scratchlm.errors import ScratchError
from scratchlm.interop.hf_reward import export_hf_reward
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char
from scratchlm.train import distributed
from scratchlm.train.run_dir import RunDir

WORDS = ["good", "fine", "bad", "sad", "glad", "dark", "kind", "cold", "warm", "sweet"]
ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.!?"


def preference_records(n_rankings: int = 10, n_pairs: int = 6, seed: int = 0) -> list[dict]:
    """Rankings of 3 answers and plain pairs (with margins), all with simulated gold (longer is better)."""
    rng = random.Random(seed)
    records = []
    for i in range(n_rankings + n_pairs):
        prompt = f"say {rng.choice(WORDS)} {i}"
        answers = sorted({" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(3)}, key=len)[::-1]
        gold = [len(a) / 10 for a in answers]
        if i < n_rankings and len(answers) == 3:
            records.append({"prompt": prompt, "responses": answers, "gold": gold, "tau": 0.5})
        else:
            records.append({"prompt": prompt, "chosen": answers[0], "rejected": answers[-1] + "!",
                            "margin": rng.random(), "gold": [gold[0], gold[-1]], "tau": 0.5})  # fmt: skip
    return records


def write_jsonl(path, records: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _tokenizer():
    return train_char([ALPHABET + "0123456789"], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random Llama-style chat-capable model folder (the SFT model stand-in) and a preference file."""
    root = tmp_path_factory.mktemp("reward")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=32,
                         n_heads=4, n_kv_heads=2, tie_embeddings=False)  # fmt: skip
    save_model(root / "sft", Transformer(config), tokenizer)
    return root / "sft", write_jsonl(root / "prefs.jsonl", preference_records())


def settings(base, steps: int = 4, **extra) -> list[str]:
    folder, prefs = base
    values = {
        "base": str(folder), "prefs": str(prefs), "device": "cpu", "precision": "fp32",
        "data.batch_size": 3, "data.heldout": 0.25, "budget.max_steps": steps, "logging.every": 1,
        "logging.progress": "false", "logging.tensorboard": "false", "checkpoint.every": 2,
        "schedule.kind": "constant", "optim.lr": 0.003, **extra,
    }  # fmt: skip
    return [f"{k}={v}" for k, v in values.items()]


def objective(base, **extra) -> RewardObjective:
    torch.manual_seed(0)
    world = distributed.setup(torch.device("cpu"))
    return RewardObjective(
        load_reward_config(None, settings(base, **extra)), world, world.device, say=lambda *_: None
    )


def quiet(*_):
    pass


# ---- the loss -----------------------------------------------------------------------------------------


def test_bradley_terry_is_trls_loss_term_by_term():
    chosen, rejected = torch.tensor([1.5, -0.2, 0.3]), torch.tensor([0.5, 0.4, 0.3])
    margin = torch.tensor([0.25, 0.0, 1.0])
    for m, center in ((None, 0.0), (margin, 0.0), (margin, 0.01)):
        expected = []
        for i in range(3):
            d = chosen[i].item() - rejected[i].item() - (0.0 if m is None else m[i].item())
            term = math.log(1 + math.exp(-d))  # -log sigmoid(d)
            expected.append(term + center * (chosen[i].item() + rejected[i].item()) ** 2)
        assert bradley_terry(chosen, rejected, m, center).tolist() == pytest.approx(expected, abs=1e-6)
    assert bradley_terry(chosen, rejected, margin)[0] > bradley_terry(chosen, rejected)[0]  # margin asks more


@pytest.mark.parametrize("margin,center", [(False, 0.0), (True, 0.05)])
def test_a_steps_loss_equals_a_plain_loop_over_its_pairs(base, margin, center):
    """Deduplicated, right-padded rows read at <|end|> give each pair the loss it gets alone."""
    obj = objective(base, **{"loss.margin": margin, "loss.center_rewards_coefficient": center})
    with torch.no_grad():
        obj.model.score.weight.normal_(std=1.0)  # rewards far apart: a wrong row would show
    (batch,) = obj.batches(0, 0.0).micro
    loss_sum, count = obj.loss(obj.models, batch)
    pairs = [p for g in obj.step_groups(0) for p in obj.groups[g]]
    assert count == len(pairs) and batch.ids.shape[0] < 2 * len(pairs)  # a ranking's answers run once
    expected = 0.0
    for p in pairs:
        chosen, rejected = (obj.sequences[r] for r in obj.pair_rows[p])
        r_c = obj.model(torch.tensor([chosen]))[0, -1]  # one row alone: no padding, its last token
        r_r = obj.model(torch.tensor([rejected]))[0, -1]
        d = r_c - r_r - (float(obj.margins[p]) if margin else 0.0)
        expected += (-F.logsigmoid(d) + center * (r_c + r_r) ** 2).item()
    assert loss_sum.item() == pytest.approx(expected, abs=1e-5)


def test_every_trainable_weight_gets_a_gradient_and_the_unused_lm_head_is_frozen(base):
    """What DDP needs: it fails at the second step on a trainable parameter that never gets a gradient."""
    obj = objective(base)
    (batch,) = obj.batches(0, 0.0).micro
    obj.loss(obj.models, batch)[0].backward()
    assert not obj.model.body.lm_head.weight.requires_grad
    assert all(p.grad is not None for p in obj.model.parameters() if p.requires_grad)


def test_the_shipped_recipe_loads():
    cfg = load_reward_config("reward-sentiment-char", ["base=runs/sft", "prefs=prefs.jsonl"])
    assert cfg.judge == "sentiment" and cfg.data.batch_unit == "groups" and cfg.optim.name == "adamw"
    with pytest.raises(ScratchError, match="no prefs; pass --prefs FILE"):
        load_reward_config("reward-sentiment-char", ["base=runs/sft"])


def test_the_reward_is_read_at_the_closing_end_token(base):
    obj = objective(base)
    ids, mask = right_pad([obj.sequences[0], obj.sequences[1][:5]], obj.pad, "cpu")
    assert ids[1, 5:].eq(obj.pad).all() and obj.pad != obj.tokenizer.special_tokens["<|end|>"]
    per_token = torch.arange(ids.numel(), dtype=torch.float32).view(ids.shape)
    assert last_token(per_token, mask).tolist() == [per_token[0, len(obj.sequences[0]) - 1], per_token[1, 4]]


# ---- batches and the split ------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["groups", "pairs"])
def test_a_step_keeps_each_ranking_whole_and_an_epoch_sees_each_group_once(base, unit):
    obj = objective(base, **{"data.batch_unit": unit, "data.grad_accum": 2})
    steps = len(obj._epoch(0))
    seen = []
    for step in range(steps):
        groups = obj.step_groups(step)
        size = len(groups) if unit == "groups" else sum(len(obj.groups[g]) for g in groups)
        assert size <= 3 or len(groups) == 1  # a group bigger than the batch goes alone
        micro = obj.batches(step, 0.0).micro
        assert len(micro) == 2 and sum(obj.count(b) for b in micro) == sum(len(obj.groups[g]) for g in groups)
        seen += groups
    assert sorted(seen) == sorted(obj.train_groups)  # every training group once an epoch, whole
    assert obj.step_groups(steps) == obj._epoch(1)[0]  # then a fresh permutation
    assert any(len(obj.groups[g]) == 3 for g in obj.train_groups)  # rankings are among them


def test_the_split_is_by_prompt_stable_and_never_trains_on_held_out_prompts(base, tmp_path):
    obj = objective(base)
    held = {obj.group_prompts[g] for g in obj.heldout_groups}
    assert held and not held & {obj.group_prompts[g] for g in obj.train_groups}
    # Appending records (the label page does) keeps every old group on its side.
    folder, prefs = base
    grown = write_jsonl(tmp_path / "grown.jsonl", preference_records() + preference_records(4, 2, seed=9))
    bigger = objective((folder, grown))
    old = len(obj.groups)
    assert [g for g in bigger.heldout_groups if g < old] == obj.heldout_groups


def test_spearman_is_pearson_of_ranks_with_ties():
    a, b = [1.0, 2.0, 2.0, 5.0, 3.0], [0.1, 0.4, 0.3, 0.9, 0.2]
    ra, rb = [0, 1.5, 1.5, 4, 3], [0, 3, 2, 4, 1]
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [0, 0, 0]) is None
    assert spearman([3, 1, 2, 2], [30, 10, 25, 20]) == pytest.approx(0.9486833)  # scipy.stats.spearmanr


# ---- training through the Trainer ---------------------------------------------------------------------


class LengthJudge:
    name = "length"

    def score(self, prompt, answer: str) -> float:
        return float(len(answer))


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """A 6-step run (the Spearman figure on a stand-in judge), and the same run broken at 4 and resumed."""
    root = tmp_path_factory.mktemp("runs")
    patch = pytest.MonkeyPatch()
    patch.setattr(reward_objective, "get_judge", lambda spec: LengthJudge())
    extra = {"judge": "length", "eval.fresh_prompts": 6, "eval.max_new_tokens": 8, "eval.every": 3}
    try:
        whole = train_reward(load_reward_config(None, settings(base, 6, **extra)), root / "whole", say=quiet)
        train_reward(load_reward_config(None, settings(base, 4, **extra)), root / "broken", say=quiet)
        train_reward(
            load_reward_config(None, settings(base, 6, **extra)), root / "broken", resume=True, say=quiet
        )
    finally:
        patch.undo()
    return whole, root


def test_a_run_logs_its_figures_and_writes_a_reward_folder(trained):
    whole, _ = trained
    figures = whole.evaluation
    assert {"val_loss", "accuracy", "noise_ceiling", "reward_chosen", "reward_rejected", "reward_margin",
            "gold_spearman"} <= set(figures)  # fmt: skip
    assert 0.5 < figures["noise_ceiling"] < 1 and 0 <= figures["accuracy"] <= 1
    assert figures["reward_margin"] == pytest.approx(figures["reward_chosen"] - figures["reward_rejected"])
    model, tokenizer = load_reward_model(whole.final_dir)
    assert isinstance(model, RewardModel) and "<|end|>" in tokenizer.special_tokens


def test_resume_repeats_the_uninterrupted_run_exactly(trained):
    whole, root = trained
    runs = {name: RunDir(root / name) for name in ("whole", "broken")}
    losses = {name: [r["loss"] for r in run.read_metrics("train")] for name, run in runs.items()}
    assert len(losses["whole"]) == 6 and losses["broken"] == losses["whole"]
    evals = {name: [r["val_loss"] for r in run.read_metrics("eval")] for name, run in runs.items()}
    assert evals["broken"][-1] == evals["whole"][-1]
    for name in ("model.safetensors", "reward_head.safetensors"):
        a, b = (load_file(str(root / run / "final" / name)) for run in ("whole", "broken"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


# ---- export -----------------------------------------------------------------------------------------------


def test_the_hf_export_scores_what_we_score(trained, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra")
    whole, root = trained
    assert main(["reward", "export", "--ckpt", str(root / "whole"), "--out", str(tmp_path / "hf")]) == 0
    ours, tokenizer = load_reward_model(whole.final_dir)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", local_files_only=True
    )
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 1
    assert hf.config.pad_token_id == pad_id(tokenizer)
    records = preference_records()[:4]
    sequences = [render_chat([{"role": "user", "content": r["prompt"]},
                              {"role": "assistant", "content": r.get("chosen", r.get("responses", [""])[0])}],
                             tokenizer)[0] for r in records]  # fmt: skip
    ids, mask = right_pad(sequences, pad_id(tokenizer), "cpu")
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits[:, 0]
        mine = last_token(ours(ids), mask)
    assert mine.std() > 1e-3  # a trained head: rewards that differ, so a misread position would show
    assert (theirs - mine).abs().max().item() < 1e-5


def test_the_export_refuses_a_model_llama_cannot_compute(tmp_path):
    tokenizer = _tokenizer()
    shape = {"context_length": 32, "n_layers": 1, "d_model": 16, "n_heads": 2}
    config = ModelConfig(vocab_size=tokenizer.vocab_size, qk_norm=True, **shape)
    with pytest.raises(ScratchError, match="qk_norm"):
        export_hf_reward(RewardModel(Transformer(config)), tokenizer, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ---- bad input ------------------------------------------------------------------------------------------


def _cli(base, prefs, out, capsys, *more) -> tuple[int, str, str]:
    folder, _ = base
    args = ["reward", "train", "--base", str(folder), "--prefs", str(prefs), "--out", str(out)]
    args += [x for s in settings(base, 1, **{"data.heldout": 0.0}) if not s.startswith(("base=", "prefs="))
             for x in ("--set", s)]  # fmt: skip
    code = main(args + list(more))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_identical_pairs_are_skipped_counted_and_reported(base, tmp_path, capsys):
    records = preference_records()[:4] + [{"prompt": "say good", "chosen": "good", "rejected": "good"}]
    code, out, _ = _cli(base, write_jsonl(tmp_path / "p.jsonl", records), tmp_path / "run", capsys)
    assert code == 0 and "1 identical pairs skipped" in out


@pytest.mark.parametrize(
    "record,message",
    [
        ({"prompt": "say good", "chosen": "good", "rejected": "good"}, "no usable pair"),
        ({"prompt": "say good", "responses": ["good"]}, ":1: a ranking needs at least two responses"),
        ({"prompt": "say good", "chosen": "good " * 20, "rejected": "bad"}, ":1: prompt and answer are"),
        (
            {"prompt": "say good", "chosen": "GOOD", "rejected": "bad"},
            ":1: message 1 (assistant): character 'G'",
        ),
    ],
)
def test_bad_preference_files_are_one_line_exit_2_and_write_nothing(base, tmp_path, capsys, record, message):
    code, _, err = _cli(base, write_jsonl(tmp_path / "p.jsonl", [record]), tmp_path / "run", capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_reward_model_with_another_tokenizer_is_refused(base):
    mine, other = (
        _tokenizer(),
        train_char([ALPHABET + "XYZ"], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS)),
    )
    check_same_tokenizer(mine, _tokenizer(), "ppo")
    with pytest.raises(ScratchError, match=r"^ppo: the reward model's tokenizer differs from the policy's"):
        check_same_tokenizer(mine, other, "ppo")


def test_reward_help_does_not_import_torch():
    code = (
        "import sys\nfrom scratchlm.cli import main\n"
        "for argv in (['reward', 'train', '--help'], ['reward', 'export', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--prefs" in proc.stdout and "--ckpt" in proc.stdout

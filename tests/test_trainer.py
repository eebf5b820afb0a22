"""The Trainer on its own: a toy objective in one small file, normalisation by valid counts, several
models, exact resume, refused resumes, divergence, and checkpoints that run no code."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.train import checkpoint as ckpt
from scratchlm.train.config import BudgetConfig, CheckpointConfig, LoggingConfig, TrainerConfig
from scratchlm.train.distributed import World
from scratchlm.train.objective import StepBatches
from scratchlm.train.optim import OptimConfig
from scratchlm.train.run_dir import RunDir
from scratchlm.train.schedule import ScheduleConfig
from scratchlm.train.trainer import Trainer


class Regression:
    """A new objective in a few lines: fit y = x @ w_true with a linear model, plus a frozen 'teacher'
    model held beside it (as DPO's reference or PPO's reward model are) that the loss reads but the
    trainer must neither optimize nor checkpoint. Rows whose mask is 0 count for nothing."""

    name = "regression"
    trainable = ("student",)
    loss_ceiling = 1e6

    def __init__(self, micro_batches: int = 2, rows: int = 8, masked_micro: int | None = None):
        self.micro_batches, self.rows, self.masked_micro = micro_batches, rows, masked_micro
        self.models = {
            "student": torch.nn.Linear(4, 1, bias=False),
            "teacher": torch.nn.Linear(4, 1, bias=False),
        }
        self.models["teacher"].requires_grad_(False)
        self.cursor = 0  # the state: which batch comes next
        self.evaluations = []

    def _rows(self, index: int):
        gen = torch.Generator().manual_seed(index)
        x = torch.randn(self.rows, 4, generator=gen)  # (rows, 4)
        mask = torch.ones(self.rows)
        if self.masked_micro is not None and index % self.micro_batches == self.masked_micro:
            mask.zero_()  # nothing to learn from in this micro-batch
        return x, self.models["teacher"](x).squeeze(-1), mask

    def batches(self, step: int, progress: float) -> StepBatches:
        micro = [self._rows(self.cursor + i) for i in range(self.micro_batches)]
        self.cursor += self.micro_batches
        return StepBatches(micro, tokens=self.micro_batches * self.rows)

    def count(self, batch) -> int:
        return int(batch[2].sum())

    def loss(self, models, batch):
        x, y, mask = batch
        error = (models["student"](x).squeeze(-1) - y) ** 2  # (rows,)
        return (error * mask).sum(), int(mask.sum())

    def evaluate(self, step: int) -> dict:
        x, y, _ = self._rows(10_000)
        with torch.no_grad():
            val = float(((self.models["student"](x).squeeze(-1) - y) ** 2).mean())
        self.evaluations.append(val)
        return {"val_loss": val}

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = state["cursor"]

    def write_model(self, name: str, folder: Path, extra: dict):
        return ckpt.write_module(folder, self.models[name])

    def resolved_config(self) -> dict:
        return {"objective": self.name, "micro_batches": self.micro_batches}


def _config(steps: int, **extra) -> TrainerConfig:
    settings = dict(
        budget=BudgetConfig(max_steps=steps),
        optim=OptimConfig(name="adamw", lr=0.05, weight_decay=0.0),
        logging=LoggingConfig(every=1, progress=False, tensorboard=False),
        checkpoint=CheckpointConfig(every=3, keep_last=5),
        eval_every=3, precision="fp32", grad_clip=0.0,
    )  # fmt: skip
    settings.update(extra)
    return TrainerConfig(**settings)


def _fit(run: Path, steps: int, make=Regression, resume: bool = False, **extra):
    trainer = Trainer(_config(steps, **extra), RunDir(run), World(), resume, say=lambda *_: None)
    objective = make()  # built after the Trainer: it seeds the RNGs the models draw their weights from
    return trainer.fit(objective), objective


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in RunDir(run).read_metrics("train")]


def test_a_toy_objective_trains_with_accumulation_and_its_frozen_model_stays_put(tmp_path):
    result, objective = _fit(tmp_path / "run", steps=12)
    losses = [loss for _, loss in _losses(tmp_path / "run")]
    assert result.step == 12 and len(losses) == 12 and losses[-1] < 0.2 * losses[0]
    torch.manual_seed(0)  # the Trainer's seed: the weights the run started from
    teacher = Regression().models["teacher"]
    assert not any(p.grad is not None for p in objective.models["teacher"].parameters())
    # Only the trainable model is checkpointed and optimized: the teacher never changes.
    torch.testing.assert_close(objective.models["teacher"].weight, teacher.weight)
    assert not (result.checkpoint_dir / ckpt.MODELS).exists()
    assert (tmp_path / "run" / "final" / ckpt.WEIGHTS).is_file()


def test_the_loss_is_divided_by_the_valid_count_over_all_micro_batches(tmp_path):
    # Micro-batch 1 of 2 is fully masked: the step's loss is the other's mean, never 0/0 = NaN, and
    # the gradient is that of the mean over the valid rows alone (a one-micro-batch twin).
    _, masked = _fit(tmp_path / "masked", steps=1, make=lambda: Regression(micro_batches=2, masked_micro=1))
    _, twin = _fit(tmp_path / "twin", steps=1, make=lambda: Regression(micro_batches=1))
    (_step, loss), (_, twin_loss) = _losses(tmp_path / "masked")[0], _losses(tmp_path / "twin")[0]
    assert math.isfinite(loss) and loss == pytest.approx(twin_loss, rel=1e-6)
    torch.testing.assert_close(masked.models["student"].weight, twin.models["student"].weight)


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    flat = {"schedule": ScheduleConfig(kind="constant")}  # the lr of a step does not depend on the budget
    _fit(tmp_path / "whole", steps=9, **flat)
    _fit(tmp_path / "broken", steps=6, **flat)  # a run stopped at step 6 (its checkpoint), then continued
    resumed, objective = _fit(tmp_path / "broken", steps=9, resume=True, **flat)
    assert resumed.step == 9 and objective.cursor == 18
    assert _losses(tmp_path / "broken") == _losses(tmp_path / "whole")


def test_a_run_is_resumed_only_by_its_own_objective(tmp_path):
    _fit(tmp_path / "run", steps=3)

    class Other(Regression):
        name = "other"

    with pytest.raises(ScratchError, match=r"trained by objective 'regression', this run is 'other'"):
        _fit(tmp_path / "run", steps=6, make=Other, resume=True)


def test_a_loss_above_the_ceiling_is_divergence_and_saves_nothing(tmp_path):
    class Strict(Regression):
        loss_ceiling = 1e-3  # the first steps' loss is far above it

    with pytest.raises(ScratchError, match=r"diverged: the loss reached .* far above 0\.001 .* by step 1"):
        _fit(tmp_path / "run", steps=6, make=Strict)
    assert not RunDir(tmp_path / "run").checkpoints() and not (tmp_path / "run" / "final").exists()


def test_a_validation_loss_that_keeps_rising_is_divergence(tmp_path):
    class Rising(Regression):
        def evaluate(self, step):
            return {"val_loss": 1.0 + step}  # evaluated at steps 3, 6, 9: 4, 7, 10

    with pytest.raises(ScratchError, match=r"rose at 2 evaluations in a row \(4.0000 -> 7.0000 -> 10.0000\)"
                       r".*best checkpoint is checkpoints/step_3"):  # fmt: skip
        _fit(tmp_path / "run", steps=30, make=Rising, max_rises=2)
    assert not (tmp_path / "run" / "final").exists()


class _WritesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "code ran"))


def test_a_crafted_trainer_state_runs_no_code_and_says_why(tmp_path):
    _fit(tmp_path / "run", steps=3)
    path = RunDir(tmp_path / "run").checkpoint_path(3)
    marker = tmp_path / "pwned.txt"
    (path / ckpt.STATE).write_bytes(pickle.dumps({"step": 3, "payload": _WritesAFile(marker)}, protocol=2))
    with pytest.raises(ScratchError, match=r"trainer_state.pt holds objects other than tensors.*refused"):
        ckpt.load_state(path)
    assert not marker.exists()


def test_saving_hashes_each_file_once_and_pruning_reads_manifests_only(tmp_path, monkeypatch):
    hashed = []
    real = ckpt.sha256_file
    monkeypatch.setattr(ckpt, "sha256_file", lambda f: hashed.append(Path(f).name) or real(f))
    _fit(tmp_path / "run", steps=12, checkpoint=CheckpointConfig(every=1, keep_last=20))
    # 12 checkpoints kept, each hashed once as it was written (weights and trainer state): not 1 + 2 + ... 12.
    assert sorted(hashed) == sorted([ckpt.WEIGHTS, ckpt.STATE] * 12)
    assert all(ckpt.verify_checkpoint(p) is None for _, p in RunDir(tmp_path / "run").checkpoints())


class TwoLearners(Regression):
    """Two trainable models (as PPO's policy and value model): each has its own optimizer and checkpoint."""

    trainable = ("student", "critic")

    def __init__(self):
        super().__init__()
        self.models["critic"] = torch.nn.Linear(4, 1, bias=False)

    def loss(self, models, batch):
        x, y, mask = batch
        student = (models["student"](x).squeeze(-1) - y) ** 2  # (rows,)
        critic = (models["critic"](x).squeeze(-1) + y) ** 2  # learns -y
        return ((student + critic) * mask).sum(), int(mask.sum())


def test_every_trainable_model_is_checkpointed_by_name_and_resumes_exactly(tmp_path):
    flat = {"schedule": ScheduleConfig(kind="constant")}
    _, whole = _fit(tmp_path / "whole", steps=9, make=TwoLearners, **flat)
    first, _ = _fit(tmp_path / "broken", steps=6, make=TwoLearners, **flat)
    assert (first.checkpoint_dir / ckpt.MODELS / "critic" / ckpt.WEIGHTS).is_file()
    state = ckpt.load_state(first.checkpoint_dir)
    assert set(state["optimizers"]) == {"student", "critic"}
    _, resumed = _fit(tmp_path / "broken", steps=9, make=TwoLearners, resume=True, **flat)
    assert _losses(tmp_path / "broken") == _losses(tmp_path / "whole")
    for name in ("student", "critic"):
        assert torch.equal(resumed.models[name].weight, whole.models[name].weight), name
    assert not torch.equal(whole.models["student"].weight, whole.models["critic"].weight)

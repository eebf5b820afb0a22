"""DPO as an objective of the one Trainer: the policy learns from preference pairs, the reference is cached.

    from scratchlm.align.dpo_config import load_dpo_config
    from scratchlm.align.dpo_objective import dpo
    result = dpo(load_dpo_config("dpo-sentiment-char", ["policy=runs/sft", "prefs=prefs.jsonl"]), "runs/dpo")

The reference is frozen, so its log-probabilities of every answer are computed once, before the first
step, and written to RUN/reference_logps.safetensors (atomically, with a key naming the reference's
weights, the precision and the pairs): a resumed run reads them back and never runs the reference again,
and no reference model is held during training. The reference is the policy's starting model unless
`reference` names another.

The data: the preference file's records are split, by a seeded permutation, into `data.heldout` records
for evaluation and the rest for training (a ranking's pairs stay on one side). A step takes
`data.batch_size` consecutive pairs of an endless sequence of seeded epochs, in which the pairs of one
record stay together (InstructGPT trains a prompt's comparisons in one batch; here they share their
answers' forward passes too): the batches are a pure function of the step, so resume is exact.

The figures: TRL's `rewards/*` and `logps/*` on the train records of logged steps, and on the held-out
pairs `val_loss` (the configured preference loss) and `val_accuracy` (chosen reward above rejected).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from scratchlm.align.dpo import (
    FIGURES,
    EncodedPairs,
    all_sequence_logprobs,
    encode_pairs,
    figure_sums,
    preference_losses,
    sequence_logprobs,
)
from scratchlm.align.dpo_config import DPOConfig
from scratchlm.align.preferences import Preferences, read_preferences
from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_path, save_safetensors
from scratchlm.model.device import autocast_context
from scratchlm.model.folder import WEIGHTS, load_model, read_manifest, write_model_files
from scratchlm.train import distributed
from scratchlm.train.objective import StepBatches
from scratchlm.train.run_dir import RunDir, resolve_model_dir
from scratchlm.train.trainer import RunResult, run_stage

REFERENCE_CACHE = "reference_logps.safetensors"  # in the run folder, beside config.yaml


def dpo(config: DPOConfig, out_dir: str | Path, resume: bool = False, say=print) -> RunResult:
    """Train `config.policy` on `config.prefs` into the run folder `out_dir`."""
    return run_stage(
        config, out_dir, resume, say, lambda world, run, say: DPO(config, run, world, resume, say)
    )


@dataclass
class PairBatch:
    """One micro-batch: its distinct sequences, which rows are each pair's answers, the cached reference."""

    inputs: torch.Tensor  # (S, T)
    targets: torch.Tensor  # (S, T), IGNORE outside the answers
    chosen: torch.Tensor  # (B,) row of each pair's chosen answer
    rejected: torch.Tensor  # (B,)
    ref_chosen: torch.Tensor  # (B,) log pi_ref(chosen)
    ref_rejected: torch.Tensor  # (B,)
    lengths: tuple[torch.Tensor, torch.Tensor]  # (B,) answer tokens of chosen, of rejected
    figures: tuple[torch.Tensor, dict, bool] | None = None  # (the step's sums, its info, last micro-batch)


class DPO:
    name = "dpo"
    trainable = ("policy",)
    loss_ceiling = None  # a preference loss has no value that only a broken run reaches

    def __init__(self, cfg: DPOConfig, run: RunDir, world: distributed.World, resume: bool, say=print):
        self.cfg, self.world, self.device, self.say = cfg, world, world.device, say
        self.policy_dir = _model_dir(cfg.policy, "--policy")
        self.reference_dir = _model_dir(cfg.reference, "reference") if cfg.reference else self.policy_dir
        self.policy, self.tokenizer, _ = load_model(self.policy_dir, device=self.device)
        for module in self.policy.modules():  # TRL's disable_dropout: the reference is scored without it
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        self.models = {"policy": self.policy}
        self.autocast = functools.partial(autocast_context, self.device,
                                          "bfloat16" if cfg.precision == "bf16" else "float32")  # fmt: skip
        prefs = read_preferences(cfg.prefs)
        say(prefs.summary())
        context = self.policy.config.context_length
        train_pairs, val_pairs = _split(prefs, cfg.data.heldout, cfg.seed)
        self.train = encode_pairs(train_pairs, self.tokenizer, context, prefs.where)
        self.val = encode_pairs(val_pairs, self.tokenizer, context, prefs.where) if val_pairs else None
        self.groups = _train_groups(train_pairs)
        if self.train.truncated or (self.val and self.val.truncated):
            cut = self.train.truncated + (self.val.truncated if self.val else 0)
            say(f"dpo: {cut} answers cut to the context of {context} tokens")
        rows = cfg.data.batch_size
        per_rank = rows // (world.size * cfg.data.grad_accum)
        if per_rank == 0 or per_rank * world.size * cfg.data.grad_accum != rows:
            raise ScratchError(
                f"data.batch_size {rows} is not divisible by world_size {world.size} x grad_accum "
                f"{cfg.data.grad_accum}; change one of them"
            )
        self.per_rank = per_rank  # pairs of a step on this rank, cut into grad_accum micro-batches
        self.reference = reference_logps(self, run, resume)
        self.policy.train()
        held = len(self.val) if self.val else 0
        say(f"dpo: {len(self.train):,} training pairs, {held:,} held out, from {self.policy_dir}")

    def resolved_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    # ---- batches and loss -------------------------------------------------------------------------

    def _pair_indices(self, step: int) -> np.ndarray:
        """The global pairs of `step`: consecutive slots of an endless sequence of seeded epochs."""
        n, size = len(self.train), self.cfg.data.batch_size
        slots = np.arange(step * size, (step + 1) * size)
        out = np.empty(size, dtype=np.int64)
        for epoch in np.unique(slots // n):
            order = np.random.default_rng([self.cfg.seed, int(epoch)]).permutation(len(self.groups))
            pairs = np.concatenate([self.groups[g] for g in order])  # a record's pairs stay together
            here = slots // n == epoch
            out[here] = pairs[slots[here] % n]
        return out

    def batches(self, step: int, progress: float) -> StepBatches:
        pairs = self._pair_indices(step)
        mine = pairs[self.world.rank * self.per_rank : (self.world.rank + 1) * self.per_rank]
        b = self.per_rank // self.cfg.data.grad_accum
        logged = (step + 1) % self.cfg.logging.every == 0  # the figures cost a sync: only when logged
        sums, info = torch.zeros(len(FIGURES), device=self.device), {}
        micro = []
        for i in range(0, self.per_rank, b):
            figures = (sums, info, i + b >= self.per_rank) if logged else None
            micro.append(self._micro_batch(self.train, self.reference["train"], mine[i : i + b], figures))
        step_sequences = np.unique(np.concatenate([self.train.chosen[pairs], self.train.rejected[pairs]]))
        tokens = int(sum(len(self.train.sequences[s]) - 1 for s in step_sequences))
        return StepBatches(micro, tokens, tokens * self.policy.flops_per_token(training=True), info)

    def _micro_batch(self, data: EncodedPairs, reference: torch.Tensor, pairs: np.ndarray, figures=None):
        """`pairs`' distinct sequences as one padded batch, with the rows and reference of each answer."""
        chosen, rejected = torch.from_numpy(data.chosen[pairs]), torch.from_numpy(data.rejected[pairs])
        sequences, rows = np.unique(
            np.concatenate([data.chosen[pairs], data.rejected[pairs]]), return_inverse=True
        )
        inputs, targets = data.batch(sequences, self.device)
        rows = torch.from_numpy(rows).to(self.device)
        lengths = torch.from_numpy(data.lengths)
        on = lambda t: t.to(self.device)  # noqa: E731
        return PairBatch(inputs, targets, rows[: len(pairs)], rows[len(pairs) :], on(reference[chosen]),
                         on(reference[rejected]), (on(lengths[chosen]), on(lengths[rejected])),
                         figures)  # fmt: skip

    def count(self, batch: PairBatch) -> int:
        return len(batch.chosen)

    def loss(self, models, batch: PairBatch) -> tuple[torch.Tensor, int]:
        logps = sequence_logprobs(models["policy"], batch.inputs, batch.targets)  # (S,)
        chosen, rejected = logps[batch.chosen], logps[batch.rejected]  # (B,)
        losses = preference_losses(chosen, rejected, batch.ref_chosen, batch.ref_rejected, batch.lengths,
                                   loss=self.cfg.loss, beta=self.cfg.beta,
                                   label_smoothing=self.cfg.label_smoothing)  # fmt: skip
        if batch.figures is not None:
            sums, info, last = batch.figures
            sums += figure_sums(chosen, rejected, batch.ref_chosen, batch.ref_rejected, self.cfg.beta)
            if last:  # every rank's sums over the step's pairs, once, into the step's train record
                totals = distributed.all_reduce_sum(sums.tolist(), self.world)
                info.update({name: total / self.cfg.data.batch_size for name, total in zip(FIGURES, totals)})
        return losses.sum(), len(losses)

    # ---- evaluation -------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        if self.val is None:
            return {}
        self.policy.eval()
        try:
            with self.autocast():
                logps = all_sequence_logprobs(self.policy, self.val, 2 * self.per_rank, self.device)
        finally:
            self.policy.train()
        return pair_figures(self.val, logps, self.reference["val"], self.cfg)

    # ---- state and files --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"pairs": len(self.train), "fingerprint": self.train.fingerprint()}  # batches: from the step

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.train.fingerprint():
            raise ScratchError(
                f"cannot resume: the checkpoint trained on other pairs ({state['pairs']}, this config gives "
                f"{len(self.train)}); resume with the same prefs, data.heldout, seed and policy"
            )

    def write_model(self, name: str, folder: Path, extra: dict) -> dict[str, str]:
        extra = {**extra, "policy": str(self.policy_dir), "reference": str(self.reference_dir)}
        return write_model_files(folder, self.policy, self.tokenizer, extra=extra)["files"]


def pair_figures(data: EncodedPairs, logps: torch.Tensor, reference: torch.Tensor, cfg: DPOConfig) -> dict:
    """val_loss, val_accuracy and TRL's figures over every pair of `data`, from each sequence's log-probs."""
    lengths = torch.from_numpy(data.lengths)
    c, r = torch.from_numpy(data.chosen), torch.from_numpy(data.rejected)
    losses = preference_losses(logps[c], logps[r], reference[c], reference[r], (lengths[c], lengths[r]),
                               loss=cfg.loss, beta=cfg.beta, label_smoothing=cfg.label_smoothing)  # fmt: skip
    sums = figure_sums(logps[c], logps[r], reference[c], reference[r], cfg.beta) / len(data)
    figures = dict(zip(FIGURES, sums.tolist()))
    return {"val_loss": float(losses.mean()), "val_accuracy": figures["rewards/accuracies"], **figures}


# ---- the reference, computed once -------------------------------------------------------------------


def reference_logps(objective: DPO, run: RunDir, resume: bool) -> dict[str, torch.Tensor]:
    """log pi_ref of every train and held-out sequence: read from the run's cache, or computed and cached.

    The cache's key names the reference's weights (their sha256), the precision and the pairs, so a
    cache of another reference or other pairs is never read as this one's.
    """
    cfg, world = objective.cfg, objective.world
    sets = {"train": objective.train, **({"val": objective.val} if objective.val else {})}
    weights = read_manifest(objective.reference_dir)["files"][WEIGHTS]
    key = hashlib.sha256(
        "|".join([weights, cfg.precision, *(f"{k}:{v.fingerprint()}" for k, v in sets.items())]).encode()
    ).hexdigest()
    path = run.path / REFERENCE_CACHE
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return {name: f.get_tensor(name) for name in sets}
        if resume:
            raise ScratchError(
                f"cannot resume: {path} holds the reference log-probs of another reference or other pairs; "
                "resume with the recipe that made the run, or choose another --out"
            )
    if world.is_main:
        if objective.reference_dir == objective.policy_dir:
            model = objective.policy  # still the starting weights: training has not begun
        else:
            model, _, _ = load_model(objective.reference_dir, device=objective.device)
        tensors = compute_reference_logps(model, sets, 2 * objective.per_rank, objective.autocast)
        with atomic_path(path) as tmp:
            save_safetensors(tensors, tmp, metadata={"key": key, "reference": str(objective.reference_dir)})
        objective.say(f"dpo: reference log-probs of {sum(len(v.sequences) for v in sets.values()):,} "
                      f"answers cached in {path}")  # fmt: skip
    distributed.barrier(world)
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in sets}


def compute_reference_logps(
    model, sets: dict[str, EncodedPairs], rows: int, autocast
) -> dict[str, torch.Tensor]:
    """The one place the reference runs (a resumed run never reaches it: tests/test_dpo.py counts)."""
    was_training = model.training
    model.eval()
    try:
        device = model.lm_head.weight.device
        with autocast():
            return {name: all_sequence_logprobs(model, data, rows, device) for name, data in sets.items()}
    finally:
        model.train(was_training)


def _model_dir(path: str, flag: str) -> Path:
    if not Path(path).exists():
        raise ScratchError(f"{flag} {path}: no such folder; give an SFT run folder or a model folder")
    return resolve_model_dir(path)


def _split(prefs: Preferences, heldout: int, seed: int):
    """(train pairs, held-out pairs): `heldout` whole records of a seeded permutation are held out."""
    if heldout and heldout >= len(prefs.groups):
        raise ScratchError(
            f"{prefs.where}: data.heldout {heldout} leaves none of its {len(prefs.groups)} records to train "
            "on; lower data.heldout"
        )
    order = np.random.default_rng([seed, 7]).permutation(len(prefs.groups))
    held = {int(g) for g in order[:heldout]}
    train, val = [], []
    for g, group in enumerate(prefs.groups):
        (val if g in held else train).extend(prefs.pairs[i] for i in group)
    return train, val


def _train_groups(pairs) -> list[np.ndarray]:
    """The positions in `pairs` of each record's pairs (they arrive record by record)."""
    groups: dict[int, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(pair.group, []).append(i)
    return [np.array(g, dtype=np.int64) for g in groups.values()]

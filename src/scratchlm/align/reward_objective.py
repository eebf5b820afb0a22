"""The reward model's training as an objective: Bradley-Terry on preference pairs (Ouyang et al. 2022, eq. 1).

    from scratchlm.align.reward_config import load_reward_config
    from scratchlm.align.reward_objective import train_reward
    config = load_reward_config("reward-sentiment-char", ["base=runs/sft", "prefs=prefs.jsonl"])
    train_reward(config, "runs/rm")

The body starts as the SFT model (`base`), the head `score` is new (`scratchlm.align.reward`). Each pair's
prompt and answer are rendered with the chat template and the reward is read at the closing `<|end|>`.
The loss of a pair is TRL's `RewardTrainer` loss, -log sigmoid(r_c - r_r [- margin]) plus, optionally,
coef * (r_c + r_r)^2; the trainer divides the step's sum by its pair count, so the step's loss is the mean
over its pairs, what TRL computes over a batch (tests/test_reward_trl_peer.py checks it).

Batches are whole groups (`Preferences.groups`): all K(K-1)/2 pairs of one ranking share a step, and each
of its K answers is run through the model once, however many pairs it is in (InstructGPT sec. 3.5). A
step's groups are a pure function of the step (a seeded permutation per epoch), so resume is exact with
no loader state. The held-out split is by prompt hash, so groups sharing a prompt fall on one side and a
record keeps its side when the label page appends more.

A pair whose prompt and answer outgrow the model's context is an error naming its line (no truncation:
cutting the prompt would change what was judged).

The figures: `val_loss` (the same loss on the held-out pairs) and `accuracy` (their share with r_c > r_r),
beside the `noise_ceiling` when the records carry simulated gold (`gold` aligned with the answers, and
`tau`): the best accuracy possible on Bradley-Terry labels (`annotators.agreement_ceiling`); the mean
chosen and rejected reward and their margin; and with a `judge`, `gold_spearman`, the rank correlation
(ties share their mean rank) of reward and gold on fresh answers the base model gave at the start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scratchlm.align.annotators import agreement_ceiling, get_judge
from scratchlm.align.preferences import Preferences, parse_record, read_preferences, read_records
from scratchlm.align.prompts import read_prompts
from scratchlm.align.reward import RewardModel, last_token, pad_id, read_head_into, write_reward_files
from scratchlm.align.reward_config import RewardConfig
from scratchlm.align.rollout import rollout
from scratchlm.data.chat import END, chat_token_ids, render_chat
from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig
from scratchlm.model.folder import load_model
from scratchlm.train import distributed
from scratchlm.train.checkpoint import read_module_into
from scratchlm.train.objective import StepBatches
from scratchlm.train.run_dir import resolve_model_dir
from scratchlm.train.trainer import RunResult, run_stage


def train_reward(config: RewardConfig, out_dir: str | Path, resume: bool = False, say=print) -> RunResult:
    """Train a reward model from `config.base` on `config.prefs` into the run folder `out_dir`."""
    build = lambda world, run, say: RewardObjective(config, world, world.device, say)  # noqa: E731
    return run_stage(config, out_dir, resume, say, build)


# ---- the loss and the figures, as plain functions -------------------------------------------------------


def bradley_terry(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None, center: float = 0.0
) -> torch.Tensor:
    """(n,) loss of each pair: TRL's -log sigmoid(r_c - r_r - margin) + center * (r_c + r_r)^2."""
    difference = chosen - rejected if margin is None else chosen - rejected - margin
    loss = -F.logsigmoid(difference)
    return loss + center * (chosen + rejected) ** 2 if center else loss


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank (what Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts - 1) / 2, counts)
    return ranks


def spearman(a, b) -> float | None:
    """Spearman's rho: Pearson's r of the ranks. None when either side is constant (rho is undefined)."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / norm) if norm > 0 else None


def check_same_tokenizer(a, b, where: str) -> None:
    """Two models that exchange token ids (a policy and its reward model) must share one tokenizer."""
    fa, fb = a.fingerprint(), b.fingerprint()
    if fa != fb:
        raise ScratchError(
            f"{where}: the reward model's tokenizer differs from the policy's (fingerprint {fa[:12]} vs "
            f"{fb[:12]}); train the reward model from the policy's SFT model (--base)"
        )


def right_pad(sequences: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (S, T), mask (S, T) bool) with each row padded on the right: causal attention then keeps
    the pads out of every real position, so no attention mask is needed in the forward pass."""
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = True
    return ids.to(device), mask.to(device)


@torch.no_grad()
def score_sequences(model: RewardModel, sequences: list[list[int]], pad: int, batch_size: int = 32):
    """(S,) float32 rewards of token sequences, in batches of similar length (little padding)."""
    device = model.score.weight.device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = torch.empty(len(sequences))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = right_pad([sequences[i] for i in rows], pad, device)
        out[rows] = last_token(model(ids), mask).cpu()
    return out


# ---- the objective ----------------------------------------------------------------------------------


@dataclass
class PairBatch:
    """A micro-batch: each distinct sequence once, and the pairs as indices into its rows."""

    ids: torch.Tensor  # (S, T) right-padded
    mask: torch.Tensor  # (S, T) bool, real tokens
    chosen: torch.Tensor  # (n,) row of each pair's chosen answer
    rejected: torch.Tensor  # (n,)
    margin: torch.Tensor  # (n,) float32, the pairs' `margin` field
    weight: torch.Tensor  # (n,) 1, or 0 for the stand-in pair of an empty shard (DDP needs a backward)


class RewardObjective:
    name = "reward"
    trainable = ("model",)
    loss_ceiling = 50.0  # a mean -log sigmoid of 50: rejected answers preferred by 50 nats, no working run

    def __init__(self, cfg: RewardConfig, world: distributed.World, device: torch.device, say=print):
        self.cfg, self.world, self.device, self.say = cfg, world, device, say
        prefs = read_preferences(cfg.prefs)
        say(f"reward: {prefs.summary()}")
        lines, self.scaled_gold = _record_extras(prefs)
        self.base_dir = resolve_model_dir(cfg.base)
        body, self.tokenizer, _ = load_model(self.base_dir, device=device)
        try:
            chat_token_ids(self.tokenizer)
        except ScratchError as e:
            raise ScratchError(f"{self.base_dir}: {e}") from None
        self.pad = pad_id(self.tokenizer)
        self.context = body.config.context_length
        self.sequences, self.pair_rows = _encode(prefs, lines, self.tokenizer, self.context)
        self.margins = np.array([p.margin for p in prefs.pairs], dtype=np.float32)
        self.groups = prefs.groups
        self.group_prompts = [prefs.pairs[g[0]].prompt for g in prefs.groups]  # hashable message tuples
        self.train_groups, self.heldout_groups = _split(self.group_prompts, cfg.data.heldout, prefs.where)
        self.heldout_pairs = np.array(
            [p for g in self.heldout_groups for p in self.groups[g]], dtype=np.int64
        )
        self.model = RewardModel(body).train()
        self.models = {"model": self.model}
        self.fresh = self._fresh_samples() if cfg.judge and cfg.eval.fresh_prompts else None
        self._epochs: dict[int, list[list[int]]] = {}  # each epoch's batches of groups, made when first asked
        say(
            f"reward: {len(self.train_groups)} training groups ({self._pairs(self.train_groups)} pairs), "
            f"{len(self.heldout_groups)} held out ({len(self.heldout_pairs)} pairs), from {self.base_dir}"
        )

    def resolved_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def _pairs(self, groups) -> int:
        return sum(len(self.groups[g]) for g in groups)

    # ---- batches and loss -------------------------------------------------------------------------

    def _epoch(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch: whole groups in a seeded order, cut at `data.batch_size`."""
        if epoch not in self._epochs:
            unit, limit = self.cfg.data.batch_unit, self.cfg.data.batch_size
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.train_groups))
            batches, current, size = [], [], 0
            for g in (self.train_groups[i] for i in order):
                n = 1 if unit == "groups" else len(self.groups[g])
                if current and size + n > limit:
                    batches.append(current)
                    current, size = [], 0
                current.append(g)
                size += n
            self._epochs[epoch] = batches + [current]
        return self._epochs[epoch]

    def step_groups(self, step: int) -> list[int]:
        """The groups (indices into `Preferences.groups`) of optimizer step `step`, over all ranks."""
        epoch = 0
        while step >= len(self._epoch(epoch)):
            step -= len(self._epoch(epoch))
            epoch += 1
        return self._epoch(epoch)[step]

    def collate(self, pairs: list[int], weight: float = 1.0) -> PairBatch:
        rows = sorted({int(r) for p in pairs for r in self.pair_rows[p]})
        local = {r: i for i, r in enumerate(rows)}
        ids, mask = right_pad([self.sequences[r] for r in rows], self.pad, self.device)
        chosen, rejected = (
            torch.tensor([local[int(r)] for r in self.pair_rows[pairs, side]], device=self.device)
            for side in (0, 1)
        )
        margin = torch.from_numpy(self.margins[pairs]).to(self.device)
        weights = torch.full((len(pairs),), weight, device=self.device)
        return PairBatch(ids, mask, chosen, rejected, margin, weights)

    def batches(self, step: int, progress: float) -> StepBatches:
        groups = self.step_groups(step)
        shards = self.world.size * self.cfg.data.grad_accum
        mine = range(
            self.world.rank * self.cfg.data.grad_accum, (self.world.rank + 1) * self.cfg.data.grad_accum
        )
        micro = []
        for shard in mine:
            pairs = [p for g in groups[shard::shards] for p in self.groups[g]]
            micro.append(
                self.collate(pairs) if pairs else self.collate(self.groups[groups[0]][:1], weight=0.0)
            )
        rows = {int(r) for g in groups for p in self.groups[g] for r in self.pair_rows[p]}
        tokens = sum(len(self.sequences[r]) for r in rows)  # real tokens of the whole step, every rank's
        body = self.model.body
        flops = tokens * (body.flops_per_token(training=True) - 6 * body.lm_head.weight.numel())  # no LM head
        return StepBatches(micro, tokens, flops, info={"pairs": self._pairs(groups)})

    def count(self, batch: PairBatch) -> int:
        return int(batch.weight.sum())

    def loss(self, models, batch: PairBatch) -> tuple[torch.Tensor, int]:
        rewards = last_token(models["model"](batch.ids), batch.mask)  # (S,)
        losses = self._pair_loss(rewards[batch.chosen], rewards[batch.rejected], batch.margin)
        return (losses * batch.weight).sum(), self.count(batch)

    def _pair_loss(self, chosen, rejected, margin) -> torch.Tensor:
        loss = self.cfg.loss
        return bradley_terry(
            chosen, rejected, margin if loss.margin else None, loss.center_rewards_coefficient
        )

    # ---- evaluation -------------------------------------------------------------------------------

    def _fresh_samples(self) -> tuple[list[list[int]], list[float]]:
        """Answers of the base model (the body before any step) to fresh prompts, and their gold scores."""
        cfg, judge = self.cfg.eval, get_judge(self.cfg.judge)
        if cfg.prompts:
            prompts = read_prompts(cfg.prompts, cfg.fresh_prompts, split="heldout", seed=self.cfg.seed)
        else:  # the preference file's prompts, held-out ones first
            by_group = [self.heldout_groups, self.train_groups]
            prompts = list({self.group_prompts[g]: None for part in by_group for g in part})
            prompts = [[{"role": r, "content": c} for r, c in p] for p in prompts]
        room = self.context - cfg.max_new_tokens - 1  # the answer and its <|end|> must fit as well
        fitting = (
            p for p in prompts if len(render_chat(p, self.tokenizer, add_generation_prompt=True)[0]) <= room
        )
        fits = list(itertools.islice(fitting, cfg.fresh_prompts))
        if not fits:
            raise ScratchError(
                f"eval: no prompt leaves room for {cfg.max_new_tokens} new tokens in the context of "
                f"{self.context}; lower eval.max_new_tokens or give shorter eval.prompts"
            )
        sampling = SamplingConfig(cfg.max_new_tokens, temperature=cfg.temperature, seed=self.cfg.seed)
        batch = rollout(self.model.body, self.tokenizer, fits, sampling)
        # The sampled ids themselves, not the decoded text rendered again: an answer may hold a special
        # token (<|endoftext|>) that would come back as ordinary characters, or not encode at all.
        end = self.tokenizer.special_tokens[END]
        sequences = [
            batch.sequences[row][batch.attention_mask[row]].tolist() + ([] if batch.finished[row] else [end])
            for row in range(len(batch))
        ]
        texts = batch.texts
        gold = [judge.score(p, t) for p, t in zip(fits, texts)]
        self.say(f"reward: {len(fits)} fresh answers of the base model for the {judge.name} Spearman figure")
        return sequences, gold

    def evaluate(self, step: int) -> dict:
        was_training = self.model.training
        self.model.eval()
        try:
            figures = {}
            if len(self.heldout_pairs):
                figures.update(self._heldout_figures())
            if self.fresh is not None:
                sequences, gold = self.fresh
                rho = spearman(score_sequences(self.model, sequences, self.pad).numpy(), gold)
                if rho is not None:  # constant gold (or reward) has no rank correlation
                    figures["gold_spearman"] = rho
        finally:
            self.model.train(was_training)
        return figures

    def _heldout_figures(self) -> dict:
        pairs = self.heldout_pairs
        rows = sorted({int(r) for p in pairs for r in self.pair_rows[p]})
        scores = dict(
            zip(rows, score_sequences(self.model, [self.sequences[r] for r in rows], self.pad).tolist())
        )
        chosen = torch.tensor([scores[int(r)] for r in self.pair_rows[pairs, 0]])
        rejected = torch.tensor([scores[int(r)] for r in self.pair_rows[pairs, 1]])
        loss = self._pair_loss(chosen, rejected, torch.from_numpy(self.margins[pairs]))
        figures = {
            "val_loss": float(loss.mean()),
            "accuracy": float((chosen > rejected).float().mean()),
            "reward_chosen": float(chosen.mean()),
            "reward_rejected": float(rejected.mean()),
            "reward_margin": float((chosen - rejected).mean()),
        }
        scaled = [self.scaled_gold[p] for p in pairs]
        if all(d is not None for d in scaled):
            figures["noise_ceiling"] = agreement_ceiling(scaled, 1.0)
        return figures

    # ---- state and files --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"pairs": len(self.pair_rows), "train_groups": len(self.train_groups)}

    def load_state_dict(self, state: dict) -> None:
        if state != self.state_dict():
            raise ScratchError(
                f"cannot resume: the checkpoint trained on {state['pairs']} pairs in {state['train_groups']} "
                f"groups, this config gives {len(self.pair_rows)} in {len(self.train_groups)}; resume with "
                "the same preference file and data section"
            )

    def write_model(self, name: str, folder: Path, extra: dict) -> dict[str, str]:
        extra = {**extra, "base": str(self.base_dir), "prefs": str(self.cfg.prefs)}
        return write_reward_files(folder, self.model, self.tokenizer, extra)["files"]

    def read_model(self, name: str, folder: Path) -> None:
        read_module_into(self.model.body, folder)
        read_head_into(self.model, folder)


# ---- reading the preference file -------------------------------------------------------------------


def _record_extras(prefs: Preferences) -> tuple[list[int], list[float | None]]:
    """(line of each record, each pair's gold difference / tau or None), from the file's records.

    The pairs are enumerated as `read_preferences` does (i < j, identical answers left out)."""
    lines, scaled = [], []
    for number, record in read_records(prefs.where):
        lines.append(number)
        _, answers, _ = parse_record(record, f"{prefs.where}:{number}")
        gold, tau = record.get("gold"), record.get("tau")
        usable = (
            isinstance(gold, list) and len(gold) == len(answers) and all(_is_number(g) for g in gold)
            and _is_number(tau) and tau > 0
        )  # fmt: skip
        for i in range(len(answers)):
            for j in range(i + 1, len(answers)):
                if answers[i] != answers[j]:
                    scaled.append((gold[i] - gold[j]) / tau if usable else None)
    assert len(scaled) == len(prefs.pairs), "the pairs are enumerated as read_preferences does"
    return lines, scaled


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _encode(prefs: Preferences, lines: list[int], tokenizer, context: int):
    """Each distinct (prompt, answer) rendered once: (sequences, (n_pairs, 2) rows of chosen, rejected)."""
    rows: dict[tuple, int] = {}
    sequences: list[list[int]] = []
    pair_rows = np.empty((len(prefs.pairs), 2), dtype=np.int64)
    for p, pair in enumerate(prefs.pairs):
        for side, answer in enumerate((pair.chosen, pair.rejected)):
            key = (pair.prompt, answer)
            if key not in rows:
                where = f"{prefs.where}:{lines[pair.group]}"
                messages = pair.messages + [{"role": "assistant", "content": answer}]
                ids, _ = render_chat(messages, tokenizer, where=where)
                if len(ids) > context:
                    raise ScratchError(
                        f"{where}: prompt and answer are {len(ids)} tokens, more than the model's context of "
                        f"{context}; shorten or remove that record"
                    )
                assert ids[-1] == tokenizer.special_tokens[END]  # the reward is read at <|end|>
                rows[key] = len(sequences)
                sequences.append(ids)
            pair_rows[p, side] = rows[key]
    return sequences, pair_rows


def _split(prompts: list[tuple], heldout: float, where: str) -> tuple[list[int], list[int]]:
    """(training, held-out) group indices: a group is held out when its prompt's hash falls below
    `heldout`, so groups sharing a prompt stay together and a group keeps its side as the file grows."""
    unit = np.array([_unit_hash(p) for p in prompts])
    held = unit < heldout
    if heldout > 0 and not held.any():
        held = unit == unit.min()  # a tiny file: still one prompt to measure on
    if held.all():
        raise ScratchError(
            f"{where}: all {len(prompts)} groups share the held-out prompts, none is left to train on; "
            "lower data.heldout or add records with other prompts"
        )
    return [g for g in range(len(prompts)) if not held[g]], [g for g in range(len(prompts)) if held[g]]


def _unit_hash(prompt: tuple) -> float:
    digest = hashlib.sha256(json.dumps(prompt, ensure_ascii=False).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") / 2**64

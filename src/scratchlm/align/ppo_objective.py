"""RLHF's last stage as an objective: PPO against a frozen reward model, held near the SFT model by KL.

    from scratchlm.align.ppo_config import load_ppo_config
    from scratchlm.align.ppo_objective import ppo
    ppo(load_ppo_config("ppo-sentiment-char", ["policy=runs/sft", "reward=runs/rm", "prompts=task:dialogue"]),
        "runs/ppo")

Four models (the roles of InstructGPT, TRL and DeepSpeed-Chat):
- `policy`, trained, starts as the SFT model;
- `value`, trained, starts as the reward model (its scalar head read at every answer position);
- `reference`, frozen, the SFT model again: the KL penalty is measured against it;
- `reward`, frozen: the score of a whole answer, read at its last token.

A trainer step is one minibatch update. Every `epochs x minibatches` steps, a rollout is drawn from the
current policy (`scratchlm.align.rollout`, the one decoding loop) and turned into advantages by the pure
functions of `scratchlm.align.ppo`; the steps after it walk seeded permutations of that buffer. The buffer
is part of the objective's state, so a run resumed from any step (even mid-rollout) repeats exactly what
the uninterrupted run did. Frozen models are re-read from their sources on resume.

Old log-probabilities are the sampling distribution's own (what the rollout recorded), so everything runs
in float32 by default: a bf16 forward pass would put the first ratio of every rollout off 1 by rounding.
"""

from __future__ import annotations

import dataclasses
import math
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scratchlm.align.annotators import get_judge
from scratchlm.align.ppo import (
    AdaptiveKL,
    explained_variance,
    gae,
    kl_per_token,
    masked_mean,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)
from scratchlm.align.ppo_config import PPOConfig
from scratchlm.align.prompts import TASK_PREFIX, read_prompts
from scratchlm.align.reward import last_token, load_reward_model, read_head_into, write_reward_files
from scratchlm.align.reward_objective import check_same_tokenizer
from scratchlm.align.rollout import Rollout, prompt_ids, rollout, token_logprobs
from scratchlm.errors import ScratchError
from scratchlm.finetune.sft_data import ptx_tokens
from scratchlm.generate.config import SamplingConfig
from scratchlm.model.folder import load_model, write_model_files
from scratchlm.train.checkpoint import read_module_into
from scratchlm.train.objective import StepBatches
from scratchlm.train.run_dir import resolve_model_dir
from scratchlm.train.trainer import RunResult, run_stage

EVAL_SEED = 1_000_003  # held-out answers are sampled with the same seed at every evaluation


def ppo(config: PPOConfig, out_dir: str | Path, resume: bool = False, say=print) -> RunResult:
    """Train `config.policy` with PPO against `config.reward` into the run folder `out_dir`."""

    def build(world, run, say):
        if world.distributed:
            raise ScratchError("ppo runs in one process for now; start it without torchrun")
        return PPO(config, world.device, say)

    return run_stage(config, out_dir, resume, say, build)


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.requires_grad_(False)
    return model.eval()


@dataclasses.dataclass
class Buffer:
    """One rollout, scored and turned into advantages: what the next epochs x minibatches steps train on."""

    batch: Rollout
    old_values: torch.Tensor  # (N, R)
    advantages: torch.Tensor  # (N, R), whitened if asked
    returns: torch.Tensor  # (N, R)
    stats: dict

    def state(self) -> dict:
        b = self.batch
        return {
            "batch": {f.name: getattr(b, f.name) for f in dataclasses.fields(b)},
            "old_values": self.old_values, "advantages": self.advantages, "returns": self.returns,
            "stats": self.stats,
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict, device) -> Buffer:
        fields = {k: v.to(device) if torch.is_tensor(v) else v for k, v in state["batch"].items()}
        move = {k: state[k].to(device) for k in ("old_values", "advantages", "returns")}
        return cls(Rollout(**fields), stats=state["stats"], **move)


class PPO:
    name = "ppo"
    trainable = ("policy", "value")
    loss_ceiling = None

    def __init__(self, cfg: PPOConfig, device: torch.device, say=print):
        self.cfg, self.device, self.say = cfg, device, say
        self.policy_dir = resolve_model_dir(cfg.policy)
        self.reward_dir = resolve_model_dir(cfg.reward)
        self.policy, self.tokenizer, _ = load_model(self.policy_dir, device=device)
        self.policy.train()
        self.reference = _frozen(load_model(self.policy_dir, device=device)[0])
        self.reward, reward_tokenizer = load_reward_model(self.reward_dir, device=device)
        _frozen(self.reward)
        check_same_tokenizer(reward_tokenizer, self.tokenizer, str(self.reward_dir))
        self.value = load_reward_model(self.reward_dir, device=device)[0].train()
        self.models = {"policy": self.policy, "value": self.value, "reference": self.reference,
                       "reward": self.reward}  # fmt: skip
        self.prompts, self.eval_prompts = self._prompts()
        context = self.policy.config.context_length
        for where, prompts in (("training", self.prompts), ("evaluation", self.eval_prompts)):
            try:
                prompt_ids(self.tokenizer, prompts, context, cfg.ppo.max_new_tokens)
            except ScratchError as e:
                raise ScratchError(f"{cfg.prompts} ({where}): {e}") from None
        self.judge = get_judge(cfg.judge) if cfg.judge else None
        self.kl = AdaptiveKL(cfg.ppo.kl_coef, cfg.ppo.kl_target, cfg.ppo.kl_horizon)
        self.steps_per_rollout = cfg.ppo.epochs * cfg.ppo.minibatches
        self.buffer: Buffer | None = None
        self.buffer_index = -1
        self.ptx_train = None
        if cfg.ppo.ptx_coef:
            source = types.SimpleNamespace(ptx=cfg.ppo.ptx_coef, ptx_corpus=cfg.ppo.ptx_corpus)
            self.ptx_train, _ = ptx_tokens(source, self.policy_dir, self.tokenizer)
            if self.ptx_train is None:
                raise ScratchError(
                    f"ppo.ptx_coef needs pretraining text, but {self.policy_dir} records no corpus; "
                    "set ppo.ptx_corpus (e.g. shakespeare)"
                )
        self._info: dict = {}
        say(
            f"ppo: {len(self.prompts)} prompts, {cfg.ppo.rollout_prompts} per rollout, "
            f"{self.steps_per_rollout} updates per rollout, from {self.policy_dir} against {self.reward_dir}"
        )

    def _prompts(self):
        """Training and held-out prompts: a task's own splits, or a file's last `eval.prompts` held out."""
        cfg = self.cfg
        if cfg.prompts.startswith(TASK_PREFIX):
            train = read_prompts(cfg.prompts, cfg.n_prompts, "train", cfg.seed)
            return train, read_prompts(cfg.prompts, cfg.eval.prompts, "heldout", cfg.seed)
        every = read_prompts(cfg.prompts)
        n_eval = min(cfg.eval.prompts, len(every) // 5)
        if len(every) - n_eval < cfg.ppo.rollout_prompts // 4 or n_eval == 0:
            raise ScratchError(f"{cfg.prompts}: {len(every)} prompts are too few to train and evaluate on")
        return every[: len(every) - n_eval], every[len(every) - n_eval :]

    def resolved_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    # ---- rollouts -----------------------------------------------------------------------------------

    def _sampling(self, seed: int) -> SamplingConfig:
        p = self.cfg.ppo
        return SamplingConfig(max_new_tokens=p.max_new_tokens, temperature=p.temperature, seed=seed)

    @torch.no_grad()
    def _score(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward-model scores (N,), reference log-probs (N, R))."""
        scores = last_token(
            self.reward(batch.sequences, attention_mask=batch.attention_mask, positions=batch.positions),
            batch.attention_mask,
        )
        ref = token_logprobs(self.reference, batch, self.cfg.ppo.temperature, self.tokenizer.vocab_size)
        return scores, ref

    @torch.no_grad()
    def _make_buffer(self, index: int) -> Buffer:
        p, started = self.cfg.ppo, time.perf_counter()
        rng = np.random.default_rng([self.cfg.seed, index, 7])
        chosen = rng.choice(
            len(self.prompts), size=p.rollout_prompts, replace=len(self.prompts) < p.rollout_prompts
        )
        batch = rollout(self.policy, self.tokenizer, [self.prompts[i] for i in chosen],
                        self._sampling(self.cfg.seed * 1_000_000 + index))  # fmt: skip
        mask = batch.response_mask.float()
        scores, ref = self._score(batch)
        raw_scores = scores.clone()
        scores = scores - p.missing_eos_penalty * (~batch.finished).float()
        if p.reward_clip:
            scores = scores.clamp(-p.reward_clip, p.reward_clip)
        kl = kl_per_token(batch.logprobs, ref, p.kl_estimator) * mask
        beta = self.kl.beta
        rewards = token_rewards(scores, kl, mask, beta)
        values = self.value(batch.sequences, attention_mask=batch.attention_mask, positions=batch.positions)
        values = values[:, batch.prompt_length - 1 : -1] * mask  # V of the state before each answer token
        advantages, returns = gae(rewards, values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = whiten(advantages, mask)
        kl_answer = float((batch.logprobs - ref).mul(mask).sum(-1).mean())  # k1 per answer, nats
        stats = {
            "score": float(raw_scores.mean()), "score_std": float(raw_scores.std()),
            "kl": kl_answer, "kl_coef": beta, "non_score_reward": float(-(beta * kl).sum(-1).mean()),
            "response_length": float(mask.sum(-1).mean()), "finished": float(batch.finished.float().mean()),
            "explained_variance": explained_variance(values, returns, mask),
            "rollout_s": round(time.perf_counter() - started, 3),
        }  # fmt: skip
        if self.judge is not None:
            stats["gold"] = float(
                np.mean([self.judge.score(q, a) for q, a in zip(batch.prompts, batch.texts)])
            )
        if p.adaptive_kl:
            self.kl.update(kl_answer, p.rollout_prompts)
        return Buffer(batch, values, advantages, returns, stats)

    # ---- batches and loss ---------------------------------------------------------------------------

    def batches(self, step: int, progress: float) -> StepBatches:
        p = self.cfg.ppo
        index, within = divmod(step, self.steps_per_rollout)
        if self.buffer is None or self.buffer_index != index:
            self.buffer, self.buffer_index = self._make_buffer(index), index
        epoch, part = divmod(within, p.minibatches)
        order = np.random.default_rng([self.cfg.seed, index, epoch]).permutation(p.rollout_prompts)
        size = p.rollout_prompts // p.minibatches
        rows = torch.from_numpy(order[part * size : (part + 1) * size])
        ptx = None
        if self.ptx_train is not None:
            ctx = self.policy.config.context_length
            starts = np.random.default_rng([self.cfg.seed, step, 3]).integers(
                0, len(self.ptx_train) - ctx - 1, p.ptx_rows
            )
            ptx = torch.from_numpy(np.stack([self.ptx_train[s : s + ctx + 1] for s in starts])).to(
                self.device
            )
        self._info = {**self.buffer.stats, "epoch": epoch}
        tokens = int(self.buffer.batch.attention_mask[rows].sum())
        flops = (
            3 * tokens * self.policy.flops_per_token(training=True)
        )  # policy + value, + the rollout's share
        return StepBatches([(rows, ptx)], tokens, flops, self._info)

    def count(self, batch) -> int:
        rows, _ = batch
        return int(self.buffer.batch.response_mask[rows].sum())

    def loss(self, models, batch) -> tuple[torch.Tensor, int]:
        rows, ptx = batch
        p, buf = self.cfg.ppo, self.buffer
        mb = buf.batch.select(rows)
        mask = mb.response_mask.float()
        rows = rows.to(self.device)
        logprobs, entropy = token_logprobs(models["policy"], mb, p.temperature, self.tokenizer.vocab_size,
                                           with_entropy=True)  # fmt: skip
        pg = policy_loss(logprobs, mb.logprobs, buf.advantages[rows], mask, p.cliprange)
        values = models["value"](mb.sequences, attention_mask=mb.attention_mask, positions=mb.positions)
        values = values[:, mb.prompt_length - 1 : -1]
        vf_sum, vf_clipped = value_loss(
            values, buf.old_values[rows], buf.returns[rows], mask, p.cliprange_value
        )
        n = int(mask.sum())
        loss_sum = pg.loss_sum + p.vf_coef * vf_sum
        if ptx is not None:  # the mean LM loss of the pretraining rows, weighted as if over the n tokens
            logits = models["policy"](ptx[:, :-1])
            lm = F.cross_entropy(logits.float().flatten(0, 1), ptx[:, 1:].flatten())
            loss_sum = loss_sum + p.ptx_coef * lm * n
            self._info["loss/ptx"] = float(lm.detach())
        self._info.update({
            "policy/clipfrac": pg.clip_fraction, "policy/approxkl": pg.approx_kl,
            "policy/entropy": float(masked_mean(entropy.detach(), mask)),
            "loss/policy": float(pg.loss_sum.detach()) / max(n, 1),
            "loss/value": float(vf_sum.detach()) / max(n, 1), "value/clipfrac": vf_clipped,
        })  # fmt: skip
        return loss_sum, n

    # ---- evaluation ---------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """Score, gold and KL per answer on the held-out prompts (the same seed every time)."""
        batch = rollout(self.policy, self.tokenizer, self.eval_prompts, self._sampling(EVAL_SEED))
        scores, ref = self._score(batch)
        mask = batch.response_mask.float()
        figures = {
            "score": float(scores.mean()),
            "kl": float((batch.logprobs - ref).mul(mask).sum(-1).mean()),
            "response_length": float(mask.sum(-1).mean()),
            "kl_coef": self.kl.beta,
        }
        if self.judge is not None:
            figures["gold"] = float(
                np.mean([self.judge.score(q, a) for q, a in zip(batch.prompts, batch.texts)])
            )
        figures["sqrt_kl"] = math.sqrt(max(figures["kl"], 0.0))
        return figures

    # ---- state and files ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        buffer = self.buffer.state() if self.buffer is not None else None
        return {"buffer": buffer, "buffer_index": self.buffer_index, "beta": self.kl.beta,
                "prompts": len(self.prompts)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if state["prompts"] != len(self.prompts):
            raise ScratchError(
                f"cannot resume: the checkpoint trained on {state['prompts']} prompts but this config gives "
                f"{len(self.prompts)}; resume with the same prompts"
            )
        self.kl.beta = state["beta"]
        self.buffer_index = state["buffer_index"]
        self.buffer = Buffer.from_state(state["buffer"], self.device) if state["buffer"] else None

    def write_model(self, name: str, folder: Path, extra: dict) -> dict[str, str]:
        if name == "policy":
            extra = {**extra, "base": str(self.policy_dir)}
            return write_model_files(folder, self.policy, self.tokenizer, extra=extra)["files"]
        return write_reward_files(folder, self.value, self.tokenizer, extra={**extra, "role": "value"})[
            "files"
        ]

    def read_model(self, name: str, folder: Path) -> None:
        if name == "policy":
            read_module_into(self.policy, folder)
        else:
            read_module_into(self.value.body, folder)
            read_head_into(self.value, folder)

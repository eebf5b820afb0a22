"""GRPO and RLOO as an objective: sample a group of answers to each prompt, reward them, raise the better.

    from scratchlm.align.grpo_config import load_grpo_config
    from scratchlm.align.grpo_objective import grpo
    result = grpo(load_grpo_config("grpo-arithmetic-char", ["policy=runs/sft"]), "runs/grpo")

A step (Shao et al. 2024, alg. 1, with μ = loss.num_iterations):
  1. `rollout.prompts` training prompts, a pure function of the seed and the step, and `rollout.group`
     answers to each sampled from the current policy (scratchlm.align.rollout);
  2. a reward for every answer: its task's exact-answer checker, or a `--reward module:function`;
  3. advantages within each group (scratchlm.align.grpo): GRPO's standardised reward, or RLOO's
     leave-one-out difference of the reward less β times the answer's KL (k1);
  4. the clipped surrogate loss (GRPO: plus β times the k3 KL per token), one optimizer step.
With μ > 1 the same rollout trains μ steps and its buffer goes into the checkpoint, so resume is exact.

The ratio's old log-probs are the rollout's sampling log-probs: with top-k and top-p off they are the
policy's own at the rollout temperature, so a rollout's first step has ratio 1 up to float error (logged
as `ratio_drift`, the mean |log ρ|).

The figures: each task's held-out exact match by greedy decoding and held-out answer loss (the numbers
`scratchlm eval --tasks chat:SPEC` gives), and val_loss = 1 - mean exact match (with a custom reward:
minus the mean reward of greedy answers to held-out prompts), so the best checkpoint is the best model.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from scratchlm.align import grpo as G
from scratchlm.align.grpo_config import GRPOConfig
from scratchlm.align.prompts import TASK_PREFIX, read_prompts
from scratchlm.align.rollout import Rollout, rollout, token_logprobs
from scratchlm.data.tasks import get_task
from scratchlm.data.tasks.base import last_user
from scratchlm.errors import ScratchError
from scratchlm.eval.chat_tasks import BATCH, chat_task_figures
from scratchlm.generate.config import SamplingConfig
from scratchlm.model.folder import load_model, write_model_files
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS
from scratchlm.train import distributed
from scratchlm.train.objective import StepBatches
from scratchlm.train.run_dir import resolve_model_dir
from scratchlm.train.trainer import RunResult, run_stage

Reward = Callable[[list[dict], str], float]  # reward(prompt messages, completion) -> float


def grpo(config: GRPOConfig, out_dir: str | Path, resume: bool = False, say=print) -> RunResult:
    """Train `config.policy` with GRPO or RLOO (`config.algorithm`) into the run folder `out_dir`."""
    return run_stage(config, out_dir, resume, say, lambda world, run, say: GRPO(config, world, say))


def load_reward(spec: str) -> Reward:
    """`module:function` or `path/file.py:function`, a function reward(prompt messages, completion)."""
    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name:
        raise ScratchError(f"--reward {spec!r}: write module:function or file.py:function")
    try:
        if where.endswith(".py"):
            if not Path(where).is_file():
                raise ScratchError(f"--reward {spec}: no such file {where}")
            found = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(found)
            found.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ScratchError:
        raise
    except Exception as e:  # the user's module: a missing name, a syntax error, an error at import
        raise ScratchError(
            f"--reward {spec}: importing {where} failed ({type(e).__name__}: {e}); fix it or the name"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ScratchError(f"--reward {spec}: {where} has no function {name}")
    return function


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def score(rewards: list[Reward], names: list[str], prompts, texts: list[str]) -> torch.Tensor:
    """(N,) float32 rewards; a reward that raises or is not a finite number stops training, naming the
    sample: a wrong reward would otherwise train the policy towards nonsense."""
    values = []
    for row, (reward, name, prompt, text) in enumerate(zip(rewards, names, prompts, texts)):
        sample = f"sample {row} (prompt {_short(last_user(prompt))}, completion {_short(text)})"
        try:
            value = float(reward(prompt, text))
        except Exception as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ScratchError(
                f"reward {name} raised {type(e).__name__}{': ' + why if why else ''} on {sample}; training "
                "stopped, its last checkpoint intact: fix the reward, then --resume"
            ) from None
        if not math.isfinite(value):
            raise ScratchError(
                f"reward {name} returned {value} for {sample}; training stopped, its last checkpoint "
                "intact: make the reward a finite number, then --resume"
            )
        values.append(value)
    return torch.tensor(values, dtype=torch.float32)


@dataclass
class Experience:
    """One scored rollout: what the loss reads, and (for μ > 1) what a checkpoint keeps."""

    step: int  # the step that sampled it
    rollout: Rollout  # this rank's rows
    advantages: torch.Tensor  # (n,)
    ref_logprobs: torch.Tensor | None  # (n, R): GRPO with β > 0
    info: dict  # the rollout's figures (rewards, lengths), logged on each step that trains on it


@dataclass
class Tally:
    """Token figures of one step's loss, summed over its micro-batches and written into its info."""

    info: dict
    tokens: float = 0.0
    clipped: float = 0.0
    drift: float = 0.0
    kl: float = 0.0

    def add(self, mask, clipped, log_ratio, kl) -> None:
        self.tokens += float(mask.sum())
        self.clipped += float((clipped & mask).sum())
        self.drift += float((log_ratio.abs() * mask).sum())
        self.info["clip_fraction"] = self.clipped / max(1.0, self.tokens)
        self.info["ratio_drift"] = self.drift / max(1.0, self.tokens)
        if kl is not None:
            self.kl += float((kl * mask).sum())
            self.info["kl"] = self.kl / max(1.0, self.tokens)


@dataclass
class Micro:
    rollout: Rollout
    advantages: torch.Tensor  # (b,)
    ref_logprobs: torch.Tensor | None  # (b, R)
    tally: Tally


class GRPO:
    trainable = ("policy",)
    loss_ceiling = None  # the surrogate has no natural scale; NaN and inf are still caught

    def __init__(self, cfg: GRPOConfig, world: distributed.World, say=print):
        self.cfg, self.world, self.device, self.say = cfg, world, world.device, say
        self.name = cfg.algorithm  # a GRPO run is never resumed as RLOO
        self.tasks = [get_task(spec) for spec in cfg.tasks]
        custom = load_reward(cfg.reward) if cfg.reward else None
        self.rewards = [custom or task.reward for task in self.tasks]
        self.reward_names = [cfg.reward or f"of task {spec}" for spec in cfg.tasks]
        r = cfg.rollout
        per_rank = r.prompts // world.size
        if per_rank * world.size != r.prompts or (per_rank * r.group) % r.grad_accum:
            raise ScratchError(
                f"rollout.prompts {r.prompts} must split evenly over {world.size} ranks, and each rank's "
                f"{per_rank} x {r.group} answers over rollout.grad_accum {r.grad_accum}; change one of them"
            )
        self.per_rank = per_rank
        self.pool = [
            (prompt, index)
            for index, spec in enumerate(cfg.tasks)
            for prompt in read_prompts(TASK_PREFIX + spec, r.pool, "train", seed=cfg.seed)
        ]  # fmt: skip
        if r.prompts > len(self.pool):
            raise ScratchError(f"rollout.prompts {r.prompts} is more than the pool of {len(self.pool)}")
        self.policy_dir = resolve_model_dir(cfg.policy)
        self.policy, self.tokenizer, _ = load_model(self.policy_dir, device=self.device)
        self.policy.train()
        missing = [t for t in CHAT_SPECIAL_TOKENS if t not in getattr(self.tokenizer, "special_tokens", {})]
        if missing:
            raise ScratchError(
                f"{self.policy_dir}: its tokenizer has no {missing[0]} token, so it cannot read a prompt; "
                "start from an SFT model (scratchlm sft)"
            )
        self.reference = None
        if cfg.loss.beta > 0:  # the KL's anchor: the starting policy, frozen (none at β = 0, as in TRL)
            self.reference, _, _ = load_model(self.policy_dir, device=self.device)
            self.reference.requires_grad_(False)
        self.models = {"policy": self.policy}
        self.experience: Experience | None = None
        say(
            f"{cfg.algorithm}: {r.prompts} prompts x {r.group} answers a step from {len(self.pool):,} "
            f"training prompts of {', '.join(cfg.tasks)}; policy {self.policy_dir}"
        )

    def resolved_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    # ---- rollouts -----------------------------------------------------------------------------------

    def _prompt_rows(self, step: int) -> np.ndarray:
        """This rank's pool indices at `step`: a seeded draw over all ranks, then this rank's share."""
        rng = np.random.default_rng([self.cfg.seed, step])
        chosen = rng.choice(len(self.pool), size=self.cfg.rollout.prompts, replace=False)
        return chosen[self.world.rank * self.per_rank : (self.world.rank + 1) * self.per_rank]

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        """(k, n) on each rank -> (k, n x world) in rank order: groups stay whole, as the advantage needs."""
        if not self.world.distributed:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world.size)]
        dist.all_gather(parts, values.contiguous())
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def _experience(self, step: int) -> Experience:
        cfg, r = self.cfg, self.cfg.rollout
        started = time.perf_counter()
        rows = self._prompt_rows(step)
        seed = int(np.random.default_rng([cfg.seed, step, self.world.rank, 1]).integers(2**62))
        sampling = SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature, seed=seed)
        batch = rollout(self.policy, self.tokenizer, [self.pool[i][0] for i in rows], sampling, group=r.group)
        task_of = [self.pool[i][1] for i in rows for _ in range(r.group)]
        rewards = score([self.rewards[t] for t in task_of], [self.reward_names[t] for t in task_of],
                        batch.prompts, batch.texts).to(self.device)  # fmt: skip
        mask = batch.response_mask
        ref = None
        if self.reference is not None:
            ref = token_logprobs(self.reference, batch, r.temperature, self.tokenizer.vocab_size)
        shaped, info = rewards, {}
        if cfg.algorithm == "rloo" and ref is not None:
            # RLOO's reward: r - β log π(y|x)/π_ref(y|x) (Ahmadian et al. 2024, sec. 2), π the sampler.
            kl = G.kl_k1(batch.logprobs, ref, mask)  # (n,)
            shaped = rewards - cfg.loss.beta * kl
            info["kl"] = float(kl.sum() / mask.sum())
        lengths = mask.sum(-1).float()
        everyone = self._gather(torch.stack([rewards, shaped, lengths, batch.finished.float()]))  # (4, N)
        advantage = G.group_advantages if cfg.algorithm == "grpo" else G.leave_one_out_advantages
        advantages = advantage(everyone[1], r.group, cfg.scale_rewards)
        mine = slice(self.world.rank * len(rows) * r.group, (self.world.rank + 1) * len(rows) * r.group)
        info.update({
            "reward": float(everyone[0].mean()), "reward_std": float(everyone[0].std()),
            "flat_groups": float(G.flat_groups(everyone[1], r.group).float().mean()),
            "response_length": float(everyone[2].mean()), "finished": float(everyone[3].mean()),
            "rollout_s": round(time.perf_counter() - started, 3),
        })  # fmt: skip
        return Experience(step, batch, advantages[mine], ref, info)

    def batches(self, step: int, progress: float) -> StepBatches:
        first = step - step % self.cfg.loss.num_iterations  # the step whose rollout this one trains on
        fresh = self.experience is None or self.experience.step != first
        if fresh:
            self.experience = self._experience(first)
        exp = self.experience
        info = dict(exp.info, rollout_s=exp.info["rollout_s"] if fresh else 0.0)
        tally = Tally(info)
        n = len(exp.rollout)
        b = n // self.cfg.rollout.grad_accum
        micro = []
        for start in range(0, n, b):
            rows = torch.arange(start, start + b)
            ref = exp.ref_logprobs[start : start + b] if exp.ref_logprobs is not None else None
            micro.append(Micro(exp.rollout.select(rows), exp.advantages[start : start + b], ref, tally))
        (tokens,) = distributed.all_reduce_sum([float(exp.rollout.attention_mask.sum())], self.world)
        # FLOPs: the step's forward and backward, plus the sampling and the reference's forward (each 1/3).
        passes = 1.0 + (1.0 / 3.0 if fresh else 0.0) + (1.0 / 3.0 if fresh and self.reference else 0.0)
        per_token = self.policy.flops_per_token(training=True, context_length=exp.rollout.sequences.shape[1])
        flops = tokens * per_token * passes
        return StepBatches(micro, int(tokens), flops, info)

    # ---- loss -------------------------------------------------------------------------------------

    def count(self, batch: Micro) -> int:
        return G.count(batch.rollout.response_mask, self.cfg.loss.type, self.cfg.rollout.max_new_tokens)

    def loss(self, models, batch: Micro) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        logp = token_logprobs(
            models["policy"], batch.rollout, cfg.rollout.temperature, self.tokenizer.vocab_size
        )
        old = batch.rollout.logprobs  # (b, R): the sampling distribution's, π_old
        per_token, clipped = G.clipped_surrogate(logp, old, batch.advantages, cfg.loss.epsilon,
                                                 cfg.loss.epsilon_high)  # fmt: skip
        kl = None
        if cfg.algorithm == "grpo" and batch.ref_logprobs is not None:
            kl = G.kl_k3(logp, batch.ref_logprobs)  # GRPO's eq. 3: β · KL per token, inside the loss
            per_token = per_token + cfg.loss.beta * kl
        mask = batch.rollout.response_mask
        batch.tally.add(mask, clipped, (logp - old).detach(), kl.detach() if kl is not None else None)
        return G.aggregate(per_token, mask, cfg.loss.type, cfg.rollout.max_new_tokens)

    # ---- evaluation -------------------------------------------------------------------------------

    def evaluate(self, step: int) -> dict:
        cfg, figures, exact = self.cfg, {}, []
        for spec in cfg.tasks:  # the measurements of `scratchlm eval --tasks chat:SPEC`
            task = chat_task_figures(self.policy, self.tokenizer, spec, cfg.eval.max_examples,
                                     cfg.eval.max_new_tokens)  # fmt: skip
            figures.update({f"{name}:{spec}": value for name, value in task.items() if name != "examples"})
            exact += [task["exact"]] if "exact" in task else []
        if cfg.reward:
            figures["reward"] = self._heldout_reward()
            figures["val_loss"] = -figures["reward"]
        else:
            figures["val_loss"] = 1.0 - sum(exact) / len(exact)
        return figures

    @torch.no_grad()
    def _heldout_reward(self) -> float:
        """The mean reward of greedy answers to each task's held-out prompts."""
        cfg = self.cfg
        greedy = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0)
        total, n = 0.0, 0
        for reward, name, spec in zip(self.rewards, self.reward_names, cfg.tasks):
            prompts = read_prompts(TASK_PREFIX + spec, cfg.eval.max_examples, "heldout")
            for start in range(0, len(prompts), BATCH):
                batch = rollout(self.policy, self.tokenizer, prompts[start : start + BATCH], greedy)
                total += float(
                    score([reward] * len(batch), [name] * len(batch), batch.prompts, batch.texts).sum()
                )
                n += len(batch)
        return total / max(1, n)

    # ---- state and files --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        exp = self.experience
        keep = exp is not None and self.cfg.loss.num_iterations > 1
        return {
            "pool": len(self.pool),
            "experience": {
                "step": exp.step, "advantages": exp.advantages, "ref_logprobs": exp.ref_logprobs,
                "info": exp.info, "rollout": {f.name: getattr(exp.rollout, f.name) for f in fields(Rollout)},
            } if keep else None,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if state["pool"] != len(self.pool):
            raise ScratchError(
                f"cannot resume: the checkpoint drew prompts from {state['pool']} but this config gives "
                f"{len(self.pool)}; resume with the same tasks and rollout.pool"
            )
        saved = state["experience"]
        # Rank 0 alone writes the checkpoint: under DDP the others redraw their share of the rollout.
        if saved is None or self.world.distributed:
            self.experience = None
            return
        move = lambda t: t.to(self.device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        self.experience = Experience(
            step=saved["step"], rollout=Rollout(**{k: move(v) for k, v in saved["rollout"].items()}),
            advantages=move(saved["advantages"]), ref_logprobs=move(saved["ref_logprobs"]),
            info=saved["info"],
        )  # fmt: skip

    def write_model(self, name: str, folder: Path, extra: dict) -> dict[str, str]:
        extra = {**extra, "base": str(self.policy_dir), "algorithm": self.cfg.algorithm}
        return write_model_files(folder, self.policy, self.tokenizer, extra=extra)["files"]

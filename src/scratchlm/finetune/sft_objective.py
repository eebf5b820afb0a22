"""Supervised fine-tuning as an objective: the loss counts only the assistant's tokens.

    from scratchlm.finetune import load_sft_config, sft
    result = sft(load_sft_config("sft-tasks-char", ["base=runs/base"]), "runs/sft")

The data: every source of the mixture (built-in tasks, chat files) is rendered with the one chat template
(`scratchlm.data.chat`) into ids and a loss mask, cut to the context, and packed into rows without
cross-talk (`data.packing`). A step's rows are a pure function of the step (a seeded permutation per
epoch), so resume is exact with no loader state. With `data.ptx`, that share of each step's rows are
windows of pretraining text, every token counted (InstructGPT's "ptx" mix against forgetting; here the
two are weighted by their counted tokens, as the trainer divides by the step's valid count).

The figures: `val_loss`, the mean over sources of the loss on their held-out conversations (assistant
tokens; a chat file's own is `loss:FILE`, on the records `read_chat_file` holds out), each exact-answer task's
held-out accuracy by greedy decoding, the dialogue task's share of replies that name a speaker, and the
loss on the pretraining corpus's validation text (`pretrain_val_loss`: what SFT made the model forget).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from scratchlm.data.packing import IGNORE, Rows, example, pack
from scratchlm.errors import ScratchError
from scratchlm.eval.chat_tasks import chat_task_figures, heldout_rows, masked_loss
from scratchlm.fileio import save_safetensors
from scratchlm.finetune.config import SFTConfig
from scratchlm.finetune.lora import LoRAConfig, apply_lora, lora_state_dict, merge_lora
from scratchlm.finetune.sft_data import (
    pretrain_loss,
    ptx_tokens,
    read_chat_file,
    render_all,
    sft_mixture,
)
from scratchlm.model.folder import load_model, write_model_files
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS
from scratchlm.train import distributed
from scratchlm.train.checkpoint import read_module_into
from scratchlm.train.objective import StepBatches
from scratchlm.train.run_dir import resolve_model_dir
from scratchlm.train.trainer import RunResult, run_stage


def sft(config: SFTConfig, out_dir: str | Path, resume: bool = False, say=print) -> RunResult:
    """Fine-tune `config.base` into the run folder `out_dir`."""
    return run_stage(
        config, out_dir, resume, say, lambda world, run, say: SFT(config, world, world.device, say)
    )


ADAPTER = "adapter"  # a LoRA run's checkpoints and final/ hold the adapter here, beside the merged model


class SFT:
    name = "sft"
    trainable = ("model",)

    def __init__(self, cfg: SFTConfig, world: distributed.World, device: torch.device, say=print):
        self.cfg, self.world, self.device, self.say = cfg, world, device, say
        self.base_dir = resolve_model_dir(cfg.base)
        self.model, self.tokenizer, _ = load_model(self.base_dir, device=device)
        self.model.train()
        missing = [t for t in CHAT_SPECIAL_TOKENS if t not in getattr(self.tokenizer, "special_tokens", {})]
        if missing:
            raise ScratchError(
                f"{self.base_dir}: its tokenizer has no {missing[0]} token, so it cannot spell a "
                "conversation; pretrain the base with data.chat_tokens=true (char) or a BPE tokenizer"
            )
        self.context = self.model.config.context_length
        self.loss_ceiling = 3.0 * math.log(self.model.config.vocab_size)
        if cfg.lora.rank:
            self.lora = _lora_config(cfg)
            apply_lora(self.model, self.lora)
        else:
            self.lora = None
        self.models = {"model": self.model}
        files = [read_chat_file(path, cfg.data, say) for path in cfg.data.files]
        self.rows = self._rows(sft_mixture(cfg.data, "train", cfg.seed, self.tokenizer, say, files))
        self.heldout_files = {  # each chat file's held-out conversations, as packed rows
            path: heldout_rows(heldout, self.tokenizer, self.context)
            for path, (_, heldout) in zip(cfg.data.files, files)
            if heldout
        }
        self.ptx_train, self.ptx_val = ptx_tokens(cfg.data, self.base_dir, self.tokenizer)
        if cfg.data.ptx and self.ptx_train is None:
            raise ScratchError(
                f"data.ptx {cfg.data.ptx} needs pretraining text, but {self.base_dir} belongs to no run that "
                "records its corpus; set data.ptx_corpus (e.g. shakespeare) or data.ptx=0"
            )
        rows = cfg.data.batch_size
        self.n_ptx = round(rows * cfg.data.ptx)
        per_rank = rows // (world.size * cfg.data.grad_accum)
        if per_rank == 0 or per_rank * world.size * cfg.data.grad_accum != rows:
            raise ScratchError(
                f"data.batch_size {rows} is not divisible by world_size {world.size} x grad_accum "
                f"{cfg.data.grad_accum}; change one of them"
            )
        self.per_rank = per_rank  # rows of a step on this rank, cut into grad_accum micro-batches
        say(f"sft: {len(self.rows):,} training rows of {self.context} positions from {self.base_dir}")

    def _rows(self, conversations) -> Rows:
        examples = []
        for ids, mask in render_all(conversations, self.tokenizer, self.context + 1, self.cfg.data, self.say):
            examples.append(example(ids, mask))
        if not examples:
            raise ScratchError("sft: no conversation fits the model's context; shorten them or raise it")
        return pack(examples, self.context, self.cfg.data.packing)

    def resolved_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    # ---- batches and loss -------------------------------------------------------------------------

    def _sft_indices(self, step: int) -> np.ndarray:
        """The global SFT rows of `step`: consecutive slots of an endless sequence of seeded epochs."""
        n_sft, n = self.cfg.data.batch_size - self.n_ptx, len(self.rows)
        slots = np.arange(step * n_sft, (step + 1) * n_sft)
        out = np.empty(n_sft, dtype=np.int64)
        for epoch in np.unique(slots // n):
            order = np.random.default_rng([self.cfg.seed, int(epoch)]).permutation(n)
            here = slots // n == epoch
            out[here] = order[slots[here] % n]
        return out

    def batches(self, step: int, progress: float) -> StepBatches:
        inputs, targets, documents = self.rows.take(self._sft_indices(step))
        if self.n_ptx:
            rng = np.random.default_rng([self.cfg.seed, step, 1])
            starts = rng.integers(0, len(self.ptx_train) - self.context - 1, size=self.n_ptx)
            windows = torch.from_numpy(np.stack([self.ptx_train[s : s + self.context + 1] for s in starts]))
            inputs = torch.cat([inputs, windows[:, :-1]])
            targets = torch.cat([targets, windows[:, 1:]])
            documents = torch.cat([documents, torch.zeros_like(windows[:, 1:])])
        mine = slice(self.world.rank * self.per_rank, (self.world.rank + 1) * self.per_rank)
        rows = [t[mine].to(self.device) for t in (inputs, targets, documents)]
        b = self.per_rank // self.cfg.data.grad_accum
        micro = [tuple(t[i : i + b] for t in rows) for i in range(0, self.per_rank, b)]
        tokens = self.cfg.data.batch_size * self.context
        flops = tokens * self.model.flops_per_token(training=True)
        return StepBatches(micro, tokens, flops)

    def count(self, batch) -> int:
        return int((batch[1] != IGNORE).sum())

    def loss(self, models, batch) -> tuple[torch.Tensor, int]:
        inputs, targets, documents = batch
        logits = models["model"](inputs, document_ids=documents)  # (b, T, V)
        loss_sum = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        return loss_sum, int((targets != IGNORE).sum())

    # ---- evaluation -------------------------------------------------------------------------------

    def evaluate(self, step: int) -> dict:
        was_training = self.model.training
        self.model.eval()
        try:
            figures, losses = {"val_loss": 0.0}, []
            for spec in self.cfg.data.tasks:  # the measurements of `scratchlm eval --tasks chat:SPEC`
                task = chat_task_figures(self.model, self.tokenizer, spec, self.cfg.eval.max_examples,
                                         self.cfg.eval.max_new_tokens)  # fmt: skip
                figures.update(
                    {f"{name}:{spec}": value for name, value in task.items() if name != "examples"}
                )
                losses.append(task["loss"])
            for path, rows in self.heldout_files.items():
                figures[f"loss:{path}"] = masked_loss(self.model, rows)
                losses.append(figures[f"loss:{path}"])
            figures["val_loss"] = sum(losses) / max(1, len(losses))
            if self.ptx_val is not None:
                figures["pretrain_val_loss"] = pretrain_loss(self.model, self.ptx_val, self.per_rank)
        finally:
            self.model.train(was_training)
        return figures

    # ---- state and files --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"rows": len(self.rows)}  # batches are a function of the step; this checks the data agrees

    def load_state_dict(self, state: dict) -> None:
        if state["rows"] != len(self.rows):
            raise ScratchError(
                f"cannot resume: the checkpoint trained on {state['rows']} rows but this config makes "
                f"{len(self.rows)}; resume with the same data section"
            )

    def write_model(self, name: str, folder: Path, extra: dict) -> dict[str, str]:
        """The model folder (with a LoRA adapter merged into a copy), and the adapter itself beside it."""
        model = merge_lora(copy.deepcopy(self.model)) if self.lora else self.model
        extra = {**extra, "base": str(self.base_dir)}
        hashes = write_model_files(folder, model, self.tokenizer, extra=extra)["files"]
        if self.lora:
            (folder / ADAPTER).mkdir()
            save_safetensors(lora_state_dict(self.model), folder / ADAPTER / "adapter.safetensors")
        return hashes

    def read_model(self, name: str, folder: Path) -> None:
        """Resume: the adapter alone (the base stays frozen as loaded), or every weight."""
        if not self.lora:
            read_module_into(self.model, folder)
            return
        state = load_file(str(folder / ADAPTER / "adapter.safetensors"))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected


def _lora_config(cfg: SFTConfig) -> LoRAConfig:
    section = cfg.lora
    extra = {"targets": section.targets} if section.targets else {}
    return LoRAConfig(rank=section.rank, alpha=section.alpha, dropout=section.dropout, **extra)

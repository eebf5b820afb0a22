"""The reward model: the transformer with a scalar head instead of the LM head (Ouyang et al. 2022, sec. 3.5).

    rm = RewardModel(sft_model)                     # the body starts as the SFT model
    per_token = rm(ids, attention_mask=mask)        # (B, T): a scalar at every position
    scores = last_token(per_token, mask)            # (B,): the reward, read at each row's last real token

The same module is PPO's value model (started from the reward model, as TRL and DeepSpeed-Chat do): the
value of a state is the head's scalar at that position. The head is `score`, a bias-free
`Linear(d_model, 1)`, Hugging Face's `LlamaForSequenceClassification.score` with one label, so the export
is a rename. The body keeps its (unused, frozen) LM head, so it stays an ordinary `Transformer`.

On disk a reward model is a model folder (`scratchlm.model.folder`) with its head beside the weights in
`reward_head.safetensors`; the folder's manifest hashes it like every other file and records
`extra.kind = "reward"`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from scratchlm.data.chat import SYSTEM, chat_token_ids
from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, save_safetensors
from scratchlm.model.folder import load_model, write_model_files
from scratchlm.model.transformer import Transformer

HEAD = "reward_head.safetensors"
KIND = "reward"


class RewardModel(nn.Module):
    def __init__(self, body: Transformer):
        super().__init__()
        self.body = body
        self.config = body.config
        self.score = nn.Linear(body.config.d_model, 1, bias=False, device=body.lm_head.weight.device)
        # A small head: rewards start near 0 and the body's features decide them. 1/sqrt(d) keeps the first
        # rewards' spread O(1) whatever the width, so Bradley-Terry's sigmoid starts out of saturation.
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(body.config.d_model))
        if not body.config.tie_embeddings:  # tied, it is the embedding, which the reward does use
            # Never in the forward pass: frozen, so the optimizer skips it and DDP does not wait for its
            # gradient (it fails at the second step on a parameter that never gets one).
            body.lm_head.weight.requires_grad_(False)

    @property
    def layers(self) -> nn.ModuleList:
        """The body's blocks, where the trainer applies activation checkpointing."""
        return self.body.layers

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> a scalar per position (B, T), float32."""
        hidden = self.body.hidden_states(
            input_ids, attention_mask=attention_mask, positions=positions, document_ids=document_ids
        )  # (B, T, d)
        return self.score(hidden).squeeze(-1).float()  # (B, T)


def last_token(per_token: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) values -> (B,) at each row's last real token (the rightmost True of the mask)."""
    T = attention_mask.shape[-1]
    index = torch.arange(T, device=attention_mask.device)
    last = torch.where(attention_mask.bool(), index, -1).amax(-1)  # (B,)
    assert bool((last >= 0).all()), "a row with no real token has no reward"
    return per_token.gather(-1, last[:, None]).squeeze(-1)


def pad_id(tokenizer) -> int:
    """The id to right-pad scored rows with: any id but `<|end|>`, which ends every scored sequence (HF's
    classifier reads the last non-pad token); <|endoftext|> when the tokenizer has one."""
    return tokenizer.eot_id if tokenizer.eot_id is not None else chat_token_ids(tokenizer)[SYSTEM]


def save_reward_model(folder: str | Path, model: RewardModel, tokenizer, extra: dict | None = None) -> Path:
    with atomic_dir(Path(folder)) as tmp:
        write_reward_files(tmp, model, tokenizer, extra)
    return Path(folder)


def write_reward_files(folder: Path, model: RewardModel, tokenizer, extra: dict | None = None) -> dict:
    """The head first, so the model folder's manifest (written last) hashes it with the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    head = model.score.state_dict()["weight"]  # through state_dict: whole under FSDP's `gathered`
    save_safetensors({"score.weight": head.detach().contiguous().cpu()}, folder / HEAD)
    return write_model_files(folder, model.body, tokenizer, extra={**(extra or {}), "kind": KIND})


def load_reward_model(folder: str | Path, device=None, dtype=None) -> tuple[RewardModel, object]:
    """(reward model in eval mode, tokenizer) from a reward folder: a run's final/ or a checkpoint."""
    folder = Path(folder)
    body, tokenizer, manifest = load_model(folder, device=device, dtype=dtype)
    if manifest.get("extra", {}).get("kind") != KIND or not (folder / HEAD).is_file():
        raise ScratchError(
            f"{folder} is a language model, not a reward model; train one with scratchlm reward train"
        )
    model = RewardModel(body)
    weight = load_file(str(folder / HEAD))["score.weight"]
    model.score.weight.data.copy_(weight.to(model.score.weight.dtype))
    return model.eval(), tokenizer


def read_head_into(model: RewardModel, folder: Path) -> None:
    """Resume: the head's weight from a checkpoint folder (the body is read by the trainer's reader)."""
    model.score.weight.data.copy_(load_file(str(folder / HEAD))["score.weight"])

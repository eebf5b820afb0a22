"""Rollouts for RL (PPO, GRPO, RLOO): answers sampled from the policy, kept as tensors to train on.

    batch = rollout(policy, tokenizer, prompts, SamplingConfig(temperature=0.7, max_new_tokens=64), group=8)
    batch.sequences        # (N, P + R): each prompt left-padded to P, its answer right-padded to R
    batch.response_mask    # (N, R) bool: the answer's real tokens, its closing <|end|> included
    batch.logprobs         # (N, R): log-probability of each answer token under the distribution it was
                           # sampled from (temperature, top-k, top-p applied), 0 past the end
    token_logprobs(policy, batch, temperature)   # the same, from a fresh forward pass (training)

The answers come from the one decoding loop (`scratchlm.generate.engine.decode_steps`), so RL samples
exactly what `scratchlm chat` would. A row ends at the chat template's `<|end|>` (`finished`), or at any
other special token, as a chat reply does; a row that reaches `max_new_tokens` first, or opens another
turn, is `finished = False` (an answer that never closes its turn, which PPO may penalise).
With `group = G`, each prompt is repeated G times in consecutive rows (GRPO's group).

The fresh forward pass reproduces the sampling distribution only for temperature (with top-k and top-p
off), which is what PPO's ratio needs: rollouts for training use top_k = 0 and top_p = 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scratchlm.data.chat import END, chat_token_ids, render_chat
from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig
from scratchlm.generate.engine import decode_steps

Message = dict[str, str]


@dataclass
class Rollout:
    prompts: list[list[Message]]  # one per row
    sequences: torch.Tensor  # (N, P + R) long
    attention_mask: torch.Tensor  # (N, P + R) bool: real tokens
    positions: torch.Tensor  # (N, P + R) long: each row counts from its first real token
    response_mask: torch.Tensor  # (N, R) bool
    logprobs: torch.Tensor  # (N, R) float32, sampling distribution
    finished: torch.Tensor  # (N,) bool: closed with <|end|>
    texts: list[str]  # the answers, without the special token that ended them
    prompt_length: int  # P

    @property
    def response_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]  # (N, R)

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def select(self, rows: torch.Tensor | Sequence[int]) -> Rollout:
        """The rows `rows` (a minibatch), as a Rollout with the same P and R."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        index = rows.tolist()
        return Rollout(
            prompts=[self.prompts[i] for i in index],
            sequences=self.sequences[rows],
            attention_mask=self.attention_mask[rows],
            positions=self.positions[rows],
            response_mask=self.response_mask[rows],
            logprobs=self.logprobs[rows],
            finished=self.finished[rows],
            texts=[self.texts[i] for i in index],
            prompt_length=self.prompt_length,
        )


def prompt_ids(
    tokenizer, prompts: Sequence[Sequence[Message]], context: int, max_new_tokens: int
) -> list[list[int]]:
    """Each prompt rendered with an open assistant turn; one that leaves no room to answer is an error."""
    out = []
    for row, messages in enumerate(prompts):
        ids, _ = render_chat(messages, tokenizer, add_generation_prompt=True, where=f"prompt {row}")
        if len(ids) + max_new_tokens > context:
            raise ScratchError(
                f"prompt {row} is {len(ids)} tokens; with {max_new_tokens} new tokens it outgrows the "
                f"model's context of {context}: shorten the prompts or lower the answer length"
            )
        out.append(ids)
    return out


@torch.no_grad()
def rollout(
    policy: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[Message]],
    sampling: SamplingConfig,
    group: int = 1,
) -> Rollout:
    """Sample `group` answers to each prompt from `policy` (see the module docstring)."""
    end_id = chat_token_ids(tokenizer)[END]  # a tokenizer without chat tokens: one line, not a KeyError
    if sampling.max_new_tokens < 1:
        raise ScratchError(f"max_new_tokens must be at least 1 for a rollout, got {sampling.max_new_tokens}")
    rows = [list(p) for p in prompts for _ in range(group)]
    ids = prompt_ids(tokenizer, rows, policy.config.context_length, sampling.max_new_tokens)
    sampling = dataclasses.replace(sampling, stop=[], stop_at_eot=True, truncate="error")
    was_training = policy.training
    policy.eval()
    try:
        steps = list(
            decode_steps(policy, None, ids, sampling, eot_id=end_id, vocab_limit=tokenizer.vocab_size)
        )
    finally:
        policy.train(was_training)
    device = policy.lm_head.weight.device
    N, P, R = len(rows), max(len(p) for p in ids), len(steps)
    response = torch.tensor([s.token_ids for s in steps], dtype=torch.long).T.reshape(N, R)  # (N, R)
    logprobs = torch.stack([s.logprobs for s in steps], dim=1).float().cpu()  # (N, R)
    # A row's real tokens run to its first special token (included): <|end|> closes the turn
    # (`finished`); any other (<|user|>, <|endoftext|>) ends the answer too, as it ends a chat reply, so
    # answer text never spells a special token. decode_steps goes on decoding an ended row.
    specials = torch.tensor(sorted(set(tokenizer.special_tokens.values())))
    is_stop = torch.isin(response, specials)
    ended = is_stop.any(-1)
    first_stop = torch.where(ended, is_stop.float().argmax(-1), torch.full((N,), R))  # (N,)
    finished = ended & (response.gather(1, first_stop.clamp(max=R - 1)[:, None]).squeeze(1) == end_id)
    response_mask = torch.arange(R)[None, :] <= first_stop[:, None]
    sequences = torch.zeros(N, P + R, dtype=torch.long)
    attention_mask = torch.zeros(N, P + R, dtype=torch.bool)
    for row, p in enumerate(ids):
        sequences[row, P - len(p) : P] = torch.tensor(p)
        attention_mask[row, P - len(p) : P] = True
    sequences[:, P:] = torch.where(response_mask, response, 0)
    attention_mask[:, P:] = response_mask
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    texts = []
    for row in range(N):
        n = int(response_mask[row].sum()) - int(ended[row])
        texts.append(tokenizer.decode(response[row, :n].tolist()))
    return Rollout(
        prompts=rows,
        sequences=sequences.to(device),
        attention_mask=attention_mask.to(device),
        positions=positions.to(device),
        response_mask=response_mask.to(device),
        logprobs=(logprobs * response_mask.float()).to(device),
        finished=finished.to(device),
        texts=texts,
        prompt_length=P,
    )


def response_logits(model: torch.nn.Module, batch: Rollout, vocab_limit: int | None = None) -> torch.Tensor:
    """The logits that predict each answer token, (N, R, V), float32, from one forward pass."""
    logits = model(batch.sequences, positions=batch.positions, attention_mask=batch.attention_mask)
    logits = logits[:, batch.prompt_length - 1 : -1].float()  # position t predicts token t + 1
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits[..., vocab_limit:] = float("-inf")  # what decode_steps masks: ids the tokenizer cannot decode
    return logits


def token_logprobs(
    model: torch.nn.Module, batch: Rollout, temperature: float = 1.0, vocab_limit: int | None = None,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """log p(answer token) under `model` at `temperature`, (N, R), 0 past each answer's end.

    With `with_entropy`, also the entropy of each position's distribution, (N, R).
    """
    logits = response_logits(model, batch, vocab_limit) / temperature  # (N, R, V)
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, batch.response_ids[..., None]).squeeze(-1) * batch.response_mask
    if not with_entropy:
        return logp
    probs = logp_all.exp()
    entropy = -(probs * torch.where(probs > 0, logp_all, 0.0)).sum(-1)  # (N, R); 0 log 0 = 0
    return logp, entropy * batch.response_mask

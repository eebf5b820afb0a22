"""DPO and two of its variants, as pure functions of per-sequence log-probabilities, and those log-probs.

Direct Preference Optimization (Rafailov et al. 2023) trains a policy pi on pairs of answers to one
prompt, chosen c over rejected r, against a frozen reference pi_ref (the SFT model). Its implicit reward
is r(y) = beta (log pi(y) - log pi_ref(y)), and every loss here is a function of the reward margin

    delta = (log pi(c) - log pi_ref(c)) - (log pi(r) - log pi_ref(r))

with each log-probability summed over the answer's tokens (its content and closing <|end|>, what
`render_chat`'s mask counts in the last assistant turn):

    sigmoid  -(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)
             DPO's eq. 7; eps > 0 is cDPO's label smoothing (Mitchell 2023), a label taken to be flipped
             with probability eps (TRL 1.16's "sigmoid" is the eps = 0 case).
    ipo      (delta_c / |c| - delta_r / |r| - 1 / (2 beta))^2,  delta_y = log pi(y) - log pi_ref(y)
             IPO (Azar et al. 2023, eq. 17) with each log ratio averaged over its answer's tokens, as TRL
             does: the summed form grows with the answer's length and beta would mean something else
             for every length.
    hinge    relu(1 - beta delta)   (SLiC, Zhao et al. 2023)

With pi = pi_ref, delta = 0: sigmoid gives ln 2 for any eps, IPO 1 / (4 beta^2), hinge 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from scratchlm.align.preferences import Pair
from scratchlm.data.chat import render_chat
from scratchlm.data.packing import IGNORE
from scratchlm.errors import ScratchError

# TRL's names for the figures of a batch, each a mean over its pairs (rewards are beta * log ratios).
FIGURES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")  # fmt: skip


def preference_losses(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    lengths: tuple[torch.Tensor, torch.Tensor],
    *,
    loss: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Each pair's loss, (B,); every argument is (B,), `lengths` = (chosen, rejected) answer tokens."""
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # log pi(c) / pi_ref(c)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios
    if loss == "sigmoid":
        eps = label_smoothing
        return -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    if loss == "ipo":
        chosen_lengths, rejected_lengths = (n.clamp(min=1) for n in lengths)
        per_token = chosen_logratios / chosen_lengths - rejected_logratios / rejected_lengths
        return (per_token - 1 / (2 * beta)) ** 2
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    raise ScratchError(f"loss {loss!r} is unknown; use sigmoid, ipo or hinge")


def figure_sums(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The sums over the pairs of the `FIGURES`, (6,), detached: divide by the number of pairs."""
    chosen = policy_chosen_logps.detach()
    rejected = policy_rejected_logps.detach()
    chosen_rewards = beta * (chosen - ref_chosen_logps)  # (B,)
    rejected_rewards = beta * (rejected - ref_rejected_logps)
    return torch.stack([
        chosen_rewards.sum(), rejected_rewards.sum(), (chosen_rewards > rejected_rewards).float().sum(),
        (chosen_rewards - rejected_rewards).sum(), chosen.sum(), rejected.sum(),
    ])  # fmt: skip


def sequence_logprobs(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(answer) of each row, (S,): log-probs of the targets summed where they are not IGNORE.

    Rows are right-padded, so a causal model's logits on the real tokens are those of the row alone.
    """
    logits = model(inputs).float()  # (S, T, V)
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (S, T)
    return (picked * (targets != IGNORE)).sum(-1)


# ---- pairs as token sequences ---------------------------------------------------------------------


@dataclass
class EncodedPairs:
    """The pairs as distinct token sequences (prompt + answer): pairs of one ranking share their answers.

    `chosen[i]` / `rejected[i]` index pair i's two sequences; `answer_starts[s]` is where sequence s's
    answer begins. Each sequence holds at most context + 1 ids (T positions predict T next tokens).
    """

    sequences: list[np.ndarray]
    answer_starts: np.ndarray  # (S,)
    chosen: np.ndarray  # (P,) int64
    rejected: np.ndarray  # (P,) int64
    truncated: int = 0  # answers cut to fit the context (TRL's keep_start truncation)

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def lengths(self) -> np.ndarray:
        """Answer tokens counted in each sequence, (S,)."""
        return np.array([len(s) for s in self.sequences]) - self.answer_starts

    def fingerprint(self) -> str:
        """A digest of every sequence, answer start and pairing: a cache of their log-probs is this one's."""
        h = hashlib.sha256()
        for seq, start in zip(self.sequences, self.answer_starts, strict=True):
            h.update(np.int64([len(seq), start]).tobytes() + seq.astype(np.int64).tobytes())
        h.update(self.chosen.tobytes() + self.rejected.tobytes())
        return h.hexdigest()

    def batch(self, sequences: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of `sequences`, each (S, T) right-padded to the longest; only answers count."""
        width = max(len(self.sequences[s]) for s in sequences) - 1
        inputs = np.zeros((len(sequences), width), dtype=np.int64)
        targets = np.full((len(sequences), width), IGNORE, dtype=np.int64)
        for row, s in enumerate(sequences):
            ids, start = self.sequences[s], self.answer_starts[s]
            inputs[row, : len(ids) - 1] = ids[:-1]
            targets[row, start - 1 : len(ids) - 1] = ids[start:]  # position t predicts token t + 1
        return torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)


def encode_pairs(pairs: Sequence[Pair], tokenizer, context: int, where: str = "") -> EncodedPairs:
    """Render each pair's prompt and answers with the chat template; a prompt longer than `context` is
    an error, an answer running past it is cut (and counted)."""
    index: dict[tuple, int] = {}
    sequences, starts, truncated = [], [], 0
    prompts: dict[tuple, list[int]] = {}

    def sequence(pair: Pair, answer: str) -> int:
        nonlocal truncated
        key = (pair.prompt, answer)
        if key in index:
            return index[key]
        at = f"{where}:{pair.line}" if where else f"record {pair.group + 1}"  # FILE:LINE
        if pair.prompt not in prompts:
            prompts[pair.prompt], _ = render_chat(
                pair.messages, tokenizer, add_generation_prompt=True, where=at
            )
        prompt = prompts[pair.prompt]
        if len(prompt) > context:
            raise ScratchError(
                f"{at}: the prompt is {len(prompt)} tokens, longer than the model's context of {context}; "
                "shorten it or leave the record out"
            )
        ids, _ = render_chat([*pair.messages, {"role": "assistant", "content": answer}], tokenizer, where=at)
        assert ids[: len(prompt)] == prompt  # the open assistant turn is a prefix of the closed one
        truncated += len(ids) > context + 1
        index[key] = len(sequences)
        sequences.append(np.array(ids[: context + 1], dtype=np.int64))
        starts.append(len(prompt))
        return index[key]

    chosen = [sequence(p, p.chosen) for p in pairs]
    rejected = [sequence(p, p.rejected) for p in pairs]
    return EncodedPairs(sequences, np.array(starts, dtype=np.int64), np.array(chosen, dtype=np.int64),
                        np.array(rejected, dtype=np.int64), truncated)  # fmt: skip


@torch.no_grad()
def all_sequence_logprobs(model: torch.nn.Module, pairs: EncodedPairs, rows: int, device) -> torch.Tensor:
    """log p(answer) of every sequence of `pairs`, (S,) float32 on the CPU, `rows` sequences a forward.

    Sequences are taken in order of length, so a batch pads little.
    """
    order = np.argsort([len(s) for s in pairs.sequences], kind="stable")
    out = torch.zeros(len(pairs.sequences))
    for i in range(0, len(order), rows):
        chunk = order[i : i + rows]
        out[torch.from_numpy(chunk)] = sequence_logprobs(model, *pairs.batch(chunk, device)).float().cpu()
    return out

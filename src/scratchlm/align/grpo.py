"""GRPO and RLOO as pure functions on tensors: group advantages, the KL estimators, the clipped loss.

    adv = group_advantages(rewards, group=8, scale="group")               # GRPO (Shao et al. 2024)
    adv = leave_one_out_advantages(rewards - beta * kl_k1(old, ref, mask), group=8)   # RLOO
    per_token, clipped = clipped_surrogate(logp, old_logp, adv, epsilon=0.2, epsilon_high=0.28)
    loss_sum, count = aggregate(per_token, mask, "dapo", max_completion_length=8)
    loss = loss_sum / count

Rows are group-major, as `rollout(..., group=G)` makes them: rows g*G .. g*G+G-1 answer prompt g. Token
tensors are (N, R) beside the (N, R) bool mask of each answer's real tokens.

A loss comes back as (sum, count) because that is what the trainer divides (scratchlm.train.objective):
summed over a step's micro-batches and ranks, sum / count is TRL's normalisation for every loss type.
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
STD_EPS = 1e-4  # TRL's: (r - mean) / (std + 1e-4), so a group without spread divides by 1e-4, not 0


def _groups(rewards: torch.Tensor, group: int) -> torch.Tensor:
    assert rewards.dim() == 1 and rewards.numel() % group == 0, (rewards.shape, group)
    return rewards.float().view(-1, group)  # (prompts, G)


def flat_groups(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """(N,) bool: the rows whose group's rewards are all equal, so they carry no learning signal."""
    grouped = _groups(rewards, group)
    flat = grouped.amax(-1) == grouped.amin(-1)  # (prompts,)
    return flat.repeat_interleave(group)


def reward_scale(rewards: torch.Tensor, group: int, scale: str = "group") -> torch.Tensor:
    """(N,): what each row's advantage is divided by, TRL's `scale_rewards`: std + 1e-4 of the row's group
    (`"group"`, GRPO), of the whole batch (`"batch"`, PPO Lite: Liu et al. 2025, "Tricks or Traps?"), or
    1 (`"none"`: Dr. GRPO, Liu et al. 2025, show that dividing up-weights prompts nearly solved or nearly
    hopeless). The std is the unbiased one, as torch and TRL take it."""
    grouped = _groups(rewards, group)  # (prompts, G)
    if scale == "group":
        return (grouped.std(-1, keepdim=True) + STD_EPS).expand_as(grouped).reshape(-1)
    if scale == "batch":
        return (grouped.std() + STD_EPS).expand(rewards.shape)
    assert scale == "none", scale
    return torch.ones_like(rewards, dtype=torch.float32)


def group_advantages(rewards: torch.Tensor, group: int, scale: str = "group") -> torch.Tensor:
    """GRPO's outcome advantage (Shao et al. 2024, sec. 4.1.2): Â_i = (r_i - mean(r)) / std(r), the mean
    over the answer's group of G, the std as `scale` says (`reward_scale`).

    A group whose rewards are all equal gets exactly 0 (no signal, and no 0/0), whatever rounding does.
    """
    grouped = _groups(rewards, group)  # (prompts, G)
    centred = (grouped - grouped.mean(-1, keepdim=True)).view(-1)
    return torch.where(flat_groups(rewards, group), 0.0, centred / reward_scale(rewards, group, scale))


def leave_one_out_advantages(rewards: torch.Tensor, group: int, scale: str = "none") -> torch.Tensor:
    """RLOO's advantage (Ahmadian et al. 2024, sec. 3; Kool et al. 2019): A_i = r_i - mean_{j != i} r_j.

    The baseline leaves the answer itself out, so it is independent of that answer and the policy
    gradient stays unbiased; it needs G >= 2. Not scaled in the paper (`scale="none"`). A group whose
    rewards are all equal gets exactly 0.
    """
    grouped = _groups(rewards, group)  # (prompts, G)
    others = (grouped.sum(-1, keepdim=True) - grouped) / (group - 1)  # (prompts, G): mean of the other G-1
    advantages = (grouped - others).view(-1) / reward_scale(rewards, group, scale)
    return torch.where(flat_groups(rewards, group), 0.0, advantages)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ || π_ref) estimate of GRPO (Shao et al. 2024, eq. 4; Schulman 2020's "k3"):

    π_ref/π_θ - log(π_ref/π_θ) - 1,   >= 0 and unbiased for samples drawn from π_θ.
    """
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-answer KL estimate of RLOO (Ahmadian et al. 2024, sec. 2; Schulman's "k1"): (N,)

    Σ_t log π(y_t) - log π_ref(y_t)   over the answer's tokens: log π(y|x) / π_ref(y|x).
    """
    return ((logp - ref_logp) * mask).sum(-1)


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, negated to a loss (GRPO's eq. 3; Schulman et al. 2017, eq. 7):

        ρ_t = π_θ(o_t) / π_old(o_t),   loss_t = -min(ρ_t Â, clip(ρ_t, 1 - ε, 1 + ε_high) Â)

    with ε_high > ε widening only the upper clip (DAPO's "clip-higher", Yu et al. 2025, sec. 3.1), so an
    unlikely good token can still rise. Returns the (N, R) losses and the (N, R) bool tokens whose ratio
    the clip holds (TRL's "region" clip: below 1 - ε with Â < 0, above 1 + ε_high with Â > 0).
    """
    high = epsilon if epsilon_high is None else epsilon_high
    advantages = advantages[:, None]  # (N, 1): one advantage for every token of an answer
    ratio = torch.exp(logp - old_logp)  # (N, R)
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon, 1.0 + high)
    per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)
    clipped = ((ratio < 1.0 - epsilon) & (advantages < 0)) | ((ratio > 1.0 + high) & (advantages > 0))
    return per_token, clipped


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str = "dapo", max_completion_length: int = 1
) -> tuple[torch.Tensor, int]:
    """(loss sum, count) of the (N, R) token losses; the step's loss is Σ sums / Σ counts (TRL 1.16):

    - "dapo": Σ_i Σ_t l_it / Σ_i |o_i|, every token of the batch weighs the same (DAPO sec. 3.3), so a
      long answer is not diluted by its length. TRL's default.
    - "grpo": mean over answers of Σ_t l_it / |o_i| (GRPO's eq. 3 as written): a long answer's tokens
      weigh less, which Liu et al. 2025 show biases the policy towards long wrong answers.
    - "dr_grpo": Σ_i Σ_t l_it / (N · max_completion_length): Dr. GRPO's constant normaliser.
    """
    mask = mask.to(per_token.dtype)
    if loss_type == "dapo":
        return (per_token * mask).sum(), int(mask.sum())
    if loss_type == "grpo":
        per_answer = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (N,)
        return per_answer.sum(), per_token.shape[0]
    assert loss_type == "dr_grpo", loss_type
    return (per_token * mask).sum(), per_token.shape[0] * max_completion_length


def count(mask: torch.Tensor, loss_type: str = "dapo", max_completion_length: int = 1) -> int:
    """The count `aggregate` will return for `mask`, known before any forward pass (the trainer's `count`)."""
    if loss_type == "dapo":
        return int(mask.sum())
    return mask.shape[0] * (max_completion_length if loss_type == "dr_grpo" else 1)

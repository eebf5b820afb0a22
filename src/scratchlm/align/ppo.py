"""PPO for language models, as pure functions on (N, R) tensors of answer tokens (R: answer positions).

The recipe is InstructGPT's (Ouyang et al. 2022) by way of Ziegler et al. 2019 and Stiennon et al. 2020:
the answer is an episode, each generated token an action, and the reward model's score arrives at the
last token. Each step of `scratchlm.align.ppo_objective` calls these in order:

1. `kl_per_token`: how far the policy has moved from the frozen reference, per token
   (k1 = log pi - log pi_ref, unbiased; k3 = (r - 1) - log r with r = pi_ref / pi, low-variance and >= 0;
   Schulman 2020, "Approximating KL divergence").
2. `token_rewards`: -beta * KL at every token, plus the (clipped) score at the last real token.
3. `gae`: generalised advantage estimation (Schulman et al. 2016, eq. 16),
   A_t = sum_k (gamma lambda)^k delta_{t+k},  delta_t = r_t + gamma V_{t+1} - V_t,
   and the returns A_t + V_t that the value model regresses on. `gae_loop` is its obvious twin.
4. `whiten`: advantages to mean 0, std 1 over the batch's real tokens.
5. `policy_loss` (the clipped surrogate, Schulman et al. 2017, eq. 7) and `value_loss` (clipped around
   the rollout's values, as OpenAI's baselines and TRL do), both summed over real tokens: the trainer
   divides by the token count of the step.

`AdaptiveKL` is Ziegler et al.'s controller: beta grows when KL runs above its target and shrinks below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """(N, R) KL estimate of each sampled token, from log pi and log pi_ref of that token."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # (pi_ref/pi - 1) - log(pi_ref/pi)
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1 or k3")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """(N, R): -beta * KL on every real token, and each row's score added at its last real token."""
    rewards = -beta * kl * mask
    last = (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True)) & mask.bool()  # (N, R) one-hot
    return rewards + scores[:, None] * last


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), (N, R) each, 0 past each answer's end; vectorised over time.

    delta_t = r_t + gamma V_{t+1} - V_t with V = 0 after the last real token (the episode ends there);
    A = delta @ W with W[k, t] = (gamma lambda)^(k - t) for k >= t: every row's discounted suffix sums
    at once, an (R, R) matrix instead of a Python loop over R.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask  # (N, R)
    R = rewards.shape[1]
    steps = torch.arange(R, device=rewards.device)
    offset = steps[:, None] - steps[None, :]  # [k, t] = k - t
    weights = torch.where(offset >= 0, (gamma * lam) ** offset.clamp(min=0).to(values.dtype), 0.0)
    advantages = (deltas @ weights) * mask
    return advantages, (advantages + values) * mask


def gae_loop(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as `gae`, one row and one step at a time: the slow, obviously correct twin."""
    N, R = rewards.shape
    advantages = torch.zeros(N, R, dtype=values.dtype)
    for row in range(N):
        length = int(mask[row].sum())
        running = 0.0
        for t in reversed(range(length)):
            next_value = float(values[row, t + 1]) if t + 1 < length else 0.0
            delta = float(rewards[row, t]) + gamma * next_value - float(values[row, t])
            running = delta + gamma * lam * running
            advantages[row, t] = running
    returns = (advantages + values * mask) * mask
    return advantages, returns


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean 0, std 1 over the real tokens (0 elsewhere)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)  # unbiased
    return (x - mean) * torch.rsqrt(var + eps) * mask


@dataclass
class PolicyTerms:
    loss_sum: torch.Tensor  # summed over real tokens
    clip_fraction: float
    approx_kl: float  # E[(ratio - 1) - log ratio] (k3 between old and new policy)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> PolicyTerms:
    """The clipped surrogate: max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = pi / pi_old, per token."""
    mask = mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss_sum = (torch.maximum(unclipped, clipped) * mask).sum()
    with torch.no_grad():
        clip_fraction = float(masked_mean((clipped > unclipped).to(mask.dtype), mask))
        approx_kl = float(masked_mean(torch.expm1(log_ratio) - log_ratio, mask))
    return PolicyTerms(loss_sum, clip_fraction, approx_kl)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, float]:
    """(0.5 * max((V - G)^2, (V_clipped - G)^2) summed over real tokens, share of tokens clipped)."""
    mask = mask.to(values.dtype)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss_sum = 0.5 * (torch.maximum(unclipped, clipped) * mask).sum()
    with torch.no_grad():
        fraction = float(masked_mean((clipped > unclipped).to(mask.dtype), mask))
    return loss_sum, fraction


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(G - V) / Var(G) over real tokens: 1 is a perfect value model, 0 no better than a constant."""
    mask = mask.to(values.dtype)
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1.0 - var_residual / var_returns) if var_returns > 0 else float("nan")


@dataclass
class AdaptiveKL:
    """Ziegler et al. 2019, sec. 2.2: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""

    beta: float
    target: float
    horizon: float

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta

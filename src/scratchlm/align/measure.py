"""How an aligned policy is judged: gold, proxy reward and KL to the reference, on held-out prompts.

    m = sample_and_score(policy, reference, tokenizer, prompts, judge, reward_model=rm, seed=1_000_003)
    mean_se(m["gold"])            # (mean, standard error) over the answers
    best_of_n(m, group=16, ns=(4, 16))

Every method is measured the same way: `group` answers per prompt sampled at temperature 1 with a fixed
seed; KL = the sum over the answer of log pi - log pi_ref (k1 on the policy's own samples, an unbiased
estimate of KL(pi || pi_ref) per answer); gold from the hidden judge, proxy from the reward model.
Best-of-n picks, among a prompt's first n answers, the one the reward model scores highest (Gao et al.
2022); its KL is the analytic log n - (n - 1) / n (Stiennon et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from scratchlm.align.reward import last_token
from scratchlm.align.rollout import rollout, token_logprobs
from scratchlm.generate.config import SamplingConfig


def mean_se(values: Sequence[float] | torch.Tensor) -> tuple[float, float]:
    """The mean and its standard error (sample std / sqrt(n); 0 for a single value)."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = x.numel()
    if n == 0:
        return float("nan"), float("nan")
    se = float(x.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0
    return float(x.mean()), se


@torch.no_grad()
def sample_and_score(
    policy,
    reference,
    tokenizer,
    prompts,
    judge,
    *,
    reward_model=None,
    max_new_tokens: int = 64,
    group: int = 1,
    seed: int = 1_000_003,
) -> dict:
    """{gold, proxy (None without a reward model), kl, length: (N,) tensors; texts, prompts}."""
    batch = rollout(
        policy, tokenizer, prompts, SamplingConfig(max_new_tokens=max_new_tokens, seed=seed), group
    )
    mask = batch.response_mask.float()
    ref = token_logprobs(reference, batch, 1.0, tokenizer.vocab_size)
    kl = ((batch.logprobs - ref) * mask).sum(-1)
    proxy = None
    if reward_model is not None:
        scores = reward_model(batch.sequences, attention_mask=batch.attention_mask, positions=batch.positions)
        proxy = last_token(scores, batch.attention_mask).float().cpu()
    gold = torch.tensor([float(judge.score(p, a)) for p, a in zip(batch.prompts, batch.texts)])
    return {
        "gold": gold,
        "proxy": proxy,
        "kl": kl.float().cpu(),
        "length": mask.sum(-1).cpu(),
        "texts": batch.texts,
        "prompts": batch.prompts,
    }


def best_of_n(m: dict, group: int, ns: Sequence[int]) -> list[dict]:
    """Best-of-n by the proxy among the first n of each prompt's `group` answers: gold (mean, se), KL."""
    gold, proxy = m["gold"].view(-1, group), m["proxy"].view(-1, group)
    out = []
    for n in ns:
        assert 1 <= n <= group, f"best-of-{n} needs {n} answers a prompt, have {group}"
        pick = proxy[:, :n].argmax(-1, keepdim=True)
        chosen = gold[:, :n].gather(1, pick).squeeze(1)
        g, g_se = mean_se(chosen)
        out.append({"n": n, "gold": g, "gold_se": g_se, "kl": math.log(n) - (n - 1) / n})
    return out

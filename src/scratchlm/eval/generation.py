"""Greedy generation until a stop string: what generative benchmarks and the harness's `generate_until` ask.

Deliberately the plain loop (recompute the whole window for every new token): evaluation answers are a
few tokens long, and a loop this simple is its own reference. Sampled, cached, batched generation for
people lives in `scratchlm.generate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scratchlm.eval.scoring import autocast_for, context_length, model_device, prefix_token


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s and (k := text.find(s)) != -1:
            cut = min(cut, k)
    return text[:cut]


@torch.inference_mode()
def greedy_until(
    model, tokenizer, prompts: Sequence[str], stop: Sequence[str], *, max_new_tokens: int = 32
) -> list[str]:
    """For each prompt, the greedy continuation cut at the first stop string (or end-of-text token)."""
    max_len = context_length(model)
    device = model_device(model)
    eot = prefix_token(tokenizer)
    outputs = []
    for prompt in prompts:
        ids = tokenizer.encode_ordinary(prompt) if prompt else []
        if not ids:
            assert eot is not None, "an empty prompt needs a tokenizer with an end-of-text token"
            ids = [eot]
        new: list[int] = []
        for _ in range(max_new_tokens):
            window = torch.tensor([(ids + new)[-max_len:]], device=device)  # (1, T)
            with autocast_for(device):
                logits = model(window)  # (1, T, V)
            token = int(logits[0, -1].argmax())
            if token == eot:
                break
            new.append(token)
            text = tokenizer.decode(new)
            if any(s and s in text for s in stop):
                break
        outputs.append(cut_at_stop(tokenizer.decode(new), stop))
    return outputs
